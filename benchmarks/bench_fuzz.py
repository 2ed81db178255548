"""Fuzz at scale: mutated inputs into the frame decoder, every payload kind's parsers and the handlers.

Targets (each gets N mutants of valid inputs; mutations: bit flips, byte overwrites with
interesting values, truncation, insertion, deletion, duplication of a span, msgpack type bytes):

* ``frames``: ``protocol.envelope.open_request`` on mutated copies of valid signed requests
  (upload, enroll, status, chunk). A mutant that differs from the original but is accepted is a
  forgery: it must never happen.
* ``payloads``: for every registered kind, ``decode_payload`` and ``validate_stream`` on mutated
  valid payloads; both must agree (accept or refuse alike) and raise only ``InvalidPayload``.
* ``handlers``: mutated signed frames (re-signed after the mutation of the body, so they reach
  the handlers) through ``Handlers.handle_batch`` on a real store; an ``INTERNAL`` reply means
  an exception the handlers did not expect, and counts as a crash.

Every outcome is one column: refused with the project's own error; accepted (a valid input after
mutation: allowed for re-signed handler inputs and for payloads that stay valid); unchanged (the
mutation happened to give the original back); crashed (any other exception, or INTERNAL); forged
(a changed signed frame accepted); disagreed (the two payload checks differ). Only the first
three may be non-zero. Usage::

    python benchmarks/bench_fuzz.py [--n 1000000] [--seed 1] [--targets frames,payloads,handlers] [--json]

``tests/protocol/test_fuzz_scale.py`` runs 10,000 per target in CI.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402

from protocol import envelope as env  # noqa: E402
from protocol import errors as E  # noqa: E402
from protocol.keys import KeyPair  # noqa: E402
from protocol.methods import PAYLOAD_KINDS, method  # noqa: E402
from protocol.payloads import decode_payload, validate_stream  # noqa: E402

CLASSES = ["cat", "dog", "car", "bus"]
INTERESTING = [0x00, 0xFF, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC3, 0xCC, 0xCD, 0xCE, 0xCF, 0xD9, 0xDA, 0xDB,
               0xDC, 0xDD, 0xDE, 0xDF, 0x90, 0x9F, 0x80, 0x8F, 0xA0, 0xBF, 0xC4, 0xC5, 0xC6]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits of ``data``."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        pos = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos] = rng.choice(INTERESTING)
        elif op == 2:
            del b[rng.randrange(len(b) + 1):]
        elif op == 3:
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4 and b:
            del b[pos:pos + rng.randint(1, 8)]
        elif op == 5 and b:
            end = min(len(b), pos + rng.randint(1, 64))
            b[pos:pos] = b[pos:end] * rng.randint(1, 4)
        elif b:
            b[pos] = rng.choice([0xDC, 0xDD, 0xDE, 0xDF])
            b[pos + 1:pos + 1] = rng.choice([b"\xff\xff", b"\xff\xff\xff\xff", b"\x00\x00"])
    return bytes(b)


def fuzz_frames(n: int, rng: random.Random) -> collections.Counter:
    key = KeyPair.generate()
    payload = msgpack.packb(method("class_prompts").example("fed1", CLASSES), use_bin_type=True)
    originals = [
        env.encode_request("upload", payload, key.signing, federation="fed1"),
        env.encode_request("enroll", env.pack({"site": "s", "curve": key.curve_public.decode(), "name": ""}),
                           key.signing, include_public_key=True),
        env.encode_request("status", b"", key.signing),
        env.encode_request("upload_chunk", env.pack({"upload_id": "u" * 32, "offset": 0, "data": b"x" * 64}),
                           key.signing, federation="fed1"),
    ]
    counts: collections.Counter = collections.Counter()
    for i in range(n):
        frames = list(rng.choice(originals))
        which = rng.randrange(4)
        frames[which] = mutate(frames[which], rng)
        if rng.random() < 0.05:  # frame count itself
            frames = frames[:rng.randrange(5)] if rng.random() < 0.5 else frames + [b"x"]
        original = next((o for o in originals if o == frames), None)
        try:
            env.open_request(frames, lambda h: key.public, None)
        except E.ProtocolError:
            counts["refused"] += 1
            continue
        except Exception as exc:  # noqa: BLE001 - what the fuzzer is for
            counts["crashed"] += 1
            counts[f"crash {type(exc).__name__}"] += 1
            continue
        counts["unchanged" if original is not None else "forged"] += 1
    return counts


def fuzz_payloads(n: int, rng: random.Random) -> collections.Counter:
    originals = [msgpack.packb(method(k).example("fed1", CLASSES), use_bin_type=True) for k in PAYLOAD_KINDS]
    counts: collections.Counter = collections.Counter()
    for _ in range(n):
        raw = mutate(rng.choice(originals), rng)
        verdicts = []
        for check in (lambda: decode_payload(raw), lambda: validate_stream(io.BytesIO(raw))):
            try:
                check()
                verdicts.append("accepted")
            except E.InvalidPayload:
                verdicts.append("refused")
            except Exception as exc:  # noqa: BLE001
                verdicts.append("crashed")
                counts[f"crash {type(exc).__name__}"] += 1
        if "crashed" in verdicts:
            counts["crashed"] += 1
        elif verdicts[0] != verdicts[1]:
            counts["disagreed"] += 1  # the in-memory and streaming checks must give one verdict
        else:
            counts[verdicts[0]] += 1
    return counts


def fuzz_handlers(n: int, rng: random.Random) -> collections.Counter:
    from server_daemon.ingest.config import load_config, render_config
    from server_daemon.ingest.handlers import Handlers
    from server_daemon.ingest.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="osfl-fuzz-"))
    (tmp / "server.toml").write_text(render_config("tcp://127.0.0.1:0", "state"))
    cfg = load_config(tmp / "server.toml")
    store = Store(cfg.state_dir, create=True)
    handlers = Handlers(cfg, store)
    store.create_federation("fed1", CLASSES, list(PAYLOAD_KINDS), 4, 1)
    key = KeyPair.generate()
    enroll = env.encode_request("enroll", env.pack({"site": "s", "curve": key.curve_public.decode()}), key.signing,
                                include_public_key=True)
    handlers.handle_batch([[b"id"] + enroll])
    store.transition(key.fingerprint, "accept")
    bodies = [("upload", msgpack.packb(method(k).example("fed1", CLASSES), use_bin_type=True)) for k in PAYLOAD_KINDS]
    bodies += [("upload_begin", env.pack({"kind": "captions", "size": 5000, "sha256": b"s" * 32, "chunk_size": 4096})),
               ("upload_chunk", env.pack({"upload_id": "u" * 32, "offset": 0, "data": b"x" * 64})),
               ("upload_commit", env.pack({"upload_id": "u" * 32})),
               ("artifact_info", env.pack({"name": "model/fed1"})),
               ("federation", b""), ("status", b""), ("enroll", enroll[2])]
    counts: collections.Counter = collections.Counter()
    for i in range(n):
        kind, body = rng.choice(bodies)
        # re-signed after the mutation, so the mutant passes the envelope and reaches the handler
        frames = env.encode_request(kind, mutate(body, rng), key.signing, federation="fed1",
                                    include_public_key=kind == "enroll")
        if i % 500 == 0:
            handlers.refresh(force=True)
        try:
            ((_, reply),) = handlers.handle_batch([[b"id"] + frames])
            r = env.decode_reply(reply)
        except Exception as exc:  # noqa: BLE001
            counts["crashed"] += 1
            counts[f"crash {type(exc).__name__}"] += 1
            continue
        if r.code == "INTERNAL":
            counts["crashed"] += 1
        else:
            counts["accepted" if r.ok else "refused"] += 1
    store.close()
    return counts


TARGETS = {"frames": fuzz_frames, "payloads": fuzz_payloads, "handlers": fuzz_handlers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="mutants per target")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--json", action="store_true", help="print one JSON object (for tests)")
    args = ap.parse_args(argv)
    results = {}
    for name in args.targets.split(","):
        t0 = time.perf_counter()
        counts = TARGETS[name](args.n, random.Random(f"{args.seed}-{name}"))
        results[name] = dict(counts) | {"inputs": args.n, "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'target':10} {'inputs':>9} {'refused':>9} {'accepted':>9} {'unchanged':>9} {'crashed':>8} "
              f"{'forged':>7} {'disagreed':>9} {'s':>6}")
        for name, c in results.items():
            print(f"{name:10} {c['inputs']:>9} {c.get('refused', 0):>9} {c.get('accepted', 0):>9} "
                  f"{c.get('unchanged', 0):>9} {c.get('crashed', 0):>8} {c.get('forged', 0):>7} "
                  f"{c.get('disagreed', 0):>9} {c['seconds']:>6}")
            for k, v in sorted(c.items()):
                if k.startswith("crash "):
                    print(f"           {k}: {v}")
    bad = sum(c.get("crashed", 0) + c.get("forged", 0) + c.get("disagreed", 0) for c in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
