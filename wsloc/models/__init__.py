"""Models, built by name from a config (``build_model``)."""

from wsloc.models.chestxray8 import POOLINGS, ChestXray8Net, build_pooling

__all__ = ["ChestXray8Net", "POOLINGS", "build_pooling", "build_model"]


def build_model(cfg: dict, num_classes: int) -> ChestXray8Net:
    """The model of a config's ``model`` section."""
    m = dict(cfg)
    name = m.pop("name", "chestxray8")
    if name != "chestxray8":
        raise ValueError(f"unknown model.name {name!r}; choose 'chestxray8'")
    return ChestXray8Net(num_classes, **m)
