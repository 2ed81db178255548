"""`osfl-server report FED`: one self-contained HTML page a person can open and read.

It gathers what the federation produced: who uploaded what (bytes per site), the jobs and their
timings, the synthetic sample grid per class, the training curves and the selected model's
figures, and the signed model's digest. Images are embedded, so the page can be mailed around.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import json
from pathlib import Path

from .ingest.config import ServerConfig
from .errors import NotFoundError
from .ingest.layout import report_dir
from .ingest.supervisor import job_summary
from .ingest.store import Store


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return f"<p class='missing'>({html.escape(alt)}: not produced yet)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _ts(ms: int | None) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if ms else "-"


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def write_report(cfg: ServerConfig, store: Store, fed_id: str, out: Path | None = None) -> Path:
    fed = store.federation(fed_id)
    if fed is None:
        raise NotFoundError(f"no federation {fed_id!r}; `osfl-server federation list` shows them")
    rdir = report_dir(cfg, fed_id)
    rdir.mkdir(parents=True, exist_ok=True)
    out = out or rdir / "index.html"
    sites = {c.fingerprint: c.site for c in store.clients()}
    payloads = store.payloads(fed_id)
    jobs = store.jobs(fed_id)
    art = store.artifact(f"model/{fed_id}")
    metrics = json.loads((rdir / "metrics.json").read_text()) if (rdir / "metrics.json").exists() else {}

    parts = [f"<h1>Federation {html.escape(fed.id)}</h1>",
             f"<p>State <b>{html.escape(fed.state)}</b>; {len(fed.classes)} classes; methods "
             f"{html.escape(', '.join(fed.methods))}; {fed.images_per_class} synthetic images per class; "
             f"{store.count_sites(fed_id)} of {fed.quorum} sites uploaded. Written "
             f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
             "<h2>Uploads</h2>",
             _table(["site", "kind", "bytes", "received", "sha256"],
                    [[sites.get(p.fingerprint, p.fingerprint), p.kind, p.size, _ts(p.received_ms), p.sha256.hex()[:16]]
                     for p in payloads]),
             "<h2>Jobs</h2>",
             _table(["job", "kind", "state", "attempts", "started", "took (s)", "result"],
                    [[j["id"], j["kind"], job_summary(j), j["attempts"], _ts(j["started_ms"]),
                      f"{(j['finished_ms'] - j['started_ms']) / 1000:.1f}" if j["finished_ms"] and j["started_ms"] else "",
                      json.dumps(j["result"])[:160]] for j in jobs]),
             "<h2>Synthetic samples per class</h2>", _img(rdir / "samples.png", "sample grid"),
             "<h2>Training</h2>", _img(rdir / "curves.png", "training curves")]
    if metrics:
        keep = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
        parts.append(_table(["figure", "value"], [[k, v] for k, v in keep.items()]))
        parts.append("<p>The model is selected on a held-out split of the synthetic images, never on a test set.</p>")
    if art:
        parts += ["<h2>Global model</h2>",
                  f"<p><code>{html.escape(art['name'])}</code>, {art['size']:,} bytes, sha256 "
                  f"<code>{art['sha256'].hex()}</code>, signed by the server key; sites fetch it with "
                  f"<code>osfl-edge fetch-model --federation {html.escape(fed.id)}</code>.</p>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>osfl report: "
            f"{html.escape(fed.id)}</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
            "font-size:13px;text-align:left}img{max-width:100%;image-rendering:pixelated;border:1px solid #ddd}"
            ".missing{color:#888}</style></head><body>" + "\n".join(parts) + "</body></html>")
    tmp = Path(str(out) + ".tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out
