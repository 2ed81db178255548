"""Remove what looks like an identifier from a caption or a domain text before it can leave the site.

A captioning model can read text in an image (a name tag, a label on an X-ray, a date stamp) and
write it into the caption; a person typing a ``--domain`` line can paste a patient's details. The
scrubber is a heuristic, not a guarantee; it removes, in this order:

- ``email``: e-mail addresses;
- ``date``: dates in common formats (2024-03-01, 01/03/2024, 1.3.24, 03-APR-1975, 04/1975,
  1 March 2024, March 1st, 2024, Mar 2024, April 1975) and a birth year ("born 1961", "DOB: 1961";
  the keyword goes with it); a year on its own is kept;
- ``phone``: runs of digits with separators holding 7 or more digits (+44 20 7946 0958,
  (555) 123-4567);
- ``number``: a number after a record keyword (MRN 1234, MRN: 12345678, patient id 889,
  case #4411, record no. 77; the keyword is kept), an id of one to three letters and four or more
  digits (AB-1234, AB1234) and any token with a run of 5 or more digits (AB1234567); the names of
  public data sets (HAM10000, ISIC 2019, ...) are kept;
- ``name``, in any case (lower, UPPER, Title): a title (Mr, Mrs, Ms, Dr, Doctor, Prof, Nurse, Sir,
  ...) with a capitalised name, an initial or a name of the lists below ("dr house", "Dr. House",
  "prof. x") — title and name become "a person"; a capitalised or listed name after "patient",
  "pt" or "name" — the name is removed, the word kept; a first name of the built-in list followed by
  a surname or first name of the lists ("john smith", "JOHN SMITH", "Mary J. Jones"), unless both
  words are also ordinary words ("will power", "rose brown"); initials with a surname ("J. Smith",
  "j.r. smith"); two or three capitalised words in a row (not a sentence opener such as "The"),
  unless all of them are ordinary words of the built-in vocabulary ("Dermoscopy Photographs") —
  all these become "a person"; and every word or phrase of a site's own list (case-insensitive,
  e.g. a list of staff and patient names exported from the hospital's system, which never leaves
  the site).

The built-in lists are short (common English-language and European first names and surnames): a
name not on them, written in lower case and without a title, passes; that is what the site's
``--scrub-words`` list is for. ``scrub(text)`` returns ``(clean_text, removed)`` where ``removed``
lists ``Removal(kind, text)`` for each span taken out. The removed text stays at the site
(``osfl-edge inspect`` shows it from a side file next to the payload); the payload carries only how
many were removed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PERSON = "a person"

# --- built-in word lists (lower case) ------------------------------------------------------------
#: first names that are no ordinary English word: enough on their own to start a name
_FIRST_NAMES = frozenset("""
    aaron abigail adam adrian agnes ahmed aisha alan albert alberto alex alexander alexandra alfred
    alice alicia alison amanda amelia amy ana andrea andreas andrew andy angela ann anna anne annie
    anthony antonio arthur ashley barbara benjamin bernard beth betty beverly brandon brenda brian
    bruce bryan carl carla carlos carmen carol caroline catherine charles charlie charlotte chloe
    chris christian christina christine christopher cindy claire clara claude colin craig cynthia
    daniel daniela danielle david deborah debra denise dennis diana diane donald donna doris dorothy
    douglas dylan edith edward elena elizabeth ellen emily emma eric erik erin ethan eugene evelyn
    fatima fiona florence francesca francis francisco frederick gabriel gareth gary george gerald
    giovanni giulia gloria gordon graham gregory hannah hans harold harry heinrich helen henry howard
    ian isabel isabella jacob james jamie jane janet janice jason jean jeffrey jennifer jeremy
    jessica joan joe joel johan johann john jonathan jorge jose joseph joshua joyce juan judith
    judy julia julie justin karen karl kate katherine kathleen kathryn keith kelly kenneth kevin
    kimberly klaus kyle larry laura lauren lawrence leonard leslie linda lisa liam logan louis
    louise lucas lucy luis luke manuel marc marco margaret maria marie marilyn mario martha martin
    mary matthew megan melissa michael michelle mohammed muhammad nancy natalie nathan nicholas
    nicole noah olivia oscar pamela patricia patrick paul paula pedro peter philip philippe pierre
    rachel ralph raymond rebecca richard robert roberto roger ronald roy russell ruth ryan samantha
    samuel sandra sara sarah scott sean sharon shirley sophia sophie stefan stephanie stephen steven
    susan teresa terry thomas timothy tyler victoria vincent virginia walter wayne william zachary
    ahmad ali omar yusuf mehmet ivan olga sergei natasha wei jun hiroshi yuki raj priya anil sunita
    """.split())
#: first names that are also ordinary words: a name only with a surname that is no ordinary word
_FIRST_NAMES_COMMON = frozenset("""
    amber april art august autumn bill bob crystal daisy dale dawn dean don drew earl faith frank
    gene ginger glen grace guy hazel heather holly hope iris ivy jack jade joy june lily mark max
    may olive pat pearl penny ray robin rose ruby rusty sandy sue summer tom violet will
    """.split())
#: surnames that are no ordinary English word
_SURNAMES = frozenset("""
    adams ahmed alvarez anderson andersson bailey barnes becker bennett bernard bianchi byrne
    campbell castillo chavez chen clark cohen coleman collins cruz davis diaz doe doyle dubois
    dupont durand edwards evans fernandez ferrari flores foster garcia gomez gonzalez gupta
    gutierrez hansen harris hassan henderson hernandez hoffmann holmes howard hughes hussein ito
    ivanov jackson jansen jenkins jensen jimenez johansson johnson jones karlsson kato kelly khan
    kim kobayashi kowalski kumar larsen lee levi lewis li liu lopez martinez mendoza meyer mitchell
    morales morgan morris murphy myers nakamura nelson nguyen nielsen novak nowak oliveira olsen
    ortiz patel perez perry peterson petrov phillips powell ramirez ramos reyes richardson rivera
    roberts robinson rodriguez roe rogers romano rossi ruiz russell russo ryan sanchez sanders santos
    sato schmidt schneider schulz sharma silva singh smit smith stewart sullivan suzuki takahashi
    tanaka thompson torres visser wagner walsh wang watanabe watson weber williams wilson wright wu
    yamamoto yang zhang zhao zhou huang jones mueller müller dijk jong vries bakker fischer
    watkins jefferson lincoln washington kennedy obama
    """.split())
#: surnames that are also ordinary words: a name with a title, or after a first name of _FIRST_NAMES
_SURNAMES_COMMON = frozenset("""
    baker banks bell bird black brooks brown bush butler carter cook cooper cross fisher ford fox
    frost gray green grey hall house hill hunt hunter king lamb lane little long lord mason miller
    moore page parker price reed rice stone taylor turner walker ward wells west white wolf wood
    young
    """.split())
_NAMES = _FIRST_NAMES | _SURNAMES
_ANY_NAME = _NAMES | _FIRST_NAMES_COMMON | _SURNAMES_COMMON

#: ordinary words of captions and domain texts: a capitalised run of only these is no name
_VOCABULARY = frozenset("""
    a an the this that these those there here it its his her their our my your in on at of with and
    or but for from to by as is are was were be photo photos photograph photographs photography
    image images picture pictures view close up scan scans shot shots slide slides sample samples
    x ray rays xray xrays ct mri pet cxr ultrasound sonography mammogram mammograms mammography
    radiograph radiographs radiography tomography magnetic resonance imaging computed dermoscopy
    dermoscopic dermatology dermatoscopic histology histopathology pathology microscopy microscope
    fundus retinal retina oct endoscopy endoscopic colonoscopy clinical medical hospital digital
    whole body head brain skull chest lung lungs heart abdomen abdominal pelvis spine knee hip hand
    hands foot feet arm arms leg legs skin eye eyes tooth teeth dental breast liver kidney bone bones
    left right front back side lateral frontal axial sagittal coronal anterior posterior upper lower
    lesion lesions mole moles melanoma nevus nevi keratosis carcinoma tumor tumour cancer benign
    malignant normal abnormal healthy disease pneumonia fracture covid cell cells tissue blood
    grade stage type class level size high low resolution quality real world style styled
    color colour colors colours black white red green blue yellow orange purple pink brown gray grey
    dark light bright pencil sketch sketches drawing drawings painting paintings cartoon cartoons
    art oil watercolor watercolour monochrome grayscale greyscale sepia vintage modern old new
    street road car cars city house garden park beach forest mountain river lake sea sky dog dogs
    cat cats bird birds horse man men woman women child children people person baby
    day night morning evening summer winter spring autumn new year happy birthday welcome exit stop
    north south east west university college center centre clinic department dept
    march may april june july august
    tower bridge ocean sea bay gulf island islands lake mount city town village state states united
    kingdom republic america american europe european africa asia australia new old great golden
    royal national international saint st park square avenue station airport church cathedral
    palace castle museum gallery zoo market cafe restaurant hotel bank school star stars wars game
    games cup league club team company christmas easter halloween times post news big little
    """.split())
#: first words of a capitalised run that are no name (the run is then checked without them)
_OPENERS = frozenset("""a an the this that these those there here it its his her their our my your
    in on at of with and or but for from to by as is are was were be photo image picture x ray ct mri scan
    close up view""".split())
#: public data set names kept although they look like ids
_DATASETS = re.compile(r"\b(?:ham\s?10000|isic[\s_-]?(?:19|20)\d\d|mimic[\s_-]?(?:cxr|iii|iv)|chexpert|"
                       r"bcn\s?20000|ph2|derm7pt|nih[\s_-]?chest[\s_-]?x-?ray14|camelyon1[67])\b", re.IGNORECASE)


def _words(words: Iterable[str]) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
          r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")
_ORD = r"(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]|20)\d{2}"
_DATE_PATTERNS = [
    r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b",                                     # 2024-03-01
    r"\b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b",                           # 01/03/2024, 1.3.24
    rf"\b\d{{1,2}}[-/.]{_MONTH}\.?[-/.](?:\d{{4}}|\d{{2}})\b",                # 03-APR-1975
    rf"\b\d{{1,2}}{_ORD}\s+(?:of\s+)?{_MONTH}\.?(?:,?\s+\d{{2,4}})?\b",        # 1 March 2024, 3rd of may
    rf"\b{_MONTH}\.?\s+\d{{1,2}}{_ORD}(?:,?\s+\d{{2,4}})?\b",                  # March 1st, 2024
    rf"\b{_MONTH}\.?,?\s+\d{{4}}\b",                                          # Mar 2024
    rf"\b(?:0?[1-9]|1[0-2])[-/.]{_YEAR}\b",                                   # 04/1975
    rf"\b{_YEAR}[-/.](?:0?[1-9]|1[0-2])\b(?![-/.]\d)",                        # 1975-04
]
_ANY_DATE = "|".join(f"(?:{p})" for p in _DATE_PATTERNS)
_BIRTH = (r"\b(?:born|dob|d\.o\.b\.?|date\s+of\s+birth|birth\s*date|birthday)(?:\s*[:\-]\s*|\s+)"
          rf"(?:(?:on|in)\s+)?(?:{_ANY_DATE}|\b{_YEAR}\b)")
_DATE = re.compile(f"(?:{_BIRTH})|{_ANY_DATE}", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d().\s-]{5,}\d(?!\w)")
_RECORD = re.compile(
    r"\b((?:mrn|mr\s*no|med(?:ical)?\s+record(?:\s+(?:no|number))?|patient\s+(?:id|no|number)|patient|"
    r"pt\s+(?:id|no)|id|identifier|case|record|chart|accession|acc|ssn|nhs(?:\s+(?:no|number))?|"
    r"hospital\s+(?:no|number|id)|ref(?:erence)?|subject)\b"
    r"(?:\s*(?:no\b\.?|num(?:ber)?\b|id\b))?)(\s*[:#.]?\s*)"
    r"(#?\d[\d-]*\d)\b(?!\s*-?\s*(?:years?|yrs?|y/?o|yo|months?|weeks?|days?|mm|cm|kg|%|x\b))",
    re.IGNORECASE)
_ALNUM_ID = re.compile(r"\b[A-Za-z]{1,3}[-_/]?\d{4,}\b")
_NUMBER = re.compile(r"\b\w*\d{5,}\w*\b")
#: the end of a name word: no letter, digit or hyphen follows, an apostrophe only as "'s"
_END = r"(?![\w-])(?!['’](?!s\b))"
_NAME_WORD = r"[A-Z](?:[a-zà-ÿ]+(?:['’-][A-Za-zà-ÿ]+)*|['’][A-Z][a-zà-ÿ]+)"  # Anne, Anne-Marie, O'Neil
_FULL_NAME = rf"{_NAME_WORD}(?:\s+(?:[A-Z]\.\s*)?{_NAME_WORD}){{0,2}}"
_LISTED_WORD = rf"(?i:{_words(_ANY_NAME)}){_END}"
_LISTED_NAME = rf"{_LISTED_WORD}(?:\s+(?:[A-Za-z]\.\s*)?{_LISTED_WORD}){{0,2}}"
# titles in any case; the name capitalised, an initial or a listed name in any case
_TITLE = r"(?i:mrs|mr|ms|miss|mx|dr|doctor|prof|professor|nurse|sir|madam|mme|mlle|herr|frau|sr|sra)"
#: titles used only before a name: any word but a stop word after them is taken for one ("mr bean")
_NAME_TITLE = r"(?i:mrs|mr|ms|mx)"
_STOP = r"(?i:a|an|the|and|or|of|in|on|at|with|to|for|is|was|person)\b"
_TITLED = re.compile(rf"\b{_TITLE}\b\.?\s+(?:[A-Za-z]\.\s*){{0,2}}"
                     rf"(?:{_FULL_NAME}|(?:{_LISTED_NAME})|(?![aAiI]\b(?!\.))[A-Za-z]\b\.?{_END})")
_NAME_TITLED = re.compile(rf"\b{_NAME_TITLE}\b\.?\s+(?!{_STOP})[a-zà-ÿ][\wà-ÿ'’-]*")
_LABELLED = re.compile(rf"\b((?i:patient|pt|name))(\s*[:#]?\s+)({_FULL_NAME}|(?:{_LISTED_NAME}))")
_FIRST_LAST = re.compile(rf"(?<![\w'’-])((?i:{_words(_FIRST_NAMES | _FIRST_NAMES_COMMON)}))"
                         rf"(\s+(?:[A-Za-z]\.\s*)?)((?i:{_words(_ANY_NAME)})){_END}"
                         rf"(?:\s+(?:{_NAME_WORD}|(?i:{_words(_NAMES)})){_END})?")
_INITIALS = re.compile(rf"(?<![\w.])(?:[A-Za-z]\.\s?){{1,3}}({_NAME_WORD}|[A-Z]{{2,}}|(?i:{_words(_NAMES)})){_END}")
_CAPITALISED_RUN = re.compile(rf"\b{_NAME_WORD}(?:\s+{_NAME_WORD}){{1,2}}\b")


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
        kept: list[str] = []

        def cut(kind: str, replacement: str = ""):
            def repl(m: re.Match) -> str:
                removed.append(Removal(kind, m.group(0).strip()))
                return f" {replacement} " if replacement else " "
            return repl

        def keep(m: re.Match) -> str:
            # a data set name such as HAM10000 is set aside so that no rule takes it for an id
            kept.append(m.group(0))
            return f"\x00{len(kept) - 1}\x00"

        def phone(m: re.Match) -> str:
            digits = sum(c.isdigit() for c in m.group(0))
            if digits < 7 or m.group(0).isdigit():  # a bare digit run is a "number"
                return m.group(0)
            removed.append(Removal("phone", m.group(0).strip()))
            return " "

        def record(m: re.Match) -> str:
            removed.append(Removal("number", m.group(3)))
            return f"{m.group(1)} "

        def labelled(m: re.Match) -> str:
            removed.append(Removal("name", m.group(3)))
            return f"{m.group(1)} "

        def first_last(m: re.Match) -> str:
            first, last = m.group(1).lower(), m.group(3).lower()
            if first in _FIRST_NAMES_COMMON and last not in _NAMES:  # "will power", "rose brown", "mark may"
                return m.group(0)
            removed.append(Removal("name", m.group(0)))
            return f" {PERSON} "

        def initials(m: re.Match) -> str:
            if m.group(1).lower() in _VOCABULARY:  # "vitamin D. The"
                return m.group(0)
            removed.append(Removal("name", m.group(0)))
            return f" {PERSON} "

        def run(m: re.Match) -> str:
            words = m.group(0).split()
            while words and words[0].lower() in _OPENERS:
                words = words[1:]
            if len(words) < 2 or (not any(w.lower() in _NAMES for w in words)
                                  and any(w.lower() in _VOCABULARY for w in words)):
                return m.group(0)  # "Golden Gate Bridge", "Dermoscopy Photographs"
            lead = m.group(0)[: len(m.group(0)) - len(" ".join(words))]
            removed.append(Removal("name", " ".join(words)))
            return f"{lead} {PERSON} "

        out = _DATASETS.sub(keep, text.replace("\x00", " "))
        out = _EMAIL.sub(cut("email"), out)
        out = _DATE.sub(cut("date"), out)
        out = _PHONE.sub(phone, out)
        out = _RECORD.sub(record, out)
        out = _ALNUM_ID.sub(cut("number"), out)
        out = _NUMBER.sub(cut("number"), out)
        out = _TITLED.sub(cut("name", PERSON), out)
        out = _LABELLED.sub(labelled, out)
        out = _FIRST_LAST.sub(first_last, out)
        out = _INITIALS.sub(initials, out)
        out = _CAPITALISED_RUN.sub(run, out)
        if self._listed is not None:
            out = self._listed.sub(cut("name", PERSON), out)
        out = _NAME_TITLED.sub(cut("name", PERSON), out)  # after the site's list, which knows "mrs van der berg"
        out = re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], out)
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
