"""Request handlers without a socket: a store in a temporary folder, signed frames made in-process."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack
from protocol.envelope import decode_reply, encode_request
from protocol.keys import KeyPair
from server_daemon.ingest.config import load_config, render_config
from server_daemon.ingest.handlers import Handlers
from server_daemon.ingest.store import Store

CLASSES = ["cat", "dog", "car", "bus"]


@dataclass
class Harness:
    cfg: object
    store: Store
    handlers: Handlers

    def call(self, kind: str, key: KeyPair, body=None, *, federation: str | None = None, raw: bytes | None = None,
             include_public_key: bool = False):
        """One request through ``Handlers.handle`` inside a transaction, as the daemon's batch does."""
        payload = raw if raw is not None else msgpack.packb(body or {}, use_bin_type=True)
        frames = encode_request(kind, payload, key.signing, federation=federation,
                                include_public_key=include_public_key)
        self.handlers.refresh(force=True)  # the harness writes through the same connection as the handlers
        ((identity, reply),) = self.handlers.handle_batch([[b"site"] + frames])
        assert identity == b"site"
        return decode_reply(reply)

    def site(self, name: str = "site-a", accept: bool = True) -> KeyPair:
        key = KeyPair.generate()
        r = self.call("enroll", key, {"site": name, "curve": key.curve_public.decode(), "name": name},
                      include_public_key=True)
        assert r.ok, r.message
        if accept:
            self.store.transition(key.fingerprint, "accept")
        return key

    def federation(self, fed_id: str = "fed1", methods=("class_prompts", "captions"), classes=CLASSES,
                   images_per_class: int = 4, quorum: int = 2):
        return self.store.create_federation(fed_id, list(classes), list(methods), images_per_class, quorum)

    def upload(self, key: KeyPair, raw: bytes, federation: str = "fed1"):
        return self.call("upload", key, raw=raw, federation=federation)

    def upload_chunked(self, key: KeyPair, raw: bytes, kind: str, federation: str = "fed1", chunk: int = 4096,
                       commit_federation: str | None = None):
        """begin, every chunk, commit: the reply of the first step that fails, else the commit's."""
        sha = hashlib.sha256(raw).digest()
        r = self.call("upload_begin", key, {"kind": kind, "size": len(raw), "sha256": sha, "chunk_size": chunk},
                      federation=federation)
        if not r.ok or not r.data.get("upload_id"):
            return r
        uid = r.data["upload_id"]
        for off in range(r.data["offset"], len(raw), chunk):
            rc = self.call("upload_chunk", key, {"upload_id": uid, "offset": off, "data": raw[off:off + chunk]},
                           federation=federation)
            if not rc.ok:
                return rc
        return self.call("upload_commit", key, {"upload_id": uid}, federation=commit_federation or federation)


def make_harness(tmp_path) -> Harness:
    path = tmp_path / "server.toml"
    path.write_text(render_config("tcp://127.0.0.1:0", "state"))
    cfg = load_config(path)
    store = Store(cfg.state_dir, create=True)
    return Harness(cfg, store, Handlers(cfg, store))
