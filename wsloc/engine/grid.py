"""Benchmark grids: a base config, the rows to compare, the training seeds, the heatmap
methods, and the split that is reported — read from a YAML file and checked.

A grid file::

    name: pooling_demo
    base: demo                      # a config path or a shipped config's name
    set: []                         # overrides for every row
    seeds: 3                        # training seeds 0 .. seeds-1 (train.seed); --seeds
    methods: [cam]                  # heatmap methods scored, each by the box protocol
    select: val                     # best.pt is chosen on the training data's val split
    report:                         # the split the tables report
      synthetic: {n: 1000, size: 256, seed: 5}   # a synthetic set of its own, or
      # data_root: data/nih         # a folder; neither: the data the cells trained on
      split: test
    rows:                           # each a config: a name and its overrides
      - {name: LSE r=10, set: []}
      - {name: max, set: [model.pooling=max]}
    axes:                           # or (also) the product of these values
      model.r: [5, 10]
    goals: {mean_auc: 0.98, tiobb: 0.85, weakest: 0.50, tiou: 0.70, pointing: 0.90}

Cells are (row, seed) in that order: cell k is row k // seeds, seed k % seeds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

from wsloc.config import ConfigError

__all__ = ["Grid", "Row", "load_grid", "find_grid", "GOALS"]

KEYS = ("name", "description", "base", "set", "seeds", "methods", "select", "report", "rows",
        "axes", "goals")
# goal name -> (what it is, higher is better)
GOALS = {"mean_auc": "mean AUC ≥", "tiobb": "T(IoBB = 0.5) ≥", "weakest":
         "every finding at T(IoBB = 0.5) ≥", "tiou": "T(IoU = 0.3) ≥", "pointing": "pointing ≥"}


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Grid:
    name: str
    path: str
    base: str
    overrides: tuple[str, ...]
    rows: tuple[Row, ...]
    seeds: int
    methods: tuple[str, ...]
    select: str
    report: dict
    goals: dict
    description: str = ""

    @property
    def cells(self) -> list[tuple[Row, int]]:
        """(row, training seed) of every cell, in cell order."""
        return [(row, seed) for row in self.rows for seed in range(self.seeds)]

    def record(self) -> dict:
        """What determines the grid's results (stored in the output folder)."""
        return {"name": self.name, "base": self.base, "set": list(self.overrides),
                "rows": [{"name": r.name, "set": list(r.overrides)} for r in self.rows],
                "seeds": self.seeds, "methods": list(self.methods), "select": self.select,
                "report": self.report}


def find_grid(name: str | Path) -> Path:
    """A grid file: ``name`` as a path, else a shipped grid (``configs/benchmarks/NAME.yaml``,
    also inside an installed wheel)."""
    from wsloc.config import shipped_configs

    path = Path(name)
    if path.is_file():
        return path
    folder = shipped_configs()
    folder = folder / "benchmarks" if folder is not None else None
    if folder is not None and path.parent == Path("."):
        for candidate in (folder / path.name, folder / f"{path.name}.yaml"):
            if candidate.is_file():
                return candidate
    shipped = sorted(p.stem for p in folder.glob("*.yaml")) if folder else []
    raise FileNotFoundError(f"grid not found: {name} (neither a file nor a shipped grid; "
                            f"shipped: {', '.join(shipped) or 'none'})")


