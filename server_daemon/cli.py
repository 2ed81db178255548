"""`osfl-server`: the operator's command line. Each command reads the config once, then acts.

Exit codes: ``server_daemon/errors.py`` (``EXIT_CODES``; `osfl-server exit-codes` prints them).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

import click

from protocol.files import atomic_write
from protocol.keys import KeyPair, encode_server_key
from protocol.payloads import METHODS, method_to_kind

from .ingest.config import load_config, render_config, resolve_config_path
from .cli_edge_models import edge_models_cli
from .errors import CONFIG, EXIT_CODES, ConfigError, ServerError
from .ingest.metrics import is_alive, render_metrics
from .ingest.store import ALL_SITES, Store

log = logging.getLogger("osfl.server")


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        class JsonFormatter(logging.Formatter):
            def format(self, r: logging.LogRecord) -> str:
                d = {"ts": round(r.created, 3), "level": r.levelname, "logger": r.name, "msg": r.getMessage()}
                if r.exc_info:
                    d["exc"] = self.formatException(r.exc_info)
                return json.dumps(d)
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):  # journald stamps the time itself
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


def _safe(text: str) -> str:
    """Text from a site, for the operator's terminal: control and escape characters shown, not obeyed."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def _fmt_ms(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Ctx:
    def __init__(self, config: str | None):
        self.config_path = config
        self._cfg = None

    @property
    def cfg(self):
        if self._cfg is None:
            self._cfg = load_config(self.config_path)
        return self._cfg

    def store(self) -> Store:
        return Store(self.cfg.state_dir)


class LazyGroup(click.Group):
    """A click group whose lab commands are imported only when asked for (or when help lists them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = {}

    def add_lazy_command(self, name: str, module: str) -> None:
        """``module`` defines ``command``, the click command run as ``osfl-server NAME``."""
        self.lazy[name] = module

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str):
        if name in self.lazy and name not in self.commands:
            import importlib

            self.add_command(importlib.import_module(self.lazy[name]).command, name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", metavar="PATH", envvar="OSFL_SERVER_CONFIG",
              help="server config (TOML); default $OSFL_SERVER_CONFIG or /etc/osfl/server.toml")
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """osfl server: admits sites, stores their one-shot payloads, runs the federation."""
    ctx.obj = Ctx(config)


@cli.command()
@click.option("--state-dir", default=None, help="where the store and keys live (default: 'state' beside the config)")
@click.option("--bind", default="tcp://127.0.0.1:7878", show_default=True, help="endpoint to listen on")
@click.pass_obj
def init(obj: Ctx, state_dir: str | None, bind: str) -> None:
    """Write a config, create the store and the server keys; print the server key for sites."""
    path = resolve_config_path(obj.config_path)
    if path.exists():
        raise ConfigError(f"{path} already exists; edit it, or pass another --config")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_config(bind, state_dir or "state"), mode=0o644)
    cfg = load_config(path)
    Store(cfg.state_dir, create=True).close()
    if not (cfg.keys_dir / "server.sign.key").exists():
        KeyPair.generate().save(cfg.keys_dir, "server")
    keys = KeyPair.load(cfg.keys_dir, "server")
    click.echo(f"config:     {path}")
    click.echo(f"state:      {cfg.state_dir}")
    click.echo(f"listen on:  {cfg.server.bind}")
    click.echo("server key (give this to every site for `osfl-edge init --server-key`):")
    click.echo(encode_server_key(keys.curve_public, keys.public))


@cli.command()
@click.pass_obj
def key(obj: Ctx) -> None:
    """Print the server key string sites pin."""
    keys = KeyPair.load(obj.cfg.keys_dir, "server")
    click.echo(encode_server_key(keys.curve_public, keys.public))


@cli.command()
@click.pass_obj
def run(obj: Ctx) -> None:
    """Run the daemon in the foreground (systemd: Type=notify)."""
    cfg = obj.cfg
    setup_logging(cfg.server.log_level, cfg.server.log_format)
    from .ingest.daemon import Daemon

    Daemon(cfg).run()


# ---- clients ----------------------------------------------------------------------------------

@cli.group()
def clients() -> None:
    """List sites and accept, reject or revoke their keys."""


@clients.command("list")
@click.option("--state", type=click.Choice(["pending", "accepted", "rejected", "revoked"]))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def clients_list(obj: Ctx, state: str | None, as_json: bool) -> None:
    store = obj.store()
    rows = store.clients(state)
    if as_json:
        click.echo(json.dumps([{"fingerprint": c.fingerprint, "site": c.site, "name": c.name, "state": c.state,
                                "enrolled": c.created_ms, "updated": c.updated_ms} for c in rows], indent=2))
        return
    if not rows:
        click.echo("no sites" + (f" in state {state}" if state else "") + "; sites enroll with `osfl-edge enroll`")
        return
    click.echo(f"{'FINGERPRINT':32}  {'STATE':9}  {'SITE':20}  {'ENROLLED':23}  NAME")
    for c in rows:
        click.echo(f"{c.fingerprint:32}  {c.state:9}  {_safe(c.site):20}  {_fmt_ms(c.created_ms):23}  {_safe(c.name)}")


def _transition(obj: Ctx, fingerprint: str, action: str) -> None:
    c = obj.store().transition(fingerprint, action)
    click.echo(f"{c.site} ({c.fingerprint}) is now {c.state}")


@clients.command("accept")
@click.argument("fingerprint")
@click.pass_obj
def clients_accept(obj: Ctx, fingerprint: str) -> None:
    """Admit a pending (or earlier rejected) site. Compare the fingerprint with the site's own first."""
    _transition(obj, fingerprint, "accept")


