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
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

from wsloc.engine.grid import Grid, Row, load_grid
from wsloc.engine.rundir import claim, write_json_atomic

__all__ = ["run_benchmark", "cell_dirs", "summarize"]

CELL = "cell.json"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:48] or "row"


def method_folder(method: str) -> str:
    """The folder of a method's evaluation in a cell (``eval-gradcam++``): the name as
    `wsloc evaluate` spells it, characters other than letters, digits and ``._+-`` as ``_``."""
    return "eval-" + re.sub(r"[^A-Za-z0-9._+-]+", "_", method)


def cell_dirs(grid: Grid, out: Path) -> list[Path]:
    """Each cell's folder, named by its row (index and name) and seed, so that rows appended
    to a grid, or seeds added, leave every existing cell where it is."""
    index = {row: i for i, row in enumerate(grid.rows)}
    return [out / "cells" / f"r{index[row]:02d}-{_slug(row.name)}-seed{seed}"
            for row, seed in grid.cells]


def cell_config(grid: Grid, row: Row, seed: int, data_root: str | None) -> dict:
    """The resolved config of a cell: the base, the grid's and the row's overrides, its
    training seed, and the data root when one is given."""
    from wsloc.config import load_config

    overrides = [*grid.overrides, *row.overrides, f"train.seed={seed}"]
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    return load_config(grid.base, overrides)


def row_configs(grid: Grid, data_root: str | None) -> list[dict]:
    """Every row's resolved config (its train.seed left out): what the cells train, kept in
    the benchmark's record so that a changed base config is never mixed in. A config that
    does not resolve is an error naming the grid and the row."""
    from wsloc.config import ConfigError

    out = []
    for row in grid.rows:
        try:
            cfg = cell_config(grid, row, 0, data_root)
        except (ConfigError, FileNotFoundError) as err:
            raise ConfigError(f"{grid.path}: row {row.name!r}: {err}") from err
        cfg["train"].pop("seed")
        out.append(cfg)
    return out


def _extends(old: dict, new: dict) -> bool:
    """Whether the record ``new`` only appends rows to ``old`` or adds seeds."""
    o, n = old["grid"], new["grid"]
    rest = lambda g: {k: v for k, v in g.items() if k not in ("rows", "seeds")}  # noqa: E731
    return (rest(o) == rest(n) and old.get("data_root") == new.get("data_root")
            and n["rows"][:len(o["rows"])] == o["rows"] and n["seeds"] >= o["seeds"]
            and "configs" in old
            and new["configs"][:len(old["configs"])] == old["configs"])


def report_root(grid: Grid, progress: bool) -> str | None:
    """The data root the reported split is taken from (None: the cell's own data)."""
    rep = grid.report
    if "synthetic" in rep:
        from wsloc.data.synthetic import ensure_synthetic

        return str(ensure_synthetic(**rep["synthetic"], progress=progress))
    return rep.get("data_root")


def _history(run: Path) -> list[dict] | None:
    """The finished epochs of a run, from its last checkpoint (the record that a kill
    cannot leave behind the weights), or None before the first epoch ends."""
    from wsloc.engine.checkpoint import load_checkpoint

    if not (run / "last.pt").is_file() or not (run / "best.pt").is_file():
        return None
    return list(load_checkpoint(run / "last.pt")["history"])


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
    """`wsloc evaluate` of the cell's best.pt with ``method`` (its tables go to
    ``eval-<method>.log``), written to a temporary folder with its whole result in
    ``result.json`` and then renamed: a killed evaluation leaves nothing that looks
    finished, and a finished one is read back whole."""
    from wsloc.engine.evaluate import evaluate

    final = cell / method_folder(method)
    if (final / "result.json").is_file():
        return json.loads((final / "result.json").read_text())
    shutil.rmtree(final, ignore_errors=True)  # from before result.json was kept: redo
    tmp = cell / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(cell / f"{final.name}.log", "w") as log, redirect_stdout(log):
        result = evaluate(cell / "run" / "best.pt", data_root=root, split=split, out=tmp,
                          progress=progress, method=method, masks=False)
    result.pop("out", None)
    write_json_atomic(tmp / "result.json", result)
    os.replace(tmp, final)
    return json.loads((final / "result.json").read_text())


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


