"""Fuzz the site's bundle unpacker: mutate a valid tiny bundle tar and install each mutant.

A valid bundle (three small placeholder files, built with the server's own ``write_manifest`` /
``pack_bundle``, no torch) is mutated N times: bit flips, byte overwrites, truncation, insertions,
deletions, appended bytes, duplicated or swapped members, and edits of one member header field
(name, size, type, link, magic, mode, owner, time, ...) with or without a fixed checksum. Each
mutant goes through ``edge_client.bundle.install`` with the original's signed meta, as after a
download. Every outcome falls in one row:

* refused cleanly: ``IntegrityError`` / ``BundleError`` (the project's own), and nothing was
  installed or left behind;
* crashed: any other exception (a traceback and exit 1 for ``osfl-edge models pull``);
* left behind: refused, but a bundle folder, a temporary folder or ``current`` remained;
* accepted while mutated: installed although its bytes differ from the signed tar.

Only the first row may be non-zero. Usage::

    python benchmarks/bench_fuzz_bundles.py [--n 100000] [--seed 1] [--show 5]

``tests/edge_client/test_edge_bundle_hardening.py`` runs 2,000 of these in CI.
"""
from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402

from edge_client.bundle import current_version, install, models_dir  # noqa: E402
from edge_client.errors import BundleError, IntegrityError  # noqa: E402
from protocol.artifacts import manifest_bytes, sign_manifest  # noqa: E402
from protocol.keys import KeyPair  # noqa: E402

BLOCK = 512


@dataclass
class Tiny:
    """A valid bundle tar, its signed meta, and where its members lie (header, data, size)."""

    tar: bytes
    meta: dict
    signed: bytes
    members: list[tuple[int, int, int]]
    end: int  # where the end-of-archive blocks start


