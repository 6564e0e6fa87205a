"""What a model was trained on, and a warning when it is applied to films from elsewhere.

A model trained on wsloc's synthetic phantoms gives confident probabilities on a real chest
film (tried: Pneumonia 0.95, Infiltration 0.91 on a real CR film) that mean nothing there.
Training records its domain in the checkpoint (:func:`training_domain`); ``heatmap``,
``segment`` and ``evaluate`` compare it with where their films come from
(:func:`film_domain`) and say so once (:func:`domain_warning`), in the terminal, in the
run's records and on the overlays.

A film is *synthetic* when a folder above it holds the ``synth.json`` that ``wsloc synth``
(and the built-in set) write, and it is not a DICOM (the generator writes PNGs only);
everything else is *films* (NIH, a hospital's export, a user's PNGs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

__all__ = ["training_domain", "checkpoint_domain", "film_domain", "domain_warning",
           "describe"]

SYNTH_MARK = "synth.json"


@lru_cache(maxsize=4096)  # an archive's films share few folders: one look per folder
def _synthetic_root(path: Path, levels: int = 4) -> Path | None:
    """The nearest folder at or above ``path`` (``levels`` up at most) holding synth.json."""
    path = Path(path).absolute()
    for folder in [path, *path.parents][: levels + 1]:
        if (folder / SYNTH_MARK).is_file():
            return folder
    return None


def training_domain(root: str | Path) -> dict:
    """The domain of a training data root: ``{"kind": "synthetic", "generator_version",
    "n", "size", "seed"}`` for a synthetic set (read from its synth.json), otherwise
    ``{"kind": "films", "root": <the root's name>}`` (NIH or any folder of real films)."""
    root = Path(root)
    mark = root / SYNTH_MARK
    if mark.is_file():
        try:
            meta = json.loads(mark.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        return {"kind": "synthetic", "generator_version": meta.get("version"),
                "n": meta.get("n"), "size": meta.get("size"), "seed": meta.get("seed")}
    return {"kind": "films", "root": root.name}


def checkpoint_domain(ckpt: dict) -> dict:
    """A checkpoint's training domain; for checkpoints from before the record, inferred from
    its config (``data.root: null`` is the built-in synthetic set)."""
    if isinstance(ckpt.get("domain"), dict):
        return ckpt["domain"]
    data = ckpt.get("config", {}).get("data", {})
    if data.get("root") is None:
        synth = data.get("synthetic", {})
        return {"kind": "synthetic", "generator_version": None, "n": synth.get("n"),
                "size": synth.get("size"), "seed": synth.get("seed")}
    root = Path(data["root"])
    return training_domain(root) if root.is_dir() else {"kind": "films", "root": root.name}


def film_domain(path: str | Path) -> str:
    """``"synthetic"`` for a PNG/JPEG inside a synthetic set, else ``"films"``."""
    path = Path(path)
    if path.suffix.lower() in (".dcm", ".dicom", ".dic") or not path.suffix:
        return "films"
    return "synthetic" if _synthetic_root(path.parent) is not None else "films"


def describe(domain: dict) -> str:
    """A domain in words: ``wsloc's synthetic phantoms (generator v3)`` / ``real films (nih)``."""
    if domain.get("kind") == "synthetic":
        version = domain.get("generator_version")
        return "wsloc's synthetic phantoms" + (f" (generator v{version})" if version else "")
    return f"real films ({domain.get('root', '?')})"


def domain_warning(domain: dict, films: Iterable[str | Path] | None = None,
                   data_root: str | Path | None = None) -> str | None:
    """One warning when films lie outside the model's training domain, else None.

    Args:
        domain: the model's training domain (:func:`checkpoint_domain`).
        films: the input films (``heatmap``/``segment``); the warning counts those outside.
        data_root: a data root (``evaluate``), judged by its synth.json.
    """
    kind = domain.get("kind")
    if data_root is not None:
        other = "synthetic" if (Path(data_root) / SYNTH_MARK).is_file() else "films"
        if other == kind:
            return None
        holds = "synthetic phantoms" if other == "synthetic" else "real films"
        where = f"{data_root} holds {holds}"
    else:
        paths = list(films or [])
        outside = [p for p in paths if film_domain(p) != kind]
        if not outside:
            return None
        where = (f"{len(outside)} of {len(paths)} input films are "
                 f"{'synthetic phantoms' if kind == 'films' else 'not synthetic phantoms'}"
                 f" (first: {outside[0]})")
    return (f"this model was trained on {describe(domain)} and {where}: its probabilities, "
            "heatmaps and boxes there say nothing reliable about those films")
