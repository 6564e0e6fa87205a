"""The NIH ChestX-ray14 release, read exactly as downloaded: metadata, boxes and splits.

Files under the data root:

- ``Data_Entry_2017_v2020.csv`` (or the older ``Data_Entry_2017.csv``, whose rows end with a
  trailing comma). Its header names ``OriginalImage[Width,Height]`` and
  ``OriginalImagePixelSpacing[x,y]`` contain commas, so a row has 11 fields, read by position.
- ``BBox_List_2017.csv``: ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` with x, y the
  top-left corner in pixels of the 1024×1024 image; "Infiltrate" means Infiltration.
- ``train_val_list.txt`` / ``test_list.txt``: the official patient-level split.
- images in ``images/`` or in the release's ``images_001/images/`` … ``images_012/images/``.
"""

from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "CLASSES", "CHESTXRAY8_CLASSES", "Record", "Box", "Metadata", "MetadataError",
    "find_data_entry", "read_data_entry", "read_bbox_list", "read_split_list",
    "index_images", "load_metadata", "split_patients", "check_image_name", "box_frame_of",
    "NIH_BOX_FRAME",
]

CLASSES = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)
CHESTXRAY8_CLASSES = CLASSES[:8]
NO_FINDING = "No Finding"
LABEL_ALIASES = {"Infiltrate": "Infiltration"}
DATA_ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BBOX_NAME = "BBox_List_2017.csv"
SPLIT_NAMES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
# BBox_List_2017.csv's boxes are in the pixels of the released 1024×1024 PNGs (not in
# OriginalImage[Width,Height], the size before NIH's downscale)
NIH_BOX_FRAME = (1024, 1024)


class MetadataError(ValueError):
    """A metadata file that does not have the release's shape; names the file and line."""


@dataclass(frozen=True)
class Box:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class Record:
    """One row of Data_Entry: an image and its image-level labels."""

    name: str
    labels: tuple[str, ...]
    follow_up: int
    patient: int
    age: int | None
    sex: str
    view: str
    width: int
    height: int
    spacing: tuple[float, float]
    boxes: list[Box] = field(default_factory=list)


def check_image_name(name: str, where: str) -> str:
    """An Image Index must be a plain file name: never read outside the data root."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name
            or os.path.isabs(name) or ".." in Path(name).parts):
        raise MetadataError(f"{where}: Image Index {name!r} is not a plain file name "
                            "(path separators and '..' are refused)")
    return name


def find_data_entry(root: Path) -> Path:
    for name in DATA_ENTRY_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: no {' or '.join(DATA_ENTRY_NAMES)} — is this the NIH "
                            "ChestX-ray14 folder? (see data/README.md)")


def _age(text: str) -> int | None:
    text = text.strip().rstrip("YyMmDdWw")  # some releases write "058Y"
    return int(text) if text.isdigit() else None


def _data_rows(path: Path, header: str):
    """(line number, fields) of each non-blank data row, after checking the header."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if line == 1:
                if not row or row[0].strip() != "Image Index":
                    raise MetadataError(f"{path}:1: expected the header {header!r}, got "
                                        f"{','.join(row)[:80]!r}")
            elif row and any(cell.strip() for cell in row):
                yield line, row


def _malformed(path: Path, line: int, row: list[str], err: ValueError, on_error: str) -> None:
    """Raise for a malformed row, naming file and line; or, when skipping, warn."""
    if on_error != "skip":
        raise MetadataError(f"{path}:{line}: malformed row ({err}): "
                            f"{','.join(row)[:100]!r}") from err
    warnings.warn(f"{path}:{line}: skipped malformed row ({err})", stacklevel=3)


