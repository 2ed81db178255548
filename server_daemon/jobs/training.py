"""The training job: a classifier on the synthetic set, exported to ONNX, signed and published."""
from __future__ import annotations

import shutil
import signal
import sys

from ..ingest.config import ServerConfig
from ..ingest.layout import job_dir, report_dir
from ..ingest.store import Store
from .progress import Progress


def run_training_job(cfg: ServerConfig, store: Store, job: dict) -> dict:
    from protocol.keys import KeyPair

    from ..training import train_classifier

    fed = store.federation(job["federation"])
    tr = cfg.training
    progress = Progress(store, job["id"], "training")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *a: stop.update(now=True))

    def on_epoch_end(metrics: dict) -> bool:
        acc = metrics.get("val_acc")
        progress(int(metrics.get("epoch", 0)), tr.epochs, force=True,
                 detail=f"epoch {metrics.get('epoch')}: val acc " + ("-" if acc is None else f"{acc:.3f}"))
        return stop["now"]  # True stops after this epoch's checkpoint; the next attempt resumes

    result = train_classifier(job_dir(cfg, fed.id) / "synthetic", job_dir(cfg, fed.id) / "training", tr,
                              labels=list(fed.classes), progress=sys.stderr.isatty(), on_epoch_end=on_epoch_end)
    if not result.completed:
        raise InterruptedError("training stopped before its last epoch; it resumes on the next attempt")
    rdir = report_dir(cfg, fed.id)
    rdir.mkdir(parents=True, exist_ok=True)
    if result.curves_path:
        shutil.copyfile(result.curves_path, rdir / "curves.png")
    if result.metrics_path:
        shutil.copyfile(result.metrics_path, rdir / "metrics.json")
    keys = KeyPair.load(cfg.keys_dir, "server")
    meta = {"federation": fed.id, "labels": list(result.labels), "arch": tr.arch, "image_size": tr.image_size,
            "epochs": tr.epochs, "best_epoch": result.best_epoch, "val_acc": result.best_val_acc,
            "format": "onnx", "input": "pixel_values float32 NCHW RGB in [0,1]", "output": "logits"}
    art = store.publish_artifact(f"model/{fed.id}", result.onnx_path, meta, keys.signing)
    return {"model": f"model/{fed.id}", "sha256": art["sha256"].hex(), "size": art["size"],
            "val_acc": result.best_val_acc, "best_epoch": result.best_epoch}
