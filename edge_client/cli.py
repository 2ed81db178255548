"""`osfl-edge`: what a site runs. Reads top to bottom as small steps, each failure its own exit code.

Commands: init, enroll, status, prepare, inspect, upload, models pull/list, fetch-model, evaluate.
Exit codes: edge_client/exit_codes.py
(`osfl-edge exit-codes` prints them). Nothing here imports torch, diffusers or transformers.
"""
from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import click

from protocol import errors as PE
from protocol.payloads import METHODS, FederationTerms, check_against_federation, method_to_kind

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


class CaptionOptions:
    """How `--method captions` captions: the bundle's captioner settings and the scrubber's word list."""

    def __init__(self, threads: int | None = None, batch_size: int = 8, precision: str = "auto",
                 scrub_words: str | None = None, max_new_tokens: int | None = None, low_memory: bool = False):
        self.threads, self.batch_size, self.precision = threads or None, batch_size, precision
        self.scrub_words, self.max_new_tokens, self.low_memory = scrub_words, max_new_tokens, low_memory


def _load_dataset(data_dir: str, dicom: bool, labels_csv: str | None):
    if dicom or labels_csv:
        from .dicom import load_dicom_folder

        return load_dicom_folder(data_dir, labels_csv=labels_csv, check=True, progress=sys.stderr.isatty())
    from .dataset import load_image_folder

    return load_image_folder(data_dir, check_images=True, progress=sys.stderr.isatty())


def _captions(obj: Ctx, dataset, federation: str, classes, opts: CaptionOptions) -> tuple[dict, list[dict]]:
    """Caption every image with the pulled bundle, scrub the captions, build the payload."""
    from .bundle import load_bundle
    from .captioning import Captioner
    from .methods.captions import build_captions
    from .scrub import Scrubber, load_names

    cfg = obj.config()
    scrubber = Scrubber(load_names(opts.scrub_words) if opts.scrub_words else ())
    # signature, manifest and every file's sha256 (seconds even for GBs, against minutes of captioning);
    # MODELS error with the fix `osfl-edge models pull` when none is installed
    bundle = load_bundle(cfg.home, cfg.server_keys()[1], full=True)
    captioner = Captioner(bundle, threads=opts.threads, batch_size=opts.batch_size, precision=opts.precision,
                          max_new_tokens=opts.max_new_tokens, low_memory=opts.low_memory)
    raw_captions = captioner.caption_files([p for p, _ in dataset.files], progress=sys.stderr.isatty())
    captions, report, log_rows = [], [], []
    for i, text in enumerate(raw_captions):
        clean, removed = scrubber.scrub(text)
        captions.append(clean)
        report.append(removed)
        log_rows += [{"index": i, "kind": r.kind, "text": r.text} for r in removed]
    params = captioner.describe()  # captioner kind, precision, max_new_tokens: shown by inspect
    payload = build_captions(dataset, captions, federation, federation_classes=classes, bundle=bundle.version,
                             scrub_report=report, params=params)
    return payload, log_rows


def _build_payload(obj: Ctx, data_dir: str, federation: str, method: str, domain: str | None,
                   offline: bool, *, dicom: bool = False, labels_csv: str | None = None,
                   caption_opts: CaptionOptions | None = None) -> tuple[dict, list[dict] | None]:
    """The payload, and for captions what the scrubber removed (kept at the site, never uploaded)."""
    from .methods.class_prompts import build_class_prompts

    kind = method_to_kind(method)
    if kind not in ("class_prompts", "captions"):
        raise ConfigError(f"method {method!r} is not available in this release of osfl-edge; "
                          f"use --method class-prompts or --method captions")
    dataset = _load_dataset(data_dir, dicom, labels_csv)
    classes = None
    if not offline:
        with obj.client() as c:
            info = c.call("federation", federation=federation)
        if kind not in info["methods"]:
            raise PE.MethodNotAllowed(f"federation {federation!r} allows {', '.join(info['methods'])}; "
                                      f"got {kind}")
        classes = info["classes"]
    if kind == "captions":
        return _captions(obj, dataset, federation, classes, caption_opts or CaptionOptions())
    # the domain text goes through the captions' scrubber (and the site's --scrub-words list)
    from .scrub import load_names

    opts = caption_opts or CaptionOptions()
    removed: list = []
    payload = build_class_prompts(dataset, federation, domain=domain, federation_classes=classes,
                                  scrub_words=load_names(opts.scrub_words) if opts.scrub_words else (),
                                  scrub_log=removed)
    rows = [{"index": "domain", "kind": r.kind, "text": r.text} for r in removed]
    return payload, (rows if domain is not None else None)