@contextmanager
def _locked(path: Path, blocking: bool = True):
    """An exclusive advisory lock on ``path`` (fcntl.flock): yields whether it was taken
    (always, when blocking). Released when the holder exits, however it exits."""
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_cell(grid: Grid, k: int, cell: Path, data_root: str | None, progress: bool) -> dict:
    """Train and evaluate cell ``k``; its outcome is written to ``cell.json`` either way."""
    from wsloc.engine.common import data_root_of

    row, seed = grid.cells[k]
    outcome = {"cell": k, "row": row.name, "seed": seed}
    began = time.perf_counter()
    try:
        cfg = cell_config(grid, row, seed, data_root)
        run = cell / "run"
        history = _history(run)
        if history is None or len(history) < cfg["train"]["epochs"]:
            _train_cell(cfg, run, progress)
            history = _history(run)
        outcome["train_s"] = round(sum(h["seconds"] for h in history), 1)
        outcome["epochs"] = len(history)
        root = report_root(grid, progress)
        data = Path(root) if root is not None else data_root_of(cfg, progress=progress)
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); remove it to redo that cell"
                         ) from err


def _done(cell: Path, retry_failed: bool) -> dict | None:
    path = cell / CELL
    if not path.is_file():
        return None
    outcome = _read_json(path)
    if outcome.get("status") == "failed" and retry_failed:
        return None
    return outcome


def _head(k: int, total: int, row: str, seed: int) -> str:
    return f"cell {k}/{total} ({row}, seed {seed}):"


def _line(k: int, total: int, outcome: dict) -> str:
    head = _head(k, total, outcome["row"], outcome["seed"])
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
                     env: dict, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "wsloc.cli", "benchmark", "--grid", grid_path, "--out",
           str(out), "--seeds", str(seeds), "--cell", str(k), "--retry-failed"]
    if data_root is not None:
        cmd += ["--data-root", data_root]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def _stored_seeds(out: Path) -> int | None:
    path = out / "run.json"
    return _read_json(path)["grid"]["seeds"] if path.is_file() else None


def run_benchmark(grid: str | Path, out: str | Path, data_root: str | None = None,
                  seeds: int | None = None, jobs: int = 1, cell: int | None = None,
                  retry_failed: bool = False, progress: bool = True) -> dict:
    """Run (or continue) a benchmark grid into ``out``; returns the summary
    (``results.json``'s content).

    Args:
        grid: a grid file or a shipped grid's name (:func:`wsloc.engine.grid.load_grid`).
        out: the benchmark's folder; re-running the same grid into it continues the run.
        data_root: the data every cell trains on (default: each config's own).
        seeds: training seeds per row (default: the grid's, or as many as ``out`` already
            holds when an earlier run added seeds).
        jobs: cells run at once, each in its own process (one GPU each when there are
            GPUs, else an equal share of the CPU cores).
        cell: run only this cell (0-based, cell order), e.g. one array job of a scheduler.
        retry_failed: run cells recorded as failed again.
    """
    from wsloc.engine.distributed import Dist

    if Dist().world > 1:
        raise ValueError("wsloc benchmark runs each cell in one process; start it without "
                         "torchrun (--jobs N runs N cells at once, one GPU each)")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be an int >= 1, got {jobs!r}")
    out = Path(out)
    g = load_grid(grid, seeds)
    stored = _stored_seeds(out)
    if seeds is None and stored is not None and stored > g.seeds:  # grown by --seeds before
        g = load_grid(grid, stored)
    total = len(g.cells)
    if cell is not None and (isinstance(cell, bool) or not isinstance(cell, int)
                             or not 0 <= cell < total):
        raise ValueError(f"--cell must be in [0, {total - 1}] ({len(g.rows)} rows × "
                         f"{g.seeds} seeds), got {cell!r}")
    data_root = None if data_root is None else str(Path(data_root).resolve())
    record = {"grid": g.record(), "data_root": data_root,
              "configs": row_configs(g, data_root)}
    out, resumed = claim(out, record, "benchmark", extends=_extends)
    if resumed and progress and cell is None:
        print(f"continuing the benchmark in {out}", flush=True)
    dirs = cell_dirs(g, out)
    todo = [cell] if cell is not None else list(range(total))
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
            _one_cell(g, k, dirs[k], data_root, progress, total)
            summarize(g, out)
    else:
        _run_parallel(g, out, dirs, pending, jobs, data_root, progress)
    summary = summarize(g, out)
    if cell is not None:  # an array job's exit code is its own cell's
        outcome = _done(dirs[cell], False)
        summary["this_cell"] = outcome["status"] if outcome else "running elsewhere"
    return summary


