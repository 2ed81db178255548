"""`osfl-edge`: what a site runs. Reads top to bottom as small steps, each failure its own exit code.

Commands: init, enroll, status, prepare, inspect, upload. Exit codes: edge_client/exit_codes.py
(`osfl-edge exit-codes` prints them). Nothing here imports torch, diffusers or transformers.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from protocol import errors as PE
from protocol.payloads import METHODS, method_to_kind

from . import exit_codes as X
from .errors import ConfigError, EdgeError, from_protocol_error

log = logging.getLogger("osfl.edge")


class Ctx:
    def __init__(self, home: str | None, timeout: float | None):
        self.home = Path(home) if home else None
        self.timeout = timeout

    def config(self):
        from .config import load_config

        return load_config(self.home)

    def client(self):
        from .transport import Client

        return Client(self.config(), timeout_s=self.timeout)


def _fingerprint_groups(fp: str) -> str:
    return " ".join(fp[i:i + 4] for i in range(0, len(fp), 4))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="OSFL_EDGE_HOME", metavar="DIR",
              help="site configuration and keys (default $OSFL_EDGE_HOME or ~/.osfl-edge)")
@click.option("--timeout", type=float, default=None, help="seconds to wait for each server reply")
@click.option("-v", "--verbose", is_flag=True, help="log each step")
@click.pass_context
def cli(ctx: click.Context, home: str | None, timeout: float | None, verbose: bool) -> None:
    """osfl edge client: describe this site's images once and upload that, signed, to the server."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(home, timeout)


@cli.command()
@click.option("--server", "endpoint", required=True, help="the server's endpoint, tcp://HOST:PORT")
@click.option("--server-key", required=True, help="the server key string the operator published (osfl1-...)")
@click.option("--site-id", default=None, help="this site's id as the operator will see it (default: host name)")
@click.option("--name", default="", help="display name for the operator")
@click.pass_obj
def init(obj: Ctx, endpoint: str, server_key: str, site_id: str | None, name: str) -> None:
    """Create this site's keys and configuration; print its fingerprint."""
    from .config import default_home, init_home

    cfg = init_home(obj.home or default_home(), endpoint, server_key, site_id, name)
    keys = cfg.keys()
    click.echo(f"site {cfg.site_id} configured in {cfg.home}")
    click.echo(f"secret keys: {cfg.keys_dir} (mode 0600; back them up, never send them)")
    click.echo(f"fingerprint: {_fingerprint_groups(keys.fingerprint)}")
    click.echo("Next: `osfl-edge enroll`, then read this fingerprint to the operator over a trusted channel.")


@cli.command()
@click.pass_obj
def enroll(obj: Ctx) -> None:
    """Ask the server to admit this site (the operator then accepts the fingerprint)."""
    with obj.client() as c:
        data = c.enroll()
    click.echo(f"site {data.get('site')}: {data['state']}")
    click.echo(f"fingerprint: {_fingerprint_groups(data['fingerprint'])}")
    if data["state"] == "pending":
        click.echo("The operator must now run `osfl-server clients accept " + data["fingerprint"][:12] + "`.")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj: Ctx, as_json: bool) -> None:
    """This site's admission state, its uploads and the federations it can join."""
    with obj.client() as c:
        data = c.call("status")
    if as_json:
        click.echo(json.dumps(data, indent=2, default=lambda b: b.hex() if isinstance(b, bytes) else str(b)))
        return
    click.echo(f"site         {data['site']} ({data['state']})")
    for u in data.get("uploads", []):
        click.echo(f"uploaded     {u['federation']}: {u['kind']}, {u['size']} bytes, payload #{u['payload_id']}")
    for fid, f in data.get("federations", {}).items():
        job = f" - {f['job']}" if f.get("job") else ""
        click.echo(f"federation   {fid}: {f['state']}, {f['received']}/{f['quorum']} sites, "
                   f"{f['classes']} classes, methods {', '.join(f['methods'])}{job}")


def _build_payload(obj: Ctx, data_dir: str, federation: str, method: str, domain: str | None,
                   offline: bool) -> dict:
    from .dataset import load_image_folder
    from .payloads import build_class_prompts

    kind = method_to_kind(method)
    if kind != "class_prompts":
        raise ConfigError(f"method {method!r} is not available in this release of osfl-edge; "
                          f"use --method class-prompts")
    dataset = load_image_folder(data_dir, check_images=True, progress=sys.stderr.isatty())
    classes = None
    if not offline:
        with obj.client() as c:
            info = c.call("federation", federation=federation)
        if kind not in info["methods"]:
            raise PE.MethodNotAllowed(f"federation {federation!r} allows {', '.join(info['methods'])}; "
                                      f"got {kind}")
        classes = info["classes"]
    return build_class_prompts(dataset, federation, domain=domain, federation_classes=classes)


_method_option = click.option("--method", type=click.Choice(sorted(METHODS)), default="class-prompts",
                              show_default=True, help="what to describe the images with")


