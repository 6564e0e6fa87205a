import json
import subprocess
import sys

import pytest

from wsloc import __version__
from wsloc.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wsloc {__version__}"


def test_import_stays_light():
    """`import wsloc` and the CLI parser import neither Triton, OpenCV nor pydicom."""
    code = ("import sys, wsloc, wsloc.cli; wsloc.cli.build_parser(); import wsloc.ops; "
            "print(sorted(m for m in ('triton', 'cv2', 'pydicom') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": ""})
    assert out.stdout.strip() == "[]"


def test_bench_ops_quick_writes_table_and_json(tmp_path, capsys):
    assert main(["bench", "ops", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| lse_pool2d global r=10 |" in out and "composed fwd ms" in out
    (path,) = tmp_path.glob("ops-quick-*.json")
    data = json.loads(path.read_text())
    assert data["meta"]["device"].startswith("CPU")
    ops = {r["op"] for r in data["results"]}
    assert {"lse_pool2d global r=10", "soft_pool2d 2x2"} <= ops
    for r in data["results"]:
        for impl in ("wsloc", "composed"):
            assert r[impl]["fwd_ms"] > 0 and r[impl]["fwd_bwd_ms"] > 0
        assert r["fwd_speedup"] == pytest.approx(r["composed"]["fwd_ms"] / r["wsloc"]["fwd_ms"])


def test_bench_rejects_missing_cuda(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    assert main(["bench", "ops", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bench_ops_only_runs_the_matching_rows(tmp_path, capsys):
    argv = ["bench", "ops", "--quick", "--device", "cpu", "--out", str(tmp_path)]
    assert main([*argv, "--only", "SORT_pool2d"]) == 0
    out = capsys.readouterr().out
    assert "| sort_pool2d 2x2 (weights [4]) |" in out and "lse_pool2d" not in out
    (path,) = tmp_path.glob("ops-quick-*.json")
    assert path.name.startswith("ops-quick-partial-")  # never the full run's file
    ops = {r["op"] for r in json.loads(path.read_text())["results"]}
    assert ops == {"sort_pool2d 2x2 (weights [4])", "sort_pool2d global top 16"}
    assert main([*argv, "--only", "no-such-op"]) == 2
    assert "--only 'no-such-op' matches no op" in capsys.readouterr().err