@clients.command("reject")
@click.argument("fingerprint")
@click.pass_obj
def clients_reject(obj: Ctx, fingerprint: str) -> None:
    """Refuse a pending site."""
    _transition(obj, fingerprint, "reject")


@clients.command("revoke")
@click.argument("fingerprint")
@click.pass_obj
def clients_revoke(obj: Ctx, fingerprint: str) -> None:
    """Withdraw a site's admission; its stored payloads stay."""
    _transition(obj, fingerprint, "revoke")


@cli.command()
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def audit(obj: Ctx, limit: int, as_json: bool) -> None:
    """Show the audit log (admission changes, refusals, federation changes), newest first."""
    rows = obj.store().audit_log(limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{_fmt_ms(r['ts_ms'])}  {r['actor']:8}  {r['action']:28}  {r['site'] or '-':16}  "
                   f"{r['fingerprint'] or '-':32}  {r['detail']}")


# ---- federations ------------------------------------------------------------------------------

@cli.group()
def federation() -> None:
    """Create and inspect federations."""


def _parse_deadline(text: str | None) -> int | None:
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"expected an ISO date-time such as 2026-12-01T12:00; got {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


@federation.command("create")
@click.argument("fed_id")
@click.option("--classes", help="comma-separated class names, e.g. 'melanoma,nevus'")
@click.option("--classes-file", type=click.Path(exists=True, dir_okay=False), help="one class name per line")
@click.option("--methods", default="class-prompts", show_default=True,
              help=f"comma-separated methods sites may use: {', '.join(METHODS)}")
@click.option("--images-per-class", default=400, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--quorum", default=1, show_default=True, type=click.IntRange(1, 100_000),
              help="sites whose payloads start the synthesis")
@click.option("--deadline", default=None, help="ISO date-time after which synthesis starts with what arrived")
@click.option("--sites", default=None, help="comma-separated site ids that belong to the federation (see, upload, "
                                            "fetch its model); they may enrol later")
