"""The shipped service: the daemon's loop, request handlers, store, config, systemd, metrics, supervisor.

Everything here runs inside ``osfl-server run`` and must stay light: importing this package (or any
module in it) loads no numpy, PIL or torch (tests/server_daemon/ingest/test_ingest_imports.py).
The supervisor starts job workers (``server_daemon.jobs``) as processes and never imports them.
"""
