"""The durable store: SQLite in WAL mode for state, payload blobs as files written atomically.

Durability rules (docs/architecture.md, "The walk of a payload", steps 4-5):
- ``synchronous=FULL``: a COMMIT returns only after the WAL is fsynced, so a reply sent after
  COMMIT is never ahead of the disk, even on power loss. The daemon batches many requests into one
  transaction (group commit), so one fsync covers every reply of the batch.
- Small payloads (up to one body) live inside the database row, inside that same fsynced commit.
- Chunked payloads grow in ``parts/<upload>.part`` (each chunk fsynced before its offset is
  committed); the finished file is checked, fsynced, renamed into ``blobs/`` and its directory
  fsynced before the payload row commits.

The CLI (operator commands) and the daemon open the same file; WAL lets them work at once and
``PRAGMA data_version`` tells the daemon when another connection changed something.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from protocol.files import fsync_dir as _fsync_dir

from ..errors import NotFoundError, StateError, StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

CLIENT_STATES = ("pending", "accepted", "rejected", "revoked")
#: operator transitions: action -> (allowed from-states, to-state)
TRANSITIONS = {
    "accept": (("pending", "rejected"), "accepted"),
    "reject": (("pending",), "rejected"),
    "revoke": (("accepted", "pending"), "revoked"),
}
FEDERATION_STATES = ("open", "synthesizing", "training", "done", "failed", "closed")
#: ``settings["members"]`` of a federation every accepted site may join
ALL_SITES = "*"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    fingerprint TEXT PRIMARY KEY,
    site TEXT NOT NULL UNIQUE,
    public_key BLOB NOT NULL,
    curve_key TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL CHECK (state IN ('pending','accepted','rejected','revoked')),
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    fingerprint TEXT,
    site TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS federations (
    id TEXT PRIMARY KEY,
    classes TEXT NOT NULL,
    methods TEXT NOT NULL,
    images_per_class INTEGER NOT NULL,
    quorum INTEGER NOT NULL,
    deadline_ms INTEGER,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS payloads (
    id INTEGER PRIMARY KEY,
    federation TEXT NOT NULL REFERENCES federations(id),
    fingerprint TEXT NOT NULL REFERENCES clients(fingerprint),
    kind TEXT NOT NULL,
    sha256 BLOB NOT NULL,
    size INTEGER NOT NULL,
    inline BLOB,
    path TEXT,
    msg_id BLOB NOT NULL,
    received_ms INTEGER NOT NULL,
    UNIQUE (federation, fingerprint, kind)
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    federation TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    chunk_size INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS artifacts (
    name TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    manifest BLOB NOT NULL,
    signature BLOB NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    federation TEXT NOT NULL REFERENCES federations(id),
    kind TEXT NOT NULL CHECK (kind IN ('synthesis','training')),
    state TEXT NOT NULL CHECK (state IN ('queued','running','done','failed','cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    result TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS seen (msg_id BLOB PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS daemon (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER, started_ms INTEGER, heartbeat_ms INTEGER, bind TEXT, state TEXT,
    counters TEXT NOT NULL DEFAULT '{}'
);
"""


def now_ms() -> int:
    return int(time.time() * 1000)


def fsync_dir(path: Path) -> None:
    """The store's folders must be fsynced: an error here is an error, not a shrug."""
    _fsync_dir(path, strict=True)


@dataclass(frozen=True)
class Client:
    fingerprint: str
    site: str
    public_key: bytes
    curve_key: str
    name: str
    state: str
    created_ms: int
    updated_ms: int


@dataclass(frozen=True)
class Federation:
    id: str
    classes: tuple[str, ...]
    methods: tuple[str, ...]
    images_per_class: int
    quorum: int
    deadline_ms: int | None
    state: str
    created_ms: int
    settings: dict

    @property
    def members(self) -> tuple[str, ...] | None:
        """The site ids that belong to the federation; None when every accepted site may join.

        A federation made before membership existed has no ``members`` setting: it stays open to
        every accepted site, as it was.
        """
        members = self.settings.get("members", ALL_SITES)
        return None if members == ALL_SITES else tuple(members)

    def has_member(self, site: str) -> bool:
        return self.members is None or site in self.members

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "classes": list(self.classes), "methods": list(self.methods),
                "images_per_class": self.images_per_class, "quorum": self.quorum,
                "deadline_ms": self.deadline_ms, "state": self.state}


