"""Run a synthesis plan into shards of PNG files with manifests; resume after a kill.

Output layout of ``out_dir``::

    plan.json                 the plan and its fingerprint (a different plan is refused)
    shard_00000/              one directory per ``shard_size`` images, in plan order
        00000000.png ...      file name = the image's position in the plan
        manifest.jsonl        one JSON line per image, written last
    manifest.jsonl            all shard manifests, once every shard is done
    dataset.json              summary: federation, labels, counts, fingerprint, complete

Each manifest line holds ``file`` (relative to ``out_dir``), ``prompt``, ``negative``, ``seed``,
``method``, ``site``, ``label``, ``label_index``, ``index``, ``shard``, ``sha256``, ``width`` and
``height``.

A shard is built in ``shard_XXXXX.partial/``; its PNGs are fsynced, its manifest is written and
fsynced, and then the directory is renamed to ``shard_XXXXX/``. On a rerun, a shard counts as
done only when its manifest lists exactly the plan's images for it and every file is present (and,
with ``verify=True``, has the recorded SHA-256); anything else (a ``.partial`` directory, a shard
directory without manifest, a corrupt file) is deleted and generated again. Seeds are per image,
so the regenerated images equal those of an uninterrupted run.

This module needs numpy and Pillow only; the engine (torch) is imported when a diffusers
pipeline is passed instead of an engine.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from protocol.files import atomic_write, fsync_dir

from .errors import ShardError
from .spec import ImageSpec, SynthesisPlan

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
MANIFEST = "manifest.jsonl"
DATASET_FILE = "dataset.json"
PARTIAL_SUFFIX = ".partial"
#: permission bits of the manifests and summaries (atomic_write's temporary file would be 0600)
FILE_MODE = 0o644

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthesisResult:
    """What :func:`run_synthesis` did."""

    out_dir: Path
    total: int
    generated: int
    shards: int
    shards_skipped: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def image_file(position: int) -> str:
    return f"{position:08d}.png"


def encode_png(image: np.ndarray, save_size: int | None = None) -> bytes:
    """uint8 HxWx3 -> PNG bytes (resized to ``save_size`` square first when given)."""
    img = Image.fromarray(image)
    if save_size is not None and img.size != (save_size, save_size):
        img = img.resize((save_size, save_size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # fast; these files are training data
    return buf.getvalue()


def shard_layout(plan: SynthesisPlan, shard_size: int) -> list[list[tuple[int, ImageSpec]]]:
    """The plan cut into shards of (position in plan, spec)."""
    if shard_size < 1:
        raise ShardError(f"shard_size must be at least 1, got {shard_size}")
    items = list(enumerate(plan.images))
    return [items[k:k + shard_size] for k in range(0, len(items), shard_size)]


def manifest_record(position: int, spec: ImageSpec, shard: int, sha256: str, width: int,
                    height: int) -> dict[str, Any]:
    rec = {
        "file": f"{shard_name(shard)}/{image_file(position)}",
        "prompt": spec.prompt, "negative": spec.negative, "seed": spec.seed, "method": spec.method,
        "site": spec.site, "label": spec.label, "label_index": spec.label_index, "index": spec.index,
        "shard": shard, "sha256": sha256, "width": width, "height": height,
    }
    if spec.extra is not None:
        rec["extra"] = spec.extra
    return rec


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def shard_is_complete(out_dir: Path, shard: int, items: Sequence[tuple[int, ImageSpec]],
                      verify: bool = True) -> bool:
    """True when the shard's manifest lists exactly ``items`` and their files are intact."""
    d = out_dir / shard_name(shard)
    try:
        records = _read_jsonl(d / MANIFEST)
    except (OSError, ValueError):
        return False
    if len(records) != len(items):
        return False
    for rec, (pos, spec) in zip(records, items):
        if (rec.get("file") != f"{shard_name(shard)}/{image_file(pos)}" or rec.get("seed") != spec.seed
                or rec.get("prompt") != spec.prompt or rec.get("negative") != spec.negative):
            return False
        f = out_dir / rec["file"]
        if not f.is_file():
            return False
        if verify and hashlib.sha256(f.read_bytes()).hexdigest() != rec.get("sha256"):
            log.warning("file %s does not match its recorded SHA-256; shard %d will be regenerated", f, shard)
            return False
    return True


