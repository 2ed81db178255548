"""`osfl-server edge-models`: export the models sites run into a signed bundle, and list bundles.

Registered in ``server_daemon/cli.py`` as the ``edge-models`` group. The group's commands get the
server CLI's context object (``obj.cfg``, ``obj.store()``); torch is imported only when a command
exports, so ``osfl-server --help`` stays fast.
"""
from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import click


@click.group()
def edge_models_cli() -> None:
    """Models for the sites (BLIP-2 captioner, VAE encoder, classifier) as a signed ONNX bundle."""


@edge_models_cli.command("export")
@click.option("--version", "version", default=None,
              help="bundle version, e.g. 2026.1 (default: the UTC time, YYYY.MM.DD-HHMMSS)")
@click.option("--blip2", type=click.Path(file_okay=False), default=None,
              help="local BLIP-2 (OPT) directory, e.g. a saved Salesforce/blip2-opt-2.7b")
@click.option("--vae", type=click.Path(file_okay=False), default=None,
              help="Stable Diffusion pipeline directory (its vae/) or a VAE directory")
@click.option("--classifier", type=click.Path(file_okay=False), default=None,
              help="image classifier directory (transformers, e.g. ResNet); exported with BatchNorm kept")
@click.option("--classifier-image-size", type=click.IntRange(8, 1024), default=224, show_default=True)
@click.option("--tiny", is_flag=True, help="export tiny seeded models instead (tests and trials; captions are noise)")
@click.option("--int8", is_flag=True, help="also write int8 (dynamically quantised) captioner graphs")
@click.option("--max-new-tokens", type=click.IntRange(1, 200), default=None,
              help="default caption length in tokens (default: the model's generation config, else 30)")
@click.option("--external-data", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="ONNX external data for the weights (auto: graphs over 100 MB; needed over 2 GB, and "
                   "lets sites memory-map the weights)")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="keep the bundle directory here (default: a temporary one, removed after publishing)")
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="sign and publish as edge-bundle/VERSION for `osfl-edge models pull`")
@click.option("--latest/--no-latest", default=True, show_default=True,
              help="also publish as edge-bundle/latest (what sites pull by default)")
@click.option("--no-verify", is_flag=True, help="skip comparing onnxruntime's outputs with torch's after export")
@click.pass_obj
def export_cmd(obj, version: str | None, blip2: str | None, vae: str | None, classifier: str | None,
               classifier_image_size: int, tiny: bool, int8: bool, max_new_tokens: int | None, external_data: str,
               out: str | None, publish: bool, latest: bool, no_verify: bool) -> None:
    """Export edge models from local directories to ONNX, write the manifest, sign and publish the bundle."""
    from protocol import errors as PE
    from protocol.bundles import check_version

    from .edge_models.bundle import build_bundle, publish_bundle
    from .edge_models.export import ExportError

    version = version or dt.datetime.now(dt.timezone.utc).strftime("%Y.%m.%d-%H%M%S")
    try:
        check_version(version)
    except PE.ProtocolError as exc:
        raise click.BadParameter(exc.message, param_hint="--version") from None
    if not publish and out is None:
        raise click.UsageError("--no-publish needs --out DIR (else the export would be thrown away)")
    if not (tiny or blip2 or vae or classifier):
        raise click.UsageError("give at least one of --blip2, --vae, --classifier (or --tiny)")
    cfg = obj.cfg if publish else None  # read and validate the server config before the long export
    with tempfile.TemporaryDirectory(prefix="osfl-edge-models-") as tmp:
        sources: dict = {}
        if tiny:
            from .lab.tiny_edge import write_tiny_sources  # the CLI sits above the lab; loaded for --tiny only

            sources = {k: str(v) for k, v in write_tiny_sources(Path(tmp) / "tiny-sources").items()}
        sources.update({k: v for k, v in (("blip2", blip2), ("vae", vae), ("classifier", classifier)) if v})
        bundle_dir = Path(out) if out else Path(tmp) / "bundle"
        started = time.monotonic()
        manifest = build_bundle(bundle_dir, version, blip2=sources.get("blip2"), vae=sources.get("vae"),
                                classifier=sources.get("classifier"),
                                classifier_image_size=32 if tiny and not classifier else classifier_image_size,
                                int8=int8, external_data=external_data, max_new_tokens=max_new_tokens,
                                verify=not no_verify, progress=lambda step: click.echo(f"exporting {step}"))
        size = sum(f["size"] for f in manifest["files"].values())
        click.echo(f"bundle {version}: {len(manifest['files'])} files, {size} bytes, "
                   f"models {', '.join(sorted(manifest['models']))} ({time.monotonic() - started:.1f} s)")
        if out:
            click.echo(f"bundle directory: {bundle_dir} (manifest.json lists every file's sha256)")
        if publish:
            from protocol.keys import KeyPair

            keys = KeyPair.load(cfg.keys_dir, "server")
            store = obj.store()
            try:
                rows = publish_bundle(store, bundle_dir, keys.signing, latest=latest)
            except ExportError:
                raise
            finally:
                store.close()
            for r in rows:
                click.echo(f"published {r['name']} ({r['size']} bytes, sha256 {r['sha256'].hex()[:16]}...), "
                           f"signed with the server key")
            click.echo("Sites install it with `osfl-edge models pull`.")


@edge_models_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_cmd(obj, as_json: bool) -> None:
    """Published edge model bundles (edge-bundle/*), newest first."""
    from .edge_models.bundle import published_bundles

    store = obj.store()
    try:
        rows = published_bundles(store)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no edge model bundles published; run `osfl-server edge-models export`")
        return
    click.echo(f"{'NAME':36}  {'VERSION':22}  {'BYTES':>12}  {'PUBLISHED':23}  MODELS")
    for r in rows:
        when = dt.datetime.fromtimestamp(r["created_ms"] / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        click.echo(f"{r['name']:36}  {str(r['version']):22}  {r['size']:>12}  {when:23}  {', '.join(r['models'])}")
