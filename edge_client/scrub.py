"""Remove what looks like an identifier from a caption before it can leave the site.

A captioning model can read text in an image (a name tag, a label on an X-ray, a date stamp) and
write it into the caption. The scrubber is a heuristic, not a guarantee; it removes, in this order:

- ``email``: e-mail addresses;
- ``date``: dates in common formats (2024-03-01, 01/03/2024, 1.3.24, 1 March 2024, March 1st,
  2024, Mar 2024); a year on its own is kept;
- ``phone``: runs of digits with separators holding 7 or more digits (+44 20 7946 0958,
  (555) 123-4567);
- ``number``: any token with a run of 5 or more digits (record numbers such as MRN 12345678,
  AB1234567);
- ``name``: capitalised names after a title (Mr, Mrs, Ms, Miss, Mx, Dr, Prof, Sir, ...) — title
  and name become "a person"; capitalised names after "patient", "pt" or "name" — the name is
  removed, the word kept; two or three capitalised words in a row (not a sentence opener such as
  "The"), which in a lower-case caption are most likely a name — they become "a person"; and every
  word or phrase of a site's own list (case-insensitive, e.g. a list of staff and patient names
  exported from the hospital's system, which never leaves the site).

``scrub(text)`` returns ``(clean_text, removed)`` where ``removed`` lists ``Removal(kind, text)``
for each span taken out. The removed text stays at the site (``osfl-edge inspect`` shows it from
a side file next to the payload); the payload carries only how many were removed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PERSON = "a person"

_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
          r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_ORD = r"(?:st|nd|rd|th)?"
_DATE_PATTERNS = [
    r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b",                                     # 2024-03-01
    r"\b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b",                           # 01/03/2024, 1.3.24
    rf"\b\d{{1,2}}{_ORD}\s+(?:of\s+)?{_MONTH}\.?(?:,?\s+\d{{2,4}})?\b",        # 1 March 2024, 3rd of may
    rf"\b{_MONTH}\.?\s+\d{{1,2}}{_ORD}(?:,?\s+\d{{2,4}})?\b",                  # March 1st, 2024
    rf"\b{_MONTH}\.?,?\s+\d{{4}}\b",                                          # Mar 2024
]
_DATE = re.compile("|".join(f"(?:{p})" for p in _DATE_PATTERNS), re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d().\s-]{5,}\d(?!\w)")
_NUMBER = re.compile(r"\b\w*\d{5,}\w*\b")
_NAME_WORD = r"[A-Z](?:[a-zà-ÿ]+(?:['’-][A-Za-zà-ÿ]+)*|['’][A-Z][a-zà-ÿ]+)"  # Anne, Anne-Marie, O'Neil
_FULL_NAME = rf"{_NAME_WORD}(?:\s+(?:[A-Z]\.\s*)?{_NAME_WORD}){{0,2}}"
# titles and labels in any case, the name itself capitalised
_TITLED = re.compile(rf"\b(?i:mrs|mr|ms|miss|mx|dr|prof|professor|sir|madam|mme|mlle|herr|frau|sr|sra)\b\.?\s+{_FULL_NAME}")
_LABELLED = re.compile(rf"\b((?i:patient|pt|name))(\s*[:#]?\s+)({_FULL_NAME})")
_CAPITALISED_RUN = re.compile(rf"\b{_NAME_WORD}(?:\s+{_NAME_WORD}){{1,2}}\b")
#: first words of a capitalised run that are no name (the run is then checked without them)
_OPENERS = frozenset("""a an the this that these those there here it its his her their our my your
    in on at of with and or but for from to by as is are was were be photo image picture x ray ct mri scan
    close up view""".split())


@dataclass(frozen=True)
class Removal:
    """One span the scrubber took out: its ``kind`` (email, date, phone, number, name) and ``text``."""

    kind: str
    text: str


class Scrubber:
    """The rules above, with a site's own ``names`` (words or phrases, matched case-insensitively)."""

    def __init__(self, names: Iterable[str] = ()):
        words = sorted({" ".join(n.split()) for n in names if n and n.strip()}, key=len, reverse=True)
        self.names = words
        self._listed = (re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in words)
                                   + r")(?!\w)", re.IGNORECASE) if words else None)

    def scrub(self, text: str) -> tuple[str, list[Removal]]:
        removed: list[Removal] = []

        def cut(kind: str, replacement: str = ""):
            def repl(m: re.Match) -> str:
                removed.append(Removal(kind, m.group(0).strip()))
                return f" {replacement} " if replacement else " "
            return repl

        def phone(m: re.Match) -> str:
            digits = sum(c.isdigit() for c in m.group(0))
            if digits < 7 or m.group(0).isdigit():  # a bare digit run is a "number"
                return m.group(0)
            removed.append(Removal("phone", m.group(0).strip()))
            return " "

        def labelled(m: re.Match) -> str:
            removed.append(Removal("name", m.group(3)))
            return f"{m.group(1)} "

        def run(m: re.Match) -> str:
            words = m.group(0).split()
            while words and words[0].lower() in _OPENERS:
                words = words[1:]
            if len(words) < 2:
                return m.group(0)
            lead = m.group(0)[: len(m.group(0)) - len(" ".join(words))]
            removed.append(Removal("name", " ".join(words)))
            return f"{lead} {PERSON} "

        out = _EMAIL.sub(cut("email"), text)
        out = _DATE.sub(cut("date"), out)
        out = _PHONE.sub(phone, out)
        out = _NUMBER.sub(cut("number"), out)
        out = _TITLED.sub(cut("name", PERSON), out)
        out = _LABELLED.sub(labelled, out)
        out = _CAPITALISED_RUN.sub(run, out)
        if self._listed is not None:
            out = self._listed.sub(cut("name", PERSON), out)
        return _tidy(out), removed


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(rf"\b({re.escape(PERSON)})(?:\s+{re.escape(PERSON)}\b)+", r"\1", text)
    return text.strip(" ,;:-")


def scrub(text: str, names: Iterable[str] = ()) -> tuple[str, list[Removal]]:
    """``Scrubber(names).scrub(text)``."""
    return Scrubber(names).scrub(text)


def load_names(path: str | Path) -> list[str]:
    """A site's name list: one word or phrase per line; blank lines and ``#`` comments ignored."""
    from .errors import ConfigError

    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the scrub word list {path}: {exc}",
                          fix="give a UTF-8 text file with one name per line") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
