"""``ChestXray14``: the NIH release (or the synthetic set, in the same layout) as a Dataset."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from wsloc.data.cache import ImageCache
from wsloc.data.images import ImageReadError, read_image
from wsloc.data.nih import CHESTXRAY8_CLASSES, CLASSES, load_metadata

__all__ = ["ChestXray14", "collate", "resolve_classes"]

SPLITS = ("train", "val", "test")
VIEWS = ("PA", "AP")


def resolve_classes(classes: str | Sequence[str] | None) -> tuple[str, ...]:
    """``None``/``"all"`` (14 classes), ``"chestxray8"`` (the paper's 8), or a list of names."""
    if classes is None or classes == "all":
        return CLASSES
    if classes == "chestxray8":
        return CHESTXRAY8_CLASSES
    if isinstance(classes, str):
        raise ValueError(f"`classes` must be 'all', 'chestxray8' or a list of class names, "
                         f"got {classes!r}")
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"`classes` must be distinct names from {', '.join(CLASSES)}; "
                         f"got {list(classes)}")
    return tuple(classes)


class ChestXray14(torch.utils.data.Dataset):
    """NIH ChestX-ray14 as released (images in ``images/`` or ``images_0NN/images/``).

    An item is a dict: ``image`` Tensor[1, H, W] float32 in [0, 1] (bone bright);
    ``labels`` Tensor[C] (1 where the finding is present; "No Finding" is all zeros);
    ``boxes`` Tensor[K, 5] of (class index, x1, y1, x2, y2) in the transformed image's pixels
    (boxes follow every resize and crop; boxes of classes outside ``classes`` are dropped);
    ``id`` (the image name), ``patient``, ``view``, ``age`` (-1 if unknown), ``sex``; and with
    ``return_masks`` a ``masks`` Tensor[K, H, W] uint8 aligned with ``boxes`` (the synthetic
    set ships one mask per finding, in ``masks/<stem>__<Label>.png``).

    Args:
        root: the data root.
        split: ``"train"``, ``"val"`` or ``"test"`` (patient-level; see
            :func:`wsloc.data.nih.load_metadata`).
        classes: ``"all"`` (the 14 labels, in the paper's order), ``"chestxray8"`` or a list.
        views: keep only these view positions (``["PA"]``, ``["AP"]``); None keeps all.
        transform: an albumentations pipeline (see :mod:`wsloc.data.transforms`) or None.
        image_size: the size the transform produces; a prepared cache of at least this size
            is used instead of the PNGs when present (``use_cache``).
        on_error: ``"raise"`` (default): a listed image missing on disk, or one that cannot be
            read, raises naming the file. ``"skip"``: missing images are dropped at start with
            one warning line per file and a count; an unreadable image met while loading is
            reported once and the next item is returned in its place.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        classes: str | Sequence[str] | None = "all",
        views: Sequence[str] | None = None,
        transform: Callable | None = None,
        image_size: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        on_error: str = "raise",
        use_cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        return_masks: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}")
        if views is not None:
            views = [v.upper() for v in views]
            bad = [v for v in views if v not in VIEWS]
            if bad:
                raise ValueError(f"`views` must be among {', '.join(VIEWS)}, got {bad}")
        self.root = Path(root)
        self.split = split
        self.classes = resolve_classes(classes)
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.transform = transform
        self.on_error = on_error
        self.return_masks = return_masks
        self.meta = load_metadata(self.root, val_fraction=val_fraction, seed=seed,
                                  on_error=on_error)
        self.cache = ImageCache.find(self.root, image_size, cache_dir) if use_cache else None
        records = [r for r in self.meta.by_split(split) if views is None or r.view in views]
        missing = [r.name for r in records
                   if self.meta.paths[r.name] is None and not (self.cache and r.name in self.cache)]
        if missing:
            if on_error != "skip":
                raise FileNotFoundError(
                    f"{self.root}: {len(missing)} image(s) of the {split} split are listed but "
                    f"not on disk (e.g. {missing[0]}); fetch them, or pass on_error='skip'")
            for name in missing:
                warnings.warn(f"{self.root}: skipped {name}: listed but not on disk",
                              stacklevel=2)
            warnings.warn(f"{self.root}: skipped {len(missing)} missing image(s) in all",
                          stacklevel=2)
            gone = set(missing)
            records = [r for r in records if r.name not in gone]
        self.records = records
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def labels(self) -> np.ndarray:
        """The label matrix [N, C] of the split (no image is read)."""
        out = np.zeros((len(self.records), len(self.classes)), dtype=np.float32)
        for i, r in enumerate(self.records):
            for label in r.labels:
                if label in self.class_index:
                    out[i, self.class_index[label]] = 1.0
        return out

    def _load(self, name: str) -> tuple[np.ndarray, float, float]:
        """The image and the factors that take on-disk box coordinates onto it."""
        if self.cache is not None and name in self.cache:
            h, w = self.cache.disk_size[name]
            return self.cache.get(name), self.cache.size / w, self.cache.size / h
        path = self.meta.paths[name]
        if path is None:
            raise FileNotFoundError(f"{self.root}: image {name} is listed but not on disk")
        return read_image(path), 1.0, 1.0

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                return self._item(record)
            except (ImageReadError, FileNotFoundError) as err:
                if self.on_error != "skip":
                    raise
                if record.name not in self._reported:
                    self._reported.add(record.name)
                    warnings.warn(f"skipped unreadable image: {err}", stacklevel=2)
        raise RuntimeError(f"{self.root}: no readable image in the {self.split} split")

    def _item(self, record) -> dict:
        image, sx, sy = self._load(record.name)
        h, w = image.shape
        boxes, box_labels, masks = [], [], []
        for box in record.boxes:
            if box.label not in self.class_index:
                continue
            x1, x2 = np.clip([box.x1 * sx, box.x2 * sx], 0, w)
            y1, y2 = np.clip([box.y1 * sy, box.y2 * sy], 0, h)
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                continue
            boxes.append((float(x1), float(y1), float(x2), float(y2)))
            box_labels.append(self.class_index[box.label])
            if self.return_masks:
                masks.append(self._mask(record.name, box.label, (h, w)))
        if self.transform is not None:
            extra = {"masks": masks} if masks else {}
            out = self.transform(image=image, bboxes=boxes, box_labels=box_labels, **extra)
            image, boxes, box_labels = out["image"], out["bboxes"], out["box_labels"]
            masks = out.get("masks", masks)
        labels = torch.zeros(len(self.classes))
        for label in record.labels:
            if label in self.class_index:
                labels[self.class_index[label]] = 1.0
        box_t = torch.zeros((len(boxes), 5))
        if len(boxes):
            box_t[:, 0] = torch.as_tensor(np.asarray(box_labels, dtype=np.float32))
            box_t[:, 1:] = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
            "labels": labels, "boxes": box_t, "id": record.name, "patient": record.patient,
            "view": record.view, "age": -1 if record.age is None else record.age,
            "sex": record.sex,
        }
        if self.return_masks:
            # masks whose boxes a transform dropped are dropped with them
            item["masks"] = (torch.from_numpy(np.stack([np.asarray(m) for m in masks]))
                             if len(masks) == len(boxes) and len(boxes)
                             else torch.zeros((len(boxes), *item["image"].shape[1:]),
                                              dtype=torch.uint8))
        return item

    def _mask(self, name: str, label: str, shape: tuple[int, int]) -> np.ndarray:
        import cv2

        path = self.root / "masks" / f"{Path(name).stem}__{label}.png"
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise FileNotFoundError(f"mask not found or unreadable: {path}")
        if mask.shape != shape:
            mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return (mask > 127).astype(np.uint8)


def collate(batch: list[dict]) -> dict:
    """Stack images and labels; keep per-image boxes (and masks) as lists."""
    out = {"image": torch.stack([b["image"] for b in batch]),
           "labels": torch.stack([b["labels"] for b in batch])}
    for key in batch[0]:
        if key not in out:
            out[key] = [b[key] for b in batch]
    return out
