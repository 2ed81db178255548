"""Store maintenance: verify every stored byte against its digest, and take a consistent backup.

Both work while the daemon runs. Verification opens the database read-only (WAL lets a reader work
beside the daemon's writer) and re-hashes each payload, inline row or blob file, in blocks, against
the sha256 its row recorded when it was received; it also runs SQLite's ``PRAGMA integrity_check``
and checks the published artifacts. Nothing else notices a flipped bit: a site that uploads the same
payload again is answered "duplicate", so damage stays until someone looks (hardening issue, row 11).

A backup copies the database with SQLite's online backup API (one step, so the copy is one committed
snapshot even while a write transaction is open), then every blob and artifact file the *copied*
database names. A blob is renamed into ``blobs/`` before its row commits and never changes once named
by its sha256, so every file the copy needs exists when it is copied. The copy is then verified.

Standard library only, like the rest of the ingest side.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from protocol.files import HASH_BLOCK, atomic_writer, fsync_dir

from ..errors import StateError, StoreError

log = logging.getLogger(__name__)

DB_NAME = "osfl.sqlite3"
#: what a backup copies besides the database; ``parts/`` (unfinished uploads) is never kept
KEYS_DIR = "keys"

#: ``progress(bytes_done, bytes_total)``, called while files are hashed or copied
Progress = Callable[[int, int], None]


# ---- one payload ------------------------------------------------------------------------------

def hash_stream(fh: BinaryIO, on_block: Callable[[int], None] | None = None) -> tuple[bytes, int]:
    """(sha256, length) of what remains in ``fh``, read in blocks so any size fits in memory."""
    h = hashlib.sha256()
    n = 0
    for block in iter(lambda: fh.read(HASH_BLOCK), b""):
        h.update(block)
        n += len(block)
        if on_block:
            on_block(len(block))
    return h.digest(), n


def payload_problem(state_dir: Path, *, sha256: bytes, size: int, inline: bytes | None, path: str | None,
                    on_block: Callable[[int], None] | None = None) -> str | None:
    """What is wrong with one payload row's bytes; None when they match the row's size and sha256.

    The one check both ``verify-store`` and ``Store.payload_damage`` use. The message names the
    file and the sizes, never the content.
    """
    if inline is not None:
        if len(inline) != size:
            return f"inline row holds {len(inline)} bytes, its row says {size}"
        if hashlib.sha256(inline).digest() != sha256:
            return "inline row does not match its sha256"
        return None
    if not path:
        return "row has neither inline bytes nor a blob path"
    blob = Path(state_dir) / path
    try:
        found = blob.stat().st_size
        if found != size:
            return f"blob {path} is {found} bytes, its row says {size}"
        with open(blob, "rb") as fh:
            digest, _ = hash_stream(fh, on_block)
    except FileNotFoundError:
        return f"blob {path} is missing"
    except OSError as exc:
        return f"blob {path} cannot be read: {exc.strerror or exc}"
    if digest != sha256:
        return f"blob {path} does not match its sha256"
    return None


# ---- the whole store ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Damage:
    """One damaged payload (``payload_id`` set) or artifact (``artifact`` set)."""

    problem: str
    payload_id: int | None = None
    federation: str | None = None
    site: str | None = None
    kind: str | None = None
    artifact: str | None = None

    def line(self) -> str:
        if self.payload_id is not None:
            return (f"payload {self.payload_id}  federation {self.federation}  site {self.site}  "
                    f"kind {self.kind}: {self.problem}")
        return f"artifact {self.artifact}: {self.problem}"


@dataclass
class VerifyReport:
    state_dir: str
    payloads: int = 0
    inline: int = 0
    blobs: int = 0
    bytes_hashed: int = 0
    artifacts: int = 0
    #: ``PRAGMA integrity_check`` findings, or why the database could not be read; empty when ok
    database: list[str] = field(default_factory=list)
    damaged: list[Damage] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.database and not self.damaged

    def to_dict(self) -> dict:
        return asdict(self) | {"clean": self.clean}

    def summary(self) -> str:
        if self.database and not self.payloads and not self.artifacts:
            return f"store {self.state_dir}: the database cannot be read"
        state = "clean" if self.clean else "DAMAGED"
        return (f"store {self.state_dir}: {state}; {self.payloads} payloads ({self.inline} inline, {self.blobs} "
                f"blobs, {human_bytes(self.bytes_hashed)} hashed), {self.artifacts} artifacts, database "
                + ("integrity ok" if not self.database else f"{len(self.database)} problem(s)"))

    def failure(self) -> StoreError:
        """The error ``verify-store`` ends with when anything is damaged; what to do about it."""
        parts = []
        if self.damaged:
            n_pay = sum(1 for d in self.damaged if d.payload_id is not None)
            n_art = len(self.damaged) - n_pay
            if n_pay:
                parts.append(f"{n_pay} damaged payload(s): a site that uploads the same payload again "
                             f"repairs it (its re-upload is checked against the stored sha256), or restore "
                             f"them from a verified backup")
            if n_art:
                parts.append(f"{n_art} damaged artifact(s): publish them again (a new training or "
                             f"`osfl-server edge-models publish`)")
        if self.database:
            parts.append(f"the SQLite database reports {len(self.database)} problem(s): stop the daemon and "
                         f"restore the last verified backup")
        return StoreError(f"store {self.state_dir} is damaged: " + "; ".join(parts)
                          + " (docs/operator.md, Backups: `osfl-server backup`, restore)")


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def open_readonly(state_dir: Path) -> sqlite3.Connection:
    """A read-only connection to the store's database; StoreError when there is none."""
    db_path = Path(state_dir) / DB_NAME
    if not db_path.is_file():
        raise StoreError(f"no store at {db_path}; check [server] state_dir in the config (or --state-dir)")
    db = sqlite3.connect(db_path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None,
                         timeout=30.0, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=30000")
    return db


def _db_error(exc: sqlite3.Error) -> str:
    return f"cannot read the database: {exc}"


def _listing(db: sqlite3.Connection, report: VerifyReport, query: str) -> list[tuple]:
    try:
        return db.execute(query).fetchall()
    except sqlite3.Error as exc:
        if _db_error(exc) not in report.database:
            report.database.append(_db_error(exc))
        return []


def verify_store(state_dir: Path, *, progress: Progress | None = None) -> VerifyReport:
    """Check every payload, every published artifact and the SQLite file itself; never raises on damage.

    The rows are listed from one snapshot; each inline row and each file is then read on its own, so
    no read transaction stays open for the whole run (the daemon's checkpoints go on).
    """
    state_dir = Path(state_dir)
    report = VerifyReport(str(state_dir))
    db = open_readonly(state_dir)
    try:
        # each table on its own: a damaged page in one must not hide the other
        rows = _listing(db, report, "SELECT p.id, p.federation, COALESCE(c.site, p.fingerprint), p.kind, p.sha256, "
                        "p.size, p.path, p.inline IS NOT NULL FROM payloads p "
                        "LEFT JOIN clients c ON c.fingerprint = p.fingerprint ORDER BY p.id")
        artifacts = _listing(db, report, "SELECT name, path, size, sha256 FROM artifacts ORDER BY name")
        total = sum(r[5] for r in rows) + sum(a[2] for a in artifacts)
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total)

        for pid, fed, site, kind, sha, size, path, has_inline in rows:
            inline = None
            if has_inline:
                try:
                    row = db.execute("SELECT inline FROM payloads WHERE id=?", (pid,)).fetchone()
                except sqlite3.Error as exc:
                    report.damaged.append(Damage(_db_error(exc), pid, fed, site, kind))
                    continue
                if row is None:  # gone since the listing
                    continue
                inline = row[0]
                report.inline += 1
                tick(len(inline))
            else:
                report.blobs += 1
            report.payloads += 1
            problem = payload_problem(state_dir, sha256=sha, size=size, inline=inline, path=path, on_block=tick)
            report.bytes_hashed = done
            if problem:
                log.info("verify: payload %s (federation %s, site %s, %s): %s", pid, fed, site, kind, problem)
                report.damaged.append(Damage(problem, pid, fed, site, kind))

        for name, path, size, sha in artifacts:
            report.artifacts += 1
            problem = payload_problem(state_dir, sha256=sha, size=size, inline=None, path=path, on_block=tick)
            if problem:
                problem = problem.replace("blob ", "file ", 1)
                log.info("verify: artifact %s: %s", name, problem)
                report.damaged.append(Damage(problem, artifact=name))
        report.bytes_hashed = done

        try:
            found = [r[0] for r in db.execute("PRAGMA integrity_check")]
            if found != ["ok"]:
                report.database += [f"integrity_check: {f}" for f in found]
        except sqlite3.Error as exc:
            if _db_error(exc) not in report.database:
                report.database.append(_db_error(exc))
    finally:
        db.close()
    return report


