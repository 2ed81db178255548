"""Request handlers of the ingest daemon: policy, apart from the socket and the loop.

:class:`Handlers` turns one request's frames into its reply frames, reading and writing the store
inside the transaction its caller opened (the daemon's loop opens one per batch: group commit).
It holds the caches of sites and federations and the replay guard, and knows nothing of ZeroMQ,
so tests call :meth:`Handlers.handle` directly with frames made by ``protocol.envelope``.
"""
from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field

from zmq.utils import z85

from protocol import errors as E
from protocol.artifacts import check_name as check_artifact_name
from protocol.constants import PROTOCOL_VERSION
from protocol.files import HashingReader
from protocol.envelope import Limits, ReplayGuard, Request, encode_reply, now_ms, open_request, unpack_body
from protocol.ids import ID_RULE, is_id
from protocol.payloads import PAYLOAD_KINDS, check_against_federation, validate_stream

from .config import ServerConfig
from .store import Client, Store
from .supervisor import job_summary

log = logging.getLogger(__name__)


def free_bytes(path) -> int:
    """Bytes free for this user on the filesystem of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def is_curve_key(value) -> bool:
    """A z85-encoded CURVE public key: 40 characters that decode to 32 bytes."""
    if not isinstance(value, str) or len(value) != 40:
        return False
    try:
        return len(z85.decode(value.encode("ascii"))) == 32
    except Exception:  # z85.decode raises KeyError, ValueError or struct.error on what is not z85
        return False


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL or the OS's ENOSPC/EDQUOT, wherever they surface."""
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)

#: kinds whose handler writes more than one statement: they run inside a savepoint
MULTI_WRITE_KINDS = frozenset({"enroll", "upload_begin", "upload_commit"})
#: kinds that store nothing (their message id aside): answered even when the batch cannot commit
READ_ONLY_KINDS = frozenset({"ping", "status", "federation", "artifact_info", "artifact_chunk"})


def upload_id_for(fingerprint: str, federation: str, kind: str, sha256: bytes) -> str:
    """Deterministic, so a site that lost its connection resumes the same upload after a restart."""
    return hashlib.sha256(f"{fingerprint}|{federation}|{kind}|".encode() + sha256).hexdigest()[:32]


@dataclass
class Stats:
    started_ms: int = field(default_factory=now_ms)
    requests: int = 0
    batches: int = 0
    stored: int = 0
    rejected: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "batches": self.batches, "stored": self.stored,
                "rejected": dict(self.rejected)}


