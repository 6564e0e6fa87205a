"""wsloc.dicom_out: a film's masks as a DICOM SEG and its boxes as a Comprehensive SR, on a
generated DX and CR and on real CR films shipped with pydicom (and pydicom-data), written,
read back with pydicom and highdicom, and checked against the inputs — the SEG's pixels also
decoded by hand from the raw bit-packed Pixel Data, the SR's regions also walked by hand
from the raw content tree, so neither check rests on highdicom alone."""

from __future__ import annotations

import os

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    SegmentationStorage,
    generate_uid,
)

from wsloc import __version__
from wsloc.dicom_out import (
    box_corners,
    box_report,
    dicom_domain_check,
    finding_code,
    segmentation,
    write_dicom_outputs,
)

ROWS, COLS = 97, 131  # not square: a transposed mask or box fails


def make_film(path, rows=ROWS, cols=COLS, modality="DX", frame_of_reference=True, **tags):
    """A minimal single-frame projection film: DX (digital X-ray, for presentation) with a
    Frame of Reference, or CR without one; 16-bit MONOCHROME2 pixels, both pixel spacings."""
    ds = Dataset()
    sop_class = (ComputedRadiographyImageStorage if modality == "CR" else
                 DigitalXRayImageStorageForPresentation)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    if frame_of_reference:
        ds.FrameOfReferenceUID = generate_uid()
        ds.PositionReferenceIndicator = ""
    ds.PatientID, ds.PatientName = "WSLOC-0001", "Test^Film"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.BodyPartExamined = modality, "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer = "generated"
    ds.PixelSpacing = ds.ImagerPixelSpacing = [0.143, 0.139]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (rows, cols),
                                                     dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def some_masks(rows, cols, seed=0):
    """Three findings: a rectangle, an ellipse, and random pixels (so bit order counts)."""
    yy, xx = np.mgrid[:rows, :cols]
    rect = np.zeros((rows, cols), bool)
    rect[rows // 5: rows // 2, cols // 7: cols // 2] = True
    ellipse = ((yy - rows * 0.6) / (rows * 0.2)) ** 2 + ((xx - cols * 0.7) / (cols * 0.15)) ** 2 < 1
    noise = np.random.default_rng(seed).random((rows, cols)) < 0.3
    return {"Mass": rect, "Effusion": ellipse, "Atelectasis": noise}


def some_boxes(rows, cols):
    return [
        {"image": "film", "class": "Mass", "probability": 0.912345, "x1": 3.0, "y1": 5.0,
         "x2": cols / 2, "y2": rows / 2, "score": 0.8, "threshold": 60, "width": cols,
         "height": rows},
        {"image": "film", "class": "Mass", "probability": 0.912345, "x1": 0.0, "y1": 0.0,
         "x2": float(cols), "y2": float(rows), "score": 0.4, "threshold": 180,
         "width": cols, "height": rows},
        {"image": "film", "class": "Atelectasis", "probability": 0.5, "x1": 10.0,
         "y1": 20.0, "x2": 11.0, "y2": 21.0},  # a one-pixel box; no threshold, no frame
    ]


# --- the independent decoders -----------------------------------------------------------

def raw_segments(path) -> dict[str, np.ndarray]:
    """Label → mask from a BINARY SEG by hand: Pixel Data is one bit per pixel, LSB first,
    frames back to back without padding; each frame's segment from its functional group."""
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == "BINARY" and ds.BitsAllocated == 1
    n, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")
    frames = bits[: n * rows * cols].reshape(n, rows, cols).astype(bool)
    labels = {int(s.SegmentNumber): s.SegmentLabel for s in ds.SegmentSequence}
    out = {}
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[labels[number]] = frame
    return out


def _items(node):
    for item in node.get("ContentSequence", []):
        yield item
        yield from _items(item)


def raw_regions(path) -> list[dict]:
    """Each measurement group of an SR by hand: finding meaning, probability, polyline
    [N, 2] and the SOP Instance UID the region is selected from."""
    ds = pydicom.dcmread(path)
    groups = [i for i in _items(ds) if i.ValueType == "CONTAINER"
              and i.ConceptNameCodeSequence[0].CodeValue == "125007"]  # Measurement Group
    out = []
    for group in groups:
        record = {}
        for item in group.ContentSequence:
            concept = item.ConceptNameCodeSequence[0]
            if item.ValueType == "CODE" and concept.CodeValue == "121071":  # Finding
                record["finding"] = item.ConceptCodeSequence[0].CodeMeaning
            if item.ValueType == "NUM" and concept.CodeValue == "122157":  # Probability
                record["probability"] = float(item.MeasuredValueSequence[0].NumericValue)
            if item.ValueType == "SCOORD":
                record["graphic_type"] = item.GraphicType
                record["points"] = np.asarray(item.GraphicData, np.float64).reshape(-1, 2)
                ref = item.ContentSequence[0].ReferencedSOPSequence[0]
                record["sop_instance_uid"] = ref.ReferencedSOPInstanceUID
        out.append(record)
    return out


def corners(box):
    x1, y1, x2, y2 = (box[k] for k in ("x1", "y1", "x2", "y2"))
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], np.float64)


