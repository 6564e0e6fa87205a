"""Configs: a YAML file over the defaults below, then ``key=value`` overrides.

Every key must exist in :data:`DEFAULTS` (an unknown key is an error that lists the valid
ones); override values are parsed as YAML (``train.lr=3e-4``, ``data.views=[PA]``,
``data.root=null``). The resolved config is written into the run directory.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

__all__ = ["DEFAULTS", "ConfigError", "load_config", "apply_overrides", "check_values", "dump",
           "find_config", "shipped_configs"]

DEFAULTS: dict = {
    "data": {
        "root": None,  # None: the built-in synthetic set, generated on first use
        "synthetic": {"n": 2000, "size": 256, "seed": 0},
        "classes": "chestxray8",
        "views": None,
        "image_size": 128,  # the demo's: 32×32 class maps (configs/demo.yaml)
        "train_transform": "train_flip",  # the demo's; the paper's configs set "train"
        "eval_transform": "eval",
        "val_fraction": 0.1,
        "split_seed": 0,
        "num_workers": 2,
        "on_error": "raise",
    },
    "model": {
        "name": "chestxray8",
        "backbone": "resnet18",
        "weights": "none",
        "transition_channels": 256,
        "pooling": "lse",
        "r": 10.0,
        "learn_r": False,
        "pool_on": "classes",
        "freeze_bn": False,
        "feature_stride": 4,
        "head_channels": 128,  # the pixel model's 3×3 convolutions (model.name: pixel)
    },
    "train": {
        "epochs": 11,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 1e-3,
        "r_lr": None,  # a learned LSE r's own lr (model.learn_r); None: train.lr
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "cosine",
        "loss": "wcel",
        "background_weight": 1.0,  # the flat-background term's weight (losses.background_penalty)
        "amp": True,
        "channels_last": True,
        "sync_bn": False,
        "seed": 0,
        "device": "auto",
        # "mirror": after training, measure the class maps' horizontal offset by mirroring
        # the validation films, and read the maps' columns where it says (engine/calibrate.py)
        "calibrate": "none",
    },
}


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _coerce(default, value, where: str):
    """Numbers for float keys: YAML 1.1 reads ``3e-4`` (no dot) as a string."""
    if isinstance(default, float) and not isinstance(value, bool) and isinstance(value,
                                                                                (int, str)):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    return value


def _merge(base: dict, update: dict, where: str) -> dict:
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: "
                              f"{', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} must be a mapping, got {value!r}")
            _merge(base[key], value, f"{where}.{key}" if where else key)
        else:
            base[key] = _coerce(base[key], value, f"{where}.{key}" if where else key)
    return base


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = cfg
        for i, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "(none)"
                raise ConfigError(f"override {item!r}: unknown key "
                                  f"{'.'.join(keys[: i + 1])!r}; valid here: {valid}")
            if i == len(keys) - 1:
                if isinstance(node[key], dict):
                    raise ConfigError(f"override {item!r}: {dotted!r} is a section; set one "
                                      "of its keys")
                value = yaml.safe_load(raw) if raw.strip() else None
                node[key] = _coerce(node[key], value, f"override {item!r}")
            else:
                node = node[key]
    return cfg


# (section, key): (rule, test) for values no run can use
_RULES = {
    ("train", "epochs"): ("an int >= 1", lambda v: _int(v) and v >= 1),
    ("train", "batch_size"): ("an int >= 1", lambda v: _int(v) and v >= 1),
    ("train", "lr"): ("a number > 0", lambda v: _num(v) and v > 0),
    ("train", "r_lr"): ("null or a number > 0", lambda v: v is None or (_num(v) and v > 0)),
    ("train", "weight_decay"): ("a number >= 0", lambda v: _num(v) and v >= 0),
    ("train", "background_weight"): ("a number >= 0", lambda v: _num(v) and v >= 0),
    ("train", "momentum"): ("a number in [0, 1)", lambda v: _num(v) and 0 <= v < 1),
    ("train", "seed"): ("an int >= 0", lambda v: _int(v) and v >= 0),
    ("data", "image_size"): ("an int >= 32", lambda v: _int(v) and v >= 32),
    ("data", "num_workers"): ("an int >= 0", lambda v: _int(v) and v >= 0),
    ("data", "val_fraction"): ("a number in [0, 0.8)", lambda v: _num(v) and 0 <= v < 0.8),
    ("data", "split_seed"): ("an int >= 0", lambda v: _int(v) and v >= 0),
    ("model", "transition_channels"): ("an int >= 1", lambda v: _int(v) and v >= 1),
    ("model", "r"): ("a number > 0 or a list of them", lambda v: (_num(v) and v > 0) or (
        isinstance(v, list) and bool(v) and all(_num(x) and x > 0 for x in v))),
    ("model", "feature_stride"): ("4, 8, 16 or 32", lambda v: v in (4, 8, 16, 32)),
    ("model", "head_channels"): ("an int >= 1", lambda v: _int(v) and v >= 1),
    ("train", "calibrate"): ("'mirror' or 'none'", lambda v: v in ("mirror", "none")),
}


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def check_values(cfg: dict) -> dict:
    """Refuse values no run can use (``train.epochs=-1``, ``train.lr=0``, ...), naming the
    key, the rule and the value."""
    for (section, key), (rule, ok) in _RULES.items():
        value = cfg[section][key]
        if not ok(value):
            raise ConfigError(f"{section}.{key} must be {rule}, got {value!r}")
    return cfg


def shipped_configs() -> Path | None:
    """The folder of the configs that come with wsloc: ``wsloc/configs/`` in an installed
    wheel, the repository's ``configs/`` in a source checkout (editable install)."""
    here = Path(__file__).resolve().parent
    if (here / "configs").is_dir():
        return here / "configs"
    if (here.parent / "pyproject.toml").is_file() and (here.parent / "configs").is_dir():
        return here.parent / "configs"
    return None


def find_config(name: str | Path) -> Path:
    """A config file: ``name`` as a path when it exists, else a shipped config by name
    (``chestxray8_resnet50_lse`` or ``chestxray8_resnet50_lse.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    folder = shipped_configs()
    shipped = sorted(p.stem for p in folder.glob("*.yaml")) if folder else []
    if path.parent == Path(".") and folder is not None:
        for candidate in (folder / path.name, folder / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"config not found: {name} (neither a file nor a shipped config; "
                            f"shipped: {', '.join(shipped) or 'none'})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS, updated by the YAML file at ``path`` (a path, or the name of a shipped
    config: see :func:`find_config`; ``configs/demo.yaml`` is the default run's), then by
    ``overrides``."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = find_config(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        _merge(cfg, loaded, str(path))
    return check_values(apply_overrides(cfg, list(overrides or [])))


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
