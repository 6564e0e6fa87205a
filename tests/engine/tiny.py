"""The tiny trained model the heatmap, stream and DICOM-output tests run on."""

from contextlib import contextmanager

import pytest

from tests.engine.test_train import TINY
from wsloc.config import load_config
from wsloc.engine.train import train


@contextmanager
def tiny_run(tmp_path_factory, name: str):
    """Train the tiny stride-8 model in a fresh folder ``name`` with its own synthetic cache
    (``run.parent / "cache"``); yields the run directory."""
    base = tmp_path_factory.mktemp(name)
    mp = pytest.MonkeyPatch()
    mp.setenv("WSLOC_CACHE", str(base / "cache"))
    try:
        yield train(load_config(None, TINY + ["model.feature_stride=8"]), out=base / "run",
                    progress=False)
    finally:
        mp.undo()
