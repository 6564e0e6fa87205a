"""albumentations pipelines for training and evaluation; boxes follow every resize and crop.

A pipeline takes ``image`` (float32 [H, W] in [0, 1]), ``bboxes`` (pascal_voc: x1, y1, x2, y2
in pixels), ``box_labels`` and ``box_ids`` (any per-box values carried along: the dataset
passes each box's index, to keep the masks of the boxes that survive), and optionally
``masks``. Pick one by name in the config.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["PIPELINES", "Pipeline", "build_transform"]


def _bbox_params():
    import albumentations as A

    # boxes are clipped to the image; a box pushed mostly outside by an affine is dropped
    return A.BboxParams(format="pascal_voc", label_fields=["box_labels", "box_ids"], clip=True,
                        min_visibility=0.3)


def _eval(size: int):
    import albumentations as A

    return A.Compose([A.Resize(size, size, interpolation=3)], bbox_params=_bbox_params())


def _train(size: int, flip: bool = False, hide: bool = False, vflip: bool = False):
    """Resize, a small affine, brightness/contrast; ``flip`` adds a horizontal flip after
    the resize, ``vflip`` a vertical one too, ``hide`` random erasing at the end."""
    import albumentations as A

    steps = [
        A.Resize(size, size, interpolation=3),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-7, 7),
                 border_mode=0, fill=0, p=0.7),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ]
    if flip:  # mirrors the heart's side, so the NIH configs leave it off; the demo uses it
        # (without it, its heatmaps' peaks settle a few pixels to one side of each finding)
        steps.insert(1, A.HorizontalFlip(p=0.5))
    if vflip:  # upside-down films exist in no clinic: a regulariser for the phantoms only
        steps.insert(1, A.VerticalFlip(p=0.5))
    if hide:
        # Hide-and-seek (Singh & Lee, ICCV 2017) by random erasing: patches of the film are
        # hidden behind the films' mean grey, so the most telling part of a finding is
        # sometimes gone and the network must learn the rest of it (meant to widen CAMs;
        # measured in the README, not the default)
        steps.append(A.CoarseDropout(num_holes_range=(2, 6), hole_height_range=(0.1, 0.25),
                                     hole_width_range=(0.1, 0.25), fill=0.37, p=0.7))
    return A.Compose(steps, bbox_params=_bbox_params())


class Pipeline:
    """An albumentations ``Compose`` whose ``box_ids`` default to each box's index, so a
    caller that does not track boxes need not pass them (nor any box, for an image alone);
    ``box_ids`` in the output say which input boxes survived (and so which masks belong to
    them)."""

    def __init__(self, compose) -> None:
        self.compose = compose

    def __call__(self, **data):
        if "bboxes" not in data:  # an image alone (inference)
            data.update(bboxes=[], box_labels=[])
        data.setdefault("box_ids", list(range(len(data["bboxes"]))))
        return self.compose(**data)

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_seed(seed)

    def __repr__(self) -> str:
        return f"Pipeline({self.compose!r})"


PIPELINES: dict[str, Callable] = {
    "eval": _eval, "train": _train,
    "train_flip": lambda size: _train(size, flip=True),
    "train_hide": lambda size: _train(size, hide=True),
    "train_flip_hv": lambda size: _train(size, flip=True, vflip=True),
}


def build_transform(name: str, size: int):
    """The albumentations pipeline ``name`` (``eval``, ``train``, ``train_flip``) at
    ``size``×``size``."""
    if name not in PIPELINES:
        raise ValueError(f"unknown transform {name!r}; choose one of {', '.join(PIPELINES)}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"transform `size` must be an int >= 8, got {size!r}")
    return Pipeline(PIPELINES[name](size))
