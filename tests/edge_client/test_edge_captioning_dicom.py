"""DICOM input: folders or a labels CSV give the same dataset object; windowing to 8 bits; clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from edge_client.captioning import load_image  # noqa: E402
from edge_client.dataset import ImageFolderDataset  # noqa: E402
from edge_client.dicom import is_dicom_file, load_dicom_folder, read_dicom_image, window_to_uint8  # noqa: E402
from edge_client.errors import DatasetError, EmptyDataset, UnreadableImage  # noqa: E402


def write_dicom(path: Path, pixels: np.ndarray | None = None, *, center=None, width=None, slope=None, intercept=None,
                photometric="MONOCHROME2", frames: int = 1) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "12345678"
    ds.Modality = "OT"
    if pixels is not None:
        rgb = pixels.ndim == 3 + (frames > 1) and pixels.shape[-1] == 3
        ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
        ds.SamplesPerPixel = 3 if rgb else 1
        ds.PhotometricInterpretation = "RGB" if rgb else photometric
        if rgb:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if center is not None:
            ds.WindowCenter, ds.WindowWidth = center, width
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(h=8, w=8, lo=0, hi=4000, dtype=np.uint16):
    return np.linspace(lo, hi, h * w).reshape(h, w).astype(dtype)


def test_window_to_uint8_follows_the_dicom_linear_function():
    x = np.array([-1000.0, 39.5, 40.0, 40.5, 1000.0])
    out = window_to_uint8(x, center=40, width=80)
    assert out[0] == 0 and out[-1] == 255 and 126 <= out[2] <= 129
    assert list(window_to_uint8(np.array([2.0, 4.0, 6.0]))) == [0, 128, 255]  # min..max
    assert list(window_to_uint8(np.array([5.0, 5.0]))) == [0, 0]


def test_read_windowed_rescaled_and_monochrome1(tmp_path):
    px = ramp()
    plain = np.asarray(read_dicom_image(write_dicom(tmp_path / "a.dcm", px)))
    assert plain.dtype == np.uint8 and plain.min() == 0 and plain.max() == 255  # min..max
    # CT-like: HU = raw - 1024, a soft-tissue window 40/400 clips most of the ramp
    win = np.asarray(read_dicom_image(write_dicom(tmp_path / "b.dcm", px, center=40, width=400, slope=1,
                                                  intercept=-1024)))
    hu = px.astype(float) - 1024
    assert (win[hu <= 40 - 200] == 0).all() and (win[hu >= 40 + 200] == 255).all()
    inv = np.asarray(read_dicom_image(write_dicom(tmp_path / "c.dcm", px, photometric="MONOCHROME1")))
    assert (inv == 255 - plain).all()
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    im = read_dicom_image(write_dicom(tmp_path / "d.dcm", rgb))
    assert im.mode == "RGB" and (np.asarray(im) == rgb).all()
    multi = np.stack([ramp() * 0, ramp(), ramp() * 0]).astype(np.uint16)
    mid = np.asarray(read_dicom_image(write_dicom(tmp_path / "e.dcm", multi, frames=3)))
    assert mid.max() == 255  # the middle frame, not the blank first one
    assert load_image(tmp_path / "a.dcm").mode == "RGB"


def test_folders_layout_gives_an_image_folder_dataset(tmp_path):
    root = tmp_path / "data"
    write_dicom(root / "benign" / "a.dcm", ramp())
    write_dicom(root / "benign" / "2024" / "IM0001", ramp())  # no extension: found by the DICM marker
    write_dicom(root / "malignant" / "b.DCM", ramp())
    (root / "malignant" / "notes.txt").write_text("x")
    ds = load_dicom_folder(root)
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classes == ("benign", "malignant") and ds.counts() == {"benign": 2, "malignant": 1}
    assert [p.name for p in ds.skipped] == ["notes.txt"]
    assert is_dicom_file(root / "benign" / "2024" / "IM0001") and not is_dicom_file(root / "malignant" / "notes.txt")


def test_csv_layout(tmp_path):
    root = tmp_path / "data"
    for name in ("x1.dcm", "x2.dcm", "sub/x3.dcm", "unlabelled.dcm"):
        write_dicom(root / name, ramp())
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\nx1.dcm,nevus\nsub/x3.dcm,melanoma\nx2.dcm,nevus\n")
    ds = load_dicom_folder(root, labels_csv=csv)
    assert ds.classes == ("melanoma", "nevus") and ds.counts() == {"melanoma": 1, "nevus": 2}
    assert [p.name for p, _ in ds.files] == ["x3.dcm", "x1.dcm", "x2.dcm"]
    assert [p.name for p in ds.skipped] == ["unlabelled.dcm"]


@pytest.mark.parametrize("rows,match", [
    ("missing.dcm,nevus\n", "does not exist"),
    ("x1.dcm\n", "not 'filename,label'"),
    ("x1.dcm,nevus\nx1.dcm,melanoma\n", "already has another label"),
    ("../x1.dcm,nevus\n", "not inside"),
    ("filename,label\n", "names no files"),
])
def test_csv_errors(tmp_path, rows, match):
    root = tmp_path / "data"
    write_dicom(root / "x1.dcm", ramp())
    csv = tmp_path / "labels.csv"
    csv.write_text(rows)
    with pytest.raises(DatasetError, match=match):
        load_dicom_folder(root, labels_csv=csv)


def test_file_without_pixel_data_is_a_clear_error(tmp_path):
    root = tmp_path / "data"
    write_dicom(root / "a" / "img.dcm", ramp())
    write_dicom(root / "a" / "report.dcm", None)  # e.g. a structured report
    with pytest.raises(UnreadableImage) as info:
        load_dicom_folder(root)
    assert "report.dcm has no pixel data" in str(info.value) and info.value.exit_code == 4
    assert "Doe" not in str(info.value) and "12345678" not in str(info.value)  # never header content
    with pytest.raises(UnreadableImage, match="no pixel data"):
        read_dicom_image(root / "a" / "report.dcm")
    (root / "a" / "broken.dcm").write_bytes(b"not dicom at all")
    (root / "a" / "report.dcm").unlink()
    with pytest.raises(UnreadableImage, match="broken.dcm cannot be read"):
        load_dicom_folder(root)


def test_empty_layouts(tmp_path):
    (tmp_path / "d" / "empty").mkdir(parents=True)
    with pytest.raises(EmptyDataset):
        load_dicom_folder(tmp_path / "d")
    with pytest.raises(DatasetError):
        load_dicom_folder(tmp_path / "nowhere")
