"""Streaming inference (wsloc.engine.stream): a run killed with SIGKILL and resumed, shards
merged and two torchrun ranks all write exactly what one uninterrupted process writes; the
refusals; bad inputs listed with their reasons."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.data.test_dicom import write_dicom
from tests.engine.tiny import tiny_run
from wsloc.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with tiny_run(tmp_path_factory, "stream") as run_dir:
        yield run_dir


@pytest.fixture(scope="module")
def films(run, tmp_path_factory):
    """Eleven readable films (two named alike in different folders, one non-square, one
    DICOM) and a truncated PNG."""
    images = sorted(next((run.parent / "cache" / "wsloc").glob("synthetic-*")).glob(
        "images/*.png"))
    root = tmp_path_factory.mktemp("films")
    (root / "a").mkdir()
    (root / "b").mkdir()
    for p in images[:7]:
        shutil.copy(p, root / "a" / p.name)
    shutil.copy(images[8], root / "b" / images[0].name)  # same name, another film
    shutil.copy(images[9], root / "b" / images[9].name)
    cv2.imwrite(str(root / "b" / "wide.png"), cv2.resize(cv2.imread(str(images[10]), 0),
                                                         (90, 70)))
    write_dicom(root / "b" / "scan.dcm", np.tile(np.linspace(0, 4000, 50), (40, 1)))
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


COMMANDS = {"heatmap": ["--all-classes", "--save-maps"],
            "segment": ["--min-probability", "0", "--cam-threshold", "128"]}


def _args(command, run, films, out, *extra):
    return [command, "--checkpoint", str(run / "best.pt"), str(films), "--out", str(out),
            "--batch-size", "3", *COMMANDS[command], *extra]


def _cli(args, env=None, timeout=300):
    """`python -m wsloc.cli ARGS` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "wsloc.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _files(out: Path) -> dict[str, bytes]:
    """Every file a user reads in OUT, by its path inside OUT, with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for sub in ("overlays", "masks", "maps")
            for p in sorted((out / sub).glob("*"))}


def _same_outputs(a: Path, b: Path) -> None:
    assert (a / "boxes.json").read_text() == (b / "boxes.json").read_text()
    assert (a / "failed.txt").read_text() == (b / "failed.txt").read_text()
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb) and fa  # the same files, nothing half-written left
    for name in fa:
        assert fa[name] == fb[name], name


@pytest.fixture(scope="module")
def whole(run, films, tmp_path_factory):
    """Each command's uninterrupted run, in this process, films read in it (workers 0)."""
    base = tmp_path_factory.mktemp("whole")
    outs = {}
    for command in COMMANDS:
        outs[command] = base / command
        assert main(_args(command, run, films, outs[command], "--workers", "0")) == 1
    return outs


