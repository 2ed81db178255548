"""The caption scrubber: a table of what it removes and what it leaves alone."""
from __future__ import annotations

import pytest

from edge_client.captioning import tidy_caption
from edge_client.scrub import Removal, Scrubber, load_names, scrub

NAMES = ["Smith", "van der Berg", "bob"]

CASES = [
    # (caption, expected clean text, expected removals as (kind, text))
    ("a photo of a cat on a table", "a photo of a cat on a table", []),
    ("a close up of a brown mole on the skin", "a close up of a brown mole on the skin", []),
    ("a man in 2019 with 3 cats", "a man in 2019 with 3 cats", []),            # a year alone stays
    ("chest x-ray 12 3 4 with 1234", "chest x-ray 12 3 4 with 1234", []),      # short numbers stay
    ("A dog and a Cat", "A dog and a Cat", []),
    ("a photo of a dr office", "a photo of a dr office", []),
    # names
    ("a close up of Mr. John Smith holding a sign", "a close up of a person holding a sign",
     [("name", "Mr. John Smith")]),
    ("Dr Watson and Sherlock Holmes in a room", "a person and a person in a room",
     [("name", "Dr Watson"), ("name", "Sherlock Holmes")]),
    ("Mrs O’Neil and Prof. Anne-Marie Dupont", "a person and a person",
     [("name", "Mrs O’Neil"), ("name", "Prof. Anne-Marie Dupont")]),
    ("an x-ray of the chest of patient Jane Doe", "an x-ray of the chest of patient", [("name", "Jane Doe")]),
    ("Name: Alice Walker, age 54", "Name, age 54", [("name", "Alice Walker")]),
    ("a photo of John Smith", "a photo of a person", [("name", "John Smith")]),
    ("a photo of smith with a dog", "a photo of a person with a dog", [("name", "smith")]),       # site list
    ("a man named bob and mrs van  der berg", "a man named a person and mrs a person",
     [("name", "bob"), ("name", "van  der berg")]),
    ("a bobcat on a rock", "a bobcat on a rock", []),                           # whole words only
    # dates
    ("a scan dated 2024-03-01", "a scan dated", [("date", "2024-03-01")]),
    ("a label that says 01/03/2024", "a label that says", [("date", "01/03/2024")]),
    ("stamp 1.3.24 on film", "stamp on film", [("date", "1.3.24")]),
    ("a photo taken on 1 March 2024 at the clinic", "a photo taken on at the clinic", [("date", "1 March 2024")]),
    ("a sign reading March 1st, 2024", "a sign reading", [("date", "March 1st, 2024")]),
    ("seen on 3rd of may", "seen on", [("date", "3rd of may")]),
    ("report from Sep 2023", "report from", [("date", "Sep 2023")]),
    # numbers, e-mail, phone
    ("id 12345678 on the wrist band", "id on the wrist band", [("number", "12345678")]),
    ("MRN12345678 printed", "printed", [("number", "MRN12345678")]),
    ("a card with john.doe@example.org", "a card with", [("email", "john.doe@example.org")]),
    ("call +44 20 7946 0958 now", "call now", [("phone", "+44 20 7946 0958")]),
    ("call (555) 123-4567 now", "call now", [("phone", "(555) 123-4567")]),
    ("", "", []),
]


@pytest.mark.parametrize("text,clean,removed", CASES, ids=[c[0] or "empty" for c in CASES])
def test_scrubber_table(text, clean, removed):
    got, what = scrub(text, names=NAMES)
    assert got == clean
    assert [(r.kind, r.text) for r in what] == removed


def test_scrubbed_text_is_stable():
    s = Scrubber(NAMES)
    for text, _, _ in CASES:
        once, _ = s.scrub(text)
        assert s.scrub(once) == (once, []), f"scrubbing {once!r} again removed more"


def test_removal_is_a_value():
    assert Removal("date", "2024-01-01") == Removal("date", "2024-01-01")


def test_name_list_file(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("# staff\nSmith\n\n  Jane Roe  \n", encoding="utf-8")
    assert load_names(f) == ["Smith", "Jane Roe"]
    from edge_client.errors import ConfigError

    with pytest.raises(ConfigError):
        load_names(tmp_path / "missing.txt")


@pytest.mark.parametrize("raw,clean", [
    ("  a  cat\n on\ta mat ", "a cat on a mat"),
    ("a \x00cat\x1b[2J", "a cat [2J"),
    ("bl\ufffd\ufffdue", "bl ue"),
    ("x" * 600, "x" * 512),
])
def test_tidy_caption(raw, clean):
    assert tidy_caption(raw) == clean
    assert tidy_caption(raw).isprintable()