# --- the round trip ---------------------------------------------------------------------

def check_round_trip(film_path, out_dir, masks, boxes):
    """Write, read back both ways, and compare everything with the inputs and the film."""
    film = pydicom.dcmread(film_path, stop_before_pixels=True)
    paths = write_dicom_outputs(film_path, out_dir, masks, boxes)
    stem = os.path.basename(film_path).removesuffix(".dcm")
    assert paths == {"seg": out_dir / f"{stem}.seg.dcm", "sr": out_dir / f"{stem}.sr.dcm"}
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [f"{stem}.seg.dcm", f"{stem}.sr.dcm"])  # no temporary file left

    # SEG, through pydicom
    raw = pydicom.dcmread(paths["seg"])
    assert raw.SOPClassUID == SegmentationStorage and raw.Modality == "SEG"
    assert (raw.Rows, raw.Columns) == (film.Rows, film.Columns)
    for key in ("StudyInstanceUID", "PatientID", "PatientName"):
        assert raw[key].value == film[key].value, key
    assert raw.get("FrameOfReferenceUID") == film.get("FrameOfReferenceUID")
    ref_series = raw.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == film.SeriesInstanceUID
    assert ref_series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == (
        film.SOPInstanceUID)
    for group in raw.PerFrameFunctionalGroupsSequence:
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == film.SOPInstanceUID
        assert source.SpatialLocationsPreserved == "YES"
    shared = raw.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" not in shared  # a projection: the film's grid itself
    assert "PlanePositionSequence" not in raw.PerFrameFunctionalGroupsSequence[0]
    seg_algorithm = raw.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (seg_algorithm.AlgorithmName, seg_algorithm.AlgorithmVersion) == (
        "wsloc", __version__)
    by_label = {s.SegmentLabel: s for s in raw.SegmentSequence}
    present = [k for k, m in masks.items() if m.any()]
    assert list(by_label) == present
    for label in present:
        category = by_label[label].SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
        kind = by_label[label].SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodeValue, kind.CodingSchemeDesignator) == (
            finding_code(label).value, finding_code(label).scheme_designator)
    decoded = raw_segments(paths["seg"])
    assert list(decoded) == present
    for label in present:
        np.testing.assert_array_equal(decoded[label], masks[label], err_msg=label)

    # SEG, through highdicom
    seg = hd.seg.segread(paths["seg"])
    assert seg.get_source_image_uids() == [
        (film.StudyInstanceUID, film.SeriesInstanceUID, film.SOPInstanceUID)]
    numbers = [s.SegmentNumber for s in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance([film.SOPInstanceUID],
                                               segment_numbers=numbers)
    assert pixels.shape == (1, film.Rows, film.Columns, len(present))
    for k, label in enumerate(present):
        assert seg.get_segment_description(numbers[k]).segment_label == label
        np.testing.assert_array_equal(pixels[0, ..., k].astype(bool), masks[label])

    # SR, through pydicom
    raw_sr = pydicom.dcmread(paths["sr"])
    assert raw_sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert raw_sr.StudyInstanceUID == film.StudyInstanceUID
    assert raw_sr.PatientID == film.PatientID
    evidence = raw_sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == film.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == film.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == film.SOPInstanceUID
    regions = raw_regions(paths["sr"])
    assert len(regions) == len(boxes)
    for region, box in zip(regions, boxes):
        assert region["graphic_type"] == "POLYLINE"
        np.testing.assert_array_equal(region["points"], corners(box))
        assert region["sop_instance_uid"] == film.SOPInstanceUID
        assert region["probability"] == box["probability"]
        assert region["finding"] == finding_code(box["class"]).meaning

    # SR, through highdicom
    sr = hd.sr.srread(paths["sr"])
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(boxes)
    for group, box in zip(groups, boxes):
        assert group.finding_type == finding_code(box["class"])
        assert group.finding_category == codes.SCT.MorphologicallyAbnormalStructure
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_array_equal(group.roi.value, corners(box))
        (measurement,) = group.get_measurements(name=codes.DCM.Probability)
        assert measurement.value == box["probability"]
        assert measurement.unit == codes.UCUM.NoUnits
    by_uid = sr.content.get_planar_roi_measurement_groups(
        referenced_sop_instance_uid=film.SOPInstanceUID)
    assert len(by_uid) == len(boxes)
    return paths


def test_generated_dx_with_frame_of_reference(tmp_path):
    film = make_film(tmp_path / "film.dcm")
    masks = some_masks(ROWS, COLS)
    masks["Nodule"] = np.zeros((ROWS, COLS), bool)  # no pixel: no segment
    check_round_trip(film, tmp_path / "out", masks, some_boxes(ROWS, COLS))


def test_generated_cr_without_frame_of_reference(tmp_path):
    film = make_film(tmp_path / "cr.dcm", modality="CR", frame_of_reference=False)
    assert "FrameOfReferenceUID" not in pydicom.dcmread(film)
    check_round_trip(film, tmp_path / "out", some_masks(ROWS, COLS, seed=1),
                     some_boxes(ROWS, COLS))


def test_real_cr_film_from_pydicom(tmp_path):
    """chrJapMulti.dcm: a CR chest film pydicom always ships (32 × 32, MONOCHROME1, Japanese
    patient name in ISO 2022 IR 87, no Study ID, no Frame of Reference)."""
    (path,) = get_charset_files("chrJapMulti.dcm")
    film = pydicom.dcmread(path)
    assert (film.Modality, film.BodyPartExamined, film.Rows, film.Columns) == (
        "CR", "CHEST", 32, 32)
    paths = check_round_trip(path, tmp_path, some_masks(32, 32, seed=2), some_boxes(32, 32))
    seg = pydicom.dcmread(paths["seg"])
    assert seg.PatientName == film.PatientName  # the name survives its character set
    assert seg.StudyID == ""  # type 2: present, empty, as the film did not say


def test_real_cr_chest_film_from_pydicom_data(tmp_path):
    """RG1_UNCR.dcm (pydicom-data, the test extra): a real 1955 × 1841 CR chest film."""
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data (the test extra with pydicom's large films) is missing")
    film = pydicom.dcmread(path, stop_before_pixels=True)
    assert (film.Modality, film.BodyPartExamined, film.Rows, film.Columns) == (
        "CR", "CHEST", 1955, 1841)
    assert dicom_domain_check(film) is None
    check_round_trip(path, tmp_path, some_masks(1955, 1841, seed=3), some_boxes(1955, 1841))


# --- the builders' rules ----------------------------------------------------------------

@pytest.fixture
def film(tmp_path):
    return pydicom.dcmread(make_film(tmp_path / "film.dcm"), stop_before_pixels=True)


def test_a_mask_of_another_shape_names_both(film):
    with pytest.raises(ValueError, match=r"Mass.*\(131, 97\).*\(97, 131\)"):
        segmentation(film, {"Mass": np.ones((COLS, ROWS), bool)})


def test_no_finding_gives_no_seg_and_no_sr(film, tmp_path):
    assert segmentation(film, {"Mass": np.zeros((ROWS, COLS), bool)}) is None
    assert segmentation(film, {}) is None
    assert box_report(film, []) is None
    paths = write_dicom_outputs(film.filename, tmp_path / "none",
                                {"Mass": np.zeros((ROWS, COLS), bool)}, [])
    assert paths == {"seg": None, "sr": None}
    assert list((tmp_path / "none").iterdir()) == []
    assert write_dicom_outputs(film.filename, tmp_path / "none", None, None) == paths


def test_masks_must_be_zero_one(film):
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[3:9, 4:7] = 1
    seg = segmentation(film, {"Nodule": mask})
    assert seg.SegmentSequence[0].SegmentLabel == "Nodule"
    with pytest.raises(ValueError, match="other than 0 and 1"):
        segmentation(film, {"Nodule": mask * 0.5})
    with pytest.raises(TypeError, match="must map finding names"):
        segmentation(film, [mask])


@pytest.mark.parametrize("change, message", [
    ({"x2": COLS + 1.0}, "not inside"),
    ({"x1": 5.0, "x2": 5.0}, "not inside"),
    ({"width": 2 * COLS, "height": 2 * ROWS}, "drawn on a 262×194 film"),
    ({"probability": 1.5}, r"in \[0, 1\]"),
    ({"class": "x" * 65}, "at most 64"),
])
def test_bad_boxes_are_refused(film, change, message):
    box = {**some_boxes(ROWS, COLS)[0], **change}
    with pytest.raises(ValueError, match=message):
        box_report(film, [box])


def test_a_box_without_its_corners_says_which(film):
    box = dict(some_boxes(ROWS, COLS)[0])
    del box["y2"]
    with pytest.raises(ValueError, match="box 0 lacks y2"):
        box_report(film, [box])


def test_a_source_without_references_is_refused(film):
    del film.SeriesInstanceUID
    with pytest.raises(ValueError, match="lacks SeriesInstanceUID"):
        segmentation(film, {"Mass": np.ones((ROWS, COLS), bool)})
    with pytest.raises(TypeError, match="pydicom.Dataset"):
        box_report("film.dcm", some_boxes(ROWS, COLS))


def test_multi_frame_source_is_refused(film):
    film.NumberOfFrames = 3
    with pytest.raises(ValueError, match="multi-frame source \\(3 frames\\)"):
        segmentation(film, {"Mass": np.ones((ROWS, COLS), bool)})


def test_box_corners_are_the_closed_polyline():
    np.testing.assert_array_equal(
        box_corners({"x1": 1, "y1": 2, "x2": 7, "y2": 4}),
        [[1, 2], [7, 2], [7, 4], [1, 4], [1, 2]])


def test_uids_follow_the_result(film):
    masks = some_masks(ROWS, COLS)
    a, b = segmentation(film, masks), segmentation(film, masks)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != film.SOPInstanceUID
    masks["Mass"] = ~masks["Mass"]
    assert segmentation(film, masks).SOPInstanceUID != a.SOPInstanceUID
    boxes = some_boxes(ROWS, COLS)
    assert box_report(film, boxes).SOPInstanceUID == box_report(film, boxes).SOPInstanceUID
    boxes[0]["probability"] = 0.25
    assert box_report(film, boxes).SOPInstanceUID != box_report(
        film, some_boxes(ROWS, COLS)).SOPInstanceUID
    uid, series = generate_uid(), generate_uid()
    given = segmentation(film, masks, sop_instance_uid=uid, series_instance_uid=series,
                         series_number=7, algorithm_version="9.9",
                         algorithm_parameters={"checkpoint": "abc123"})
    assert (given.SOPInstanceUID, given.SeriesInstanceUID, given.SeriesNumber) == (
        uid, series, 7)
    algorithm = given.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == "9.9"
    assert algorithm.AlgorithmParameters == "checkpoint=abc123"


def test_the_same_result_is_the_same_bytes_whenever_written(tmp_path):
    """No clock and no random UID in the files: written again a moment later (as a resumed
    run rewrites a film; highdicom's clock stamps carry microseconds), byte for byte the
    same; the dates are the film's own."""
    path = make_film(tmp_path / "film.dcm", ContentDate="20250102", ContentTime="030405")
    first = {k: p.read_bytes() for k, p in write_dicom_outputs(
        path, tmp_path / "a", some_masks(ROWS, COLS), some_boxes(ROWS, COLS)).items()}
    again = write_dicom_outputs(path, tmp_path / "b", some_masks(ROWS, COLS),
                                some_boxes(ROWS, COLS))
    for kind, p in again.items():
        assert p.read_bytes() == first[kind], kind
        ds = pydicom.dcmread(p)
        assert (ds.ContentDate, ds.ContentTime) == ("20250102", "030405")
        assert "InstanceCreationDate" not in ds and "InstanceCreationTime" not in ds
        assert all("ContributionDateTime" not in item
                   for item in ds.get("ContributingEquipmentSequence", []))
    seg = pydicom.dcmread(again["seg"])
    uid = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    assert uid.startswith("2.25.") and seg.DimensionIndexSequence[0].DimensionOrganizationUID \
        == uid
    # a film without a content date takes the next it has: its study's (make_film's)
    plain = make_film(tmp_path / "plain.dcm")
    ds = segmentation(pydicom.dcmread(plain, stop_before_pixels=True), some_masks(ROWS, COLS))
    assert (ds.ContentDate, ds.ContentTime) == ("20260101", "120000")


# --- write_dicom_outputs ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["chest.png", "chest.JPG", "chest.jpeg"])
def test_png_and_jpeg_inputs_are_refused_with_the_reason(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="--dicom-out needs DICOM inputs.*SOP Instance UIDs"):
        write_dicom_outputs(tmp_path / name, tmp_path / "out", {}, [])
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_dicom_is_refused(tmp_path):
    (tmp_path / "notes").write_text("not a film\n" * 20)
    with pytest.raises(ValueError, match="needs DICOM inputs.*a non-DICOM file has none"):
        write_dicom_outputs(tmp_path / "notes", tmp_path / "out", {}, [])


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = make_film(tmp_path / "film.dcm")
    out = tmp_path / "out"
    masks, boxes = some_masks(ROWS, COLS), some_boxes(ROWS, COLS)
    first = write_dicom_outputs(path, out, masks, boxes, stem="renamed")
    assert first["seg"].name == "renamed.seg.dcm" and first["sr"].name == "renamed.sr.dcm"
    before = first["seg"].read_bytes()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    masks["Mass"] = ~masks["Mass"]
    with pytest.raises(OSError, match="disk full"):
        write_dicom_outputs(path, out, masks, boxes, stem="renamed")
    assert sorted(p.name for p in out.iterdir()) == ["renamed.seg.dcm", "renamed.sr.dcm"]
    assert first["seg"].read_bytes() == before  # the old file, whole
    monkeypatch.undo()
    write_dicom_outputs(path, out, masks, boxes, stem="renamed")
    np.testing.assert_array_equal(raw_segments(out / "renamed.seg.dcm")["Mass"], masks["Mass"])


def test_a_bad_box_writes_neither_file(tmp_path):
    path = make_film(tmp_path / "film.dcm")
    bad = [{**some_boxes(ROWS, COLS)[0], "x2": 1e6}]
    with pytest.raises(ValueError, match="not inside"):
        write_dicom_outputs(path, tmp_path / "out", some_masks(ROWS, COLS), bad)
    assert list((tmp_path / "out").iterdir()) == []


def test_files_without_a_suffix_keep_their_name(tmp_path):
    path = make_film(tmp_path / "IM0001")
    paths = write_dicom_outputs(path, tmp_path / "out", some_masks(ROWS, COLS), None)
    assert paths == {"seg": tmp_path / "out" / "IM0001.seg.dcm", "sr": None}


# --- codes and the domain check -----------------------------------------------------------

@pytest.mark.parametrize("label, code", [
    ("Cardiomegaly", codes.SCT.Cardiomegaly),
    ("Effusion", codes.SCT.PleuralEffusion),
    ("Infiltration", codes.DCM.Infiltrate),
    ("Mass", codes.SCT.Mass),
    ("nodule", codes.SCT.Nodule),
    ("Pneumothorax", codes.SCT.Pneumothorax),
    ("Edema", codes.SCT.PulmonaryEdema),
    ("Fibrosis", codes.SCT.Fibrosis),
])
def test_finding_codes_are_dicoms_own(label, code):
    """Checked against pydicom's copy of the DICOM code tables, not a list of our own."""
    assert finding_code(label) == code
    assert finding_code(label).meaning.lower() == code.meaning.lower()


def test_other_findings_get_a_private_code():
    code = finding_code("Pleural_Thickening")
    assert (code.value, code.scheme_designator, code.meaning) == (
        "Pleural_Thickening", "99WSLOC", "Pleural_Thickening")
    with pytest.raises(ValueError, match="non-empty"):
        finding_code(" ")


def _ds(**tags):
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # "chest ": as devices write
@pytest.mark.parametrize("tags", [
    {"Modality": "CR", "BodyPartExamined": "CHEST"},
    {"Modality": "DX"},
    {"Modality": "DR", "BodyPartExamined": "chest "},
    {"Modality": "DX", "BodyPartExamined": ""},
    {"Modality": "DX", "BodyPartExamined": "THORAX"},
    {},
])
def test_chest_radiographs_pass_the_domain_check(tags):
    assert dicom_domain_check(_ds(**tags)) is None


@pytest.mark.parametrize("tags, named", [
    ({"Modality": "CT", "BodyPartExamined": "CHEST"}, ["Modality CT"]),
    ({"Modality": "MR"}, ["Modality MR"]),
    ({"Modality": "CR", "BodyPartExamined": "KNEE"}, ["Body Part Examined KNEE"]),
    ({"Modality": "US", "BodyPartExamined": "ABDOMEN"},
     ["Modality US", "Body Part Examined ABDOMEN"]),
])
def test_other_films_get_a_warning_naming_them(tags, named):
    message = dicom_domain_check(_ds(**tags))
    assert "not a chest radiograph" in message
    for words in named:
        assert words in message


def test_domain_check_on_real_pydicom_films():
    """pydicom's CR of a cervical spine (CSPINE) and its CT warn; its CR chest does not."""
    spine = pydicom.dcmread(get_testdata_file("6154", download=False),
                            stop_before_pixels=True)
    message = dicom_domain_check(spine)
    assert "Body Part Examined CSPINE" in message and str(spine.filename) in message
    assert "Modality" not in message  # CR is a chest modality: only the body part is named
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    assert "Modality CT" in dicom_domain_check(ct)
    (chest,) = get_charset_files("chrJapMulti.dcm")
    assert dicom_domain_check(pydicom.dcmread(chest)) is None


def test_importing_the_module_loads_neither_highdicom_nor_pydicom():
    """heatmap/segment may import wsloc.dicom_out at the top: it must stay cheap."""
    import subprocess
    import sys

    code = ("import sys, wsloc.dicom_out; "
            "print(sorted(m for m in ('highdicom', 'pydicom') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "[]"