@dataclass(frozen=True)
class Payload:
    id: int
    federation: str
    fingerprint: str
    kind: str
    sha256: bytes
    size: int
    path: str | None
    received_ms: int


class Store:
    """One connection to the store. Not thread-safe; each process opens its own."""

    def __init__(self, state_dir: Path, *, create: bool = False):
        self.state_dir = Path(state_dir)
        self.db_path = self.state_dir / "osfl.sqlite3"
        self.blobs_dir = self.state_dir / "blobs"
        self.parts_dir = self.state_dir / "parts"
        if not self.db_path.exists() and not create:
            raise StoreError(f"no store at {self.db_path}; run `osfl-server init` first, or check "
                             f"[server] state_dir in the config")
        for d in (self.state_dir, self.blobs_dir, self.parts_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.db = sqlite3.connect(self.db_path, isolation_level=None, timeout=30.0,
                                      check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=30000")
            if create:
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None or int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"store {self.db_path} has schema {row and row[0]}, this osfl needs "
                                 f"{SCHEMA_VERSION}")
            # additive changes (new tables) apply to stores made by an earlier release of this schema
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open the store {self.db_path}: {exc}; is it an osfl store?") from exc

    def close(self) -> None:
        self.db.close()

    # ---- transactions ----------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; the COMMIT is the fsync that makes everything inside durable."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            if not self.db.in_transaction:  # SQLite rolls back by itself on SQLITE_FULL and I/O errors
                raise sqlite3.OperationalError("database or disk is full: SQLite rolled the transaction back")
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # a failed COMMIT (disk full) leaves the transaction open
                self.db.execute("ROLLBACK")
            raise

    def data_version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    # ---- audit ------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, fingerprint: str | None = None, site: str | None = None,
              detail: str = "") -> None:
        self.db.execute("INSERT INTO audit (ts_ms, actor, action, fingerprint, site, detail) VALUES (?,?,?,?,?,?)",
                        (now_ms(), actor, action, fingerprint, site, detail))
        log.info("audit: %s %s fingerprint=%s site=%s %s", actor, action, fingerprint, site, detail)

    def audit_log(self, limit: int = 100) -> list[dict]:
        rows = self.db.execute("SELECT ts_ms, actor, action, fingerprint, site, detail FROM audit "
                               "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(zip(("ts_ms", "actor", "action", "fingerprint", "site", "detail"), r)) for r in rows]

    # ---- clients ----------------------------------------------------------------------------

    def client(self, fingerprint: str) -> Client | None:
        row = self.db.execute("SELECT * FROM clients WHERE fingerprint=?", (fingerprint,)).fetchone()
        return Client(*row) if row else None

    def client_by_site(self, site: str) -> Client | None:
        row = self.db.execute("SELECT * FROM clients WHERE site=?", (site,)).fetchone()
        return Client(*row) if row else None

    def clients(self, state: str | None = None) -> list[Client]:
        q, args = "SELECT * FROM clients", ()
        if state:
            q, args = q + " WHERE state=?", (state,)
        return [Client(*r) for r in self.db.execute(q + " ORDER BY created_ms", args)]

    def resolve_fingerprint(self, prefix: str) -> Client:
        """Find a client by its fingerprint or a unique prefix of at least 8 characters."""
        prefix = prefix.strip().lower()
        if len(prefix) < 8:
            raise NotFoundError(f"give at least 8 characters of the fingerprint; got {prefix!r}")
        rows = self.db.execute("SELECT * FROM clients WHERE fingerprint LIKE ? || '%'", (prefix,)).fetchall()
        if not rows:
            raise NotFoundError(f"no site with fingerprint {prefix}; `osfl-server clients list` shows them")
        if len(rows) > 1:
            raise NotFoundError(f"fingerprint prefix {prefix} matches {len(rows)} sites; give more characters")
        return Client(*rows[0])

    def add_pending_client(self, fingerprint: str, site: str, public_key: bytes, curve_key: str,
                           name: str) -> None:
        t = now_ms()
        self.db.execute("INSERT INTO clients VALUES (?,?,?,?,?,?,?,?)",
                        (fingerprint, site, public_key, curve_key, name, "pending", t, t))
        self.audit("site", "enroll", fingerprint, site, f"name={name!r}")

    def transition(self, fingerprint_prefix: str, action: str, actor: str = "operator") -> Client:
        if action not in TRANSITIONS:
            raise StateError(f"unknown action {action!r}; expected one of {', '.join(TRANSITIONS)}")
        allowed, to = TRANSITIONS[action]
        with self.transaction():
            c = self.resolve_fingerprint(fingerprint_prefix)
            if c.state == to:
                return c
            if c.state not in allowed:
                raise StateError(f"site {c.site} ({c.fingerprint}) is {c.state}; {action} applies only to "
                                 f"{' or '.join(allowed)} sites")
            self.db.execute("UPDATE clients SET state=?, updated_ms=? WHERE fingerprint=?",
                            (to, now_ms(), c.fingerprint))
            self.audit(actor, action, c.fingerprint, c.site, f"{c.state} -> {to}")
        return self.client(c.fingerprint)

    # ---- federations ------------------------------------------------------------------------

    def create_federation(self, fed_id: str, classes: list[str], methods: list[str], images_per_class: int,
                          quorum: int, deadline_ms: int | None = None, settings: dict | None = None, *,
                          members: list[str] | str = ALL_SITES) -> Federation:
        """A new federation; ``members`` are the site ids that may join it, or ALL_SITES."""
        settings = {**(settings or {}), "members": members if members == ALL_SITES else sorted(set(members))}
        with self.transaction():
            if self.federation(fed_id):
                raise StateError(f"federation {fed_id!r} already exists; `osfl-server federation show {fed_id}`")
            self.db.execute("INSERT INTO federations VALUES (?,?,?,?,?,?,?,?,?)",
                            (fed_id, json.dumps(classes), json.dumps(methods), images_per_class, quorum,
                             deadline_ms, "open", now_ms(), json.dumps(settings)))
            self.audit("operator", "federation-create", detail=f"id={fed_id} classes={len(classes)} "
                                                               f"methods={','.join(methods)} quorum={quorum} members="
                                                               + ("every accepted site" if members == ALL_SITES
                                                                  else ",".join(settings["members"])))
        return self.federation(fed_id)

    @staticmethod
    def _fed(row) -> Federation:
        return Federation(row[0], tuple(json.loads(row[1])), tuple(json.loads(row[2])), row[3], row[4], row[5],
                          row[6], row[7], json.loads(row[8]))

    def federation(self, fed_id: str) -> Federation | None:
        row = self.db.execute("SELECT * FROM federations WHERE id=?", (fed_id,)).fetchone()
        return self._fed(row) if row else None

    def federations(self) -> list[Federation]:
        return [self._fed(r) for r in self.db.execute("SELECT * FROM federations ORDER BY created_ms")]

    def set_members(self, fed_id: str, *, add: list[str] = (), remove: list[str] = (),
                    all_sites: bool | None = None, actor: str = "operator") -> Federation:
        """Change who belongs to a federation: add or remove site ids, or open it to (close it from) all."""
        with self.transaction():
            fed = self.federation(fed_id)
            if fed is None:
                raise NotFoundError(f"no federation {fed_id!r}; `osfl-server federation list` shows them")
            if all_sites:
                members: Any = ALL_SITES
            elif fed.members is None and all_sites is None:
                raise StateError(f"federation {fed_id} is open to every accepted site; pass --listed-only to "
                                 f"admit only the sites you name")
            else:  # listed: closing an open federation starts from no member at all
                current = set(fed.members or ())
                members = sorted((current | set(add)) - set(remove))
            settings = {**fed.settings, "members": members}
            self.db.execute("UPDATE federations SET settings=? WHERE id=?", (json.dumps(settings), fed_id))
            self.audit(actor, "federation-members", detail=f"id={fed_id} members="
                       + ("every accepted site" if members == ALL_SITES else ",".join(members) or "none"))
        return self.federation(fed_id)

    def set_federation_state(self, fed_id: str, state: str, actor: str = "daemon") -> None:
        if state not in FEDERATION_STATES:
            raise StateError(f"unknown federation state {state!r}")
        self.db.execute("UPDATE federations SET state=? WHERE id=?", (state, fed_id))
        self.audit(actor, "federation-state", detail=f"id={fed_id} state={state}")

    # ---- payloads ---------------------------------------------------------------------------

    def payload_for(self, federation: str, fingerprint: str, kind: str) -> Payload | None:
        row = self.db.execute("SELECT id, federation, fingerprint, kind, sha256, size, path, received_ms "
                              "FROM payloads WHERE federation=? AND fingerprint=? AND kind=?",
                              (federation, fingerprint, kind)).fetchone()
        return Payload(*row) if row else None

    def insert_payload(self, federation: str, fingerprint: str, kind: str, sha256: bytes, size: int,
                       msg_id: bytes, inline: bytes | None = None, path: str | None = None) -> int | None:
        """Insert a payload row; None when this site already has a payload of this kind here."""
        cur = self.db.execute(
            "INSERT INTO payloads (federation, fingerprint, kind, sha256, size, inline, path, msg_id, received_ms) "
            "VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (federation, fingerprint, kind) DO NOTHING",
            (federation, fingerprint, kind, sha256, size, inline, path, msg_id, now_ms()))
        return cur.lastrowid if cur.rowcount == 1 else None

    def payloads(self, federation: str | None = None, fingerprint: str | None = None) -> list[Payload]:
        q = "SELECT id, federation, fingerprint, kind, sha256, size, path, received_ms FROM payloads WHERE 1=1"
        args: list = []
        if federation:
            q += " AND federation=?"
            args.append(federation)
        if fingerprint:
            q += " AND fingerprint=?"
            args.append(fingerprint)
        return [Payload(*r) for r in self.db.execute(q + " ORDER BY id", args)]

    def payload_bytes(self, payload_id: int) -> bytes:
        row = self.db.execute("SELECT inline, path, sha256 FROM payloads WHERE id=?", (payload_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no payload {payload_id}")
        data = row[0] if row[0] is not None else (self.state_dir / row[1]).read_bytes()
        if hashlib.sha256(data).digest() != row[2]:
            raise StoreError(f"payload {payload_id} does not match its sha256: the blob is damaged")
        return data

    def count_sites(self, federation: str) -> int:
        return self.db.execute("SELECT COUNT(DISTINCT fingerprint) FROM payloads WHERE federation=?",
                               (federation,)).fetchone()[0]

    # ---- chunked uploads --------------------------------------------------------------------

    def part_path(self, upload_id: str) -> Path:
        return self.parts_dir / f"{upload_id}.part"

    def upload(self, upload_id: str) -> dict | None:
        row = self.db.execute("SELECT upload_id, federation, fingerprint, kind, size, sha256, chunk_size, offset "
                              "FROM uploads WHERE upload_id=?", (upload_id,)).fetchone()
        if row is None:
            return None
        return dict(zip(("upload_id", "federation", "fingerprint", "kind", "size", "sha256", "chunk_size",
                         "offset"), row))

    def open_upload(self, upload_id: str, federation: str, fingerprint: str, kind: str, size: int,
                    sha256: bytes, chunk_size: int) -> int:
        """Create the upload row, or return how far an earlier attempt got (bytes durable)."""
        existing = self.upload(upload_id)
        if existing is not None:
            part = self.part_path(upload_id)
            # the committed offset is authoritative; bytes past it (a crash mid-chunk) are cut off
            if part.exists() and part.stat().st_size != existing["offset"]:
                with open(part, "r+b") as f:
                    f.truncate(existing["offset"])
                    os.fsync(f.fileno())
            elif not part.exists():
                # the daemon died after the part was renamed into blobs/ but before its row committed
                # (or the part was lost): start this upload again from an empty part
                with open(part, "wb") as f:
                    os.fsync(f.fileno())
                fsync_dir(self.parts_dir)
                existing["offset"] = 0
                self.db.execute("UPDATE uploads SET offset=0, updated_ms=? WHERE upload_id=?", (now_ms(), upload_id))
            return existing["offset"]
        t = now_ms()
        self.db.execute("INSERT INTO uploads VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (upload_id, federation, fingerprint, kind, size, sha256, chunk_size, 0, t, t))
        with open(self.part_path(upload_id), "wb") as f:
            os.fsync(f.fileno())
        fsync_dir(self.parts_dir)
        return 0

    def open_uploads_of(self, fingerprint: str) -> tuple[int, int]:
        """(number, announced bytes) of the chunked uploads this site has open."""
        n, total = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM uploads WHERE fingerprint=?",
                                   (fingerprint,)).fetchone()
        return n, total

    def expire_uploads(self, before_ms: int) -> int:
        """Discard open uploads untouched since ``before_ms`` (rows and part files); how many."""
        stale = [r[0] for r in self.db.execute("SELECT upload_id FROM uploads WHERE updated_ms < ?", (before_ms,))]
        for upload_id in stale:
            self.reset_upload(upload_id)
        if stale:
            self.audit("daemon", "uploads-expired", detail=f"{len(stale)} open upload(s) untouched since {before_ms}")
        return len(stale)

    def count_pending(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM clients WHERE state='pending'").fetchone()[0]

    def write_chunk(self, upload_id: str, offset: int, data: bytes) -> int:
        part = self.part_path(upload_id)
        with open(part, "r+b") as f:
            f.seek(offset)
            f.write(data)
            f.truncate(offset + len(data))
            os.fsync(f.fileno())
        new = offset + len(data)
        self.db.execute("UPDATE uploads SET offset=?, updated_ms=? WHERE upload_id=?", (new, now_ms(), upload_id))
        return new

    def assembled(self, upload_id: str, sha256: bytes) -> Path | None:
        """The file holding an upload's bytes: its part, or (when a commit moved it into blobs/ and then
        failed before its row committed: a kill, a full disk) the blob of the announced digest."""
        part = self.part_path(upload_id)
        if part.exists():
            return part
        blob = self.blobs_dir / sha256.hex()
        return blob if blob.exists() else None

    def finish_upload(self, upload_id: str, sha256: bytes) -> str:
        """Move the assembled file, whose digest the caller checked, into blobs/; its relative path."""
        part = self.part_path(upload_id)
        rel = f"blobs/{sha256.hex()}"
        if part.exists():
            with open(part, "rb") as f:
                os.fsync(f.fileno())
            os.replace(part, self.state_dir / rel)
            fsync_dir(self.blobs_dir)
            fsync_dir(self.parts_dir)
        self.db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
        return rel

    def reset_upload(self, upload_id: str) -> None:
        self.db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
        self.part_path(upload_id).unlink(missing_ok=True)

    # ---- jobs (synthesis, training) ------------------------------------------------------------

    JOB_COLUMNS = ("id", "federation", "kind", "state", "attempts", "pid", "done", "total", "detail", "error",
                   "created_ms", "started_ms", "finished_ms", "result")

    def _job(self, row) -> dict | None:
        if row is None:
            return None
        job = dict(zip(self.JOB_COLUMNS, row))
        job["result"] = json.loads(job["result"])
        return job

    def create_job(self, federation: str, kind: str, actor: str = "daemon") -> int:
        cur = self.db.execute("INSERT INTO jobs (federation, kind, state, created_ms) VALUES (?,?,?,?)",
                              (federation, kind, "queued", now_ms()))
        self.audit(actor, "job-queued", detail=f"federation={federation} kind={kind} job={cur.lastrowid}")
        return cur.lastrowid

    def job(self, job_id: int) -> dict | None:
        return self._job(self.db.execute(f"SELECT {','.join(self.JOB_COLUMNS)} FROM jobs WHERE id=?",
                                         (job_id,)).fetchone())

    def jobs(self, federation: str | None = None, states: tuple[str, ...] | None = None) -> list[dict]:
        q, args = f"SELECT {','.join(self.JOB_COLUMNS)} FROM jobs WHERE 1=1", []
        if federation:
            q += " AND federation=?"
            args.append(federation)
        if states:
            q += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        return [self._job(r) for r in self.db.execute(q + " ORDER BY id", args)]

    def latest_job(self, federation: str) -> dict | None:
        return self._job(self.db.execute(f"SELECT {','.join(self.JOB_COLUMNS)} FROM jobs WHERE federation=? "
                                         f"ORDER BY id DESC LIMIT 1", (federation,)).fetchone())

    def update_job(self, job_id: int, **fields: Any) -> None:
        if "result" in fields:
            fields["result"] = json.dumps(fields["result"])
        bad = set(fields) - set(self.JOB_COLUMNS)
        if bad:
            raise StoreError(f"unknown job field(s) {bad}")
        sets = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE jobs SET {sets} WHERE id=?", (*fields.values(), job_id))

    # ---- signed artifacts (global models, edge bundles) -----------------------------------------

    def publish_artifact(self, name: str, source: Path, meta: dict, signing_key) -> dict:
        """Copy ``source`` into artifacts/ (fsynced, atomic), sign its manifest, record it.

        Publishing again under the same name replaces the old version for new downloads.
        """
        from protocol.artifacts import manifest_bytes, sign_manifest

        adir = self.state_dir / "artifacts"
        adir.mkdir(exist_ok=True, mode=0o700)
        h = hashlib.sha256()
        tmp = adir / f".{os.getpid()}.tmp"
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        digest = h.digest()
        rel = f"artifacts/{digest.hex()}"
        os.replace(tmp, self.state_dir / rel)
        fsync_dir(adir)
        size = (self.state_dir / rel).stat().st_size
        created = now_ms()
        manifest = manifest_bytes(name, size, digest, meta, created)
        signature = sign_manifest(signing_key, manifest)
        with self.transaction():
            self.db.execute("INSERT INTO artifacts VALUES (?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                            "path=excluded.path, size=excluded.size, sha256=excluded.sha256, "
                            "manifest=excluded.manifest, signature=excluded.signature, created_ms=excluded.created_ms",
                            (name, rel, size, digest, manifest, signature, created))
            self.audit("server", "artifact-publish", detail=f"name={name} size={size} sha256={digest.hex()[:16]}")
        return {"name": name, "size": size, "sha256": digest, "path": self.state_dir / rel}

    def artifact(self, name: str) -> dict | None:
        row = self.db.execute("SELECT name, path, size, sha256, manifest, signature, created_ms FROM artifacts "
                              "WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        return dict(zip(("name", "path", "size", "sha256", "manifest", "signature", "created_ms"), row))

    def artifacts(self) -> list[dict]:
        return [dict(zip(("name", "size", "sha256", "created_ms"), r)) for r in
                self.db.execute("SELECT name, size, sha256, created_ms FROM artifacts ORDER BY name")]

    # ---- replay history ---------------------------------------------------------------------

    def remember(self, msg_ids: list[tuple[bytes, int]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO seen VALUES (?,?)", msg_ids)

    def recent_msg_ids(self, since_ms: int) -> list[tuple[bytes, int]]:
        return self.db.execute("SELECT msg_id, created_ms FROM seen WHERE created_ms >= ?", (since_ms,)).fetchall()

    def prune_seen(self, before_ms: int) -> None:
        self.db.execute("DELETE FROM seen WHERE created_ms < ?", (before_ms,))

    # ---- daemon heartbeat -------------------------------------------------------------------

    def heartbeat(self, *, pid: int, bind: str, state: str, started_ms: int, counters: dict) -> None:
        self.db.execute("INSERT INTO daemon VALUES (1,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET pid=excluded.pid, "
                        "started_ms=excluded.started_ms, heartbeat_ms=excluded.heartbeat_ms, bind=excluded.bind, "
                        "state=excluded.state, counters=excluded.counters",
                        (pid, started_ms, now_ms(), bind, state, json.dumps(counters)))

    def daemon_info(self) -> dict | None:
        row = self.db.execute("SELECT pid, started_ms, heartbeat_ms, bind, state, counters FROM daemon").fetchone()
        if row is None:
            return None
        return {"pid": row[0], "started_ms": row[1], "heartbeat_ms": row[2], "bind": row[3], "state": row[4],
                "counters": json.loads(row[5])}

    # ---- damage and repair (server_daemon/ingest/maintenance.py checks the whole store) ---------------

    def payload_damage(self, payload_id: int) -> str | None:
        """What is wrong with one stored payload (missing or short blob, digest mismatch); None when intact."""
        from .maintenance import payload_problem

        row = self.db.execute("SELECT sha256, size, inline, path FROM payloads WHERE id=?", (payload_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no payload {payload_id}")
        return payload_problem(self.state_dir, sha256=row[0], size=row[1], inline=row[2], path=row[3])

    def repair_payload(self, payload_id: int, data: bytes | None = None, path: Path | None = None) -> None:
        """Rewrite a damaged payload from ``data`` (or the file at ``path``) whose sha256 is the row's.

        An inline row is updated in one statement (inside the caller's transaction when there is one);
        a blob is replaced atomically (temporary file, fsync, rename, folder fsync), hashed as it is
        written, so bytes of another digest never reach ``blobs/``. Raises StoreError, leaving the store
        as it was, when the bytes' size or sha256 differ from the row's.
        """
        from protocol.files import HASH_BLOCK, atomic_writer

        if (data is None) == (path is None):
            raise ValueError("repair_payload takes either data or path")
        row = self.db.execute("SELECT sha256, size, inline IS NOT NULL, path, fingerprint FROM payloads WHERE id=?",
                              (payload_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no payload {payload_id}")
        sha, size, is_inline, rel, fingerprint = row

        def refuse(got_size: int, got_sha: bytes) -> StoreError:
            return StoreError(f"cannot repair payload {payload_id}: expected {size} bytes with sha256 "
                              f"{sha.hex()[:16]}..., got {got_size} bytes with sha256 {got_sha.hex()[:16]}...")

        if data is not None:
            got = hashlib.sha256(data).digest()
            if got != sha or len(data) != size:
                raise refuse(len(data), got)
        if is_inline or not rel:
            if data is None:
                data = Path(path).read_bytes()  # an inline payload is at most one request body
                got = hashlib.sha256(data).digest()
                if got != sha or len(data) != size:
                    raise refuse(len(data), got)

            def write() -> None:
                self.db.execute("UPDATE payloads SET inline=? WHERE id=?", (data, payload_id))
                self.audit("server", "payload-repair", fingerprint, detail=f"payload={payload_id} inline")
        else:
            target = self.state_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with atomic_writer(target) as out:
                if data is not None:
                    out.write(data)
                else:
                    h, n = hashlib.sha256(), 0
                    with open(path, "rb") as src:
                        for block in iter(lambda: src.read(HASH_BLOCK), b""):
                            h.update(block)
                            n += len(block)
                            out.write(block)
                    if h.digest() != sha or n != size:
                        raise refuse(n, h.digest())  # atomic_writer then removes the temporary file
            fsync_dir(target.parent)

            def write() -> None:
                self.audit("server", "payload-repair", fingerprint, detail=f"payload={payload_id} {rel}")
        if self.db.in_transaction:
            write()
        else:
            with self.transaction():
                write()
        log.info("payload %s repaired", payload_id)