@contextmanager
def _byte_progress(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A byte progress bar on a terminal (none otherwise); yields the ``on_progress(done, total)`` callback."""
    from tqdm import tqdm

    bar = tqdm(unit="B", unit_scale=True, desc=desc, disable=not sys.stderr.isatty(), leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def scrub_log_path(payload_path: str | Path) -> Path:
    """The side file with what the scrubber removed: next to the payload, readable by this user only."""
    p = Path(payload_path)
    return p.with_name(p.name + ".scrubbed.json")


def _write_scrub_log(payload_path: str | Path, rows: list[dict]) -> Path:
    from protocol.files import atomic_write

    path = scrub_log_path(payload_path)
    note = {"note": "what the scrubber removed from the payload's text; it stays at this site", "removed": rows}
    atomic_write(path, json.dumps(note, ensure_ascii=False, indent=1), mode=0o600)
    return path


def _read_scrub_log(payload_path: str | Path) -> list[dict] | None:
    try:
        data = json.loads(scrub_log_path(payload_path).read_text(encoding="utf-8"))
        rows = data.get("removed")
        return rows if isinstance(rows, list) else None
    except (OSError, ValueError, AttributeError):
        return None


def _keep_payload(home: Path, payload: dict) -> tuple[dict, bytes]:
    """Prepare-and-upload keeps what it built in HOME/payloads/, and reuses those exact bytes when the
    same data yields the same payload again, so running the command twice is idempotent (the
    server acknowledges the second upload as a duplicate instead of refusing a 'different' one)."""
    from .payloads import read_payload, write_payload

    path = home / "payloads" / f"{payload['federation']}.{payload['kind']}.osfl"
    if path.exists():
        try:
            old, raw = read_payload(path)
        except EdgeError:
            old, raw = None, b""
        if old is not None and {k: v for k, v in old.items() if k != "created_ms"} == \
                {k: v for k, v in payload.items() if k != "created_ms"}:
            return old, raw
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return payload, write_payload(path, payload)


_method_option = click.option("--method", type=click.Choice(sorted(METHODS)), default="class-prompts",
                              show_default=True, help="what to describe the images with")


def _input_options(f):
    f = click.option("--labels-csv", type=click.Path(dir_okay=False), default=None,
                     help="DICOM: labels from a CSV of filename,label rows instead of class folders")(f)
    f = click.option("--dicom", is_flag=True, help="the folder holds DICOM files (needs the 'dicom' extra)")(f)
    return f


def _caption_options(f):
    f = click.option("--low-memory", is_flag=True,
                     help="captions: no pre-packed weight copies (less memory, somewhat slower)")(f)
    f = click.option("--max-new-tokens", type=click.IntRange(1, 200), default=None,
                     help="captions: longest caption in tokens (default: the bundle's)")(f)
    f = click.option("--scrub-words", type=click.Path(dir_okay=False), default=None,
                     help="captions and domain text: file of names (one per line) the scrubber also removes; it "
                          "never leaves the site")(f)
    f = click.option("--precision", type=click.Choice(["auto", "fp32", "int8"]), default="auto", show_default=True,
                     help="captions: int8 graphs when the bundle has them (auto) or not")(f)
    f = click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True,
                     help="captions: images captioned together")(f)
    f = click.option("--threads", type=click.IntRange(0, 256), default=0,
                     help="captions: onnxruntime threads (0: all cores)")(f)
    return f


@cli.command()
@click.option("--data", "data_dir", required=True, type=click.Path(), help="ImageFolder: one sub-folder per class")
@click.option("--federation", required=True, help="federation id from the operator")
@_method_option
@click.option("--domain", default=None, help="optional free text on the images' style, e.g. 'dermoscopy photos'")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="payload file to write")
@click.option("--offline", is_flag=True, help="do not ask the server for the federation's classes")
@_input_options
@_caption_options
@click.pass_obj
def prepare(obj: Ctx, data_dir: str, federation: str, method: str, domain: str | None, out: str,
            offline: bool, dicom: bool, labels_csv: str | None, threads: int, batch_size: int, precision: str,
            scrub_words: str | None, max_new_tokens: int | None, low_memory: bool) -> None:
    """Build the payload file; nothing is sent. Look at it with `osfl-edge inspect`.

    With --method captions every image is captioned on this machine with the pulled model bundle
    (`osfl-edge models pull`) and the captions are scrubbed of names, dates and record numbers.
    """
    from .payloads import write_payload

    opts = CaptionOptions(threads, batch_size, precision, scrub_words, max_new_tokens, low_memory)
    payload, scrub_rows = _build_payload(obj, data_dir, federation, method, domain, offline, dicom=dicom,
                                         labels_csv=labels_csv, caption_opts=opts)
    raw = write_payload(out, payload)
    click.echo(f"wrote {out}: {payload['kind']} for federation {federation}, {len(raw)} bytes, "
               f"{sum(payload['counts'])} images in {sum(1 for n in payload['counts'] if n)} classes")
    if scrub_rows is not None:
        side = _write_scrub_log(out, scrub_rows)
        what = "captions" if payload["kind"] == "captions" else "domain text"
        click.echo(f"{len(scrub_rows)} identifier(s) scrubbed from the {what}; what was removed is listed in "
                   f"{side} (stays here)")
    click.echo(f"Check it with `osfl-edge inspect {out}`, then `osfl-edge upload {out}`.")


@cli.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def inspect_cmd(file: str, as_json: bool) -> None:
    """Show exactly what would leave the building, and its size in bytes."""
    from .inspect import describe_payload, payload_summary
    from .payloads import read_payload

    payload, raw = read_payload(file)
    scrub_rows = _read_scrub_log(file) if payload.get("kind") in ("captions", "class_prompts") else None
    if as_json:
        summary = payload_summary(payload, raw)
        if scrub_rows is not None:
            summary["scrub_log"] = scrub_rows
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(describe_payload(payload, raw, scrub_log=scrub_rows))


@cli.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--data", "data_dir", type=click.Path(), help="build the payload from this ImageFolder and upload it")
@click.option("--federation", default=None, help="federation id (with --data)")
@_method_option
@click.option("--domain", default=None, help="optional style text (with --data)")
@_input_options
@_caption_options
@click.pass_obj
def upload(obj: Ctx, file: str | None, data_dir: str | None, federation: str | None, method: str,
           domain: str | None, dicom: bool, labels_csv: str | None, threads: int, batch_size: int, precision: str,
           scrub_words: str | None, max_new_tokens: int | None, low_memory: bool) -> None:
    """Upload a prepared payload FILE, or prepare and upload in one go with --data."""
    from .payloads import read_payload

    if bool(file) == bool(data_dir):
        raise click.UsageError("give either a prepared payload FILE or --data DIR --federation ID")
    if data_dir:
        if not federation:
            raise click.UsageError("--data needs --federation ID")
        opts = CaptionOptions(threads, batch_size, precision, scrub_words, max_new_tokens, low_memory)
        payload, scrub_rows = _build_payload(obj, data_dir, federation, method, domain, offline=False, dicom=dicom,
                                             labels_csv=labels_csv, caption_opts=opts)
        payload, raw = _keep_payload(obj.config().home, payload)
        if scrub_rows is not None:
            _write_scrub_log(obj.config().home / "payloads" / f"{payload['federation']}.{payload['kind']}.osfl",
                             scrub_rows)
    else:
        payload, raw = read_payload(file)
    fed = payload["federation"]
    with obj.client() as c:
        # the rules the server applies before it acknowledges, run here before a byte of the payload is sent
        check_against_federation(payload, FederationTerms.from_public(c.call("federation", federation=fed)))
        with _byte_progress("upload") as progress:
            data = c.upload(raw, fed, payload["kind"], on_progress=progress)
    note = " (already stored: nothing new sent)" if data.get("duplicate") else ""
    click.echo(f"uploaded {payload['kind']} to {fed}: {data['size']} bytes, payload #{data['payload_id']}, "
               f"stored durably{note}")


@cli.command("fetch-model")
@click.option("--federation", required=True, help="federation id")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="where to write the model (default: HOME/models/FEDERATION.onnx)")
@click.option("--allow-downgrade", is_flag=True,
              help="replace the installed model even with one the server signed earlier")
@click.pass_obj
def fetch_model(obj: Ctx, federation: str, out: str | None, allow_downgrade: bool) -> None:
    """Download the federation's global model: chunked, resumable, signature and digest checked first.

    The server's signed manifest must be for this federation's model, and an older one than the
    model already at the destination is refused unless --allow-downgrade.
    """
    cfg = obj.config()
    dest = Path(out) if out else cfg.home / "models" / f"{federation}.onnx"
    with obj.client() as c, _byte_progress("fetch") as progress:
        manifest = c.download(f"model/{federation}", dest, on_progress=progress, allow_downgrade=allow_downgrade)
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
@click.option("--federation", default=None, help="the model must be this federation's (checked in its signature)")
@click.pass_obj
def evaluate(obj: Ctx, model: str, data_dir: str, batch_size: int, threads: int, as_json: bool,
             no_verify: bool, federation: str | None) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a model on this site's images."""
    from .dataset import load_image_folder
    from .evaluate import evaluate as run_eval
    from .transport import verify_artifact

    if not no_verify:
        # the model is checked against the server's signature before every use
        verify_artifact(Path(model), obj.config().server_keys()[1],
                        name=f"model/{federation}" if federation else None)
    dataset = load_image_folder(data_dir, check_images=True, progress=sys.stderr.isatty())
    result = run_eval(Path(model), dataset, batch_size=batch_size, threads=threads, progress=sys.stderr.isatty())
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.render())