class _Repeats:
    """The one rule for a row that repeats an earlier one, shared by every reader.

    A row identical to an earlier one (same key, same content) is dropped with one warning
    line naming the file, both lines and the key, and a count at the end. A row whose key
    repeats with different content is a conflict: :class:`MetadataError` naming both lines,
    or with ``on_error="skip"`` the repeat is dropped with a warning (the first row wins).
    """

    def __init__(self, path: Path, what: str, on_error: str) -> None:
        self.path, self.what, self.on_error = path, what, on_error
        self.first: dict = {}
        self.dropped = 0

    def keep(self, line: int, key, content) -> bool:
        """True for a first occurrence; False (after warning or raising) for a repeat."""
        if key not in self.first:
            self.first[key] = (line, content)
            return True
        first_line, first_content = self.first[key]
        if content != first_content and self.on_error != "skip":
            raise MetadataError(f"{self.path}:{line}: {self.what} {key!r} repeats line "
                                f"{first_line} with different values; remove one of them")
        how = "an identical" if content == first_content else "a conflicting"
        warnings.warn(f"{self.path}:{line}: dropped {how} repeat of {self.what} {key!r} "
                      f"(first at line {first_line})", stacklevel=3)
        self.dropped += 1
        return False

    def report(self) -> None:
        if self.dropped:
            warnings.warn(f"{self.path}: dropped {self.dropped} repeated row(s) in all",
                          stacklevel=3)


def read_data_entry(path: Path, on_error: str = "raise") -> list[Record]:
    """Parse Data_Entry_2017(_v2020).csv. A malformed row raises :class:`MetadataError`
    (file and line named), or with ``on_error="skip"`` is skipped with a warning. An image
    listed twice: an identical repeat is dropped with a warning; a conflicting one raises
    (see :class:`_Repeats`), so every reader of the file sees each image once."""
    records: list[Record] = []
    skipped = 0
    repeats = _Repeats(path, "Image Index", on_error)
    for line, row in _data_rows(path, "Image Index,Finding Labels,..."):
        try:
            if row and row[-1] == "" and len(row) == 12:  # Data_Entry_2017.csv's trailing comma
                row = row[:11]
            if len(row) != 11:
                raise ValueError(f"expected 11 fields, got {len(row)}")
            name = check_image_name(row[0].strip(), f"{path}:{line}")
            labels = tuple(sorted({LABEL_ALIASES.get(s.strip(), s.strip())
                                   for s in row[1].split("|") if s.strip()}))
            unknown = [s for s in labels if s not in CLASSES and s != NO_FINDING]
            if unknown:
                raise ValueError(f"unknown finding label(s) {unknown}")
            record = Record(
                name=name, labels=tuple(s for s in labels if s != NO_FINDING),
                follow_up=int(row[2]), patient=int(row[3]), age=_age(row[4]),
                sex=row[5].strip(), view=row[6].strip().upper(),
                width=int(float(row[7])), height=int(float(row[8])),
                spacing=(float(row[9]), float(row[10])),
            )
        except ValueError as err:
            _malformed(path, line, row, err, on_error)
            skipped += 1
            continue
        if repeats.keep(line, name, record):
            records.append(record)
    repeats.report()
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} malformed row(s) in all", stacklevel=2)
    return records


def read_bbox_list(path: Path, on_error: str = "raise") -> dict[str, list[Box]]:
    """Parse BBox_List_2017.csv into {image name: [Box(label, x1, y1, x2, y2)]}. A row that
    repeats an earlier one exactly (image, finding and box) is dropped with a warning."""
    boxes: dict[str, list[Box]] = {}
    repeats = _Repeats(path, "box", on_error)
    for line, row in _data_rows(path, "Image Index,Finding Label,Bbox [x,y,w,h],,,"):
        try:
            if len(row) < 6 or any(cell.strip() for cell in row[6:]):
                raise ValueError(f"expected 6 fields, got {len(row)}")
            name = check_image_name(row[0].strip(), f"{path}:{line}")
            label = LABEL_ALIASES.get(row[1].strip(), row[1].strip())
            if label not in CLASSES:
                raise ValueError(f"unknown finding label {label!r}")
            x, y, w, h = (float(v) for v in row[2:6])
            if not (w > 0 and h > 0) or not all(np.isfinite([x, y, w, h])):
                raise ValueError(f"box must have positive width and height, got {x, y, w, h}")
            box = Box(label, x, y, x + w, y + h)
        except ValueError as err:
            _malformed(path, line, row, err, on_error)
            continue
        if repeats.keep(line, (name, label, x, y, w, h), box):
            boxes.setdefault(name, []).append(box)
    repeats.report()
    return boxes


def read_split_list(path: Path) -> list[str]:
    names = []
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = text.strip()
        if text:
            names.append(check_image_name(text, f"{path}:{line}"))
    return names


def index_images(root: Path) -> dict[str, Path]:
    """Map image names to files in ``root/images/`` and ``root/images_*/images/``."""
    found: dict[str, Path] = {}
    folders = [root / "images"] + sorted(p / "images" for p in root.glob("images_*"))
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file():
                    found.setdefault(entry.name, Path(entry.path))
    return found


