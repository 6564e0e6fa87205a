"""Models, built by name from a config (``build_model``)."""

from wsloc.models.chestxray8 import POOLINGS, ChestXray8Net, build_pooling
from wsloc.models.pixel import PixelNet

__all__ = ["ChestXray8Net", "PixelNet", "POOLINGS", "build_pooling", "build_model", "MODELS"]

MODELS = ("chestxray8", "pixel")


def build_model(cfg: dict, num_classes: int) -> ChestXray8Net:
    """The model of a config's ``model`` section: ``name: chestxray8`` (the CAM pipeline) or
    ``pixel`` (image-to-pixel, :class:`PixelNet`; ``head_channels`` is its alone)."""
    m = dict(cfg)
    name = m.pop("name", "chestxray8")
    head = {k: m.pop(k) for k in ("head_channels",) if k in m}  # the pixel model's alone
    if name == "chestxray8":
        return ChestXray8Net(num_classes, **m)
    if name == "pixel":
        return PixelNet(num_classes, **head, **m)
    raise ValueError(f"unknown model.name {name!r}; choose one of {', '.join(MODELS)}")