@cli.group()
def models() -> None:
    """The edge model bundle (captioner, VAE encoder, classifier) the server exports for sites."""


@models.command("pull")
@click.option("--version", "version", default=None, help="bundle version (default: the server's latest)")
@click.option("--allow-downgrade", is_flag=True,
              help="install it even when the server signed it before the bundle in use")
@click.pass_obj
def models_pull(obj: Ctx, version: str | None, allow_downgrade: bool) -> None:
    """Download the signed bundle (chunked, resumable), check every file, install it and use it.

    A bundle signed before the one in use is refused unless --allow-downgrade.
    """
    from .bundle import pull

    cfg = obj.config()
    with obj.client() as c, _byte_progress("models") as progress:
        bundle = pull(c, cfg.home, version, on_progress=progress, allow_downgrade=allow_downgrade)
    size = sum(f["size"] for f in bundle.manifest["files"].values())
    click.echo(f"edge model bundle {bundle.version} installed in {bundle.path} ({size} bytes, signed by the server, "
               f"every file checked): {', '.join(sorted(bundle.manifest['models']))}")
    click.echo("Captions: `osfl-edge prepare --method captions --data DIR --federation ID --out FILE`.")


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--verify", is_flag=True, help="check each bundle's signature and every file's sha256")
@click.pass_obj
def models_list(obj: Ctx, as_json: bool, verify: bool) -> None:
    """Installed bundles; the current one (used for captions) is marked with '*'."""
    from .bundle import describe, load_bundle

    cfg = obj.config()
    rows = describe(cfg.home)
    if verify:
        for r in rows:
            try:
                load_bundle(cfg.home, cfg.server_keys()[1], r["version"], full=True)
                r["verified"] = True
            except EdgeError as exc:
                r["verified"] = False
                r["problem"] = exc.message
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no edge model bundle installed; run `osfl-edge models pull`")
        return
    for r in rows:
        mark = "*" if r["current"] else " "
        models_text = ", ".join(f"{k} ({v})" for k, v in sorted(r["models"].items()))
        check = "" if "verified" not in r else ("  verified" if r["verified"] else f"  FAILED: {r['problem']}")
        click.echo(f"{mark} {r['version']:<20} {r['size']:>12} B  {models_text}{check}")
    if verify and not all(r["verified"] for r in rows):
        from .errors import IntegrityError

        raise IntegrityError("an installed edge model bundle failed its check (listed above)")


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