def _check_plan_file(out_dir: Path, plan: SynthesisPlan) -> None:
    path = out_dir / PLAN_FILE
    fingerprint = plan.fingerprint()
    if path.exists():
        try:
            found = json.loads(path.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, ValueError):
            found = None
        if found != fingerprint:
            raise ShardError(f"{out_dir} holds the output of another synthesis plan (fingerprint "
                             f"{str(found)[:12]}, this plan {fingerprint[:12]}); use a new output "
                             "directory, or delete this one to start over")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"fingerprint": fingerprint, "plan": plan.to_dict()},
                                  ensure_ascii=False).encode("utf-8"), mode=FILE_MODE)


def _as_engine(pipeline):
    if hasattr(pipeline, "generate_specs"):
        return pipeline
    from .engine import SynthesisEngine  # torch is needed only here

    return SynthesisEngine(pipeline)


def _encode_and_write(path: Path, image: np.ndarray, save_size: int | None) -> tuple[str, int, int]:
    """Encode, write and fsync one PNG; return (sha256, width, height). Runs in a writer thread
    (zlib and file I/O release the GIL, so the next batch generates meanwhile)."""
    data = encode_png(image, save_size)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    h, w = (save_size, save_size) if save_size else image.shape[:2]
    return hashlib.sha256(data).hexdigest(), int(w), int(h)


def run_synthesis(
    plan: SynthesisPlan,
    pipeline,
    out_dir: str | os.PathLike,
    shard_size: int = 256,
    progress: bool = True,
    on_progress: ProgressFn | None = None,
    verify: bool = True,
    writer_threads: int = 4,
    shards: Iterable[int] | None = None,
) -> SynthesisResult:
    """Generate every image of ``plan`` into ``out_dir`` (layout in the module docstring).

    ``pipeline`` is a :class:`~server_daemon.synthesis.engine.SynthesisEngine` or a loaded
    ``StableDiffusionPipeline``. Finished shards are skipped, so calling this again after a kill
    resumes. ``on_progress(done, total)`` is called after every batch (and once at the start with
    the images already done). ``shards`` restricts the run to some shard numbers (one worker per
    GPU can take every k-th shard); the dataset manifest is written once all shards are done.
    PNG encoding and writing run in ``writer_threads`` threads beside generation.
    """
    t0 = time.monotonic()
    out = Path(out_dir)
    _check_plan_file(out, plan)
    layout = shard_layout(plan, shard_size)
    wanted = set(range(len(layout))) if shards is None else set(shards)
    total = len(plan)
    done = 0
    todo: list[int] = []
    for s, items in enumerate(layout):
        if shard_is_complete(out, s, items, verify):
            done += len(items)
        elif s in wanted:
            todo.append(s)
    skipped = len(layout) - len(todo)
    log.info("synthesis of %d images in %d shards into %s: %d shards done, %d to generate",
             total, len(layout), out, skipped, len(todo))
    if on_progress:
        on_progress(done, total)
    generated = 0
    if todo:
        engine = _as_engine(pipeline)
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=done, unit="img", desc="synthesis", disable=not progress)
        try:
            with ThreadPoolExecutor(max_workers=max(1, writer_threads)) as pool:
                for s in todo:
                    n = _run_shard(plan, engine, out, s, layout[s], pool, bar, on_progress, done, total)
                    done += n
                    generated += n
        finally:
            bar.close()
    result = SynthesisResult(out_dir=out, total=total, generated=generated, shards=len(layout),
                             shards_skipped=skipped, seconds=time.monotonic() - t0)
    if all(shard_is_complete(out, s, items, verify=False) for s, items in enumerate(layout)):
        write_dataset_manifest(out, plan, len(layout))
    return result