def _one_cell(g: Grid, k: int, cell: Path, data_root: str | None, progress: bool,
              total: int) -> None:
    """Run cell ``k`` unless another process holds its lock (a requeued array job, say)."""
    row, seed = g.cells[k]
    cell.mkdir(parents=True, exist_ok=True)
    with _locked(cell / ".lock", blocking=False) as mine:
        if not mine:
            print(f"{_head(k, total, row.name, seed)} skipped: another process is running "
                  f"it ({cell / '.lock'} is held)", flush=True)
            return
        if progress:
            print(f"{_head(k, total, row.name, seed)} running in {cell}", flush=True)
        outcome = _run_cell(g, k, cell, data_root, progress)
    if progress:
        print(_line(k, total, outcome), flush=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _run_parallel(g: Grid, out: Path, dirs: list[Path], pending: list[int], jobs: int,
                  data_root: str | None, progress: bool) -> None:
    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = ([d for d in visible.split(",") if d.strip()] if visible is not None
            else [str(i) for i in range(torch.cuda.device_count())])
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, _cores() // jobs))
    running: dict[int, tuple[subprocess.Popen, str | None]] = {}
    queue = list(pending)
    total = len(dirs)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                k = queue.pop(0)
                (dirs[k] / CELL).unlink(missing_ok=True)  # a failure being retried
                env = dict(os.environ, OMP_NUM_THREADS=threads)
                gpu = None
                if gpus:  # the least busy of the visible GPUs
                    busy = [gp for _, gp in running.values()]
                    gpu = min(gpus, key=busy.count)
                    env["CUDA_VISIBLE_DEVICES"] = gpu
                running[k] = (_subprocess_cell(g.path, out, k, g.seeds, data_root, env,
                                               dirs[k] / "log.txt"), gpu)
                if progress:
                    row, seed = g.cells[k]
                    print(f"{_head(k, total, row.name, seed)} started (log: "
                          f"{dirs[k] / 'log.txt'})", flush=True)
            time.sleep(1.0)
            for k, (proc, _) in list(running.items()):
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
    finally:  # interrupted: stop the cells still running (they resume next time)
        for proc, _ in running.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in running.values():
            proc.wait()


def summarize(g: Grid, out: Path) -> dict:
    """``results.json``, ``results.md`` and the figures from the cells finished so far,
    under a lock, so that the last of several processes to finish writes the last word."""
    from wsloc.engine.rundir import write_atomic
    from wsloc.report import benchmark_plots, benchmark_table

    with _locked(out / ".summary.lock"):
        current = _read_json(out / "run.json")["grid"]
        if current != g.record():  # the grid has grown since this process started
            g = load_grid(g.path, current["seeds"])
        outcomes = [_read_json(d / CELL) if (d / CELL).is_file() else None
                    for d in cell_dirs(g, out)]
        summary = summarize_cells(g, outcomes)
        write_json_atomic(out / "results.json", summary)
        write_atomic(out / "results.md", benchmark_table(summary))
        if any(r["seeds_done"] for r in summary["rows"]):
            benchmark_plots(summary, out)
    return summary


# the metrics a row summarises -> whether higher is better (report.BENCH_COLUMNS labels them)
METRICS = {"mean_auc": True, "tiobb": True, "tiou": True, "pointing": True, "afp": False,
           "weakest": True, "train_s": False}


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
        failed = [{"cell": o["cell"], "seed": o["seed"], "reason": o["reason"]} for o in mine
                  if o and o["status"] == "failed"]
        done = [o for o in mine if o and o["status"] == "done"]
        for method in g.methods:
            seeds = [o["seed"] for o in done]
            per = [dict(o["methods"][method], train_s=o["train_s"]) for o in done]
            entry = {"row": row.name, "set": list(row.overrides), "method": method,
                     "seeds_done": seeds, "failed": failed, "metrics": {}, "findings": {}}
            for key, higher in METRICS.items():
                values = [f.get(key) for f in per]
                if values and all(v is not None and v == v for v in values):  # no NaN
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