def test_the_streamed_run_writes_todays_boxes_json(run, films, whole):
    """boxes.json is the records of boxes.jsonl (without the done records) in input order,
    as json.dumps(..., indent=1) writes a list: the format users already have."""
    out = whole["heatmap"]
    lines = [json.loads(line) for line in (out / "boxes.jsonl").read_text().splitlines()]
    records = [r for r in lines if "done" not in r]
    assert (out / "boxes.json").read_text() == json.dumps(records, indent=1) + "\n"
    done = [r for r in lines if "done" in r]
    assert [d["i"] for d in done] == list(range(12))  # every film, in input order
    assert {d["status"] for d in done} == {"boxes", "failed"}
    broken = next(d for d in done if d["done"].endswith("broken.png"))
    assert broken["status"] == "failed" and "PNG is truncated" in broken["reason"]
    assert os.stat(films / "b" / "wide.png").st_mtime_ns == next(
        d for d in done if d["done"].endswith("wide.png"))["mtime_ns"]
    # the two films named alike get overlays apart: the first keeps its name
    name = sorted(p.name for p in (films / "a").iterdir())[0]
    stem = name[:-4]
    assert {d["stem"] for d in done if d["done"].endswith(name)} == {stem, f"{stem}-2"}
    first, second = (cv2.imread(str(out / "overlays" / f"{s}.png")) for s in (stem,
                                                                               f"{stem}-2"))
    assert first.shape == second.shape and not np.array_equal(first, second)
    # and their records apart: `image` is the file's name for both, `stem` its outputs'
    by_stem = {r["stem"] for r in records if r["image"] == name}
    assert by_stem <= {stem, f"{stem}-2"} and by_stem
    assert {r["stem"] for r in records} <= {d["stem"] for d in done}
    assert all(list(r)[:2] == ["image", "stem"] for r in records)
    record = json.loads((out / "run.json").read_text())
    import hashlib

    assert record["checkpoint_sha256"] == hashlib.sha256(
        (run / "best.pt").read_bytes()).hexdigest()
    assert record["thresholds"] == [60, 180] and record["all_classes"] is True


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_run_killed_mid_write_and_resumed_equals_an_uninterrupted_one(
        run, films, whole, tmp_path, command):
    out = tmp_path / "out"
    killed = _cli(_args(command, run, films, out, "--workers", "1"),
                  env={"WSLOC_KILL_AFTER_FILMS": "5"})  # SIGKILL halfway through film 6's lines
    assert killed.returncode == -9, killed.stderr[-2000:]
    text = (out / "boxes.jsonl").read_bytes()
    assert not text.endswith(b"\n")  # the kill cut a line
    assert text.count(b'"done"') == 5 and not (out / "boxes.json").exists()
    stray = out / "overlays" / ".stray.png.p0-1.wsloc-tmp.png"  # as a kill mid-PNG leaves
    stray.write_bytes(b"\x89PNG half")
    assert main(_args(command, run, films, out, "--workers", "2", "--resume")) == 1
    _same_outputs(whole[command], out)
    # the torn line and the records of the film it cut are gone; every film once
    lines = (out / "boxes.jsonl").read_text().splitlines()
    assert [json.loads(line)["i"] for line in lines if '"done"' in line] == list(range(12))
    # resuming a finished run does nothing more and changes nothing
    before = (out / "boxes.jsonl").read_bytes()
    assert main(_args(command, run, films, out, "--resume")) == 1
    assert (out / "boxes.jsonl").read_bytes() == before
    _same_outputs(whole[command], out)


def test_what_resume_does_again(run, films, whole, tmp_path):
    """A film changed since (mtime) is done again; the others are not; the result is what
    an uninterrupted run on the changed films writes."""
    mine = tmp_path / "films"
    shutil.copytree(films, mine)
    out = tmp_path / "out"
    assert main(_args("heatmap", run, mine, out)) == 1
    wide = mine / "b" / "wide.png"
    img = cv2.imread(str(wide), 0)
    cv2.imwrite(str(wide), np.ascontiguousarray(img[:, ::-1]))  # mirrored: other boxes
    assert main(_args("heatmap", run, mine, out, "--resume")) == 1
    done = [json.loads(line) for line in (out / "boxes.jsonl").read_text().splitlines()
            if '"done"' in line]
    assert [d["i"] for d in done] == list(range(12))  # rewritten in input order
    assert next(d for d in done if d["done"].endswith("wide.png"))["mtime_ns"] == \
        os.stat(wide).st_mtime_ns
    again = tmp_path / "again"
    assert main(_args("heatmap", run, mine, again)) == 1
    _same_outputs(again, out)
    assert (out / "boxes.json").read_text() != (whole["heatmap"] / "boxes.json").read_text()


