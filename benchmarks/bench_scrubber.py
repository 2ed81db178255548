"""Scrubber benchmark: precision and recall of "the scrubber changes this string" on a labelled table.

The table is ``tests/edge_client/data/scrub_cases.tsv``: captions and domain texts labelled
``identifier`` (a name, date, record number, id, phone number or e-mail address, each with its
``form``) or ``clean`` (ordinary caption and domain text, with hard negatives such as "march of the
penguins", "a white house", "a ford f-150 truck", "Dermoscopy Photographs"). A string counts as
flagged when the scrubber removes anything from it. Recall is over the identifiers, precision over
the flagged strings; "fully removed" also asks that every span the table names is gone from the
scrubbed text. Per form: recall for identifier forms, the share left unchanged for clean forms.

    python benchmarks/bench_scrubber.py [--table PATH] [--show-errors] [--json]

``tests/edge_client/test_edge_scrub_table.py`` runs the same evaluation and holds it to thresholds.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_client.scrub import Scrubber  # noqa: E402

TABLE = ROOT / "tests" / "edge_client" / "data" / "scrub_cases.tsv"


@dataclass(frozen=True)
class Case:
    text: str
    identifier: bool
    form: str
    must_remove: tuple[str, ...]


def load_cases(path: str | Path = TABLE) -> list[Case]:
    """The table's rows (comments and the header skipped); raises ValueError on a malformed row."""
    cases: list[Case] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#") or line.startswith("text\t"):
            continue
        cols = line.split("\t")
        if len(cols) != 4 or cols[1] not in ("identifier", "clean"):
            raise ValueError(f"{path}:{n}: expected text, identifier|clean, form, must_remove; got {len(cols)} column(s)")
        spans = tuple(s.strip() for s in cols[3].split("|") if s.strip())
        if (cols[1] == "identifier") != bool(spans):
            raise ValueError(f"{path}:{n}: an identifier row names what must be removed, a clean row nothing")
        cases.append(Case(cols[0], cols[1] == "identifier", cols[2], spans))
    return cases


@dataclass
class Result:
    cases: int
    identifiers: int
    flagged: int
    true_positives: int
    fully_removed: int
    precision: float
    recall: float
    removed_recall: float
    per_form: dict[str, dict[str, float | int]]
    errors: list[dict[str, str]]


def evaluate(cases: list[Case], scrubber: Scrubber | None = None) -> Result:
    scrubber = scrubber or Scrubber()
    forms: dict[str, list[int]] = defaultdict(lambda: [0, 0])   # form -> [right, total]
    tp = fp = full = 0
    errors: list[dict[str, str]] = []
    for c in cases:
        clean, removed = scrubber.scrub(c.text)
        flagged = bool(removed)
        gone = all(s.lower() not in clean.lower() for s in c.must_remove)
        right = (flagged and gone) if c.identifier else not flagged
        forms[c.form][0] += right
        forms[c.form][1] += 1
        tp += flagged and c.identifier
        fp += flagged and not c.identifier
        full += c.identifier and flagged and gone
        if not right:
            what = ("missed" if not flagged else "left in") if c.identifier else "false positive"
            errors.append({"text": c.text, "form": c.form, "error": what, "scrubbed": clean,
                           "removed": "; ".join(f"{r.kind} {r.text!r}" for r in removed)})
    ids = sum(c.identifier for c in cases)
    per_form = {f: {"right": r, "total": t, "share": r / t} for f, (r, t) in sorted(forms.items())}
    return Result(len(cases), ids, tp + fp, tp, full, tp / (tp + fp) if tp + fp else 1.0,
                  tp / ids if ids else 1.0, full / ids if ids else 1.0, per_form, errors)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=str(TABLE))
    ap.add_argument("--show-errors", action="store_true", help="list every string the scrubber gets wrong")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = evaluate(load_cases(args.table))
    if args.json:
        print(json.dumps(r.__dict__, indent=1))
        return 0
    print(f"{r.cases} strings: {r.identifiers} with an identifier, {r.cases - r.identifiers} clean; "
          f"{r.flagged} changed by the scrubber")
    print(f"precision {r.precision:.3f}  recall {r.recall:.3f}  "
          f"(every listed span gone: {r.fully_removed}/{r.identifiers} = {r.removed_recall:.3f})")
    print()
    print(f"  {'form':<12} {'right':>5} / {'total':<5}  share   (identifier forms: recall; clean forms: left unchanged)")
    for form, v in r.per_form.items():
        print(f"  {form:<12} {v['right']:>5} / {v['total']:<5}  {v['share']:.3f}")
    if args.show_errors and r.errors:
        print()
        for e in r.errors:
            print(f"  {e['error']:<15} [{e['form']}] {e['text']!r} -> {e['scrubbed']!r}  ({e['removed']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