def _run_shard(plan, engine, out: Path, shard: int, items, pool: ThreadPoolExecutor, bar,
               on_progress: ProgressFn | None, done: int, total: int) -> int:
    final = out / shard_name(shard)
    partial = out / (shard_name(shard) + PARTIAL_SUFFIX)
    for stale in (final, partial):
        if stale.exists():
            log.info("removing unfinished shard directory %s", stale)
            shutil.rmtree(stale)
    partial.mkdir(parents=True)
    params = plan.params
    futures: list[tuple[int, ImageSpec, Future]] = []
    for start in range(0, len(items), params.batch_size):
        batch = items[start:start + params.batch_size]
        images = engine.generate_specs([spec for _, spec in batch], params)
        for (pos, spec), image in zip(batch, images):
            futures.append((pos, spec, pool.submit(_encode_and_write, partial / image_file(pos),
                                                   np.asarray(image), params.save_size)))
        done += len(batch)
        bar.update(len(batch))
        if on_progress:
            on_progress(done, total)
    records = []
    for pos, spec, fut in futures:  # .result() re-raises a failed write before the shard counts as done
        sha, w, h = fut.result()
        records.append(manifest_record(pos, spec, shard, sha, w, h))
    manifest = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write(partial / MANIFEST, manifest.encode("utf-8"), mode=FILE_MODE)
    os.replace(partial, final)
    fsync_dir(out)
    return len(items)


def write_dataset_manifest(out: Path, plan: SynthesisPlan, n_shards: int) -> None:
    """Concatenate the shard manifests into ``manifest.jsonl`` and write ``dataset.json``."""
    lines: list[str] = []
    for s in range(n_shards):
        lines.append((out / shard_name(s) / MANIFEST).read_text(encoding="utf-8"))
    atomic_write(out / MANIFEST, "".join(lines).encode("utf-8"), mode=FILE_MODE)
    summary = {
        "federation": plan.federation, "labels": list(plan.labels), "counts": plan.counts(),
        "images": len(plan), "shards": n_shards, "fingerprint": plan.fingerprint(), "complete": True,
        "params": plan.to_dict()["params"],
    }
    atomic_write(out / DATASET_FILE, json.dumps(summary, indent=2, ensure_ascii=False).encode("utf-8"),
                 mode=FILE_MODE)


def read_manifest(source: str | os.PathLike) -> tuple[Path, list[dict[str, Any]]]:
    """(root directory, records) from a synthesis output directory or a ``manifest.jsonl`` path.

    A directory without a dataset manifest (job still running) yields the finished shards.
    """
    path = Path(source)
    if path.is_file():
        return path.parent, _read_jsonl(path)
    if not path.is_dir():
        raise ShardError(f"{path} is neither a synthesis output directory nor a manifest file")
    if (path / MANIFEST).is_file():
        return path, _read_jsonl(path / MANIFEST)
    records: list[dict[str, Any]] = []
    for shard_dir in sorted(path.glob("shard_[0-9]*")):
        if shard_dir.is_dir() and not shard_dir.name.endswith(PARTIAL_SUFFIX) and (shard_dir / MANIFEST).is_file():
            records.extend(_read_jsonl(shard_dir / MANIFEST))
    if not records:
        raise ShardError(f"{path} holds no finished synthesis shard (no {MANIFEST}); run the synthesis first")
    return path, records


def read_labels(root: str | os.PathLike) -> list[str] | None:
    """The label names stored in ``dataset.json`` or ``plan.json`` of an output directory."""
    root = Path(root)
    for name, getter in ((DATASET_FILE, lambda d: d.get("labels")),
                         (PLAN_FILE, lambda d: d.get("plan", {}).get("labels"))):
        try:
            labels = getter(json.loads((root / name).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        if labels:
            return list(labels)
    return None