def _strings(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of key=value strings, got {value!r}")
    for v in value:
        if "=" not in v:
            raise ConfigError(f"{where}: {v!r} must look like section.key=value")
    return tuple(value)


def _yaml_value(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _rows(spec: dict, where: str) -> tuple[Row, ...]:
    listed = spec.get("rows") or []
    if not isinstance(listed, list):
        raise ConfigError(f"{where}: rows must be a list, got {listed!r}")
    rows = []
    for i, r in enumerate(listed):
        if not isinstance(r, dict) or "name" not in r or set(r) - {"name", "set"}:
            raise ConfigError(f"{where}: rows[{i}] must be a mapping with 'name' and 'set', "
                              f"got {r!r}")
        rows.append(Row(str(r["name"]), _strings(r.get("set"), f"{where}: rows[{i}].set")))
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"{where}: axes must map config keys to non-empty lists of values, "
                          f"got {axes!r}")
    if axes:
        combos = [[f"{k}={_yaml_value(v)}" for v in values] for k, values in axes.items()]
        product = [Row(", ".join(c), tuple(c)) for c in itertools.product(*combos)]
        rows = ([Row(f"{r.name}, {p.name}", r.overrides + p.overrides)
                 for r in rows for p in product] if rows else product)
    if not rows:
        raise ConfigError(f"{where}: the grid has no rows (give rows or axes)")
    names = [r.name for r in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{where}: row names must be unique, repeated: {', '.join(twice)}")
    return tuple(rows)


def load_grid(name: str | Path, seeds: int | None = None) -> Grid:
    """Read and check a grid file (``name``: a path or a shipped grid's name); ``seeds``
    overrides its number of training seeds. Errors name the file and the key."""
    from wsloc.cam import METHODS, resolve_method

    path = find_grid(name)
    where = str(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from err
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: the top level must be a mapping")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: "
                          f"{', '.join(KEYS)}")
    if "base" not in spec:
        raise ConfigError(f"{where}: 'base' (the config every row starts from) is missing")
    n = spec.get("seeds", 3) if seeds is None else seeds
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{'--seeds' if seeds is not None else where + ': seeds'} must be "
                          f"an int >= 1, got {n!r}")
    methods = spec.get("methods", ["cam"])
    if (not isinstance(methods, list) or not methods
            or not all(isinstance(m, str) and m for m in methods)):
        raise ConfigError(f"{where}: methods must be a non-empty list of names (built in: "
                          f"{', '.join(METHODS)}), got {methods!r}")
    from wsloc.engine.benchmark import method_folder
    from wsloc.plugins import PluginError

    folders = [method_folder(m) for m in methods]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"{where}: methods repeat (or share a folder name): {methods!r}")
    for m in methods:  # a typo fails now, not after every cell has trained
        try:
            resolve_method(m)
        except PluginError as err:
            raise ConfigError(f"{where}: methods: {err}") from err
    select = spec.get("select", "val")
    if select != "val":
        raise ConfigError(f"{where}: select must be 'val' (best.pt is chosen by the "
                          f"validation AUC of the training data), got {select!r}")
    report = _report(spec.get("report") or {}, where)
    goals = spec.get("goals") or {}
    if not isinstance(goals, dict) or set(goals) - set(GOALS) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
            for v in goals.values()):
        raise ConfigError(f"{where}: goals must map some of {', '.join(GOALS)} to numbers "
                          f"in [0, 1], got {goals!r}")
    return Grid(name=str(spec.get("name") or path.stem), path=str(path), base=str(spec["base"]),
                overrides=_strings(spec.get("set"), f"{where}: set"),
                rows=_rows(spec, where), seeds=n, methods=tuple(methods), select=select,
                report=report, goals={k: float(v) for k, v in goals.items()},
                description=str(spec.get("description") or ""))


def _report(report: dict, where: str) -> dict:
    if not isinstance(report, dict) or set(report) - {"synthetic", "data_root", "split"}:
        raise ConfigError(f"{where}: report takes synthetic, data_root and split, got "
                          f"{report!r}")
    if "synthetic" in report and "data_root" in report:
        raise ConfigError(f"{where}: report names both a synthetic set and a data_root; "
                          "choose one")
    split = report.get("split", "test")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"{where}: report.split must be train, val or test, got {split!r}")
    out = {"split": split}
    if "synthetic" in report:
        synth = report["synthetic"]
        if not isinstance(synth, dict) or set(synth) - {"n", "size", "seed"}:
            raise ConfigError(f"{where}: report.synthetic takes n, size and seed, got "
                              f"{synth!r}")
        out["synthetic"] = {}
        for key, default, low in (("n", 1000, 10), ("size", 256, 32), ("seed", 0, 0)):
            v = synth.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{where}: report.synthetic.{key} must be an int >= {low}, "
                                  f"got {v!r}")
            out["synthetic"][key] = v
    elif "data_root" in report:
        out["data_root"] = str(Path(report["data_root"]).resolve())
    elif split != "test":
        raise ConfigError(f"{where}: report.split {split!r} of the training data is a split "
                          "the cells train or select on; report 'test', or other data")
    return out
