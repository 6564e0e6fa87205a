import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from wsloc.data import ImageReadError, read_image


def _bundled(name):
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=16, **tags):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def window(x, center, width):
    """DICOM PS3.3 C.11.2.1.2 linear windowing, as a fraction of the output range."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


@pytest.fixture
def ramp():
    return (np.arange(32 * 40).reshape(32, 40) * 3).astype(np.uint16)  # 0 .. 3837


def test_rescale_then_window(tmp_path, ramp):
    path = write_dicom(tmp_path / "a.dcm", ramp, RescaleSlope=2, RescaleIntercept=-100,
                       WindowCenter=3000, WindowWidth=4000)
    expected = window(ramp * 2.0 - 100, 3000, 4000)
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_monochrome1_is_inverted(tmp_path, ramp):
    kw = dict(WindowCenter=2000, WindowWidth=2500)
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", ramp, "MONOCHROME2", **kw))
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1", **kw))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == 1.0  # the lowest value is brightest in MONOCHROME1


def test_voi_lut_sequence(tmp_path):
    pixels = np.arange(12 * 12).reshape(12, 12).astype(np.uint16) * 4  # 0 .. 572 (10-bit)
    item = Dataset()
    first, entries = 100, 256
    lut = (np.sqrt(np.arange(entries) / (entries - 1)) * 4095).astype(np.uint16)  # 12-bit
    item.LUTDescriptor = [entries, first, 12]
    item.add_new(0x00283006, "US", lut.tolist())  # LUT Data
    path = write_dicom(tmp_path / "lut.dcm", pixels, bits_stored=10,
                       VOILUTSequence=Sequence([item]))
    expected = lut[np.clip(pixels.astype(int) - first, 0, entries - 1)] / lut.max()
    np.testing.assert_allclose(read_image(path), expected, atol=1e-6)


def test_without_window_uses_min_max(tmp_path):
    pixels = np.array([[100, 612], [356, 868]], dtype=np.uint16)
    out = read_image(write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12))
    np.testing.assert_allclose(out, [[0.0, 512 / 768], [256 / 768, 1.0]], atol=1e-6)


def test_pydicom_bundled_ct(tmp_path):
    import pydicom

    path = _bundled("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert "WindowCenter" not in ds  # so the reader scales the HU range min–max
    np.testing.assert_allclose(read_image(path), (hu - hu.min()) / (hu.max() - hu.min()),
                               atol=1e-6)


def test_files_without_a_suffix_are_sniffed(tmp_path, ramp):
    path = write_dicom(tmp_path / "IM0001", ramp)
    assert read_image(path).shape == ramp.shape


@pytest.mark.parametrize("name,message", [
    ("MR_truncated.dcm", r"MR_truncated.dcm: the pixel data is truncated"),
    ("rtplan.dcm", r"rtplan.dcm: the DICOM file has no pixel data.*RT Plan"),
    ("SC_rgb_rle_2frame.dcm", r"multi-frame DICOM \(2 frames\)"),
])
def test_bad_dicoms(name, message):
    with pytest.raises(ImageReadError, match=message):
        read_image(_bundled(name))


def test_missing_plugin_names_the_package():
    import importlib.util

    if importlib.util.find_spec("libjpeg") or importlib.util.find_spec("gdcm") or \
            importlib.util.find_spec("jpeg_ls"):
        pytest.skip("a JPEG-LS plugin is installed")
    with pytest.raises(ImageReadError, match=r"JPEG-LS.*pip install pylibjpeg"):
        read_image(_bundled("JPEGLSNearLossless_08.dcm"))


def test_truncated_file_written_here(tmp_path, ramp):
    path = write_dicom(tmp_path / "full.dcm", ramp)
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 500])
    with pytest.raises(ImageReadError, match=r"cut.dcm: .*truncated"):
        read_image(tmp_path / "cut.dcm")
