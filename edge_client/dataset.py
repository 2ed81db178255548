"""Read a site's images from an ImageFolder tree: one sub-folder per class, images inside.

```
root/
  benign/        <- class id "benign"
    a.png
    2024/b.JPG   <- nested folders inside a class folder are read too
  malignant/
    c.tif
  README.txt     <- not in a class folder: skipped (counted)
  .DS_Store      <- hidden: ignored (not counted)
```

Rules:

- A class is a direct sub-folder of ``root``; its images may sit directly in it or in nested
  folders below it. Classes are sorted by name, so the class index is the same on every run.
- Images are the files ending in one of ``IMAGE_EXTENSIONS`` (any case). Hidden files and folders
  (name starting with ``.``) are ignored everywhere. Any other file is left out and reported in
  ``skipped`` so a person can see what was not read.
- The **class id is the folder name** (Unicode NFC, so a folder made on macOS matches the same name
  typed elsewhere); it is what goes into payloads and has to match the federation's class list
  exactly. ``label_name()`` gives the human wording for prompts ("golden_retriever" ->
  "golden retriever"); it is never used as an id, because two spellings of one folder name would
  then collide silently.
- With ``check_images=True`` (the default) every image is opened and verified with Pillow before
  anything is built from the folder, so a broken file is found here, with its path, and not on the
  server.

Nothing here reads pixels into a payload; errors name files and folders, never image content.
"""
from __future__ import annotations

import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DatasetError, EmptyDataset, UnreadableImage

log = logging.getLogger(__name__)

#: file extensions read as images (compared lower-case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: how many offending paths an error message lists before "and N more"
_MAX_LISTED = 5
#: Pillow's reason for a failure is cut to this many characters (it may quote header bytes)
_MAX_REASON_CHARS = 160


@dataclass(frozen=True)
class ImageFolderDataset:
    """The images of one site, as found on disk.

    ``files`` holds ``(path, class_index)`` pairs sorted by class, then path; ``class_index``
    indexes ``classes``. ``skipped`` lists the non-image files that were left out.
    """

    root: Path
    classes: tuple[str, ...]
    files: tuple[tuple[Path, int], ...]
    skipped: tuple[Path, ...] = ()

    def counts(self) -> dict[str, int]:
        """Number of images per class id, in ``classes`` order."""
        per_index = Counter(idx for _, idx in self.files)
        return {name: per_index.get(i, 0) for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.files)


