"""Build, pack and publish the edge model bundle (format in ``protocol/bundles.py``).

``build_bundle`` exports the models a site runs into a directory and writes ``manifest.json``
(versions of the exporting stack and the sha256 and size of every file). ``pack_bundle`` turns
the directory into one tar file with the manifest first, deterministically (sorted members, fixed
owner, mode and time), so the same export gives the same bytes. ``publish_bundle`` copies the tar
into the store as the signed artifact ``edge-bundle/<version>`` and, by default, again as
``edge-bundle/latest``; the signed ``meta`` carries the manifest's sha256, which ties every
unpacked file at the site back to the server's key.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import platform
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from protocol.bundles import (BUNDLE_FORMAT, LATEST, MANIFEST_NAME, META_KIND, artifact_name, check_version,
                              dump_manifest, parse_manifest)
from protocol.files import atomic_writer, file_sha256

from .export import ExportError, export_captioner, export_classifier, export_vae_encoder

log = logging.getLogger(__name__)


def stack_versions() -> dict[str, Any]:
    """Versions of what exported the models (recorded in the manifest)."""
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("osfl", "torch", "transformers", "diffusers", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    from .export import OPSET

    out["onnx_opset"] = OPSET
    return out


def write_manifest(bundle_dir: str | os.PathLike, version: str, models: dict[str, dict[str, Any]],
                   *, versions: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file under ``bundle_dir`` and write ``manifest.json``; return the manifest."""
    check_version(version)
    root = Path(bundle_dir)
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        files[rel] = {"sha256": file_sha256(path), "size": path.stat().st_size}
    manifest = {"format": BUNDLE_FORMAT, "version": version, "created_ms": int(time.time() * 1000),
                "files": files, "models": models, "versions": versions or stack_versions()}
    (root / MANIFEST_NAME).write_bytes(dump_manifest(manifest))
    return manifest


def build_bundle(out_dir: str | os.PathLike, version: str, *, blip2: str | os.PathLike | None = None,
                 vae: str | os.PathLike | None = None, classifier: str | os.PathLike | None = None,
                 classifier_model=None, classifier_image_size: int = 224, int8: bool = False,
                 external_data: str = "auto", max_new_tokens: int | None = None, verify: bool = True,
                 progress=None) -> dict[str, Any]:
    """Export the given models into ``out_dir`` (created; must not hold a bundle) and write the manifest.

    ``blip2``, ``vae`` (a Stable Diffusion or VAE directory) and ``classifier`` are local model
    directories; at least one is needed. ``classifier_model`` is an already built model (the tiny
    one). ``progress(step: str)`` is called before each export. Returns the manifest.
    """
    check_version(version)
    if blip2 is None and vae is None and classifier is None and classifier_model is None:
        raise ExportError("nothing to export: give a BLIP-2, VAE or classifier directory")
    out = Path(out_dir)
    if (out / MANIFEST_NAME).exists():
        raise ExportError(f"{out} already holds a bundle; give an empty or new directory")
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda step: log.info("%s", step))
    models: dict[str, dict[str, Any]] = {}
    if blip2 is not None:
        say(f"captioner: BLIP-2 from {blip2}")
        models["captioner"] = export_captioner(blip2, out, int8=int8, external_data=external_data,
                                               max_new_tokens=max_new_tokens, verify=verify)
    if vae is not None:
        say(f"VAE encoder from {vae}")
        models["vae_encoder"] = export_vae_encoder(vae, out, external_data=external_data, verify=verify)
    if classifier is not None or classifier_model is not None:
        say(f"classifier from {classifier or 'the given model'}")
        models["classifier"] = export_classifier(classifier, out, image_size=classifier_image_size,
                                                 external_data=external_data, verify=verify, model=classifier_model)
    return write_manifest(out, version, models)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uid, info.gid = size, 0o644, 0, 0, 0
    info.uname = info.gname = ""
    return info


def pack_bundle(bundle_dir: str | os.PathLike, tar_path: str | os.PathLike) -> Path:
    """One tar file: ``manifest.json`` first, then the manifest's files in sorted order (PAX, >8 GB ok)."""
    root = Path(bundle_dir)
    manifest_raw = (root / MANIFEST_NAME).read_bytes()
    manifest = parse_manifest(manifest_raw)
    tar_path = Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(tar_path, mode=0o644) as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tarinfo(MANIFEST_NAME, len(manifest_raw)), io.BytesIO(manifest_raw))
        for rel in sorted(manifest["files"]):
            path = root / rel
            size = path.stat().st_size
            if size != manifest["files"][rel]["size"]:
                raise ExportError(f"{path} changed after the manifest was written; build the bundle again")
            with open(path, "rb") as f:
                tar.addfile(_tarinfo(rel, size), f)
    return tar_path


def bundle_meta(manifest_raw: bytes) -> dict[str, Any]:
    m = parse_manifest(manifest_raw)
    return {"kind": META_KIND, "version": m["version"], "format": BUNDLE_FORMAT,
            "manifest_sha256": hashlib.sha256(manifest_raw).hexdigest(), "models": sorted(m["models"])}


def publish_bundle(store, bundle_dir: str | os.PathLike, signing_key, *, latest: bool = True,
                   tar_path: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Pack ``bundle_dir`` and publish it signed as ``edge-bundle/<version>`` (and ``/latest``)."""
    root = Path(bundle_dir)
    raw = (root / MANIFEST_NAME).read_bytes()
    meta = bundle_meta(raw)
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tar_path) if tar_path else Path(tmp) / f"edge-bundle-{meta['version']}.tar"
        pack_bundle(root, tar)
        names = [artifact_name(meta["version"])] + ([artifact_name(LATEST)] if latest else [])
        return [store.publish_artifact(name, tar, meta, signing_key) for name in names]


def published_bundles(store) -> list[dict[str, Any]]:
    """The store's ``edge-bundle/*`` artifacts with their signed meta, newest first."""
    import msgpack

    rows = []
    for art in store.artifacts():
        if not art["name"].startswith("edge-bundle/"):
            continue
        full = store.artifact(art["name"])
        meta = msgpack.unpackb(full["manifest"], raw=False).get("meta", {})
        rows.append({"name": art["name"], "version": meta.get("version"), "size": art["size"],
                     "sha256": art["sha256"].hex(), "created_ms": art["created_ms"], "models": meta.get("models", [])})
    return sorted(rows, key=lambda r: (-r["created_ms"], r["name"]))


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