def test_an_occupied_out_is_refused_naming_the_difference(run, films, whole, tmp_path, capsys):
    out = whole["heatmap"]
    assert main(_args("heatmap", run, films, out)) == 2
    assert (f"{out} is not empty: pass --resume to continue that run, or choose another --out"
            in capsys.readouterr().err)
    assert main(_args("heatmap", run, films, out, "--resume", "--min-probability", "0.4")) == 2
    assert "differs in: min_probability: 0.5 → 0.4" in capsys.readouterr().err
    ckpt = torch.load(run / "best.pt", weights_only=True)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key].add_(1e-3)
    torch.save(ckpt, tmp_path / "other.pt")
    args = _args("heatmap", run, films, out, "--resume")
    args[2] = str(tmp_path / "other.pt")
    assert main(args) == 2
    assert "differs in: checkpoint_sha256: " in capsys.readouterr().err
    assert main(_args("heatmap", run, films, out, "--resume", "--batch-size", "4")) == 2
    assert "batch_size: 3 → 4" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(_args("heatmap", run, films, foreign, "--resume")) == 2
    assert "not empty and holds no run.json" in capsys.readouterr().err
    assert main(_args("heatmap", run, films, tmp_path / "s", "--shard", "2/2")) == 2
    assert "--shard I/N needs 0 ≤ I < N, got '2/2'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_shards_merged_equal_one_process(run, films, whole, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args("heatmap", run, films, out, "--shard", "1/2", "--no-overlays")) == 1
    assert main(["merge", str(out)]) == 2
    assert "missing shard(s) 0/2" in capsys.readouterr().err
    assert not (out / "boxes.json").exists()
    killed = _cli(_args("heatmap", run, films, out, "--shard", "0/2", "--no-overlays"),
                  env={"WSLOC_KILL_AFTER_FILMS": "2"})
    assert killed.returncode == -9
    assert main(["merge", str(out)]) == 2
    assert "unfinished shard(s): " in capsys.readouterr().err
    assert main(_args("heatmap", run, films, out, "--shard", "0/2", "--no-overlays")) == 2
    assert "shard 0/2 ran in" in capsys.readouterr().err  # again without --resume
    assert main(_args("heatmap", run, films, out, "--shard", "0/2", "--no-overlays",
                      "--resume")) == 0  # the truncated film is shard 1's
    capsys.readouterr()
    assert main(["merge", str(out)]) == 1  # a film failed: listed, exit 1
    assert "1 input(s) could not be read" in capsys.readouterr().err
    assert (out / "boxes.json").read_text() == (whole["heatmap"] / "boxes.json").read_text()
    assert (out / "failed.txt").read_text() == (whole["heatmap"] / "failed.txt").read_text()
    assert {p.name for p in (out / "maps").iterdir()} == {
        p.name for p in (whole["heatmap"] / "maps").iterdir()}
    # a run into another shard count, or other settings, in the same OUT is refused
    assert main(_args("heatmap", run, films, out, "--shard", "0/3", "--no-overlays")) == 2
    assert "shards: 2 → 3" in capsys.readouterr().err
    # shards run apart (each its own OUT) merge into the first; made otherwise: refused
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(_args("heatmap", run, films, a, "--shard", "0/2")) == 0
    assert main(_args("heatmap", run, films, b, "--shard", "1/2")) == 1
    assert main(_args("heatmap", run, films, c, "--shard", "1/2", "--thresholds", "60")) == 1
    capsys.readouterr()
    assert main(["merge", str(a), str(c)]) == 2
    assert "thresholds: [60, 180] → [60]" in capsys.readouterr().err
    assert main(["merge", str(a), str(a)]) == 2
    assert "shard 0/2 is given twice" in capsys.readouterr().err
    assert main(["merge", str(a), str(b)]) == 1
    _same_outputs(whole["heatmap"], a)


def test_two_torchrun_ranks_write_what_one_process_does(run, films, whole, tmp_path):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "wsloc.cli",
           *_args("heatmap", run, films, out, "--workers", "0")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1, done.stderr[-3000:]  # a film failed: listed by rank 0
    assert "1 input(s) could not be read" in done.stderr
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["0-of-2", "1-of-2"]
    _same_outputs(whole["heatmap"], out)