@cli.command()
@click.option("--data", "data_dir", required=True, type=click.Path(), help="ImageFolder: one sub-folder per class")
@click.option("--federation", required=True, help="federation id from the operator")
@_method_option
@click.option("--domain", default=None, help="optional free text on the images' style, e.g. 'dermoscopy photos'")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="payload file to write")
@click.option("--offline", is_flag=True, help="do not ask the server for the federation's classes")
@click.pass_obj
def prepare(obj: Ctx, data_dir: str, federation: str, method: str, domain: str | None, out: str,
            offline: bool) -> None:
    """Build the payload file; nothing is sent. Look at it with `osfl-edge inspect`."""
    from .payloads import write_payload

    payload = _build_payload(obj, data_dir, federation, method, domain, offline)
    raw = write_payload(out, payload)
    click.echo(f"wrote {out}: {payload['kind']} for federation {federation}, {len(raw)} bytes, "
               f"{sum(payload['counts'])} images in {sum(1 for n in payload['counts'] if n)} classes")
    click.echo(f"Check it with `osfl-edge inspect {out}`, then `osfl-edge upload {out}`.")


@cli.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def inspect_cmd(file: str, as_json: bool) -> None:
    """Show exactly what would leave the building, and its size in bytes."""
    from .inspect import describe_payload, payload_summary
    from .payloads import read_payload

    payload, raw = read_payload(file)
    if as_json:
        click.echo(json.dumps(payload_summary(payload, raw), indent=2))
    else:
        click.echo(describe_payload(payload, raw))


@cli.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--data", "data_dir", type=click.Path(), help="build the payload from this ImageFolder and upload it")
@click.option("--federation", default=None, help="federation id (with --data)")
@_method_option
@click.option("--domain", default=None, help="optional style text (with --data)")
@click.pass_obj
def upload(obj: Ctx, file: str | None, data_dir: str | None, federation: str | None, method: str,
           domain: str | None) -> None:
    """Upload a prepared payload FILE, or prepare and upload in one go with --data."""
    from tqdm import tqdm

    from .payloads import read_payload

    if bool(file) == bool(data_dir):
        raise click.UsageError("give either a prepared payload FILE or --data DIR --federation ID")
    if data_dir:
        if not federation:
            raise click.UsageError("--data needs --federation ID")
        payload = _build_payload(obj, data_dir, federation, method, domain, offline=False)
        from protocol.payloads import encode_payload

        raw = encode_payload(payload)
    else:
        payload, raw = read_payload(file)
    fed = payload["federation"]
    with obj.client() as c:
        bar = tqdm(total=len(raw), unit="B", unit_scale=True, desc="upload", disable=not sys.stderr.isatty(),
                   leave=False)

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        try:
            data = c.upload(raw, fed, payload["kind"], on_progress=progress)
        finally:
            bar.close()
    note = " (already stored: nothing new sent)" if data.get("duplicate") else ""
    click.echo(f"uploaded {payload['kind']} to {fed}: {data['size']} bytes, payload #{data['payload_id']}, "
               f"stored durably{note}")


@cli.command("fetch-model")
@click.option("--federation", required=True, help="federation id")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="where to write the model (default: HOME/models/FEDERATION.onnx)")
@click.pass_obj
def fetch_model(obj: Ctx, federation: str, out: str | None) -> None:
    """Download the federation's global model: chunked, resumable, signature and digest checked first."""
    from tqdm import tqdm

    cfg = obj.config()
    dest = Path(out) if out else cfg.home / "models" / f"{federation}.onnx"
    with obj.client() as c:
        bar = tqdm(unit="B", unit_scale=True, desc="fetch", disable=not sys.stderr.isatty(), leave=False)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            manifest = c.download(f"model/{federation}", dest, on_progress=progress)
        finally:
            bar.close()
    meta = manifest["meta"]
    acc = meta.get("val_acc")
    click.echo(f"model of {federation}: {dest} ({manifest['size']} bytes, sha256 {manifest['sha256'].hex()[:16]}..., "
               f"signed by the server)")
    click.echo(f"{len(meta.get('labels', []))} classes, {meta.get('arch')}, {meta.get('image_size')} px"
               + (f", held-out synthetic accuracy {acc:.3f}" if isinstance(acc, float) else ""))
    click.echo(f"Evaluate it on your images: `osfl-edge evaluate --model {dest} --data DIR`")


@cli.command()
@click.option("--model", "model", required=True, type=click.Path(dir_okay=False), help="ONNX model file")
@click.option("--data", "data_dir", required=True, type=click.Path(), help="ImageFolder: one sub-folder per class")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--threads", default=0, help="onnxruntime threads (0: all cores)")
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-verify", is_flag=True, help="skip the signature check (for models not fetched with fetch-model)")
@click.pass_obj
def evaluate(obj: Ctx, model: str, data_dir: str, batch_size: int, threads: int, as_json: bool,
             no_verify: bool) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a model on this site's images."""
    from .dataset import load_image_folder
    from .evaluate import evaluate as run_eval
    from .transport import verify_artifact

    if not no_verify:
        # the model is checked against the server's signature before every use
        verify_artifact(Path(model), obj.config().server_keys()[1])
    dataset = load_image_folder(data_dir, check_images=True, progress=sys.stderr.isatty())
    result = run_eval(Path(model), dataset, batch_size=batch_size, threads=threads, progress=sys.stderr.isatty())
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.render())


@cli.command("exit-codes")
def exit_codes() -> None:
    """List osfl-edge's exit codes and what each means."""
    for code, text in sorted(X.EXIT_CODES.items()):
        click.echo(f"{code:>3}  {text}")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="osfl-edge", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(X.UNEXPECTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(X.USAGE)
    except PE.ProtocolError as exc:
        err = from_protocol_error(exc)
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except EdgeError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except ValueError as exc:  # method_to_kind and friends
        click.echo(f"error: {exc}", err=True)
        sys.exit(X.CONFIG)


if __name__ == "__main__":
    main()