class Handlers:
    """Every request kind of SPEC.md, against one store."""

    def __init__(self, cfg: ServerConfig, store: Store, *, stats: Stats | None = None,
                 guard: ReplayGuard | None = None):
        self.cfg = cfg
        self.store = store
        self.stats = stats or Stats()
        self.limits = Limits(max_body=cfg.limits.max_body_bytes, min_version=cfg.limits.min_protocol_version,
                             max_version=PROTOCOL_VERSION, window_s=cfg.limits.replay_window_s)
        self.guard = guard or ReplayGuard(cfg.limits.replay_window_s)
        self._clients: dict[str, Client] = {}
        self._feds: dict = {}
        self._data_version = -1
        self._read_only: set[bytes] = set()

    def load_recent_ids(self) -> None:
        """After a restart: the replay guard learns the ids of the requests of the last two windows."""
        since = now_ms() - int(2 * self.cfg.limits.replay_window_s * 1000)
        self.store.prune_seen(since)
        for msg_id, created in self.store.recent_msg_ids(since):
            self.guard.add(msg_id, created)

    def refresh(self, force: bool = False) -> None:
        """Reload sites and federations when another connection (the operator's CLI) changed them."""
        version = self.store.data_version()
        if force or version != self._data_version:
            self._clients = {c.fingerprint: c for c in self.store.clients()}
            self._feds = {f.id: f for f in self.store.federations()}
            self._data_version = version

    def invalidate(self) -> None:
        """Our own writes (the supervisor's): reload the caches before the next batch."""
        self._data_version = -1

    def handle_batch(self, batch: list[list[bytes]],
                     curve_keys: list[str | None] | None = None) -> list[tuple[bytes, list[bytes]]]:
        """Group commit: every request of ``batch`` (ROUTER identity first) in one transaction.

        Returns ``(identity, reply frames)`` per request, to be sent once this has returned: the
        COMMIT (the fsync) is behind every acknowledgement. When the disk is full, nothing of the
        batch is acknowledged: every request gets DISK_FULL, and the daemon goes on.
        """
        self.refresh()
        self.stats.batches += 1
        self.stats.requests += len(batch)
        self._read_only = set()
        done: list[tuple[bytes, bytes, list[bytes]]] = []
        remember: list[tuple[bytes, int]] = []
        keys = curve_keys or [None] * len(batch)
        try:
            with self.store.transaction():
                for frames, key in zip(batch, keys):
                    msg_id, reply = self.handle_request(frames[1:], remember, key)
                    done.append((frames[0], msg_id, reply))
                if remember:
                    self.store.remember(remember)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.error("the disk of %s is full: a batch of %d requests was not stored (%s)", self.store.state_dir,
                      len(batch), exc)
            self.invalidate()
            err = E.DiskFull("the server's disk is full; nothing of this request was stored: retry later")
            self.stats.rejected[err.code] += len(batch)
            # reads are still answered (their ids stay in the in-memory replay guard); writes are not
            answered = {msg_id: reply for _, msg_id, reply in done if msg_id in self._read_only}
            ids = [msg_id for _, msg_id, _ in done] + [b""] * (len(batch) - len(done))
            return [(frames[0], answered.get(msg_id) or encode_reply(msg_id, error=err))
                    for frames, msg_id in zip(batch, ids)]
        return [(identity, reply) for identity, _, reply in done]

    def handle(self, frames: list[bytes], remember: list, curve_key: str | None = None) -> list[bytes]:
        """One request (its frames after the ROUTER identity) inside the caller's transaction; the reply frames."""
        return self.handle_request(frames, remember, curve_key)[1]

    def handle_request(self, frames: list[bytes], remember: list,
                       curve_key: str | None = None) -> tuple[bytes, list[bytes]]:
        """``(msg_id, reply frames)`` of one request; ``curve_key`` is the connection's (z85), when known.

        Every request whose signature checked out is remembered, refused or not, so a refused frame
        replayed after a restart is still a replay. Handlers check everything before they write, and
        the upload and chunk handlers write one statement last, so they need no savepoint of their
        own (a savepoint costs two statements per request on the hot path); handlers that write
        more than once run inside one.
        """
        msg_id = b""
        db = self.store.db
        savepoint = False
        try:
            req = open_request(frames, self._key_for, self.guard, limits=self.limits)
            msg_id = req.header.msg_id
            remember.append((msg_id, req.header.created_ms))
            if req.header.kind in READ_ONLY_KINDS:
                self._read_only.add(msg_id)
            if curve_key is not None:
                self._check_curve(req, curve_key)
            savepoint = req.header.kind in MULTI_WRITE_KINDS
            if savepoint:
                db.execute("SAVEPOINT req")
            data = self._dispatch(req)
            if savepoint:
                db.execute("RELEASE req")
            return msg_id, encode_reply(msg_id, data=data)
        except Exception as exc:
            if savepoint and db.in_transaction:
                db.execute("ROLLBACK TO req")
                db.execute("RELEASE req")
            if is_disk_full(exc):
                if not db.in_transaction:  # SQLite rolled the whole batch back: it cannot be acknowledged
                    raise
                log.error("the disk of %s is full: %s", self.store.state_dir, exc)
                exc = E.DiskFull("the server's disk is full; nothing of this request was stored: retry later")
            elif not isinstance(exc, E.ProtocolError):
                log.exception("internal error while handling a request")
                exc = E.InternalError()
            cleanup = getattr(exc, "after_rollback", None)
            if cleanup is not None:
                cleanup()
            self.stats.rejected[exc.code] += 1
            log.debug("rejected %s: %s", exc.code, exc.message)
            return msg_id, encode_reply(msg_id, error=exc)

    def _check_curve(self, req: Request, curve_key: str) -> None:
        """The connection must use the CURVE key the site enrolled with: a signed frame copied onto
        another connection is refused (the signature proves the sender, CURVE ties it to the channel)."""
        if req.header.kind == "enroll":
            try:
                claimed = unpack_body(req.body).get("curve")
            except E.ProtocolError:
                return  # _enroll reports the malformed body
            if isinstance(claimed, str) and claimed != curve_key:
                raise E.CurveKeyMismatch("the 'curve' key in this enrolment is not the key of the connection it "
                                         "came on; enrol with the site's own keys (`osfl-edge enroll`)")
            return
        c = self._clients.get(req.header.fingerprint)
        if c is not None and c.curve_key != curve_key:
            log.warning("SECURITY: a request signed by site %s (%s) came on a connection with another CURVE key: "
                        "refused", c.site, c.fingerprint)
            raise E.CurveKeyMismatch(f"this request is signed by site {c.site}, but the connection's CURVE key is "
                                     f"not the one it enrolled with; use the site's own key files")

    def _key_for(self, header) -> bytes:
        c = self._clients.get(header.fingerprint)
        if c is None:
            raise E.UnknownKey(f"key {header.fingerprint} is not enrolled here; run `osfl-edge enroll`")
        return c.public_key

    def _accepted(self, req: Request) -> Client:
        c = self._clients[req.header.fingerprint]
        if c.state == "accepted":
            return c
        err = {"pending": E.KeyPending, "rejected": E.KeyRejected, "revoked": E.KeyRevoked}[c.state]
        raise err(f"site {c.site} ({c.fingerprint}) is {c.state}"
                  + ("; ask the operator to run `osfl-server clients accept " + c.fingerprint + "`"
                     if c.state == "pending" else "; contact the operator"))

    def _dispatch(self, req: Request) -> dict:
        kind = req.header.kind
        if kind == "enroll":
            return self._enroll(req)
        if kind == "ping":
            return {"version": PROTOCOL_VERSION, "min_version": self.limits.min_version, "server_time_ms": now_ms()}
        if kind == "status":
            return self._status(req)
        client = self._accepted(req)
        if kind == "federation":
            return self._federation(req, client).public()
        if kind == "upload":
            return self._upload(req, client)
        if kind == "upload_begin":
            return self._upload_begin(req, client)
        if kind == "upload_chunk":
            return self._upload_chunk(req, client)
        if kind == "upload_commit":
            return self._upload_commit(req, client)
        if kind == "artifact_info":
            return self._artifact_info(req, client)
        if kind == "artifact_chunk":
            return self._artifact_chunk(req, client)
        raise E.UnknownKind(f"kind {kind!r} is not handled by this server")

    # ---- admission --------------------------------------------------------------------------

    def _enroll(self, req: Request) -> dict:
        body = unpack_body(req.body)
        site, curve, name = body.get("site"), body.get("curve"), body.get("name") or ""
        if not is_id(site):
            raise E.MalformedBody(f"'site' must be a site id: {ID_RULE}")
        if not is_curve_key(curve):
            raise E.MalformedBody("'curve' must be the site's CURVE public key: 40 characters of z85")
        if not isinstance(name, str) or len(name) > 200 or not name.isprintable():
            raise E.MalformedBody("'name' must be printable text of at most 200 characters (no control or escape "
                                  "characters)")
        fp = req.header.fingerprint
        known = self._clients.get(fp)
        if known is not None:
            return {"state": known.state, "fingerprint": fp, "site": known.site}
        other = self.store.client_by_site(site)
        if other is not None:
            log.warning("SECURITY: site %r enrolled with key %s, but it is registered with key %s: refused "
                        "(possible impersonation; a site that really changed its key needs the operator to "
                        "revoke the old one and remove it)", site, fp, other.fingerprint)
            err = E.KeyConflict(f"site id {site!r} is registered with another key; if this site's key really "
                                f"changed, ask the operator")
            # the refusal must be on record although the request's own writes roll back
            err.after_rollback = lambda: self.store.audit("site", "enroll-refused-key-conflict", fp, site,
                                                          f"registered fingerprint {other.fingerprint}")
            raise err
        pending = self.store.count_pending()
        if pending >= self.cfg.limits.max_pending_sites:
            log.warning("enrolment of %r refused: %d sites already await the operator", site, pending)
            raise E.QuotaExceeded(f"{pending} enrolments already await the operator's decision; try again once "
                                  f"the operator has accepted or rejected them")
        self.store.add_pending_client(fp, site, req.header.public_key, curve, name)
        self._data_version = -1  # our own write: reload the cache next batch
        self._clients[fp] = self.store.client(fp)
        return {"state": "pending", "fingerprint": fp, "site": site}

    def _status(self, req: Request) -> dict:
        c = self._clients[req.header.fingerprint]
        uploads = [{"federation": p.federation, "kind": p.kind, "payload_id": p.id, "size": p.size,
                    "received_ms": p.received_ms}
                   for p in self.store.payloads(fingerprint=c.fingerprint)]
        feds = {}
        if c.state == "accepted":
            for f in self.store.federations():
                if not f.has_member(c.site):
                    continue
                job = self.store.latest_job(f.id)
                feds[f.id] = {"state": f.state, "received": self.store.count_sites(f.id), "quorum": f.quorum,
                              "classes": len(f.classes), "methods": list(f.methods),
                              "job": job_summary(job) if job else "",
                              "model": bool(self.store.artifact(f"model/{f.id}"))}
        return {"site": c.site, "state": c.state, "fingerprint": c.fingerprint, "uploads": uploads,
                "federations": feds}

    # ---- uploads ----------------------------------------------------------------------------

    def _federation(self, req: Request, client: Client, *, for_upload: bool = False):
        """The request's federation, if this site belongs to it; one it does not is as unknown to it."""
        fed_id = req.header.federation
        if not fed_id:
            raise E.MalformedHeader(f"a {req.header.kind} request names its federation in header field 'fed'")
        fed = self._feds.get(fed_id)
        if fed is None or not fed.has_member(client.site):
            raise E.UnknownFederation(f"site {client.site!r} belongs to no federation {fed_id!r} on this server; ask "
                                      f"the operator for the federation's id and to add this site to it")
        if for_upload and fed.state != "open":
            raise E.FederationClosed(f"federation {fed_id!r} is {fed.state} and takes no more uploads")
        return fed

    def _check_kind(self, fed, kind: str) -> None:
        if kind not in PAYLOAD_KINDS:
            raise E.InvalidPayload(f"payload kind {kind!r} is not one of {', '.join(PAYLOAD_KINDS)}")
        if kind not in fed.methods:
            raise E.MethodNotAllowed(f"federation {fed.id!r} allows {', '.join(fed.methods)}; got {kind}")

    def _existing(self, fed_id: str, fp: str, kind: str, sha: bytes, *, data: bytes | None = None,
                  path=None) -> dict | None:
        """The reply for a payload this site already stored here (a duplicate), or None.

        A duplicate whose stored copy is damaged is repaired from ``data`` or ``path`` (the same
        bytes, digest checked); without them (``upload_begin``) it is not a duplicate, so the site
        sends the bytes again.
        """
        prior = self.store.payload_for(fed_id, fp, kind)
        if prior is None:
            return None
        if prior.sha256 != sha:
            raise E.PayloadConflict(f"this site already uploaded a different {kind} payload to {fed_id!r} "
                                    f"(sha256 {prior.sha256.hex()[:16]}...); one upload per site and method")
        damage = self.store.payload_damage(prior.id)
        if damage:
            if data is None and path is None:
                log.warning("payload %d is damaged (%s): its site is sending it again", prior.id, damage)
                return None
            self.store.repair_payload(prior.id, data=data, path=path)
            log.warning("payload %d was damaged (%s) and is repaired from its site's re-upload", prior.id, damage)
        return {"payload_id": prior.id, "sha256": prior.sha256, "size": prior.size, "duplicate": True}

    def _validate_payload(self, fed, raw: bytes) -> dict:
        """The one contract (``protocol.payloads``), the same the edge runs before upload; the head.

        Checked as it streams, like a chunked payload: the memory a hostile body can cost is
        bounded by the stream's buffer, not by the body's size.
        """
        head = validate_stream(io.BytesIO(raw))
        check_against_federation(head, fed)
        return head

    def _check_space(self) -> None:
        """Refuse new data early when the state directory's filesystem is below its free-space floor."""
        floor = self.cfg.limits.min_free_bytes
        if floor and free_bytes(self.store.state_dir) < floor:
            raise E.DiskFull(f"the server has less than {floor} bytes of free disk space; nothing was stored: "
                             f"retry later (the operator has been told)")

    def _upload(self, req: Request, client: Client) -> dict:
        fed = self._federation(req, client, for_upload=True)
        self._check_space()
        payload = self._validate_payload(fed, req.body)
        sha = req.header.body_sha256
        # insert first, look only on a conflict: one statement on the hot path instead of two
        pid = self.store.insert_payload(fed.id, client.fingerprint, payload["kind"], sha, len(req.body),
                                        req.header.msg_id, inline=req.body)
        if pid is None:
            return self._existing(fed.id, client.fingerprint, payload["kind"], sha, data=req.body)
        self.stats.stored += 1
        log.debug("stored payload %d from %s for %s (%d bytes)", pid, client.site, fed.id, len(req.body))
        return {"payload_id": pid, "sha256": sha, "size": len(req.body), "duplicate": False}

    def _upload_begin(self, req: Request, client: Client) -> dict:
        fed = self._federation(req, client, for_upload=True)
        body = unpack_body(req.body)
        kind, size, sha, chunk = body.get("kind"), body.get("size"), body.get("sha256"), body.get("chunk_size")
        if not (isinstance(kind, str) and isinstance(size, int) and isinstance(sha, bytes) and len(sha) == 32
                and isinstance(chunk, int)):
            raise E.MalformedBody("upload_begin needs kind (str), size (int), sha256 (32 bytes), chunk_size (int)")
        self._check_kind(fed, kind)
        if not (0 < size <= self.cfg.limits.max_payload_bytes):
            raise E.PayloadTooLarge(f"payloads may be 1 to {self.cfg.limits.max_payload_bytes} bytes; got {size}")
        if not (4096 <= chunk <= self.cfg.limits.max_body_bytes - 4096):
            raise E.MalformedBody(f"chunk_size must be 4096..{self.cfg.limits.max_body_bytes - 4096}; got {chunk}")
        dup = self._existing(fed.id, client.fingerprint, kind, sha)
        if dup:
            return dup | {"upload_id": "", "offset": size}
        self._check_space()
        uid = upload_id_for(client.fingerprint, fed.id, kind, sha)
        if self.store.upload(uid) is None:
            n, announced = self.store.open_uploads_of(client.fingerprint)
            lim = self.cfg.limits
            if n >= lim.max_open_uploads_per_site:
                raise E.QuotaExceeded(f"site {client.site} already has {n} chunked uploads open (at most "
                                      f"{lim.max_open_uploads_per_site}); finish or let them expire first")
            if announced + size > lim.max_open_upload_bytes_per_site:
                raise E.QuotaExceeded(f"site {client.site}'s open uploads would announce {announced + size} bytes "
                                      f"(at most {lim.max_open_upload_bytes_per_site}); finish the others first")
        offset = self.store.open_upload(uid, fed.id, client.fingerprint, kind, size, sha, chunk)
        return {"upload_id": uid, "offset": offset, "chunk_size": chunk}

    def _open_upload(self, uid, client: Client) -> dict:
        up = self.store.upload(uid) if isinstance(uid, str) else None
        if up is None or up["fingerprint"] != client.fingerprint:
            raise E.UploadNotFound(f"no open upload {str(uid)[:40]!r} for this site; start again with upload_begin")
        return up

    def _upload_chunk(self, req: Request, client: Client) -> dict:
        body = unpack_body(req.body)
        up = self._open_upload(body.get("upload_id"), client)
        offset, data = body.get("offset"), body.get("data")
        if not isinstance(offset, int) or not isinstance(data, bytes) or not data:
            raise E.MalformedBody("upload_chunk needs offset (int) and data (non-empty bytes)")
        if offset < up["offset"]:
            # a retry of a chunk that already landed: idempotent, say where to continue
            return {"offset": up["offset"]}
        if offset > up["offset"]:
            raise E.ChunkOutOfOrder(f"the server holds {up['offset']} bytes of this upload; got a chunk at {offset}")
        if offset + len(data) > up["size"]:
            raise E.PayloadTooLarge(f"this chunk ends at byte {offset + len(data)}, past the announced "
                                    f"size {up['size']}")
        self._check_space()
        return {"offset": self.store.write_chunk(up["upload_id"], offset, data)}

    def _upload_commit(self, req: Request, client: Client) -> dict:
        body = unpack_body(req.body)
        up = self._open_upload(body.get("upload_id"), client)
        if up["offset"] != up["size"]:
            raise E.ChunkOutOfOrder(f"the server holds {up['offset']} of {up['size']} bytes; send the rest first")
        fed = self._federation(req, client, for_upload=True)
        try:
            if up["federation"] != fed.id:
                raise E.InvalidPayload(f"this upload was begun for federation {up['federation']!r}, "
                                       f"not {fed.id!r}; commit it under the federation it was begun for")
            # one pass over the file checks the payload while it streams (bounded memory, whatever its
            # size: never stored unparsed) and computes its digest
            source = self.store.assembled(up["upload_id"], up["sha256"])
            if source is None:
                raise E.UploadNotFound("the server no longer holds the bytes of this upload; start it again")
            with open(source, "rb") as fh:
                reader = HashingReader(fh)
                try:
                    head, invalid = validate_stream(reader), None
                except E.InvalidPayload as exc:
                    head, invalid = None, exc
                digest = reader.drain()
            if digest != up["sha256"]:
                log.warning("upload %s of site %s: %d bytes assembled with sha256 %s, %s announced", up["upload_id"],
                            client.site, up["size"], digest.hex()[:16], up["sha256"].hex()[:16])
                raise E.PayloadDigestMismatch(f"the assembled payload has sha256 {digest.hex()[:16]}..., the upload "
                                              f"announced {up['sha256'].hex()[:16]}...; upload it again")
            if invalid is not None:
                raise invalid
            if head["kind"] != up["kind"]:
                raise E.InvalidPayload(f"the payload is a {head['kind']} payload, but its upload was begun as "
                                       f"{up['kind']}; begin it again with its own kind")
            check_against_federation(head, fed)
        except E.RequestError as err:
            err.after_rollback = lambda: self.store.reset_upload(up["upload_id"])
            raise
        rel = self.store.finish_upload(up["upload_id"], digest)
        pid = self.store.insert_payload(fed.id, client.fingerprint, up["kind"], digest, up["size"],
                                        req.header.msg_id, path=rel)
        if pid is None:  # stored before (a damaged copy being repaired, or it arrived in one piece meanwhile)
            return self._existing(fed.id, client.fingerprint, up["kind"], digest, path=self.store.state_dir / rel)
        self.stats.stored += 1
        return {"payload_id": pid, "sha256": digest, "size": up["size"], "duplicate": False}

    # ---- downloads of signed artifacts --------------------------------------------------------

    def _artifact(self, req: Request, client: Client) -> tuple[dict, dict]:
        body = unpack_body(req.body)
        name = check_artifact_name(body.get("name"))
        if name.startswith("model/"):  # a federation's model goes to its members only
            fed = self._feds.get(name.split("/", 1)[1])
            if fed is None or not fed.has_member(client.site):
                raise E.NotFound(f"the server has no {name!r} for site {client.site!r}")
        art = self.store.artifact(name)
        if art is None:
            raise E.NotFound(f"the server has no {name!r} yet" + (
                "; the federation's model appears once training has finished" if name.startswith("model/") else ""))
        return body, art

    def _artifact_info(self, req: Request, client: Client) -> dict:
        _, art = self._artifact(req, client)
        return {"manifest": art["manifest"], "signature": art["signature"],
                "chunk_size": self.cfg.limits.chunk_size}

    def _artifact_chunk(self, req: Request, client: Client) -> dict:
        body, art = self._artifact(req, client)
        offset, length = body.get("offset"), body.get("length")
        if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset <= art["size"]
                and 0 < length <= self.cfg.limits.chunk_size):
            raise E.MalformedBody(f"artifact_chunk needs 0 <= offset <= {art['size']} and "
                                  f"0 < length <= {self.cfg.limits.chunk_size}")
        sha = body.get("sha256")
        if sha is not None and sha != art["sha256"]:
            raise E.NotFound(f"{art['name']} was republished since this download began; start it again")
        with open(self.store.state_dir / art["path"], "rb") as f:
            f.seek(offset)
            return {"data": f.read(length)}