def test_bad_inputs_are_listed_and_the_rest_processed(run, films, tmp_path, monkeypatch,
                                                      capsys):
    """A truncated, an empty and a non-image file, a symlink loop, a file that vanishes
    between listing and reading, 300 unreadable files: each a
    failure with its reason, in failed.txt and in its done record; exit code 1."""
    mine = tmp_path / "films"
    shutil.copytree(films, mine)
    (mine / "b" / "empty.png").write_bytes(b"")
    (mine / "b" / "notes.jpg").write_text("not a picture")
    (mine / "a" / "loop").symlink_to(mine)  # a/loop/a/loop/... for ever
    (mine / "c").mkdir()
    for k in range(300):
        (mine / "c" / f"bad{k:03d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(k))
    gone = mine / "a" / sorted(p.name for p in (mine / "a").glob("*.png"))[2]

    import wsloc.engine.heatmap as heatmap

    listed = heatmap.collect_inputs

    def list_then_lose(*args, **kwargs):
        files = listed(*args, **kwargs)
        gone.unlink()
        return files

    monkeypatch.setattr(heatmap, "collect_inputs", list_then_lose)
    out = tmp_path / "out"
    assert main(_args("heatmap", run, mine, out, "--workers", "1")) == 1
    err = capsys.readouterr().err
    assert "... and 285 more" in err and "305 input(s) could not be read" in err
    failed = dict(line.split("\t") for line in (out / "failed.txt").read_text().splitlines())
    assert len(failed) == 305
    assert failed[str(mine / "a" / "loop")].endswith(
        "a symlink loop (it leads back to a folder above it); not followed")
    assert failed[str(gone)] == f"{gone}: listed, then gone before it was read"
    assert failed[str(mine / "b" / "empty.png")].endswith("the file is empty")
    assert "cannot decode the image" in failed[str(mine / "b" / "notes.jpg")]
    assert "PNG is truncated" in failed[str(mine / "c" / "bad000.png")]
    done = [json.loads(line) for line in (out / "boxes.jsonl").read_text().splitlines()
            if '"done"' in line]
    assert {d["done"]: d["reason"] for d in done if d["status"] == "failed"} == failed
    ok = [d for d in done if d["status"] != "failed"]
    assert len(ok) == 10 and len(list((out / "overlays").iterdir())) == 10


def test_collect_inputs_follows_links_but_not_loops(tmp_path):
    from wsloc.engine.heatmap import collect_inputs

    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f.png").write_bytes(b"")
    (tmp_path / "data" / "x" / "g.png").write_bytes(b"")
    (tmp_path / "data" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "data" / "x" / "up").symlink_to(tmp_path / "data")
    problems = {}
    got = collect_inputs([tmp_path / "data"], problems)
    d = tmp_path / "data"
    assert got == [d / "linked" / "f.png", d / "x" / "g.png", d / "x" / "up"]
    assert list(problems) == [str(d / "x" / "up")]
    assert collect_inputs([tmp_path / "data"]) == got[:2]  # without the dict: left out


def test_unique_stems_are_stable_and_never_collide():
    from wsloc.engine.stream import unique_stems

    paths = [Path(p) for p in ("a/x.png", "b/x.png", "c/x-2.png", "d/X.dcm", "e/y.png")]
    assert unique_stems(paths) == ["x", "x-3", "x-2", "X-4", "y"]
    assert unique_stems(paths[:2]) == ["x", "x-2"]


def test_write_json_list_writes_what_json_dumps_does(tmp_path):
    from wsloc.engine.stream import write_json_list

    for records in ([], [{"a": 1}], [{"image": "é.png", "x": 0.1, "n": [1, {"k": None}]},
                                     {"b": True}]):
        with open(tmp_path / "f.json", "w") as f:
            assert write_json_list(f, iter(records)) == len(records)
        assert (tmp_path / "f.json").read_text() == json.dumps(records, indent=1) + "\n"


def test_a_part_drops_a_torn_tail_and_an_unfinished_film(tmp_path):
    from wsloc.engine.stream import PART, _Part

    def done(i, name):
        return json.dumps({"done": name, "i": i, "stem": name, "size": 1, "mtime_ns": 2,
                           "status": "boxes"}) + "\n"

    whole = '{"image": "a"}\n' + done(0, "a") + done(1, "b")
    (tmp_path / PART).write_text(whole + '{"image": "c"}\n' + '{"done": "c", "i"')
    part = _Part(tmp_path, "t", resume=True)
    part.close()
    assert (tmp_path / PART).read_text() == whole
    assert part.done == {("a", "a", 1, 2), ("b", "b", 1, 2)}


def test_each_finished_film_reaches_the_callback(run, films, tmp_path):
    """The hook a further output (e.g. DICOM) hangs on: per film, its source, shape,
    records and maps or masks."""
    from wsloc.engine.heatmap import run_heatmap
    from wsloc.engine.segment import run_segment

    seen = []
    summary = run_heatmap(run / "best.pt", [films], tmp_path / "h", all_classes=True,
                          overlays=False, progress=False, on_film=seen.append)
    boxes = json.loads((tmp_path / "h" / "boxes.json").read_text())
    assert len(seen) == summary["images"] == 11
    wide = next(r for r in seen if r.source.name == "wide.png")
    assert wide.shape == (70, 90) and wide.film.shape == (70, 90)
    assert wide.records == [b for b in boxes if b["image"] == "wide.png"]
    assert len(wide.heatmaps) == 8 and all(h.shape == (70, 90) for h in wide.heatmaps.values())
    masks = []
    run_segment(run / "best.pt", [films], tmp_path / "s", min_probability=0, progress=False,
                on_film=masks.append)
    one = next(r for r in masks if r.source.name == "wide.png")
    assert one.masks and one.records
    for label, m in one.masks.items():
        png = cv2.imread(str(tmp_path / "s" / "masks" / f"{one.stem}__{label}.png"), 0)
        assert np.array_equal(png > 0, m)