# ---- backup -------------------------------------------------------------------------------------

@dataclass
class BackupReport:
    source: str
    dest: str
    database_bytes: int = 0
    blobs: int = 0
    blobs_bytes: int = 0
    artifacts: int = 0
    artifacts_bytes: int = 0
    #: files the copied database names that the source lacks (verification lists them too)
    missing: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    verify: VerifyReport | None = None

    def to_dict(self) -> dict:
        return asdict(self) | {"verify": self.verify.to_dict() if self.verify else None}


def _copy_file(src: Path, dst: Path, *, mode: int = 0o600, on_block: Callable[[int], None] | None = None) -> int:
    """Copy ``src`` to ``dst`` atomically (temporary file, fsync, rename, folder fsync); bytes copied."""
    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    n = 0
    with open(src, "rb") as fin, atomic_writer(dst, mode=mode) as fout:
        for block in iter(lambda: fin.read(HASH_BLOCK), b""):
            fout.write(block)
            n += len(block)
            if on_block:
                on_block(len(block))
    return n


def backup_store(state_dir: Path, dest: Path, *, with_keys: bool = False, force: bool = False,
                 progress: Progress | None = None) -> BackupReport:
    """Copy the store at ``state_dir`` into ``dest`` while the daemon may run, then verify the copy.

    Refuses a ``dest`` that already holds a store unless ``force``. Keys are copied only with
    ``with_keys`` (modes kept, the folder 0700). Restoring is pointing ``[server] state_dir`` at ``dest``.
    """
    state_dir, dest = Path(state_dir), Path(dest)
    src_db = state_dir / DB_NAME
    if not src_db.is_file():
        raise StoreError(f"no store at {src_db}; check [server] state_dir in the config")
    if dest.resolve() == state_dir.resolve():
        raise StateError(f"{dest} is the store itself; give another folder to back up into")
    if (dest / DB_NAME).exists() and not force:
        raise StateError(f"{dest} already holds a store ({dest / DB_NAME}); give an empty folder, or pass "
                         f"--force to overwrite it")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    report = BackupReport(str(state_dir), str(dest))

    # 1. the database: one backup step is one read snapshot of the last commit (an open write
    #    transaction elsewhere is simply not in it); written beside the target, then renamed
    tmp = dest / f".{DB_NAME}.{os.getpid()}.tmp"
    for stale in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        stale.unlink(missing_ok=True)
    src = open_readonly(state_dir)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot back up {src_db}: {exc}; `osfl-server verify-store` checks it") from exc
    finally:
        src.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o600)
    # an old copy's WAL must not be replayed onto the new file
    for stale in (dest / f"{DB_NAME}-wal", dest / f"{DB_NAME}-shm"):
        stale.unlink(missing_ok=True)
    os.replace(tmp, dest / DB_NAME)
    fsync_dir(dest, strict=True)
    report.database_bytes = (dest / DB_NAME).stat().st_size

    # 2. the files the copied database names (not what the live store names now)
    copy = open_readonly(dest)
    try:
        blob_rows = copy.execute("SELECT DISTINCT path, size FROM payloads WHERE path IS NOT NULL").fetchall()
        art_rows = copy.execute("SELECT DISTINCT path, size FROM artifacts").fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"the copied database {dest / DB_NAME} cannot be read: {exc}") from exc
    finally:
        copy.close()
    total = sum(r[1] for r in blob_rows) + sum(r[1] for r in art_rows)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    for rows, what in ((blob_rows, "blobs"), (art_rows, "artifacts")):
        for rel, size in rows:
            src_file, dst_file = state_dir / rel, dest / rel
            if dst_file.is_file() and dst_file.stat().st_size == size:
                # named by its sha256, so the same name is the same bytes; verification below re-hashes it
                tick(size)
                n = size
            else:
                try:
                    n = _copy_file(src_file, dst_file, on_block=tick)
                except FileNotFoundError:
                    report.missing.append(rel)
                    continue
            setattr(report, what, getattr(report, what) + 1)
            setattr(report, f"{what}_bytes", getattr(report, f"{what}_bytes") + n)

    # 3. the keys, only when asked: a backup without them cannot impersonate the server
    if with_keys:
        keys_src, keys_dst = state_dir / KEYS_DIR, dest / KEYS_DIR
        if not keys_src.is_dir():
            raise StoreError(f"no keys at {keys_src}; back up without --with-keys")
        keys_dst.mkdir(exist_ok=True, mode=0o700)
        os.chmod(keys_dst, 0o700)
        for f in sorted(keys_src.iterdir()):
            if f.is_file():
                _copy_file(f, keys_dst / f.name, mode=f.stat().st_mode & 0o777)
                report.keys.append(f"{KEYS_DIR}/{f.name}")
        fsync_dir(keys_dst, strict=True)

    # 4. the copy must pass the same check as the store
    report.verify = verify_store(dest)
    log.info("backup: %s -> %s, %d blobs, %d artifacts, keys %s, %s", state_dir, dest, report.blobs,
             report.artifacts, "copied" if report.keys else "not copied",
             "verified" if report.verify.clean else "DAMAGED")
    return report


__all__ = ["BackupReport", "Damage", "VerifyReport", "backup_store", "hash_stream", "human_bytes",
           "open_readonly", "payload_problem", "verify_store"]
