"""The synthesis job: every acknowledged payload of a federation -> a synthetic image set in shards."""
from __future__ import annotations

import sys

from protocol.payloads import decode_payload

from ..ingest.config import ServerConfig
from ..ingest.layout import job_dir, report_dir
from ..ingest.store import Store
from ..methods import AcceptedPayload, plan_from_payloads
from .progress import Progress, device


def accepted_payloads(store: Store, federation: str) -> list[AcceptedPayload]:
    """Every stored payload of ``federation``, keyed by (site, kind): one site may send several kinds."""
    names = {c.fingerprint: c.site for c in store.clients()}
    return [AcceptedPayload(site=names.get(p.fingerprint, p.fingerprint), kind=p.kind,
                            payload=decode_payload(store.payload_bytes(p.id)), payload_id=p.id)
            for p in store.payloads(federation)]


def run_synthesis_job(cfg: ServerConfig, store: Store, job: dict) -> dict:
    from ..synthesis import GenerationParams, load_engine, run_synthesis, write_sample_grid

    fed = store.federation(job["federation"])
    accepted = accepted_payloads(store, fed.id)
    syn = cfg.synthesis
    params = GenerationParams(scheduler=syn.scheduler or None, steps=syn.steps, guidance=syn.guidance,
                              height=syn.size or None, width=syn.size or None, batch_size=syn.batch_size,
                              save_size=syn.save_size or None)
    plan = plan_from_payloads(fed.id, accepted, labels=list(fed.classes), images_per_class=fed.images_per_class,
                              params=params, negative_prompt=syn.negative_prompt)
    progress = Progress(store, job["id"], "loading the generator")
    progress(0, len(plan.images), force=True)
    engine = load_engine(syn.model_dir, device=device(syn.device))
    out = job_dir(cfg, fed.id) / "synthetic"
    progress.detail = "generating images"
    result = run_synthesis(plan, engine, out, shard_size=syn.shard_size, progress=sys.stderr.isatty(),
                           on_progress=progress)
    rdir = report_dir(cfg, fed.id)
    rdir.mkdir(parents=True, exist_ok=True)
    write_sample_grid(out, rdir / "samples.png", labels=list(fed.classes))
    return {"images": len(plan.images), "generated": result.generated, "shards": result.shards,
            "shards_skipped": result.shards_skipped, "sites": sorted({a.site for a in accepted}),
            "payloads": [{"site": a.site, "kind": a.kind, "payload_id": a.payload_id} for a in accepted],
            "images_per_s": round(result.images_per_s, 2)}
