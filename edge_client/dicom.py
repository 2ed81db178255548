"""Read DICOM images next to ImageFolder trees: labels from folders or a CSV, pixels windowed to 8 bits.

Needs pydicom, an optional extra (``pip install 'osfl[dicom]'``); without it every function here
raises ``ConfigError`` saying so. Two layouts give the same ``ImageFolderDataset`` as
``edge_client.dataset`` does, so every method (class prompts, captions) works on either:

- **folders**: ``root/<class>/**/<file>``, exactly the ImageFolder rules, where a file is DICOM
  when it ends in ``.dcm``/``.dicom``/``.dic`` (any case) or has no extension and carries the
  ``DICM`` marker at byte 128;
- **CSV**: ``labels_csv`` with rows ``filename,label`` (a header row ``filename,label`` is
  allowed); file names are relative to ``root`` and may name sub-folders. Files under ``root``
  that the CSV does not name are skipped and reported.

Pixels to 8 bits (``read_dicom_image``): the modality LUT (RescaleSlope/RescaleIntercept) first;
then the first WindowCenter/WindowWidth with the DICOM linear VOI function (PS3.3 C.11.2.1.2) when
the file has them, else the image's own min..max. MONOCHROME1 is inverted so that higher values
are brighter as in MONOCHROME2. Colour images stay RGB. Of a multi-frame file the middle frame is
used. A file without pixel data (a structured report, a presentation state) is refused with a
clear message. Nothing here puts DICOM header fields (patient name, ids, dates) anywhere.
"""
from __future__ import annotations

import csv
import logging
import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .dataset import ImageFolderDataset
from .errors import ConfigError, DatasetError, EmptyDataset, UnreadableImage

log = logging.getLogger(__name__)

DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MAX_LISTED = 5


def have_pydicom() -> bool:
    try:
        import pydicom  # noqa: F401
    except ImportError:
        return False
    return True


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ConfigError("reading DICOM files needs pydicom, which is not installed",
                          fix="pip install 'osfl[dicom]' (or pip install pydicom)") from None
    return pydicom


def is_dicom_file(path: str | os.PathLike) -> bool:
    """By extension, or for a file without one by the ``DICM`` marker at byte 128."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in DICOM_EXTENSIONS:
        return True
    if suffix:
        return False
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _header(path: Path):
    """The dataset with large values deferred (pixel data not read); raises UnreadableImage."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, defer_size="64 KB", force=False)
    except Exception as exc:
        raise UnreadableImage(f"DICOM file {path} cannot be read ({type(exc).__name__}); expected a DICOM "
                              f"Part 10 file") from exc


def _problem(path: Path) -> str | None:
    try:
        ds = _header(path)
    except UnreadableImage as exc:
        return exc.message
    if not any(tag in ds for tag in _PIXEL_TAGS):
        return f"{path} has no pixel data (a structured report or presentation state?)"
    return None


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    found: list[Path] = []
    skipped: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            (found if is_dicom_file(path) else skipped).append(path)
    return sorted(found), sorted(skipped)


def load_dicom_folder(root: str | os.PathLike, *, labels_csv: str | os.PathLike | None = None,
                      check: bool = True, progress: bool = False) -> ImageFolderDataset:
    """The DICOM files under ``root`` with their labels (see the module docstring for the layouts).

    With ``check`` every file is opened (pixel data deferred) and must carry pixel data; the
    failures are listed together in one ``UnreadableImage``.
    """
    _pydicom()
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"DICOM folder {root} does not exist or is not a folder",
                           fix="give the folder that holds the DICOM files")
    if labels_csv is not None:
        classes, files, skipped = _from_csv(root, Path(labels_csv))
    else:
        classes, files, skipped = _from_folders(root)
    if check:
        paths = [p for p, _ in files]
        if progress:
            from tqdm import tqdm

            paths = tqdm(paths, desc="checking DICOM files", unit="file")
        bad = [msg for msg in (_problem(p) for p in paths) if msg]
        if bad:
            raise UnreadableImage(f"{len(bad)} DICOM file(s) cannot be used: {_listing(bad)}",
                                  fix="remove the file(s) named above (or move them out of the folder), then run again")
    dataset = ImageFolderDataset(root=root, classes=tuple(classes), files=tuple(files), skipped=tuple(sorted(skipped)))
    log.info("read %d DICOM file(s) in %d class(es) from %s", len(dataset), len(classes), root)
    return dataset


