"""The worker side of jobs: ``python -m server_daemon.jobs --config CFG run JOB``.

The daemon's supervisor (``server_daemon.ingest.supervisor``) starts one worker process per job and
never imports this package. A worker opens the store, runs the job's runner (``synthesis`` or
``training``), writes its progress and result to the job's row and exits 0 (done) or 1 (failed;
the supervisor retries, and the next attempt resumes). torch, diffusers and transformers load
only here, inside the runners.
"""
