import json
import shutil

import pytest

from wsloc.config import load_config
from wsloc.engine.checkpoint import load_checkpoint
from wsloc.engine.domain import (
    checkpoint_domain,
    describe,
    domain_warning,
    film_domain,
    training_domain,
)
from wsloc.engine.evaluate import evaluate
from wsloc.engine.train import train

TINY = ["data.synthetic.n=48", "data.synthetic.size=64", "data.image_size=64",
        "data.num_workers=0", "model.transition_channels=16", "train.epochs=1",
        "train.batch_size=8", "data.train_transform=train"]


def _synth_root(tmp_path, name="set", version=3):
    root = tmp_path / name
    (root / "images").mkdir(parents=True)
    (root / "synth.json").write_text(json.dumps({"version": version, "n": 10, "size": 64,
                                                 "seed": 7}))
    return root


def test_training_domain_reads_the_synthetic_record(tmp_path):
    assert training_domain(_synth_root(tmp_path)) == {
        "kind": "synthetic", "generator_version": 3, "n": 10, "size": 64, "seed": 7}
    (tmp_path / "nih").mkdir()
    assert training_domain(tmp_path / "nih") == {"kind": "films", "root": "nih"}


def test_checkpoints_from_before_the_record_are_inferred_from_their_config():
    cfg = load_config(None, [])
    assert checkpoint_domain({"config": cfg})["kind"] == "synthetic"  # data.root: null
    cfg["data"]["root"] = "/nowhere/nih"
    assert checkpoint_domain({"config": cfg}) == {"kind": "films", "root": "nih"}
    recorded = {"kind": "films", "root": "mine"}
    assert checkpoint_domain({"config": cfg, "domain": recorded}) is recorded


def test_film_domain_by_the_set_above_and_the_file_kind(tmp_path):
    root = _synth_root(tmp_path)
    (root / "images" / "a.png").write_bytes(b"")
    (root / "images" / "b.dcm").write_bytes(b"")
    (tmp_path / "mine.png").write_bytes(b"")
    assert film_domain(root / "images" / "a.png") == "synthetic"
    assert film_domain(root / "images" / "b.dcm") == "films"  # the generator writes no DICOM
    assert film_domain(tmp_path / "mine.png") == "films"


def test_the_warning_counts_the_films_outside_and_names_the_first(tmp_path):
    root = _synth_root(tmp_path)
    inside = root / "images" / "a.png"
    outside = [tmp_path / "x.png", tmp_path / "y.dcm"]
    synthetic = {"kind": "synthetic", "generator_version": 3}
    assert domain_warning(synthetic, [inside]) is None
    text = domain_warning(synthetic, [inside, *outside])
    assert "2 of 3 input films are not synthetic phantoms" in text
    assert str(outside[0]) in text and "wsloc's synthetic phantoms (generator v3)" in text
    real = {"kind": "films", "root": "nih"}
    assert domain_warning(real, outside) is None
    assert "1 of 1 input films are synthetic phantoms" in domain_warning(real, [inside])
    # a data root (evaluate) is judged by its synth.json
    assert domain_warning(synthetic, data_root=root) is None
    assert "holds real films" in domain_warning(synthetic, data_root=tmp_path)
    assert "holds synthetic phantoms" in domain_warning(real, data_root=root)
    assert describe(real) == "real films (nih)"


def test_training_records_the_domain_and_evaluate_warns_off_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WSLOC_CACHE", str(tmp_path / "cache"))
    run = train(load_config(None, TINY), out=tmp_path / "run", progress=False)
    domain = load_checkpoint(run / "best.pt")["domain"]
    assert domain["kind"] == "synthetic" and domain["n"] == 48 and domain["size"] == 64
    set_root = next((tmp_path / "cache" / "wsloc").glob("synthetic-*"))
    assert domain["generator_version"] == json.loads((set_root / "synth.json").read_text())[
        "version"]
    # the same films without their synth.json: a folder of real films, as far as anyone knows
    real = tmp_path / "real"
    shutil.copytree(set_root, real)
    (real / "synth.json").unlink()
    with pytest.warns(UserWarning) as caught:
        result = evaluate(run / "best.pt", data_root=real, progress=False, masks=False)
    texts = [str(w.message) for w in caught]
    assert any("trained on wsloc's synthetic phantoms" in t and str(real) in t for t in texts)
    assert "holds real films" in result["domain_warning"]
    assert "**Warning:** this model was trained on" in (
        tmp_path / "run" / "eval-test" / "results.md").read_text()
    with pytest.warns(UserWarning) as caught:  # on its own kind of data: no such warning
        result = evaluate(run / "best.pt", progress=False, masks=False)
    assert "domain_warning" not in result
    assert not any("trained on" in str(w.message) for w in caught)
