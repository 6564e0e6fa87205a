"""`wsloc benchmark`: grids, cells as normal runs, resume after SIGKILL, failed cells, a
user's pooling from an installed package, and the summary's figures against the cells'."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from wsloc.cli import main
from wsloc.config import ConfigError
from wsloc.engine.benchmark import cell_dirs, run_benchmark
from wsloc.engine.grid import load_grid
from wsloc.engine.rundir import RunMismatch

TINY = ["data.synthetic.n=48", "data.synthetic.size=64", "data.image_size=64",
        "data.num_workers=0", "model.transition_channels=16", "train.epochs=2",
        "train.batch_size=8", "data.train_transform=train"]
REPORT = {"synthetic": {"n": 40, "size": 64, "seed": 9}, "split": "test"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSLOC_CACHE", str(tmp_path / "cache"))
    return tmp_path


def write_grid(path, rows, seeds=2, methods=("cam",), **extra):
    import yaml

    spec = {"name": "tiny", "base": "demo", "set": TINY, "seeds": seeds,
            "methods": list(methods), "report": REPORT,
            "rows": [{"name": n, "set": s} for n, s in rows], **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def _strip_timing(obj):
    """results.json without the wall-clock figures (train time differs run to run)."""
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k != "train_s"}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def test_grid_rows_axes_and_errors(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", [("a", []), ("b", ["model.r=5"])],
                      axes={"model.pooling": ["lse", "max"]})
    g = load_grid(grid)
    assert [r.name for r in g.rows] == ["a, model.pooling=lse", "a, model.pooling=max",
                                       "b, model.pooling=lse", "b, model.pooling=max"]
    assert g.rows[3].overrides == ("model.r=5", "model.pooling=max")
    assert [(r.name, s) for r, s in g.cells][:3] == [("a, model.pooling=lse", 0),
                                                     ("a, model.pooling=lse", 1),
                                                     ("a, model.pooling=max", 0)]
    assert load_grid(grid, seeds=5).seeds == 5
    bad = [({"rowz": []}, "unknown key"), ({"rows": [{"name": "a"}, {"name": "a"}]},
                                           "unique"),
           ({"report": {"split": "val"}}, "select on"), ({"methods": []}, "methods"),
           ({"seeds": 0}, "seeds"), ({"goals": {"auc": 1}}, "goals")]
    for change, message in bad:
        spec = tmp_path / "bad.yaml"
        import yaml

        base = {"base": "demo", "rows": [{"name": "a"}]}
        spec.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(ConfigError, match=message):
            load_grid(spec)
    with pytest.raises(FileNotFoundError, match="shipped: cam_methods_demo, pooling_demo"):
        load_grid("no_such_grid")


def test_shipped_grids_load():
    for name in ("pooling_demo", "pooling_nih", "cam_methods_demo"):
        g = load_grid(name)
        assert g.seeds == 3 and g.rows
    assert set(load_grid("cam_methods_demo").methods) == {"cam", "gradcam", "gradcam++",
                                                          "layercam"}


def _benchmark_cmd(grid, out):
    return [sys.executable, "-m", "wsloc.cli", "benchmark", "--grid", str(grid), "--out",
            str(out)]


def test_killed_benchmark_resumes_to_the_same_results(cache):
    """2 configs × 2 seeds: uninterrupted, and SIGKILLed mid-way (during the second cell)
    then run again: the same results.json, timing aside; the cells are normal runs."""
    grid = write_grid(cache / "g.yaml", [("lse", []), ("max", ["model.pooling=max"])],
                      goals={"mean_auc": 0.0})
    full = run_benchmark(grid, cache / "full", progress=False)
    assert full["cells"] == {"total": 4, "done": 4, "failed": 0, "pending": 0}

    proc = subprocess.Popen(_benchmark_cmd(grid, cache / "cut"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    second = cell_dirs(load_grid(grid), cache / "cut")[1]
    deadline = time.time() + 240
    while not (second / "run" / "last.pt").exists() and proc.poll() is None:
        assert time.time() < deadline, "the benchmark never reached its second cell"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cell_dirs(load_grid(grid), cache / "cut")[3] / "cell.json").exists()
    assert main(["benchmark", "--grid", str(grid), "--out", str(cache / "cut")]) == 0

    a = json.loads((cache / "full" / "results.json").read_text())
    b = json.loads((cache / "cut" / "results.json").read_text())
    assert _strip_timing(a) == _strip_timing(b)
    assert "train_s" in a["rows"][0]["metrics"]

    # every cell is a normal run directory and evaluation; the summary is their figures
    cells = cell_dirs(load_grid(grid), cache / "cut")
    tiobb = []
    for cell in cells[:2]:
        assert {"config.yaml", "best.pt", "last.pt", "history.jsonl"} <= {
            p.name for p in (cell / "run").iterdir()}
        loc = json.loads((cell / "eval-cam" / "localization.json").read_text())
        tiobb.append(loc["iobb"]["0.5"]["mean"])
    lse = b["rows"][0]["metrics"]["tiobb"]
    assert lse["values"] == pytest.approx(tiobb)
    assert lse["mean"] == pytest.approx(np.mean(tiobb))
    assert lse["std"] == pytest.approx(np.std(tiobb, ddof=1))
    assert lse["worst"] == pytest.approx(min(tiobb))
    assert b["rows"][0]["goals_met"] == [0, 1]
    md = (cache / "cut" / "results.md").read_text()
    assert "| lse | cam | 2 |" in md and "reported on: the test split of a synthetic" in md
    assert "selected on: the validation split of the training data" in md
    assert (cache / "cut" / "localization_vs_auc.png").stat().st_size > 0
    assert (cache / "cut" / "findings.png").stat().st_size > 0

    # a different grid into the same folder is refused, naming what differs
    other = write_grid(cache / "g2.yaml", [("lse", []), ("max", ["model.pooling=avg"])])
    with pytest.raises(RunMismatch, match="model.pooling=max"):
        run_benchmark(other, cache / "cut", progress=False)


def test_a_failed_cell_is_recorded_and_the_grid_goes_on(cache, capsys):
    grid = write_grid(cache / "g.yaml", [("ok", []), ("broken", ["model.pooling=nope"])],
                      seeds=1)
    assert main(["benchmark", "--grid", str(grid), "--out", str(cache / "b")]) == 1
    summary = json.loads((cache / "b" / "results.json").read_text())
    assert summary["cells"] == {"total": 2, "done": 1, "failed": 1, "pending": 0}
    failed = summary["rows"][1]["failed"]
    assert failed[0]["seed"] == 0 and "model.pooling 'nope' is not known" in failed[0]["reason"]
    md = (cache / "b" / "results.md").read_text()
    assert "| broken | cam | 0 (+1 failed) |" in md and "- cell 1 (broken, seed 0):" in md
    assert "cell 1/2 (broken, seed 0): FAILED" in capsys.readouterr().out


def test_one_cell_only(cache):
    grid = write_grid(cache / "g.yaml", [("a", []), ("b", ["model.pooling=avg"])], seeds=1)
    summary = run_benchmark(grid, cache / "c", cell=1, progress=False)
    assert summary["cells"] == {"total": 2, "done": 1, "failed": 0, "pending": 1}
    assert summary["rows"][1]["seeds_done"] == [0] and summary["rows"][0]["seeds_done"] == []
    with pytest.raises(ValueError, match=r"--cell must be in \[0, 1\]"):
        run_benchmark(grid, cache / "c", cell=2, progress=False)
    # the grid grows (a row appended, a second seed): the finished cell stays where it is
    done = cell_dirs(load_grid(grid), cache / "c")[1] / "cell.json"
    before = done.read_text()
    grown = write_grid(cache / "g.yaml", [("a", []), ("b", ["model.pooling=avg"]),
                                          ("c", ["model.pooling=max"])], seeds=2)
    assert cell_dirs(load_grid(grown), cache / "c")[2] == done.parent  # (b, seed 0)
    summary = run_benchmark(grown, cache / "c", cell=2, progress=False)
    assert summary["cells"] == {"total": 6, "done": 1, "failed": 0, "pending": 5}
    assert done.read_text() == before


PLUGIN = '''
import torch
from torch import nn


class TopTwoMean(nn.Module):
    """The mean of each map's two largest cells."""

    def forward(self, x):
        return x.flatten(2).topk(2, dim=-1).values.mean(-1)


class Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1)
'''


def _install_plugin(root, monkeypatch):
    """A tiny installed package: its code and a dist-info registering an entry point."""
    (root / "tinypool").mkdir(parents=True)
    (root / "tinypool" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "tinypool-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinypool\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[wsloc.pooling]\ntoptwo = tinypool:TopTwoMean\n")
    monkeypatch.syspath_prepend(str(root))


def test_a_users_pooling_runs_through_the_benchmark(cache, monkeypatch):
    import torch

    from wsloc.engine.common import load_trained
    from wsloc.models import build_pooling
    from wsloc.plugins import PluginError

    _install_plugin(cache / "site", monkeypatch)
    grid = write_grid(cache / "g.yaml", [("entry point", ["model.pooling=toptwo"]),
                                         ("import path", ["model.pooling=tinypool:TopTwoMean"])],
                      seeds=1)
    summary = run_benchmark(grid, cache / "u", progress=False)
    assert summary["cells"]["done"] == 2
    for cell in cell_dirs(load_grid(grid), cache / "u"):
        model, *_ = load_trained(cell / "run" / "best.pt")
        assert type(model.pool).__name__ == "TopTwoMean"
        x = torch.randn(2, 8, 4, 4)
        torch.testing.assert_close(model.pool(x), x.flatten(2).topk(2, -1).values.mean(-1))
    with pytest.raises(PluginError, match="cannot import module 'nosuch.mod'"):
        build_pooling("nosuch.mod:Pool", 8)
    with pytest.raises(PluginError, match=r"'tinypool:Flat' must map \[N, K, S, S\] to \[N, K\]"):
        build_pooling("tinypool:Flat", 8)
    with pytest.raises(PluginError, match="has no 'Missing'"):
        build_pooling("tinypool:Missing", 8)
    with pytest.raises(PluginError, match=r"toptwo|entry-point group 'wsloc.pooling'"):
        build_pooling("not_registered", 8)


def test_jobs_run_cells_in_their_own_processes(cache):
    grid = write_grid(cache / "g.yaml", [("a", []), ("b", ["model.pooling=avg"])], seeds=1)
    summary = run_benchmark(grid, cache / "j", jobs=2, progress=False)
    assert summary["cells"]["done"] == 2
    for cell in cell_dirs(load_grid(grid), cache / "j"):
        assert "epoch 2/2" in (cell / "log.txt").read_text()
    assert os.path.isfile(cache / "j" / "results.md")


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory):
    """One config, one seed, two methods: the grid and its uninterrupted results."""
    root = tmp_path_factory.mktemp("two_methods")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSLOC_CACHE", str(root / "cache"))
        grid = write_grid(root / "g.yaml", [("lse", [])], seeds=1, methods=("cam", "gradcam"))
        run_benchmark(grid, root / "full", progress=False)
        yield root, grid, json.loads((root / "full" / "results.json").read_text())


def _kill_at(monkeypatch, point):
    """Make the run die (KeyboardInterrupt, as a kill would: nothing caught) at ``point``."""
    import wsloc.engine.benchmark as bench
    import wsloc.engine.evaluate as ev

    def dies(real, when):
        calls = {"n": 0}

        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if when(calls["n"], *args):
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return wrapped

    if point == "between training and evaluation":
        monkeypatch.setattr(bench, "report_root", dies(bench.report_root, lambda n, *a: True))
    elif point == "during the second method's evaluation":
        monkeypatch.setattr(ev, "localize_split", dies(ev.localize_split, lambda n, *a: n == 2))
    elif point == "before cell.json is written":
        monkeypatch.setattr(bench, "write_json_atomic", dies(
            bench.write_json_atomic, lambda n, path, *a: path.name == "cell.json"))
    elif point == "while the tables are written":
        import wsloc.report as report

        monkeypatch.setattr(report, "benchmark_table", dies(report.benchmark_table,
                                                            lambda n, *a: True))


@pytest.mark.parametrize("point", ["between training and evaluation",
                                   "during the second method's evaluation",
                                   "before cell.json is written",
                                   "while the tables are written"])
def test_killed_anywhere_resumes_to_the_same_results(two_methods, point, monkeypatch):
    root, grid, full = two_methods
    monkeypatch.setenv("WSLOC_CACHE", str(root / "cache"))
    out = root / f"cut-{point.split()[0]}-{point.split()[-1]}"
    with monkeypatch.context() as mp:
        _kill_at(mp, point)
        with pytest.raises(KeyboardInterrupt):
            run_benchmark(grid, out, progress=False)
    resumed = run_benchmark(grid, out, progress=False)
    assert _strip_timing(resumed) == _strip_timing(full)
    assert _strip_timing(json.loads((out / "results.json").read_text())) == _strip_timing(full)
    gradcam = resumed["rows"][1]["metrics"]
    assert resumed["rows"][1]["method"] == "gradcam" and "tiobb" in gradcam


def test_grid_mistakes_fail_before_anything_trains(cache):
    import yaml

    cases = [({"methods": ["cam", "gradcam+"]}, "methods: --method 'gradcam\\+' is not known"),
             ({"report": {"synthetic": {"n": "abc"}}}, r"report.synthetic.n must be an int"),
             ({"report": {"split": "train"}}, "a split the cells train or select on"),
             ({"goals": {"tiobb": 85}}, r"numbers in \[0, 1\]")]
    for change, message in cases:
        spec = cache / "bad.yaml"
        spec.write_text(yaml.safe_dump({"base": "demo", "rows": [{"name": "a"}], **change}))
        with pytest.raises(ConfigError, match=message):
            load_grid(spec)
    grid = write_grid(cache / "g.yaml", [("ok", []), ("typo", ["model.nosuch=1"])], seeds=1)
    with pytest.raises(ConfigError, match="row 'typo': .*unknown key 'model.nosuch'"):
        run_benchmark(grid, cache / "t", progress=False)
    assert not (cache / "t").exists() or not any((cache / "t").iterdir())


def test_cell_exit_code_is_its_own_and_seeds_are_remembered(cache):
    grid = write_grid(cache / "g.yaml", [("ok", []), ("broken", ["model.pooling=nope"])],
                      seeds=1)
    out = str(cache / "e")
    assert main(["benchmark", "--grid", str(grid), "--out", out, "--cell", "1"]) == 1
    assert main(["benchmark", "--grid", str(grid), "--out", out, "--cell", "0"]) == 0
    # grown to 2 seeds; the same command without --seeds goes on with 2
    summary = run_benchmark(grid, out, seeds=2, cell=2, progress=False)
    assert summary["cells"]["total"] == 4
    assert run_benchmark(grid, out, cell=0, progress=False)["cells"]["total"] == 4


def test_a_users_pooling_leaves_the_random_stream_alone(cache, monkeypatch):
    import torch

    from wsloc.models import ChestXray8Net

    _install_plugin(cache / "site", monkeypatch)
    weights = []
    for pooling in ("max", "tinypool:TopTwoMean"):
        torch.manual_seed(0)
        net = ChestXray8Net(8, backbone="resnet18", transition_channels=16, pooling=pooling,
                            pool_on="classes", feature_stride=8)
        weights.append(net.prediction.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


def test_summary_figures_and_the_papers_row(tmp_path):
    """summarize_cells on hand-made outcomes: mean, sample std, worst seed and its weakest
    finding, the goals, a failed seed, and the paper's row once the data is real."""
    from wsloc.engine.benchmark import summarize_cells

    grid = load_grid(write_grid(tmp_path / "g.yaml", [("a", [])], seeds=3,
                                goals={"tiobb": 0.5, "weakest": 0.3}))

    def done(seed, tiobb, nodule, real=False):
        figures = {"mean_auc": 0.9, "auc": {}, "tiobb": tiobb, "tiou": 0.4, "pointing": 0.7,
                   "afp": 1.0 + seed, "findings": {"Mass": 0.9, "Nodule": nodule},
                   "weakest": min(0.9, nodule), "weakest_finding": "Nodule"}
        return {"cell": seed, "row": "a", "seed": seed, "status": "done", "train_s": 10.0,
                "synthetic_data": not real, "methods": {"cam": figures}}

    failed = {"cell": 2, "row": "a", "seed": 2, "status": "failed", "reason": "Boom: no"}
    s = summarize_cells(grid, [done(0, 0.8, 0.6), done(1, 0.4, 0.2), failed])
    (row,) = s["rows"]
    t = row["metrics"]["tiobb"]
    assert t["values"] == [0.8, 0.4] and t["mean"] == pytest.approx(0.6)
    assert t["std"] == pytest.approx(np.std([0.8, 0.4], ddof=1))
    assert (t["worst"], t["worst_seed"]) == (0.4, 1)
    assert row["metrics"]["afp"]["worst"] == 2.0  # AFP: higher is worse
    assert row["metrics"]["weakest"]["finding"] == "Nodule"
    assert row["metrics"]["weakest"]["worst"] == 0.2
    assert row["findings"]["Nodule"]["values"] == [0.6, 0.2]
    assert row["goals_met"] == [0]
    assert row["failed"] == [{"cell": 2, "seed": 2, "reason": "Boom: no"}]
    assert s["cells"] == {"total": 3, "done": 2, "failed": 1, "pending": 0}
    assert "paper" not in s
    real = summarize_cells(grid, [done(0, 0.8, 0.6, real=True), None, None])
    paper = real["paper"]
    assert paper["mean_auc"] == pytest.approx(0.6962125)  # Wang et al.'s 8-class ResNet-50
    assert paper["tiobb"] == pytest.approx(0.329575) and paper["weakest"] == 0.0126
    from wsloc.report import benchmark_table

    md = benchmark_table(real)
    assert "| ResNet-50, 8 classes (Wang et al. 2017)" in md and "| 0.6962 | 0.330 |" in md
