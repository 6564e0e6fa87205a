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
    ``id`` (the image name), ``patient``, ``view``, ``age`` (-1 if unknown), ``sex``,
    ``frame`` (height, width of the box file's frame: the film heatmaps are mapped to); and with
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
            reported once and the nearest readable item after it (before it, at the end of
            the split) is returned in its place. Indices outside the split raise
            ``IndexError`` (negative ones count from the end, as for a list).
        box_frame: the (width, height) the box file's coordinates refer to; boxes are scaled
            from it to each image as loaded. ``None`` (default): the root's own
            (:func:`wsloc.data.nih.box_frame_of`: 1024×1024 for the NIH release, so a resized
            copy of it gets correctly scaled boxes). An int for a square frame.
            ``"image"``: each image's own on-disk pixels (a dataset of your own whose boxes
            were drawn on the files as they are).
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
        box_frame: int | tuple[int, int] | str | None = None,
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
        self.box_frame = _box_frame(box_frame, self.meta.box_frame)
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

    def _load(self, name: str) -> tuple[np.ndarray, float, float, tuple[int, int]]:
        """The image, the factors that take the box file's coordinates onto it, and that
        frame's (height, width)."""
        if self.cache is not None and name in self.cache:
            image = self.cache.get(name)
            frame_h, frame_w = (self.cache.disk_size[name] if self.box_frame == "image"
                                else self.box_frame[::-1])
        else:
            path = self.meta.paths[name]
            if path is None:
                raise FileNotFoundError(f"{self.root}: image {name} is listed but not on disk")
            image = read_image(path)
            frame_h, frame_w = (image.shape if self.box_frame == "image"
                                else self.box_frame[::-1])
        return (image, image.shape[1] / frame_w, image.shape[0] / frame_h,
                (int(frame_h), int(frame_w)))

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for the {self.split} split "
                             f"({n} images)")
        index = int(index) % n
        # an unreadable film is replaced by the nearest readable one after it, else before
        # it: always an item of this split, never a wrap-around
        for i in [*range(index, n), *range(index - 1, -1, -1)]:
            record = self.records[i]
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
        image, sx, sy, frame = self._load(record.name)
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
            # box_ids ride along with the boxes, so the masks of the boxes a transform keeps
            # are known (albumentations drops boxes but keeps every mask)
            out = self.transform(image=image, bboxes=boxes, box_labels=box_labels,
                                 box_ids=list(range(len(boxes))), **extra)
            image, boxes, box_labels = out["image"], out["bboxes"], out["box_labels"]
            masks = [out["masks"][int(i)] for i in out["box_ids"]] if masks else masks
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
            "sex": record.sex, "frame": frame,
        }
        if self.return_masks:  # aligned with boxes: a dropped box's mask went with it
            item["masks"] = (torch.from_numpy(np.stack([np.asarray(m) for m in masks]))
                             if len(boxes) else
                             torch.zeros((0, *item["image"].shape[1:]), dtype=torch.uint8))
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


def _box_frame(value, default: tuple[int, int]) -> tuple[int, int] | str:
    if value is None:
        return default
    if value == "image":
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return int(value[0]), int(value[1])
    raise ValueError(f"`box_frame` must be None, 'image', a positive int or (width, height), "
                     f"got {value!r}")


def collate(batch: list[dict]) -> dict:
    """Stack images and labels; keep per-image boxes (and masks) as lists."""
    out = {"image": torch.stack([b["image"] for b in batch]),
           "labels": torch.stack([b["labels"] for b in batch])}
    for key in batch[0]:
        if key not in out:
            out[key] = [b[key] for b in batch]
    return out
