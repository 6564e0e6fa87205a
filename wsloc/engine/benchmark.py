"""``wsloc benchmark``: a grid of configs × training seeds, each cell trained and evaluated
as a normal run, summarised over seeds into one table.

Layout of ``OUT``::

    run.json                      what the grid is (a different grid here is refused)
    cells/rNN-<row>-seed<S>/
        run/                      the cell's run directory (config.yaml, last.pt, best.pt, ...)
        eval-<method>/            `wsloc evaluate` of best.pt on the reported split
        cell.json                 the cell's outcome: done (its figures) or failed (why)
        log.txt                   with --jobs > 1: the cell's output
    results.json, results.md      one row per (config, method): mean ± std and worst seed
    localization_vs_auc.png, findings.png

Re-running the same command continues: finished cells are kept, a half-trained cell resumes
through ``train --resume``, a half-written evaluation is redone. ``cell=K`` runs one cell
(a scheduler's array job); ``jobs=N`` runs N cells at once, each in its own process.
A grid may grow between runs (rows appended, more seeds): the cells already done are kept;
any other change to it is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stdout
from pathlib import Path

from wsloc.engine.grid import Grid, Row, load_grid
from wsloc.engine.rundir import claim, write_json_atomic

__all__ = ["run_benchmark", "cell_dirs", "summarize"]

CELL = "cell.json"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:48] or "row"


def cell_dirs(grid: Grid, out: Path) -> list[Path]:
    """Each cell's folder, named by its row (index and name) and seed, so that rows appended
    to a grid, or seeds added, leave every existing cell where it is."""
    index = {row: i for i, row in enumerate(grid.rows)}
    return [out / "cells" / f"r{index[row]:02d}-{_slug(row.name)}-seed{seed}"
            for row, seed in grid.cells]


def _extends(old: dict, new: dict) -> bool:
    """Whether grid record ``new`` only appends rows to ``old`` or adds seeds."""
    o, n = old["grid"], new["grid"]
    same = {k: v for k, v in o.items() if k not in ("rows", "seeds")} == {
        k: v for k, v in n.items() if k not in ("rows", "seeds")}
    return (same and old.get("data_root") == new.get("data_root")
            and n["rows"][:len(o["rows"])] == o["rows"] and n["seeds"] >= o["seeds"])


def cell_config(grid: Grid, row: Row, seed: int, data_root: str | None) -> dict:
    """The resolved config of a cell: the base, the grid's and the row's overrides, its
    training seed, and the data root when one is given."""
    from wsloc.config import load_config

    overrides = [*grid.overrides, *row.overrides, f"train.seed={seed}"]
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    return load_config(grid.base, overrides)


def report_root(grid: Grid, cfg: dict, progress: bool) -> str | None:
    """The data root the reported split is taken from (None: the cell's own data)."""
    rep = grid.report
    if "synthetic" in rep:
        from wsloc.data.synthetic import ensure_synthetic

        return str(ensure_synthetic(**rep["synthetic"], progress=progress))
    return rep.get("data_root")


def _builtin_root(cfg: dict, progress: bool) -> Path:
    from wsloc.engine.common import data_root_of

    return data_root_of(cfg, progress=progress)


def _trained(run: Path, epochs: int) -> bool:
    from wsloc.engine.checkpoint import load_checkpoint

    if not (run / "last.pt").is_file() or not (run / "best.pt").is_file():
        return False
    return load_checkpoint(run / "last.pt")["epoch"] >= epochs


def _train_cell(cfg: dict, run: Path, progress: bool) -> None:
    from wsloc.engine.train import train

    if (run / "last.pt").is_file():
        train(cfg, resume=run, progress=progress)
        return
    if run.exists():  # killed before its first epoch ended: nothing worth keeping
        shutil.rmtree(run)
    train(cfg, out=run, progress=progress)


def _evaluate_cell(cell: Path, method: str, root: str | None, split: str,
                   progress: bool) -> dict:
    """`wsloc evaluate` of the cell's best.pt with ``method``, written to a temporary folder
    and renamed, so a killed evaluation leaves nothing that looks finished."""
    from wsloc.engine.evaluate import evaluate

    final = cell / f"eval-{_slug(method)}"
    if (final / "metrics.json").is_file():
        return json.loads((final / "metrics.json").read_text())
    tmp = cell / f".eval-{_slug(method)}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(cell / f"eval-{_slug(method)}.log", "w") as log, redirect_stdout(log):
        result = evaluate(cell / "run" / "best.pt", data_root=root, split=split, out=tmp,
                          progress=progress, method=method)  # its tables: the log, results.md
    os.replace(tmp, final)
    return result


def _figures(result: dict) -> dict:
    """The figures a table row needs, from one `evaluate` result."""
    loc = result.get("localization")
    out = {"mean_auc": result["mean_auc"], "auc": result["auc"]}
    if loc:
        key = lambda table, t: table.get(t, table.get(str(t)))  # noqa: E731 (JSON: "0.5")
        iobb, iou = key(loc["iobb"], 0.5), key(loc["iou"], 0.3)
        findings = {c: v for c, v in iobb.items() if c != "mean"}
        weakest = min(findings, key=lambda c: (findings[c], c))
        out.update(tiobb=iobb["mean"], tiou=iou["mean"],
                   pointing=loc.get("pointing", {}).get("mean"),
                   afp=key(loc["afp_iobb"], 0.5)["mean"], findings=findings,
                   weakest=findings[weakest], weakest_finding=weakest)
    return out


def _run_cell(grid: Grid, k: int, cell: Path, data_root: str | None, progress: bool) -> dict:
    """Train and evaluate cell ``k``; its outcome is written to ``cell.json`` either way."""
    row, seed = grid.cells[k]
    outcome = {"cell": k, "row": row.name, "seed": seed}
    began = time.perf_counter()
    try:
        cfg = cell_config(grid, row, seed, data_root)
        cell.mkdir(parents=True, exist_ok=True)
        run = cell / "run"
        if not _trained(run, cfg["train"]["epochs"]):
            _train_cell(cfg, run, progress)
        history = [json.loads(line) for line in (run / "history.jsonl").read_text().split("\n")
                   if line.strip()]
        outcome["train_s"] = round(sum(h["seconds"] for h in history), 1)
        outcome["epochs"] = len(history)
        root = report_root(grid, cfg, progress)
        data = Path(root if root is not None else
                    (cfg["data"]["root"] or _builtin_root(cfg, progress)))
        outcome["report_data"] = str(data)
        outcome["synthetic_data"] = (data / "synth.json").is_file()
        outcome["methods"] = {m: _figures(_evaluate_cell(cell, m, root, grid.report["split"],
                                                         progress))
                              for m in grid.methods}
        outcome["status"] = "done"
    except KeyboardInterrupt:
        raise
    except Exception as err:  # the cell failed: say why, and let the grid go on
        outcome["status"] = "failed"
        outcome["reason"] = f"{type(err).__name__}: {err}"
        outcome["traceback"] = traceback.format_exc(limit=8)
    outcome["wall_s"] = round(time.perf_counter() - began, 1)
    write_json_atomic(cell / CELL, outcome)
    return outcome


def _done(cell: Path, retry_failed: bool) -> dict | None:
    path = cell / CELL
    if not path.is_file():
        return None
    outcome = json.loads(path.read_text())
    if outcome.get("status") == "failed" and retry_failed:
        return None
    return outcome


def _line(k: int, total: int, outcome: dict) -> str:
    head = f"[{k + 1}/{total}] {outcome['row']}, seed {outcome['seed']}:"
    if outcome["status"] != "done":
        return f"{head} FAILED ({outcome['reason']})"
    parts = []
    for m, f in outcome["methods"].items():
        loc = (f" T(IoBB=.5) {f['tiobb']:.3f} T(IoU=.3) {f['tiou']:.3f} pointing "
               f"{f['pointing']:.3f} weakest {f['weakest_finding']} {f['weakest']:.2f}"
               if "tiobb" in f else "")
        parts.append(f"{m}: AUC {f['mean_auc']:.4f}{loc}")
    return f"{head} {'; '.join(parts)} ({outcome['train_s']:.0f} s training)"


def _subprocess_cell(grid_path: str, out: Path, k: int, seeds: int, data_root: str | None,
                     retry_failed: bool, env: dict, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "wsloc.cli", "benchmark", "--grid", grid_path, "--out",
           str(out), "--seeds", str(seeds), "--cell", str(k)]
    if data_root is not None:
        cmd += ["--data-root", data_root]
    if retry_failed:
        cmd.append("--retry-failed")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def run_benchmark(grid: str | Path, out: str | Path, data_root: str | None = None,
                  seeds: int | None = None, jobs: int = 1, cell: int | None = None,
                  retry_failed: bool = False, progress: bool = True) -> dict:
    """Run (or continue) a benchmark grid into ``out``; returns the summary
    (``results.json``'s content).

    Args:
        grid: a grid file or a shipped grid's name (:func:`wsloc.engine.grid.load_grid`).
        out: the benchmark's folder; re-running the same grid into it continues the run.
        data_root: the data every cell trains on (default: each config's own).
        seeds: training seeds per row (default: the grid's).
        jobs: cells run at once, each in its own process (one GPU each when there are
            GPUs, else an equal share of the CPU threads).
        cell: run only this cell (0-based, cell order), e.g. one array job of a scheduler.
        retry_failed: run cells recorded as failed again.
    """
    g = load_grid(grid, seeds)
    out = Path(out)
    record = {"grid": g.record(), "data_root": data_root}
    out, resumed = claim(out, record, "benchmark", extends=_extends)
    if resumed and progress and cell is None:
        print(f"continuing the benchmark in {out}", flush=True)
    dirs = cell_dirs(g, out)
    total = len(dirs)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be an int >= 1, got {jobs!r}")
    if cell is not None:
        if isinstance(cell, bool) or not isinstance(cell, int) or not 0 <= cell < total:
            raise ValueError(f"--cell must be in [0, {total - 1}] ({len(g.rows)} rows × "
                             f"{g.seeds} seeds), got {cell!r}")
        todo = [cell]
    else:
        todo = list(range(total))
    pending = []
    for k in todo:
        outcome = _done(dirs[k], retry_failed)
        if outcome is not None:
            if progress:
                print(_line(k, total, outcome) + " (kept)", flush=True)
        else:
            pending.append(k)
    if jobs == 1 or len(pending) <= 1:
        for k in pending:
            row, seed = g.cells[k]
            if progress:
                print(f"[{k + 1}/{total}] {row.name}, seed {seed}: running in {dirs[k]}",
                      flush=True)
            outcome = _run_cell(g, k, dirs[k], data_root, progress)
            if progress:
                print(_line(k, total, outcome), flush=True)
            summarize(g, out)
    else:
        _run_parallel(g, out, dirs, pending, jobs, data_root, retry_failed, progress)
    return summarize(g, out)


def _run_parallel(g: Grid, out: Path, dirs: list[Path], pending: list[int], jobs: int,
                  data_root: str | None, retry_failed: bool, progress: bool) -> None:
    import torch

    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    running: dict[int, subprocess.Popen] = {}
    queue = list(pending)
    total = len(dirs)
    while queue or running:
        while queue and len(running) < jobs:
            k = queue.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(len(running) % gpus)
            running[k] = _subprocess_cell(g.path, out, k, g.seeds, data_root, retry_failed,
                                          env, dirs[k] / "log.txt")
            if progress:
                row, seed = g.cells[k]
                print(f"[{k + 1}/{total}] {row.name}, seed {seed}: started (log: "
                      f"{dirs[k] / 'log.txt'})", flush=True)
        time.sleep(1.0)
        for k, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[k]
            outcome = _done(dirs[k], retry_failed=False)
            if outcome is None:  # the process died before it could say why
                row, seed = g.cells[k]
                outcome = {"cell": k, "row": row.name, "seed": seed, "status": "failed",
                           "reason": f"its process exited with code {proc.returncode} "
                                     f"(see {dirs[k] / 'log.txt'})"}
                write_json_atomic(dirs[k] / CELL, outcome)
            if progress:
                print(_line(k, total, outcome), flush=True)
            summarize(g, out)


def summarize(g: Grid, out: Path) -> dict:
    """``results.json``, ``results.md`` and the figures from the cells finished so far."""
    from wsloc.engine.rundir import write_atomic
    from wsloc.report import benchmark_plots, benchmark_table

    outcomes = []
    for d in cell_dirs(g, out):
        path = d / CELL
        outcomes.append(json.loads(path.read_text()) if path.is_file() else None)
    summary = summarize_cells(g, outcomes)
    write_json_atomic(out / "results.json", summary)
    write_atomic(out / "results.md", benchmark_table(summary))
    if any(r["seeds_done"] for r in summary["rows"]):
        benchmark_plots(summary, out)
    return summary


# metric -> (label, higher is better)
METRICS = {"mean_auc": ("mean AUC", True), "tiobb": ("T(IoBB = 0.5)", True),
           "tiou": ("T(IoU = 0.3)", True), "pointing": ("pointing", True),
           "afp": ("AFP at T(IoBB = 0.5)", False), "weakest": ("weakest finding", True),
           "train_s": ("train s", False)}


def _spread(values: list[float], seeds: list[int], higher: bool) -> dict:
    """mean, sample standard deviation (0 for one seed), the worst value and its seed."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    worst = int(np.argmin(v) if higher else np.argmax(v))
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "worst": float(v[worst]), "worst_seed": seeds[worst], "values": v.tolist()}


def _meets(f: dict, goals: dict) -> bool:
    return all(f.get(k) is not None and f[k] >= v for k, v in goals.items())


def _describe_report(g: Grid) -> str:
    rep = g.report
    if "synthetic" in rep:
        s = rep["synthetic"]
        return (f"the {rep['split']} split of a synthetic set of its own (wsloc synth --n "
                f"{s['n']} --size {s['size']} --seed {s['seed']})")
    if "data_root" in rep:
        return f"the {rep['split']} split of {rep['data_root']}"
    return f"the {rep['split']} split of the data the cells trained on"


def summarize_cells(g: Grid, outcomes: list[dict | None]) -> dict:
    """One row per (grid row, method): each metric's mean ± std over the seeds finished,
    the worst seed, T(IoBB = 0.5) per finding, the seeds meeting every goal, and the
    failed seeds with their reasons."""
    from wsloc.report import PAPER_AUC, PAPER_LOCALIZATION

    status = [o["status"] if o else "pending" for o in outcomes]
    rows = []
    for r_index, row in enumerate(g.rows):
        mine = outcomes[r_index * g.seeds:(r_index + 1) * g.seeds]
        failed = [{"seed": o["seed"], "reason": o["reason"]} for o in mine
                  if o and o["status"] == "failed"]
        done = [o for o in mine if o and o["status"] == "done"]
        for method in g.methods:
            seeds = [o["seed"] for o in done]
            per = [dict(o["methods"][method], train_s=o["train_s"]) for o in done]
            entry = {"row": row.name, "set": list(row.overrides), "method": method,
                     "seeds_done": seeds, "failed": failed, "metrics": {}, "findings": {}}
            for key, (_, higher) in METRICS.items():
                values = [f.get(key) for f in per]
                if values and all(v is not None for v in values):
                    entry["metrics"][key] = _spread(values, seeds, higher)
            if "weakest" in entry["metrics"]:
                worst = seeds.index(entry["metrics"]["weakest"]["worst_seed"])
                entry["metrics"]["weakest"]["finding"] = per[worst]["weakest_finding"]
            for c in (per[0].get("findings") or {}) if per else {}:
                entry["findings"][c] = _spread([f["findings"][c] for f in per], seeds, True)
            if g.goals and per:
                entry["goals_met"] = [s for s, f in zip(seeds, per) if _meets(f, g.goals)]
            rows.append(entry)
    real = [o for o in outcomes if o and o["status"] == "done" and not o["synthetic_data"]]
    summary = {
        "grid": g.name, "path": g.path, "base": g.base, "seeds": g.seeds,
        "methods": list(g.methods),
        "select": "the validation split of the training data (best.pt: the epoch with the "
                  "highest validation mean AUC)",
        "report": _describe_report(g), "goals": g.goals,
        "cells": {"total": len(outcomes), "done": status.count("done"),
                  "failed": status.count("failed"), "pending": status.count("pending")},
        "rows": rows,
    }
    if real:
        eight = PAPER_LOCALIZATION["8-class ResNet-50 (Wang et al. 2017)"]
        mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
        summary["paper"] = {
            "row": "ResNet-50, 8 classes (Wang et al. 2017), means of its per-finding figures",
            "mean_auc": mean(PAPER_AUC["ResNet-50, ChestX-ray8 (Wang et al. 2017)"]),
            "tiobb": mean(eight["iobb"][0.5]), "tiou": mean(eight["iou"][0.3]),
            "afp": mean(eight["afp_iobb"][0.5]),
            "weakest": min(eight["iobb"][0.5].values()),
            "findings": dict(eight["iobb"][0.5])}
    return summary
