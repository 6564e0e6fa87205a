"""Results back into the clinic's formats: per film, a DICOM Segmentation (the masks) and a
Comprehensive SR (the boxes, their finding and probability), both referencing the source
film, built with highdicom — what ``--dicom-out`` writes.

Geometry. A chest film (CR, DX) is a 2D projection: it has no Image Position/Orientation
(Patient), and CR has no Frame of Reference at all. highdicom encodes a Segmentation of such
an image as one frame on the source's own pixel matrix — same Rows/Columns, referenced by
SOP Instance UID with its pixel locations preserved — with no plane position or orientation
(the patient coordinate system it would be defined in does not exist). The SR's boxes are
SCOORD regions in the same pixel frame: (column, row), with (0, 0) the top-left corner of the
top-left pixel, so a ``boxes.json`` record's ``x1, y1, x2, y2`` (x2/y2 exclusive) are its
corners as they are. Pixel spacing stays with the film (PixelSpacing, or ImagerPixelSpacing
at the detector): every output is pixel-for-pixel on it. See docs/dicom.md.

highdicom and pydicom are imported inside the functions (``import wsloc`` stays fast).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["segmentation", "box_report", "write_dicom_outputs", "dicom_domain_check",
           "finding_code", "box_corners", "CHEST_MODALITIES", "CHEST_BODY_PARTS"]

# Modalities a chest radiograph arrives as: CR (computed radiography) and DX (digital X-ray,
# the standard code for flat-panel films). "DR" is no DICOM code, but some vendors write it
# for digital radiography, so it is taken as DX.
CHEST_MODALITIES = ("CR", "DX", "DR")
# Body Part Examined values meaning the chest: CHEST is DICOM's defined term; THORAX and LUNG
# are what some devices write instead.
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")

# Findings with a code in DICOM's own tables (as pydicom ships them, so the tests check each
# against pydicom.sr.codedict): (value, scheme, meaning). NIH's "Effusion" is pleural
# effusion; its "Edema" is pulmonary edema; "Infiltration" is the DCM chest CAD finding
# "Infiltrate" (CID 6104). A finding not listed gets a private code, see finding_code().
_FINDING_CODES = {
    "cardiomegaly": ("287272002", "SCT", "Cardiomegaly"),
    "effusion": ("60046008", "SCT", "Pleural effusion"),
    "pleural effusion": ("60046008", "SCT", "Pleural effusion"),
    "infiltration": ("112121", "DCM", "Infiltrate"),
    "infiltrate": ("112121", "DCM", "Infiltrate"),
    "mass": ("4147007", "SCT", "Mass"),
    "nodule": ("27925004", "SCT", "Nodule"),
    "pneumothorax": ("36118008", "SCT", "Pneumothorax"),
    "edema": ("19242006", "SCT", "Pulmonary edema"),
    "fibrosis": ("112674009", "SCT", "Fibrosis"),
}
PRIVATE_SCHEME = "99WSLOC"  # "99" marks a private coding scheme (PS3.3 8.2)
_SEG_SERIES_NUMBER, _SR_SERIES_NUMBER = 9901, 9902
# the namespace of wsloc's derived UIDs (a fixed random UUID; changing it changes every UID)
_UID_NAMESPACE = uuid.UUID("e5a09cd7-a5e8-45da-85fd-111708839f19")
_BOX_KEYS = ("class", "probability", "x1", "y1", "x2", "y2")


def _name(ds) -> str:
    """How a message names the film: its file, else its SOP Instance UID."""
    filename = getattr(ds, "filename", None)
    if isinstance(filename, (str, os.PathLike)) and str(filename):
        return str(filename)
    return f"the DICOM dataset {ds.get('SOPInstanceUID', '(no SOP Instance UID)')}"


def _check_label(label: str, what: str) -> str:
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"{what}: a finding name must be a non-empty string, got {label!r}")
    if len(label) > 64 or "\\" in label:
        raise ValueError(f"{what}: a finding name becomes a DICOM LO value (at most 64 "
                         f"characters, no backslash), got {label!r}")
    return label


def finding_code(label: str):
    """The coded concept for a finding name: a ``pydicom.sr.coding.Code``.

    The findings DICOM's tables code (SNOMED CT or DCM: Cardiomegaly, Effusion, Infiltration,
    Mass, Nodule, Pneumothorax, Edema, Fibrosis; case-insensitive, ``_`` read as a space) get
    that code. Any other name (Atelectasis, Pneumonia, a user's class) gets a code of the
    private scheme ``99WSLOC`` whose value and meaning are the name itself: honest about
    being local, and readable in any viewer, rather than a guessed SNOMED code.

    Raises:
        ValueError: an empty name, or one that is not a valid DICOM LO (over 64 characters,
            or a backslash).
    """
    from pydicom.sr.coding import Code

    _check_label(label, "finding_code")
    known = _FINDING_CODES.get(label.strip().lower().replace("_", " "))
    if known is not None:
        value, scheme, meaning = known
        return Code(value, scheme, meaning)
    return Code(label.strip(), PRIVATE_SCHEME, label.strip())


def dicom_domain_check(ds) -> str | None:
    """A warning when a DICOM film says it is not a chest radiograph, else None.

    Not a chest radiograph: Modality is present and not one of :data:`CHEST_MODALITIES`
    (CR, DX, or the vendor spelling DR), or Body Part Examined is present, non-empty and not
    one of :data:`CHEST_BODY_PARTS`. A missing or empty attribute says nothing and gives no
    warning (Body Part Examined is optional, and often empty on chest films).

    Args:
        ds: a ``pydicom.Dataset`` (pixel data not needed).

    Returns:
        The message, naming the file and the values it holds, or None.
    """
    modality = str(ds.get("Modality", "") or "").strip().upper()
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    problems = []
    if modality and modality not in CHEST_MODALITIES:
        problems.append(f"Modality {modality} (a chest radiograph is "
                        f"{'/'.join(CHEST_MODALITIES)})")
    if body_part and body_part not in CHEST_BODY_PARTS:
        problems.append(f"Body Part Examined {body_part} (not CHEST)")
    if not problems:
        return None
    return (f"{_name(ds)}: the DICOM says this is not a chest radiograph: "
            f"{'; '.join(problems)}; the model was trained on chest films and its output "
            "here means little")


def _check_source(source) -> tuple[int, int]:
    """(rows, columns) of a single-frame image dataset, or a ValueError naming what lacks."""
    from pydicom.dataset import Dataset

    if not isinstance(source, Dataset):
        raise TypeError(f"`source` must be a pydicom.Dataset, got {type(source).__name__}")
    needed = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
              "Rows", "Columns")
    missing = [k for k in needed if not source.get(k)]
    if missing:
        raise ValueError(f"{_name(source)}: a DICOM SEG/SR must reference its source image, "
                         f"which lacks {', '.join(missing)}")
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{_name(source)}: multi-frame source ({frames} frames); wsloc "
                         "writes DICOM outputs for single-frame films only")
    return int(source.Rows), int(source.Columns)


def _uid(explicit: str | None, *entropy: object) -> str:
    """The given UID, or one derived from ``entropy`` (the source's UIDs, what is written,
    wsloc's version): the same result on the same film gets the same UID, so a resumed or
    repeated run writes the same objects; a different result gets a different one. Derived
    UIDs are ``2.25.`` + a name-based (SHA-1, version 5) UUID of the entropy, the UUID form
    of UID PS3.5 B.2 allows."""
    if explicit is not None:
        return str(explicit)
    name = "\x1f".join(str(e) for e in entropy)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _versions(algorithm_version: str | None) -> str:
    if algorithm_version is not None:
        return str(algorithm_version)
    from wsloc import __version__

    return __version__


# Patient and General Study attributes of type 2 (present, possibly empty) that highdicom
# copies from the source and real films sometimes omit.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
          "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def _highdicom_source(source):
    """The film's metadata as highdicom gets it: a shallow copy, without pixel data, where

    - a type-2 Patient/Study attribute the film omits is present and empty (what the
      standard allows for an unknown value; highdicom requires the attribute), and a
      Patient's Sex other than M, F or O is empty (highdicom refuses other values); an
      empty first Specific Character Set value beside code extensions is written out as
      the ISO 2022 IR 6 it means (PS3.3 C.12.1.1.2), which highdicom needs spelt out;
    - a projection film (no Image Position (Patient)) has no Pixel Spacing: highdicom 0.28
      would copy it into a Pixel Measures Sequence without Slice Thickness (a projection
      has none), which its own ``segread`` then refuses to open. Its design for images
      without a patient coordinate system is no pixel measures at all: the SEG is
      pixel-for-pixel on the film, whose spacing stays in the film.
    """
    from pydicom.dataset import Dataset

    drop = {"PixelData", "FloatPixelData", "DoubleFloatPixelData"}
    if "ImagePositionPatient" not in source:
        drop.add("PixelSpacing")
    meta = Dataset()
    for element in source:
        if element.keyword not in drop:
            meta.add(element)
    for keyword in _TYPE2:
        if keyword not in meta:
            setattr(meta, keyword, None)
    charsets = meta.get("SpecificCharacterSet")
    if charsets is not None and not isinstance(charsets, str) and len(charsets) > 1 \
            and not charsets[0]:
        # PS3.3 C.12.1.1.2: an empty value 1 with code extensions means ISO 2022 IR 6
        meta.SpecificCharacterSet = ["ISO 2022 IR 6", *list(charsets)[1:]]
    sex = str(meta.PatientSex or "").strip().upper()
    meta.PatientSex = sex if sex in ("M", "F", "O") else None
    if hasattr(source, "file_meta"):
        meta.file_meta = source.file_meta
    meta.filename = getattr(source, "filename", None)
    return meta


def segmentation(source, masks: Mapping[str, np.ndarray], *,
                 algorithm_name: str = "wsloc", algorithm_version: str | None = None,
                 algorithm_parameters: Mapping[str, str] | None = None,
                 series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
                 series_number: int = _SEG_SERIES_NUMBER, instance_number: int = 1,
                 series_description: str = "wsloc findings (weakly supervised)"):
    """A DICOM Segmentation of one film: one BINARY segment per finding whose mask is not
    empty.

    Each segment: label = the finding name; category SCT 49755003 "Morphologically Abnormal
    Structure" (DICOM's CID 7150 category for lesions and abnormal findings: every wsloc
    class is an abnormality, and the type carries which); type = :func:`finding_code` (the
    finding's SNOMED/DCM code where DICOM has one, else a private ``99WSLOC`` code named
    after it); algorithm type AUTOMATIC, identified as ``algorithm_name`` +
    ``algorithm_version`` (default wsloc and its version), family "Artificial Intelligence".
    BINARY because the masks are binary; a CAM heatmap's [0, 1] values are neither of the two
    FRACTIONAL meanings DICOM defines (probability, occupancy), so thresholded masks are what
    is written.

    Geometry: one frame of the source's Rows × Columns, referencing it (Study, Series and SOP
    Instance UIDs; its Frame of Reference UID when it has one); patient, study and equipment
    attributes inherited from it. See the module docstring for projection films (CR/DX).

    Args:
        source: the film, a ``pydicom.Dataset`` (its pixel data need not be loaded).
        masks: finding name → bool [rows, cols] in the film's pixels. Integer or float masks
            holding only 0 and 1 are taken as bool.
        algorithm_name, algorithm_version, algorithm_parameters: the algorithm
            identification of every segment (parameters: e.g. the checkpoint hash).
        series_instance_uid, sop_instance_uid: default: derived from the source's SOP
            Instance UID, the masks and the version (the same result gets the same UIDs).
        series_number, instance_number: default 9901 (a high number: it sorts after the
            acquired series) and 1.
        series_description: the SEG series' description.

    Returns:
        ``highdicom.seg.Segmentation``, or None when no mask has a pixel set (no finding):
        a SEG must hold at least one segment, and an empty segment would claim a finding
        with no extent.

    Raises:
        ValueError: a mask whose shape is not the film's (both shapes named), a mask with
            values other than 0/1, a bad finding name, or a source lacking the UIDs, Rows or
            Columns a reference needs, or multi-frame.
        TypeError: ``source`` is not a Dataset, or ``masks`` not a mapping.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rows, cols = _check_source(source)
    if not isinstance(masks, Mapping):
        raise TypeError(f"`masks` must map finding names to arrays, got "
                        f"{type(masks).__name__}")
    kept: dict[str, np.ndarray] = {}
    for label, mask in masks.items():
        _check_label(label, f"{_name(source)}: masks")
        mask = np.asarray(mask)
        if mask.shape != (rows, cols):
            raise ValueError(f"{_name(source)}: the mask of {label!r} has shape "
                             f"{mask.shape}, the film is {(rows, cols)} (rows, columns); "
                             "masks must be in the film's own pixels")
        if mask.dtype != bool:
            if mask.size and not np.isin(mask, (0, 1)).all():
                raise ValueError(f"{_name(source)}: the mask of {label!r} holds values "
                                 "other than 0 and 1; pass a boolean mask (threshold it "
                                 "first)")
            mask = mask.astype(bool)
        if mask.any():
            kept[label] = mask
    if not kept:
        return None
    version = _versions(algorithm_version)
    params = {str(k): str(v) for k, v in (algorithm_parameters or {}).items()} or None
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.cid7162.ArtificialIntelligence, version=version,
        parameters=params)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=finding_code(label),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for number, label in enumerate(kept, start=1)]
    pixels = np.stack(list(kept.values()), axis=-1)[None]  # [1 frame, rows, cols, segments]
    digest = hashlib.sha256()
    for label, mask in kept.items():
        digest.update(label.encode() + b"\0" + np.packbits(mask).tobytes())
    entropy = (source.SOPInstanceUID, "seg", digest.hexdigest(), algorithm_name, version,
               sorted((params or {}).items()))
    try:
        seg = hd.seg.Segmentation(
            source_images=[_highdicom_source(source)], pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=_uid(series_instance_uid, *entropy, "series"),
            series_number=int(series_number),
            sop_instance_uid=_uid(sop_instance_uid, *entropy),
            instance_number=int(instance_number),
            manufacturer="wsloc", manufacturer_model_name=algorithm_name,
            software_versions=version, device_serial_number="none",
            content_label="WSLOC", content_description=series_description[:64],
            series_description=series_description[:64], omit_empty_frames=False)
    except (ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{_name(source)}: highdicom cannot build a Segmentation on this "
                         f"film: {err}") from err
    return _settled(seg, source)