def label_name(folder: str) -> str:
    """The wording of a class id for prompts: underscores and hyphens become spaces.

    ``"golden_retriever"`` and ``"golden-retriever"`` both give ``"golden retriever"``. Only for
    text shown to a model or a person; the folder name stays the class id.
    """
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def is_image_file(path: str | os.PathLike[str]) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _listing(paths: list[str] | list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:_MAX_LISTED])
    more = len(paths) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _walk_class(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, skipped files) below one class folder, both sorted; follows links without looping."""
    images: list[Path] = []
    skipped: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=_raise_walk_error):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink back up the tree: stop rather than loop forever
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in filenames:
            if _hidden(name):
                continue
            path = Path(dirpath, name)
            (images if is_image_file(name) else skipped).append(path)
    return sorted(images), sorted(skipped)


def _raise_walk_error(exc: OSError) -> None:
    raise DatasetError(f"cannot list folder {exc.filename}: {exc.strerror or exc}",
                       fix="check that the folder exists and this user may read it")


def _verify_reason(path: Path) -> str | None:
    """None when Pillow can open and verify the file, else a short reason."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    check_images: bool = True,
    progress: bool = False,
) -> ImageFolderDataset:
    """Read the ImageFolder tree at ``root`` (see the module docstring for the rules).

    Raises ``DatasetError`` when ``root`` is missing or not a folder, ``EmptyDataset`` when there
    is no class folder or a class folder has no image, and ``UnreadableImage`` (naming every bad
    file, up to a few) when ``check_images`` is set and Pillow cannot open or verify one.
    ``progress`` shows a tqdm bar while images are verified.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"image folder {root} does not exist",
                           fix="give the path of the folder that holds one sub-folder per class")
    if not root.is_dir():
        raise DatasetError(f"image folder {root} is a file, not a folder",
                           fix="give the path of the folder that holds one sub-folder per class")

    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(f"cannot list image folder {root}: {exc.strerror or exc}",
                           fix="check that this user may read the folder") from None

    class_dirs: dict[str, Path] = {}
    skipped: list[Path] = []
    for entry in entries:
        if _hidden(entry.name):
            continue
        if entry.is_dir():  # follows a symlinked class folder
            class_id = unicodedata.normalize("NFC", entry.name)
            if class_id in class_dirs:
                raise DatasetError(
                    f"folders {class_dirs[class_id].name!r} and {entry.name!r} in {root} are the same "
                    f"class name in different Unicode forms",
                    fix="merge or rename one of the two folders")
            class_dirs[class_id] = Path(entry.path)
        else:
            skipped.append(Path(entry.path))

    if not class_dirs:
        loose = [p for p in skipped if is_image_file(p)]
        found = (f"found {len(loose)} image(s) directly in it but no sub-folders" if loose
                 else "found no sub-folders")
        raise EmptyDataset(
            f"image folder {root} has no class folders: expected one sub-folder per class with "
            f"the images inside; {found}",
            fix="put each class's images in a sub-folder named after the class")

    classes = tuple(sorted(class_dirs))
    files: list[tuple[Path, int]] = []
    empty: list[str] = []
    for index, class_id in enumerate(classes):
        images, other = _walk_class(class_dirs[class_id])
        skipped.extend(other)
        if not images:
            what = f"only {len(other)} other file(s)" if other else "empty"
            empty.append(f"{class_dirs[class_id]} ({what})")
        files.extend((path, index) for path in images)
    if empty:
        raise EmptyDataset(
            f"class folder(s) without images: {_listing(empty)}; expected files ending in "
            f"{' '.join(IMAGE_EXTENSIONS)} (any case)",
            fix="add images to the class folder(s) named above or remove the folder(s)")

    if skipped:
        log.info("skipped %d non-image file(s) under %s", len(skipped), root)

    if check_images:
        bad: list[str] = []
        paths = [p for p, _ in files]
        if progress:
            from tqdm import tqdm  # only when asked: keeps plain imports light
            paths = tqdm(paths, desc="checking images", unit="img")
        for path in paths:
            reason = _verify_reason(path)
            if reason is not None:
                bad.append(f"{path} ({reason})")
        if bad:
            raise UnreadableImage(
                f"{len(bad)} image file(s) cannot be read: {_listing(bad)}; expected images "
                f"Pillow can open")

    dataset = ImageFolderDataset(root=root, classes=classes, files=tuple(files), skipped=tuple(sorted(skipped)))
    log.info("read %d image(s) in %d class(es) from %s", len(dataset), len(classes), root)
    return dataset


def open_image(path: str | os.PathLike[str], mode: str | None = "RGB") -> Image.Image:
    """Open one image fully (file closed afterwards), upright per its EXIF tag, in ``mode``.

    High-bit-depth images (16-bit, 32-bit integer or float, common in medical imaging) are
    rescaled from their own min..max to 0..255 before conversion, since Pillow would otherwise clip
    them to white. ``mode=None`` keeps the image as stored. Raises ``UnreadableImage``.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
            if mode is not None and mode != im.mode and (im.mode in ("I", "F") or im.mode.startswith("I;16")):
                im = _to_8bit(im)
            out = im.convert(mode) if mode is not None and im.mode != mode else im.copy()
    except UnreadableImage:
        raise
    except Exception as exc:
        raise UnreadableImage(f"image file {path} cannot be read ({_reason(exc)}); expected an image "
                              f"Pillow can open") from exc
    return out


def _to_8bit(im: Image.Image) -> Image.Image:
    arr = np.asarray(im, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