@click.option("--all-sites", is_flag=True, help="every accepted site belongs to the federation")
@click.pass_obj
def federation_create(obj: Ctx, fed_id: str, classes: str | None, classes_file: str | None, methods: str,
                      images_per_class: int, quorum: int, deadline: str | None, sites: str | None,
                      all_sites: bool) -> None:
    """Create federation FED_ID that its member sites upload to."""
    from protocol.ids import ID_RULE, is_id

    if not is_id(fed_id):
        raise click.BadParameter(f"a federation id is {ID_RULE}", param_hint="FED_ID")
    members = _site_list(sites)
    if bool(members) == all_sites:
        raise click.UsageError("say who belongs to the federation: --sites SITE,SITE,... or --all-sites "
                               "(every accepted site)")
    names: list[str] = []
    if classes:
        names += [c.strip() for c in classes.split(",") if c.strip()]
    if classes_file:
        names += [ln.strip() for ln in Path(classes_file).read_text().splitlines() if ln.strip()]
    if not names:
        raise click.UsageError("give the class names with --classes or --classes-file")
    if len(set(names)) != len(names):
        raise click.BadParameter("class names must be unique", param_hint="--classes")
    try:
        kinds = [method_to_kind(m.strip()) for m in methods.split(",") if m.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--methods") from None
    fed = obj.store().create_federation(fed_id, names, kinds, images_per_class, quorum, _parse_deadline(deadline),
                                        members=ALL_SITES if all_sites else members)
    click.echo(f"federation {fed.id}: {len(fed.classes)} classes, methods {', '.join(fed.methods)}, "
               f"{fed.images_per_class} images per class, quorum {fed.quorum}, members {_members_text(fed)}")


def _site_list(text: str | None) -> list[str]:
    from protocol.ids import ID_RULE, is_id

    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    bad = [n for n in names if not is_id(n)]
    if bad:
        raise click.BadParameter(f"{', '.join(map(repr, bad[:5]))}: a site id is {ID_RULE}", param_hint="--sites")
    return names


def _members_text(fed) -> str:
    return "every accepted site" if fed.members is None else (", ".join(fed.members) or "none")


@federation.command("members")
@click.argument("fed_id")
@click.option("--add", default=None, help="comma-separated site ids to admit")
@click.option("--remove", default=None, help="comma-separated site ids to remove")
@click.option("--all-sites", "all_sites", flag_value=True, default=None, help="open it to every accepted site")
@click.option("--listed-only", "all_sites", flag_value=False, help="admit only the sites named (with --add)")
@click.pass_obj
def federation_members(obj: Ctx, fed_id: str, add: str | None, remove: str | None, all_sites: bool | None) -> None:
    """Show or change which sites belong to FED_ID."""
    store = obj.store()
    if add or remove or all_sites is not None:
        fed = store.set_members(fed_id, add=_site_list(add), remove=_site_list(remove), all_sites=all_sites)
    else:
        fed = store.federation(fed_id)
        if fed is None:
            from .errors import NotFoundError

            raise NotFoundError(f"no federation {fed_id!r}; `osfl-server federation list` shows them")
    click.echo(f"members of {fed.id}: {_members_text(fed)}")


@federation.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def federation_list(obj: Ctx, as_json: bool) -> None:
    store = obj.store()
    feds = store.federations()
    if as_json:
        click.echo(json.dumps([f.public() | {"received": store.count_sites(f.id)} for f in feds], indent=2))
        return
    if not feds:
        click.echo("no federations; create one with `osfl-server federation create`")
        return
    click.echo(f"{'ID':20}  {'STATE':12}  {'SITES':>9}  {'CLASSES':>7}  METHODS")
    for f in feds:
        click.echo(f"{f.id:20}  {f.state:12}  {store.count_sites(f.id):>4}/{f.quorum:<4}  {len(f.classes):>7}  "
                   f"{','.join(f.methods)}")


@federation.command("show")
@click.argument("fed_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def federation_show(obj: Ctx, fed_id: str, as_json: bool) -> None:
    store = obj.store()
    f = store.federation(fed_id)
    if f is None:
        from .errors import NotFoundError

        raise NotFoundError(f"no federation {fed_id!r}; `osfl-server federation list` shows them")
    payloads = store.payloads(fed_id)
    sites = {c.fingerprint: c.site for c in store.clients()}
    if as_json:
        click.echo(json.dumps(f.public() | {"payloads": [
            {"id": p.id, "site": sites.get(p.fingerprint), "kind": p.kind, "size": p.size,
             "sha256": p.sha256.hex(), "received_ms": p.received_ms} for p in payloads]}, indent=2))
        return
    click.echo(f"federation   {f.id}  ({f.state})")
    click.echo(f"classes      {len(f.classes)}: {', '.join(f.classes)}")
    click.echo(f"methods      {', '.join(f.methods)}")
    click.echo(f"members      {_members_text(f)}")
    click.echo(f"images/class {f.images_per_class}")
    click.echo(f"quorum       {store.count_sites(f.id)} of {f.quorum} sites" +
               (f", deadline {_fmt_ms(f.deadline_ms)}" if f.deadline_ms else ""))
    click.echo(f"payloads     {len(payloads)}")
    for p in payloads:
        click.echo(f"  #{p.id:<5} {sites.get(p.fingerprint, p.fingerprint):20} {p.kind:14} {p.size:>10} B  "
                   f"{_fmt_ms(p.received_ms)}")


# ---- jobs -------------------------------------------------------------------------------------

@cli.command()
@click.argument("fed_id")
@click.pass_obj
def synthesize(obj: Ctx, fed_id: str) -> None:
    """Start synthesis (then training) for FED_ID now, without waiting for its quorum or deadline."""
    from .ingest.supervisor import queue_synthesis

    job_id = queue_synthesis(obj.store(), fed_id)
    click.echo(f"job {job_id}: synthesis of {fed_id} queued; the running daemon starts it within a second "
               f"(`osfl-server status` shows progress)")


@cli.command()
@click.argument("fed_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def jobs(obj: Ctx, fed_id: str | None, as_json: bool) -> None:
    """List synthesis and training jobs with their progress."""
    from .ingest.supervisor import job_summary

    rows = obj.store().jobs(fed_id)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no jobs yet")
    for j in rows:
        took = f"{(j['finished_ms'] - j['started_ms']) / 1000:.1f} s" if j["finished_ms"] and j["started_ms"] else ""
        click.echo(f"#{j['id']:<4} {j['federation']:16} {job_summary(j)}  attempts {j['attempts']}  {took}")


@cli.command()
@click.argument("fed_id")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default: STATE_DIR/reports/FED_ID/index.html)")
@click.pass_obj
def report(obj: Ctx, fed_id: str, out: str | None) -> None:
    """Write one HTML page with the federation's figures, sample grids and training curves."""
    from .report import write_report

    path = write_report(obj.cfg, obj.store(), fed_id, Path(out) if out else None)
    click.echo(f"report: {path}")


@cli.command("tiny-models")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
def tiny_models(directory: str, seed: int) -> None:
    """Write a tiny seeded Stable Diffusion pipeline to DIRECTORY (for trials and tests, not quality)."""
    from .lab.tinymodels import main_write_tiny

    out = main_write_tiny(directory, seed=seed)
    click.echo(f"tiny pipeline written to {out['pipeline']}; set [synthesis] model_dir to it")


@cli.command()
@click.pass_obj
def metrics(obj: Ctx) -> None:
    """Print Prometheus metrics (the daemon also keeps them in STATE_DIR/metrics.prom)."""
    store = obj.store()
    d = store.daemon_info()
    click.echo(render_metrics(store, d, is_alive(d, obj.cfg.ingest.heartbeat_s)), nl=False)


# ---- status -----------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj: Ctx, as_json: bool) -> None:
    """Daemon liveness, sites by state, federations and payload counts."""
    cfg = obj.cfg
    store = obj.store()
    d = store.daemon_info()
    alive = is_alive(d, cfg.ingest.heartbeat_s)
    by_state: dict[str, int] = {}
    for c in store.clients():
        by_state[c.state] = by_state.get(c.state, 0) + 1
    from .ingest.supervisor import job_summary

    feds = []
    for f in store.federations():
        job = store.latest_job(f.id)
        feds.append(f.public() | {"received": store.count_sites(f.id), "job": job_summary(job) if job else "",
                                  "model": bool(store.artifact(f"model/{f.id}"))})
    if as_json:
        click.echo(json.dumps({"daemon": (d or {}) | {"alive": alive}, "sites": by_state,
                               "federations": feds, "payloads": len(store.payloads())}, indent=2))
        return
    if d is None:
        click.echo("daemon       never started (`osfl-server run`, or `systemctl start osfl-server`)")
    else:
        state = "running" if alive else ("stopped" if d["state"] == "stopped" else "not responding")
        click.echo(f"daemon       {state} (pid {d['pid']}, {d['bind']}, last heartbeat {_fmt_ms(d['heartbeat_ms'])})")
        c = d["counters"]
        click.echo(f"ingest       {c.get('requests', 0)} requests, {c.get('stored', 0)} payloads stored, "
                   f"rejected {sum(c.get('rejected', {}).values())} {c.get('rejected') or ''}")
    click.echo("sites        " + (", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) or "none"))
    for f in feds:
        click.echo(f"federation   {f['id']}: {f['state']}, {f['received']}/{f['quorum']} sites uploaded"
                   + (f"; {f['job']}" if f["job"] else "") + ("; model published" if f["model"] else ""))


# ---- maintenance: verify the stored bytes, back up while the daemon runs (ingest/maintenance.py) ----

def _progress(label: str):
    """A tqdm bar on stderr (only on a terminal) fed with (bytes done, bytes total); close() ends it."""
    from tqdm import tqdm

    bar = tqdm(desc=label, unit="B", unit_scale=True, file=sys.stderr, disable=None, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)  # tqdm redraws at most every 0.1 s

    return update, bar


def _print_verify(report) -> None:
    click.echo(report.summary())
    for problem in report.database:
        click.echo(f"DATABASE  {problem}")
    for d in report.damaged:
        click.echo(f"DAMAGED   {d.line()}")


@cli.command("verify-store")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="verify this store (a backup, say) instead of the config's [server] state_dir")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def verify_store_cmd(obj: Ctx, state_dir: str | None, as_json: bool) -> None:
    """Re-hash every payload and artifact, check the SQLite file; exit 4 (STORE) listing any damage.

    Read-only: safe while the daemon runs.
    """
    from .ingest.maintenance import verify_store

    update, bar = _progress("verify-store")
    try:
        report = verify_store(Path(state_dir) if state_dir else obj.cfg.state_dir, progress=update)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_verify(report)
    if not report.clean:
        raise report.failure()


@cli.command()
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--with-keys", is_flag=True, help="copy the server's secret keys too (keys/, modes kept)")
@click.option("--force", is_flag=True, help="overwrite a store already in DEST")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def backup(obj: Ctx, dest: str, with_keys: bool, force: bool, as_json: bool) -> None:
    """Copy the store into DEST while the daemon runs (database, blobs, artifacts), then verify the copy.

    Restore: stop the daemon and point [server] state_dir at DEST (or copy DEST back).
    """
    from .ingest.maintenance import backup_store, human_bytes

    update, bar = _progress("backup")
    try:
        r = backup_store(obj.cfg.state_dir, Path(dest), with_keys=with_keys, force=force, progress=update)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(r.to_dict(), indent=2))
    else:
        click.echo(f"backup of {r.source} in {r.dest}:")
        click.echo(f"  database   osfl.sqlite3, {human_bytes(r.database_bytes)} (online backup)")
        click.echo(f"  blobs      {r.blobs} files, {human_bytes(r.blobs_bytes)}")
        click.echo(f"  artifacts  {r.artifacts} files, {human_bytes(r.artifacts_bytes)}")
        click.echo(f"  keys       " + (", ".join(r.keys) if r.keys else "not copied (--with-keys copies them)"))
        for rel in r.missing:
            click.echo(f"  MISSING    {rel} (named by the database, absent from the store)")
        _print_verify(r.verify)
    if not r.verify.clean:
        raise r.verify.failure()


cli.add_command(edge_models_cli, "edge-models")


@cli.command("exit-codes")
def exit_codes() -> None:
    """Print every exit code of osfl-server and what to do about it."""
    for code, (name, text) in EXIT_CODES.items():
        click.echo(f"{code:>3}  {name:<11} {text}")


# ---- the lab: a small foundation model and simulated federations (server_daemon/lab/). Their modules
# load only when one of these commands runs, so `osfl-server run` never imports the simulator.
cli.add_lazy_command("pretrain-tiny", "server_daemon.lab.pretrain")
cli.add_lazy_command("simulate", "server_daemon.lab.simulate.runner")


def main() -> None:
    try:
        cli.main(prog_name="osfl-server", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ServerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except (FileNotFoundError, PermissionError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(CONFIG)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