# the film's own date and time, in this order of preference: when its pixels were made, then
# acquired, then its series and its study (PS3.3 C.7.6.1, C.7.3.1, C.7.2.1)
_FILM_TIMES = (("ContentDate", "ContentTime"), ("AcquisitionDate", "AcquisitionTime"),
               ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime"))


def _film_time(source) -> tuple[str, str] | None:
    """(date, time) of the film: the first pair of :data:`_FILM_TIMES` it has both of."""
    for date, time in _FILM_TIMES:
        d, t = str(source.get(date, "") or "").strip(), str(source.get(time, "") or "").strip()
        if d and t:
            return d, t
    return None


def _settled(dataset, source):
    """The object made deterministic: what highdicom stamps with the clock or draws at random
    replaced by what follows from the film and the result, so that the same result on the
    same film is the same object, byte for byte, whenever it is made (a resumed run rewrites
    a film's files unchanged; its UIDs already follow the result).

    - Content Date/Time (type 1): the film's own (:func:`_film_time`: its content, else
      acquisition, series or study date and time); a film with none of them keeps the time
      of writing, the one case where two writes differ.
    - Instance Creation Date/Time and each Contribution DateTime (type 3, the moment of
      writing): left out.
    - a SEG's Dimension Organization UID (highdicom: random): derived from its SOP Instance
      UID.
    """
    when = _film_time(source)
    if when is not None:
        dataset.ContentDate, dataset.ContentTime = when
    for keyword in ("InstanceCreationDate", "InstanceCreationTime"):
        if keyword in dataset:
            delattr(dataset, keyword)
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    organization = _uid(None, dataset.SOPInstanceUID, "dimension organization")
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in dataset.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = organization
    return dataset


def _check_box(box: Mapping, k: int, rows: int, cols: int, where: str):
    missing = [key for key in _BOX_KEYS if key not in box]
    if missing:
        raise ValueError(f"{where}: box {k} lacks {', '.join(missing)} (a boxes.json record "
                         f"has {', '.join(_BOX_KEYS)}, x2/y2 exclusive)")
    if "width" in box and "height" in box and (int(box["width"]), int(box["height"])) != (
            cols, rows):
        raise ValueError(f"{where}: box {k} was drawn on a {box['width']}×{box['height']} "
                         f"film, this film is {cols}×{rows} (width × height); boxes must be "
                         "in its own pixels")
    x1, y1, x2, y2 = (float(box[key]) for key in ("x1", "y1", "x2", "y2"))
    if not (0 <= x1 < x2 <= cols and 0 <= y1 < y2 <= rows):
        raise ValueError(f"{where}: box {k} ({x1}, {y1}, {x2}, {y2}) is not inside the "
                         f"{cols}×{rows} film with x1 < x2, y1 < y2")
    p = float(box["probability"])
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{where}: box {k} has probability {p}, which must be in [0, 1]")
    return x1, y1, x2, y2, p


def box_corners(box: Mapping) -> np.ndarray:
    """The closed polyline of a box record, float32 [5, 2] of (column, row): its four
    corners clockwise from (x1, y1) and (x1, y1) again, as DICOM closes a polygon."""
    x1, y1, x2, y2 = (float(box[key]) for key in ("x1", "y1", "x2", "y2"))
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def box_report(source, boxes: Sequence[Mapping], *,
               algorithm_name: str = "wsloc", algorithm_version: str | None = None,
               algorithm_parameters: Mapping[str, str] | None = None,
               series_instance_uid: str | None = None, sop_instance_uid: str | None = None,
               series_number: int = _SR_SERIES_NUMBER, instance_number: int = 1,
               series_description: str = "wsloc finding boxes (weakly supervised)"):
    """A Comprehensive SR of one film's boxes: a TID 1500 Measurement Report with one TID
    1410 measurement group per box.

    Why an SR and not a Presentation State: a GSPS draws graphics with free text, so a
    box's finding and probability would reach a reader only as a caption; the SR codes the
    finding (:func:`finding_code`, category "Morphologically Abnormal Structure"), carries
    the probability as a numeric measurement (DCM 122157 "Probability", UCUM "1"), names the
    algorithm (TID 4019: ``algorithm_name``, ``algorithm_version``, parameters) and a
    tracking identifier per box, and is what AI result viewers (e.g. OHIF) and archives
    parse. Comprehensive SR because the regions are 2D SCOORDs on the film; a
    Comprehensive 3D SR's SCOORD3D needs the patient coordinates a projection lacks.

    Each group: the region as a closed POLYLINE of the box's four corners in the film's
    pixel frame (:func:`box_corners`; column, row; x2/y2 exclusive, i.e. right/bottom
    edges), selected from the source SOP instance; finding type = the box's class; the
    probability, which in wsloc is the film-level probability of that class the box was
    drawn for (every box of a class carries the same one); the box's heatmap threshold, when
    the record has one, as an algorithm parameter.

    No boxes gives None, as no mask gives no SEG: a TID 1500 report needs at least one
    measurement group (highdicom enforces it), and an image-level "nothing found" group
    would need a coded negative finding that a weakly supervised model below its
    probability threshold does not really assert. That the film was processed is in the
    run's own records.

    Args:
        source: the film, a ``pydicom.Dataset`` (its pixel data need not be loaded).
        boxes: ``boxes.json`` records (``class``, ``probability``, ``x1, y1, x2, y2`` in the
            film's pixels; ``width``/``height`` are checked against the film when present).
        algorithm_name, algorithm_version, algorithm_parameters: as for
            :func:`segmentation`.
        series_instance_uid, sop_instance_uid: default derived from the source's SOP
            Instance UID, the boxes and the version.
        series_number, instance_number: default 9902 and 1.
        series_description: the SR series' description.

    Returns:
        ``highdicom.sr.ComprehensiveSR``, or None for no boxes.

    Raises:
        ValueError: a record lacking a key, drawn on a film of another size, outside the
            film or empty, a probability outside [0, 1], a bad class name, or a source
            lacking the UIDs, Rows or Columns a reference needs.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rows, cols = _check_source(source)
    where = _name(source)
    if isinstance(boxes, Mapping) or isinstance(boxes, (str, bytes)):
        raise TypeError(f"{where}: `boxes` must be a list of boxes.json records, got "
                        f"{type(boxes).__name__}")
    boxes = list(boxes)
    if not boxes:
        return None
    checked = [_check_box(box, k, rows, cols, where) for k, box in enumerate(boxes)]
    labels = [_check_label(box["class"], f"{where}: box {k}") for k, box in enumerate(boxes)]
    version = _versions(algorithm_version)
    params = [f"{k}={v}" for k, v in (algorithm_parameters or {}).items()]
    entropy = (source.SOPInstanceUID, "sr", algorithm_name, version, params,
               [(lab, *c) for lab, c in zip(labels, checked)])
    sop_uid = _uid(sop_instance_uid, *entropy)
    image = hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID)
    groups = []
    for k, (box, label, (_, _, _, _, p)) in enumerate(zip(boxes, labels, checked)):
        extra = [f"threshold={box['threshold']}"] if "threshold" in box else []
        algorithm = hd.sr.AlgorithmIdentification(algorithm_name, version,
                                                  parameters=(params + extra) or None)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=_uid(None, sop_uid, "box", k), identifier=f"{label} box {k + 1}"),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=box_corners(box),
                source_image=image),
            finding_type=finding_code(label),
            finding_category=codes.SCT.MorphologicallyAbnormalStructure,
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=p,
                                            unit=codes.UCUM.NoUnits, algorithm_id=algorithm)],
        ))
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid(None, "wsloc device", algorithm_name, version), name=algorithm_name,
            manufacturer_name="wsloc", model_name=f"{algorithm_name} {version}"))
    procedure = codes.LN.XRUnspecifiedBodyRegion  # CID 100's projection X-ray procedure
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=procedure, imaging_measurements=groups)
    try:
        sr = hd.sr.ComprehensiveSR(
            evidence=[_highdicom_source(source)], content=report[0],
            series_instance_uid=_uid(series_instance_uid, *entropy, "series"),
            series_number=int(series_number), sop_instance_uid=sop_uid,
            instance_number=int(instance_number), manufacturer="wsloc",
            is_complete=True, series_description=series_description[:64])
    except (ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"{where}: highdicom cannot build an SR on this film: {err}") from err
    return _settled(sr, source)


def _save_atomically(dataset, path: Path) -> Path:
    """Write ``dataset`` to ``path`` whole or not at all: a temporary file beside it, then
    ``os.replace`` (a reader never sees half a file; a crash leaves only a ``.tmp``)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


_RASTER = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def write_dicom_outputs(source_path: str | os.PathLike, out_dir: str | os.PathLike,
                        masks: Mapping[str, np.ndarray] | None,
                        boxes: Sequence[Mapping] | None, *, stem: str | None = None,
                        source=None, **options) -> dict[str, Path | None]:
    """Write one film's ``<stem>.seg.dcm`` (its masks, :func:`segmentation`) and
    ``<stem>.sr.dcm`` (its boxes, :func:`box_report`) into ``out_dir``, each atomically.

    Args:
        source_path: the DICOM film the results were made from.
        out_dir: where the files go (created if missing).
        masks: finding name → bool [rows, cols], or None for no SEG (a ``heatmap`` run
            without masks).
        boxes: ``boxes.json`` records of this film, or None for no SR.
        stem: the file names' stem (default: the source's file name without its suffix;
            pass the run's unique stem when two inputs share a name).
        source: the film's dataset when the caller has read it already (else it is read
            here, without its pixel data).
        **options: passed to both builders (algorithm name/version/parameters, series
            numbers and descriptions).

    Returns:
        ``{"seg": path or None, "sr": path or None}``: None (and no file) where there is
        no finding (no mask with a pixel set, no box) and for what was not asked.

    Raises:
        ValueError: the input is not DICOM (a PNG/JPEG has no Study/Series/SOP Instance UIDs
            for a SEG or SR to reference; ``--dicom-out`` needs DICOM inputs), or what the
            builders raise.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    source_path = Path(source_path)

    def not_dicom(kind: str) -> ValueError:
        return ValueError(f"{source_path}: --dicom-out needs DICOM inputs: a DICOM SEG or SR "
                          "must reference its source film's Study, Series and SOP Instance "
                          f"UIDs (and its patient), and {kind} has none; run without "
                          "--dicom-out for this file")

    if source is None:
        if source_path.suffix.lower() in _RASTER:
            raise not_dicom(f"a {source_path.suffix.lstrip('.').upper()} image")
        try:
            source = pydicom.dcmread(source_path, stop_before_pixels=True)
        except InvalidDicomError as err:
            raise not_dicom("a non-DICOM file") from err
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{source_path}: cannot read the DICOM file ({err})") from err
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem if stem is not None else (
        source_path.stem if source_path.suffix.lower() in (".dcm", ".dicom") else
        source_path.name)
    # both built before either is written: a bad box does not leave a SEG without its SR
    made = {"seg": segmentation(source, masks, **options) if masks is not None else None,
            "sr": box_report(source, boxes, **options) if boxes is not None else None}
    return {kind: None if dataset is None else
            _save_atomically(dataset, out_dir / f"{stem}.{kind}.dcm")
            for kind, dataset in made.items()}