def split_patients(patients: list[int], fractions: tuple[float, ...], seed: int) -> list[set[int]]:
    """Shuffle unique patients with ``seed`` and cut them by ``fractions`` (summing to 1)."""
    unique = np.array(sorted(set(patients)))
    order = np.random.default_rng(seed).permutation(len(unique))
    bounds = np.round(np.cumsum(fractions) * len(unique)).astype(int)
    parts, start = [], 0
    for end in bounds:
        parts.append({int(p) for p in unique[order[start:end]]})
        start = end
    return parts


@dataclass
class Metadata:
    """Everything in the release's metadata, joined: records with their boxes, the split of
    each image, where each image lies on disk (None when it is missing), and ``box_frame``
    (width, height): the image size the boxes' pixel coordinates refer to."""

    root: Path
    records: list[Record]
    split_of: dict[str, str]
    paths: dict[str, Path | None]
    official_split: bool
    box_frame: tuple[int, int] = NIH_BOX_FRAME

    def by_split(self, split: str) -> list[Record]:
        return [r for r in self.records if self.split_of[r.name] == split]


def box_frame_of(root: Path) -> tuple[int, int]:
    """The (width, height) the root's box coordinates are in: 1024×1024 for the NIH release
    (whatever size its images were resized to since); a synthetic set records its own size
    in ``synth.json``."""
    info_path = root / "synth.json"
    if not info_path.is_file():
        return NIH_BOX_FRAME
    import json

    try:
        size = int(json.loads(info_path.read_text())["size"])
    except (ValueError, KeyError, TypeError) as err:
        raise MetadataError(f"{info_path}: cannot read the set's image size ({err})") from err
    return size, size


def load_metadata(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0,
                  on_error: str = "raise") -> Metadata:
    """Read the release's metadata under ``root`` and assign train / val / test.

    With the official lists, test is ``test_list.txt`` and val is carved from
    ``train_val_list.txt`` by patient with ``seed``; without them, patients are split
    70/10/20 (val = ``val_fraction``) with ``seed``. No patient is ever in two splits.
    """
    root = Path(root)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"`on_error` must be 'raise' or 'skip', got {on_error!r}")
    if not 0.0 <= val_fraction < 0.8:
        raise ValueError(f"`val_fraction` must be in [0, 0.8), got {val_fraction}")
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    records = read_data_entry(find_data_entry(root), on_error)
    names = {r.name for r in records}
    if (root / BBOX_NAME).is_file():
        boxes = read_bbox_list(root / BBOX_NAME, on_error)
        for r in records:
            r.boxes = boxes.get(r.name, [])
    patient_of = {r.name: r.patient for r in records}
    split_of: dict[str, str] = {}
    official = all((root / f).is_file() for f in SPLIT_NAMES.values())
    if official:
        lists = {k: read_split_list(root / f) for k, f in SPLIT_NAMES.items()}
        test = {n for n in lists["test"] if n in names}
        train_val = {n for n in lists["train_val"] if n in names}
        overlap = {patient_of[n] for n in test} & {patient_of[n] for n in train_val}
        if overlap:
            raise MetadataError(f"{root}: {len(overlap)} patient(s) appear in both "
                                f"{SPLIT_NAMES['train_val']} and {SPLIT_NAMES['test']} "
                                f"(e.g. patient {min(overlap)}); the split must be by patient")
        val_patients, _ = split_patients([patient_of[n] for n in train_val],
                                         (val_fraction, 1 - val_fraction), seed)
        for n in test:
            split_of[n] = "test"
        for n in train_val:
            split_of[n] = "val" if patient_of[n] in val_patients else "train"
        for r in records:  # listed in Data_Entry but in neither list
            split_of.setdefault(r.name, "unlisted")
    else:
        train, val, test = split_patients(list(patient_of.values()),
                                          (0.8 - val_fraction, val_fraction, 0.2), seed)
        for r in records:
            split_of[r.name] = ("train" if r.patient in train else
                                "val" if r.patient in val else "test")
    on_disk = index_images(root)
    paths = {r.name: on_disk.get(r.name) for r in records}
    return Metadata(root, records, split_of, paths, official, box_frame_of(root))