def tiny_bundle(workdir: Path, version: str = "fz1") -> Tiny:
    from server_daemon.edge_models.bundle import bundle_meta, pack_bundle, write_manifest

    src = Path(workdir) / f"src-{version}"
    (src / "captioner").mkdir(parents=True)
    (src / "classifier").mkdir()
    (src / "captioner" / "vision.onnx").write_bytes(bytes(range(256)) * 2)
    (src / "captioner" / "tokenizer.json").write_text('{"model": {"vocab": ["a", "b"]}}')
    (src / "classifier" / "model.onnx").write_bytes(b"classifier graph " * 20)
    models = {"captioner": {"kind": "blip2-opt", "files": {"vision": ["captioner/vision.onnx"],
                                                           "tokenizer": ["captioner/tokenizer.json"]}},
              "classifier": {"kind": "onnx", "files": {"model": ["classifier/model.onnx"]}}}
    write_manifest(src, version, models, versions={"osfl": "fuzz"})
    tar_path = pack_bundle(src, Path(workdir) / f"{version}.tar")
    meta = bundle_meta((src / "manifest.json").read_bytes())
    key = KeyPair.generate()
    data = tar_path.read_bytes()
    import hashlib

    m = manifest_bytes(f"edge-bundle/{version}", len(data), hashlib.sha256(data).digest(), meta, 1_700_000_000_000)
    signed = msgpack.packb({"manifest": m, "signature": sign_manifest(key.signing, m)}, use_bin_type=True)
    with tarfile.open(tar_path) as tar:
        members = [(t.offset, t.offset_data, t.size) for t in tar.getmembers()]
    last = members[-1]
    end = last[1] + -(-last[2] // BLOCK) * BLOCK
    return Tiny(data, meta, signed, members, end)


# ---- mutations ------------------------------------------------------------------------------

#: (offset, length) of the ustar header fields
FIELDS = {"name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
          "mtime": (136, 12), "chksum": (148, 8), "type": (156, 1), "linkname": (157, 100), "magic": (257, 6),
          "version": (263, 2), "uname": (265, 32), "gname": (297, 32), "devmajor": (329, 8), "devminor": (337, 8),
          "prefix": (345, 155), "tail": (500, 12)}


def _field_values(name: str, length: int, size: int, rng: random.Random) -> bytes:
    def octal(n: int) -> bytes:
        return (b"%0*o" % (length - 1, n))[-(length - 1):] + b"\0"

    pick = rng.choice
    if name in ("name", "linkname", "prefix"):
        return pick([b"../../evil", b"/etc/passwd", b"captioner/../../x", b"captioner/vision.onnx",
                     b"classifier/model.onnx", b"manifest.json", b".hidden", b"captioner/.x", b"a\\b", b"",
                     b"\xff\xfe\xfd", b"captioner//vision.onnx", b"./captioner/vision.onnx",
                     rng.randbytes(rng.randint(1, length))])
    if name == "size":
        return pick([octal(0), octal(size + 1), octal(max(size - 1, 0)), octal(size + BLOCK), b"77777777777\0",
                     b"\x80" + bytes(10) + b"\x01", b"           \0", b"-0000000001\0", octal(rng.randrange(1 << 33)),
                     rng.randbytes(length)])
    if name == "type":
        return pick([b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"g", b"x", b"L", b"K", b"S", b"V", b"D", b"M",
                     b"N", b"9", rng.randbytes(1)])
    if name == "magic":
        return pick([b"ustar ", b"\0" * 6, b"USTAR\0", rng.randbytes(6)])
    if name in ("devmajor", "devminor"):
        return pick([octal(rng.randint(1, 255)), b"\x80" + bytes(6) + b"\x01", rng.randbytes(length)])
    if name == "mode":
        return pick([octal(0o755), octal(0o4755), octal(0o777), octal(0o600), rng.randbytes(length)])
    if name in ("uid", "gid", "mtime"):
        return pick([octal(rng.randint(1, 1 << 20)), b"\x80" + bytes(length - 2) + b"\x01", rng.randbytes(length)])
    if name in ("uname", "gname"):
        return pick([b"root", b"nobody", rng.randbytes(rng.randint(1, length))])
    return rng.randbytes(length)  # chksum, version, tail


def _fix_checksum(buf: bytearray, header: int) -> None:
    block = buf[header:header + BLOCK]
    total = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    buf[header + 148:header + 156] = b"%06o\0 " % (total & 0o777777)


def mutate(t: Tiny, rng: random.Random) -> tuple[str, bytes]:
    """One mutant of ``t.tar`` and the kind of mutation."""
    data = t.tar
    buf = bytearray(data)
    # most positions fall where members live: the trailing zeros are a few blocks
    def pos(limit: int = len(data)) -> int:
        return rng.randrange(t.end + 2 * BLOCK) if rng.random() < 0.8 else rng.randrange(limit)

    kind = rng.choice(["bitflip", "bitflip", "bytes", "truncate", "insert", "delete", "append", "header",
                       "header", "header", "duplicate", "swap"])
    if kind == "bitflip":
        for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
            p = pos()
            buf[p] ^= 1 << rng.randrange(8)
    elif kind == "bytes":
        for _ in range(rng.randint(1, 4)):
            buf[pos()] = rng.randrange(256)
    elif kind == "truncate":
        del buf[rng.choice([rng.randrange(len(data)), pos(), len(data) - BLOCK * rng.randint(1, 20),
                            len(data) - rng.randint(1, 600)]):]
    elif kind == "insert":
        what = rng.choice([rng.randbytes(rng.randint(1, 700)), bytes(rng.choice([1, BLOCK, 2 * BLOCK])),
                           data[:BLOCK]])
        p = pos()
        buf[p:p] = what
    elif kind == "delete":
        p = pos()
        del buf[p:p + rng.choice([1, rng.randint(1, 700), BLOCK])]
    elif kind == "append":
        buf += rng.choice([rng.randbytes(rng.randint(1, 700)), bytes(BLOCK), bytes(10240), data[:BLOCK * 2]])
    elif kind in ("duplicate", "swap"):
        spans = [(h, d + -(-s // BLOCK) * BLOCK) for h, d, s in t.members]
        a = rng.randrange(len(spans))
        seg = data[spans[a][0]:spans[a][1]]
        if kind == "duplicate":
            at = rng.choice([spans[a][1], t.end])
            buf[at:at] = seg
            if rng.random() < 0.5 and len(buf) - len(seg) >= t.end + len(seg) + 2 * BLOCK:
                del buf[-len(seg):]  # keep the length a whole record: only the members give it away
        else:
            b = rng.randrange(len(spans))
            if a == b:
                b = (a + 1) % len(spans)
            (x0, x1), (y0, y1) = sorted([spans[a], spans[b]])
            buf[x0:y1] = data[y0:y1] + data[x1:y0] + data[x0:x1]
    else:  # header: one field of one member's header, checksum fixed most times
        header = rng.choice(t.members)[0]
        size = next(s for h, _, s in t.members if h == header)
        name = rng.choice([n for n in FIELDS if n != "chksum"] + ["chksum"] * 1)
        off, length = FIELDS[name]
        value = _field_values(name, length, size, rng)[:length].ljust(length, b"\0")
        buf[header + off:header + off + length] = value
        kind = f"header:{name}"
        if name != "chksum" and rng.random() < 0.85:
            _fix_checksum(buf, header)
    return kind, bytes(buf)


# ---- running ----------------------------------------------------------------------------------

@dataclass
class Tally:
    inputs: int = 0
    refused: int = 0
    crashed: int = 0
    left_behind: int = 0
    accepted: int = 0
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    failures: list[tuple[str, str, bytes]] = field(default_factory=list)

    def rows(self) -> list[tuple[str, int]]:
        return [("inputs", self.inputs), ("refused cleanly", self.refused), ("crashed", self.crashed),
                ("left behind", self.left_behind), ("accepted while mutated", self.accepted)]


def _leftovers(home: Path) -> bool:
    root = models_dir(home) / "bundles"
    return current_version(home) is not None or (root.exists() and any(root.iterdir()))


def fuzz(n: int, seed: int = 1, workdir: Path | None = None, keep_failures: int = 20) -> Tally:
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="osfl-fuzz-")) if own else Path(workdir)
    try:
        t = tiny_bundle(workdir)
        rng = random.Random(seed)
        home, tar = workdir / "home", workdir / "mutant.tar"
        tally = Tally()
        while tally.inputs < n:
            kind, mutant = mutate(t, rng)
            if mutant == t.tar:
                continue
            tally.inputs += 1
            tar.write_bytes(mutant)
            outcome = "accepted"
            try:
                install(tar, home, t.meta, t.signed)
            except (IntegrityError, BundleError):
                outcome = "left_behind" if _leftovers(home) else "refused"
            except Exception as exc:  # the point of the fuzzer: anything else is a crash
                outcome = f"crashed:{type(exc).__name__}: {str(exc)[:120]}"
            if outcome == "refused":
                tally.refused += 1
                continue
            tally.by_kind[(kind, outcome.split(":", 1)[0])] += 1
            if outcome == "accepted":
                tally.accepted += 1
            elif outcome == "left_behind":
                tally.left_behind += 1
            else:
                tally.crashed += 1
            if len(tally.failures) < keep_failures:
                tally.failures.append((kind, outcome, mutant))
            shutil.rmtree(home, ignore_errors=True)
        return tally
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of mutated tars")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--show", type=int, default=5, help="print this many failures")
    args = ap.parse_args()
    start = time.perf_counter()
    tally = fuzz(args.n, args.seed)
    took = time.perf_counter() - start
    for label, count in tally.rows():
        print(f"{label:<24}{count:>9}")
    print(f"{'seconds':<24}{took:>9.1f}  ({tally.inputs / took:,.0f} tars/s)")
    for (kind, outcome), count in sorted(tally.by_kind.items()):
        print(f"  {outcome:<12} {kind:<20} {count}")
    for kind, outcome, _ in tally.failures[:args.show]:
        print(f"  e.g. {kind}: {outcome}")
    sys.exit(0 if tally.inputs == tally.refused else 1)


if __name__ == "__main__":
    main()
