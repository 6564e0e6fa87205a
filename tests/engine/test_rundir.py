import json

import pytest

from wsloc.engine.rundir import RunMismatch, claim, differences, write_atomic


def test_claim_records_continues_and_refuses(tmp_path):
    out, resumed = claim(tmp_path / "o", {"a": 1, "b": {"c": [1, 2]}}, "thing")
    assert not resumed
    assert json.loads((out / "run.json").read_text()) == {"a": 1, "b": {"c": [1, 2]}}
    assert claim(out, {"a": 1, "b": {"c": [1, 2]}}, "thing") == (out, True)
    with pytest.raises(RunMismatch, match=r"b\.c: \[1, 2\] → \[1, 3\]; d: \(absent\) → 4"):
        claim(out, {"a": 1, "b": {"c": [1, 3]}, "d": 4}, "thing")
    grows = lambda old, new: new["a"] >= old["a"]  # noqa: E731
    assert claim(out, {"a": 2, "b": {"c": [1, 2]}}, "thing", extends=grows) == (out, True)
    assert json.loads((out / "run.json").read_text())["a"] == 2
    with pytest.raises(RunMismatch, match="a: 2 → 1"):
        claim(out, {"a": 1, "b": {"c": [1, 2]}}, "thing", extends=grows)


def test_a_folder_of_other_files_is_refused(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("x")
    with pytest.raises(RunMismatch, match="not empty and holds no run.json"):
        claim(tmp_path / "o", {"a": 1}, "thing")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["mine.txt"]


def test_write_atomic_replaces_whole(tmp_path):
    path = tmp_path / "f.txt"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # the mode open() gives under this umask, not mkstemp's 0600
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    plain.unlink()
    assert differences({"x": 1}, {"x": 1}) == []


def test_replacing_writes_whole_or_not_at_all(tmp_path):
    import numpy as np

    from wsloc.engine.rundir import remove_temps, replacing

    path = tmp_path / "m.npy"
    with replacing(path, "t1") as tmp:
        assert tmp.name.startswith(".") and tmp.suffix == ".npy"  # np.save keeps the name
        np.save(tmp, np.arange(3))
    assert np.array_equal(np.load(path), np.arange(3))
    with pytest.raises(RuntimeError), replacing(path, "t1") as tmp:
        np.save(tmp, np.arange(5))
        raise RuntimeError("killed mid-way")
    assert np.array_equal(np.load(path), np.arange(3))  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.npy"]
    with pytest.raises(OSError, match="the writer wrote nothing"), replacing(path):
        pass
    for tag in ("t1", "t2"):  # what kills leave behind: each writer clears its own
        (tmp_path / f".x.png.{tag}.wsloc-tmp.png").write_bytes(b"half")
    assert remove_temps(tmp_path, "t1") == 1
    assert remove_temps(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.npy"]