def _from_folders(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    class_dirs: dict[str, Path] = {}
    skipped: list[Path] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            class_dirs[unicodedata.normalize("NFC", entry.name)] = Path(entry.path)
        else:
            skipped.append(Path(entry.path))
    if not class_dirs:
        raise EmptyDataset(f"DICOM folder {root} has no class folders",
                           fix="put each class's DICOM files in a sub-folder named after the class, "
                               "or give --labels-csv with filename,label rows")
    classes = sorted(class_dirs)
    files: list[tuple[Path, int]] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        found, other = _walk(class_dirs[name])
        skipped += other
        if not found:
            empty.append(str(class_dirs[name]))
        files += [(p, index) for p in found]
    if empty:
        raise EmptyDataset(f"class folder(s) without DICOM files: {_listing(empty)}; expected files ending in "
                           f"{' '.join(DICOM_EXTENSIONS)} or DICOM files without an extension",
                           fix="add DICOM files to the class folder(s) named above or remove the folder(s)")
    return classes, files, skipped


def _from_csv(root: Path, labels_csv: Path) -> tuple[list[str], list[tuple[Path, int]], list[Path]]:
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the labels CSV {labels_csv}: {exc}",
                           fix="give a UTF-8 CSV file with filename,label rows") from None
    if rows and [c.strip().lower() for c in rows[0]] == ["filename", "label"]:
        rows = rows[1:]
    labels: dict[Path, str] = {}
    problems: list[str] = []
    for n, row in enumerate(rows, start=1):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            problems.append(f"row {n} is not 'filename,label'")
            continue
        rel = Path(row[0].strip())
        path = (root / rel)
        if rel.is_absolute() or ".." in rel.parts:
            problems.append(f"row {n}: {rel} is not inside {root}")
            continue
        label = unicodedata.normalize("NFC", row[1].strip())
        if path in labels and labels[path] != label:
            problems.append(f"row {n}: {rel} already has another label")
            continue
        if not path.is_file():
            problems.append(f"row {n}: {rel} does not exist")
            continue
        labels[path] = label
    if problems:
        raise DatasetError(f"labels CSV {labels_csv}: {_listing(problems)}",
                           fix="fix the rows named above (filename relative to the data folder, then the label)")
    if not labels:
        raise EmptyDataset(f"labels CSV {labels_csv} names no files", fix="add filename,label rows")
    classes = sorted(set(labels.values()))
    index = {c: i for i, c in enumerate(classes)}
    files = sorted(((p, index[c]) for p, c in labels.items()), key=lambda t: (t[1], str(t[0])))
    found, other = _walk(root)
    skipped = [p for p in found if p not in labels] + other
    return classes, files, [p for p in skipped if p.resolve() != labels_csv.resolve()]


# ---- pixels -------------------------------------------------------------------------------------

def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        seq = list(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__") else [value]
        return float(seq[0]) if seq else None
    except (TypeError, ValueError):
        return None


def window_to_uint8(values: np.ndarray, center: float | None = None, width: float | None = None) -> np.ndarray:
    """8-bit image from real values: the DICOM linear window when given (width >= 1), else min..max."""
    x = values.astype(np.float64)
    if center is not None and width is not None and width >= 1:
        if width == 1:
            y = np.where(x <= center - 0.5, 0.0, 255.0)
        else:
            y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    else:
        lo, hi = float(x.min()) if x.size else 0.0, float(x.max()) if x.size else 0.0
        y = np.zeros_like(x) if hi <= lo else (x - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def read_dicom_image(path: str | os.PathLike) -> Image.Image:
    """The image of a DICOM file as 8-bit Pillow ("L" for grey, "RGB" for colour)."""
    path = Path(path)
    ds = _header(path)
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise UnreadableImage(f"{path} has no pixel data (a structured report or presentation state?)",
                              fix="remove the file from the data folder")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", None) or str(ts)
        raise UnreadableImage(f"cannot decode the pixel data of {path} (transfer syntax {name}; "
                              f"{type(exc).__name__})",
                              fix="install a decoder for compressed DICOM (pip install pylibjpeg pylibjpeg-libjpeg), "
                                  "or export the images uncompressed") from exc
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[frames // 2]
    if samples == 3:
        rgb = arr if arr.dtype == np.uint8 else window_to_uint8(arr)
        return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), mode="RGB")
    slope = _first(getattr(ds, "RescaleSlope", None)) or 1.0
    intercept = _first(getattr(ds, "RescaleIntercept", None)) or 0.0
    values = arr.astype(np.float64) * slope + intercept
    out = window_to_uint8(values, _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None)))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out, mode="L")
