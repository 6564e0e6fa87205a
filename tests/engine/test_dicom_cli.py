"""`wsloc heatmap/segment --dicom-out` and `--strict-dicom`, and the out-of-domain warning:
per DICOM film a SEG and an SR in OUT/dicom/ that highdicom opens on the film's own
geometry and that hold what the run wrote (its masks, its thresholded heatmaps, its boxes),
byte-equal after a SIGKILL and --resume; PNG inputs refused before any film; non-chest
DICOMs warned about or skipped; a synthetic-trained model on other films says so."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from tests.data.test_dicom import write_dicom
from tests.engine.tiny import tiny_run
from tests.test_dicom_out import make_film
from wsloc.boxes import heatmap_masks
from wsloc.cli import main
from wsloc.dicom_out import finding_code
from wsloc.engine.heatmap import run_heatmap
from wsloc.engine.segment import run_segment

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"heatmap": ["--all-classes"], "segment": ["--min-probability", "0"]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with tiny_run(tmp_path_factory, "dicomcli") as run_dir:
        yield run_dir


def _synthetic_images(run):
    return sorted(next((run.parent / "cache" / "wsloc").glob("synthetic-*")).glob(
        "images/*.png"))


def _film_pixels(run, k, shape):
    """A phantom of the synthetic set as 12-bit DICOM pixels of ``shape``: the model sees
    chest-like content, so it finds something."""
    img = cv2.imread(str(_synthetic_images(run)[k]), 0)
    return (cv2.resize(img, shape[::-1]).astype(np.uint16) * 16).astype(np.uint16)


def _chest_film(path, run, k, rows=97, cols=131, **tags):
    path = make_film(path, rows, cols, **tags)
    ds = pydicom.dcmread(path)
    ds.PixelData = _film_pixels(run, k, (rows, cols)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def films(run, tmp_path_factory):
    """Generated chest films: a DX with a Frame of Reference, a CR without, a third film
    named like the first in another folder (its outputs apart: film-2)."""
    root = tmp_path_factory.mktemp("dicomfilms")
    (root / "a").mkdir()
    (root / "b").mkdir()
    _chest_film(root / "a" / "film.dcm", run, 0)
    _chest_film(root / "a" / "cr.dcm", run, 1, 80, 64, modality="CR", frame_of_reference=False)
    _chest_film(root / "b" / "film.dcm", run, 2, 64, 96)
    return root


def _args(command, run, inputs, out, *extra):
    return [command, "--checkpoint", str(run / "best.pt"), *map(str, inputs), "--out",
            str(out), "--batch-size", "2", *COMMANDS[command], *extra]


def seg_masks(path, film) -> dict[str, np.ndarray]:
    """Label → mask of a SEG, through highdicom, checked to be on the film's geometry."""
    seg = hd.seg.segread(path)
    assert (seg.Rows, seg.Columns) == (film.Rows, film.Columns)
    assert seg.get_source_image_uids() == [
        (film.StudyInstanceUID, film.SeriesInstanceUID, film.SOPInstanceUID)]
    numbers = [s.SegmentNumber for s in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance([film.SOPInstanceUID],
                                               segment_numbers=numbers)
    return {seg.get_segment_description(n).segment_label: pixels[0, ..., k].astype(bool)
            for k, n in enumerate(numbers)}


def check_sr(path, film, records):
    """The SR's boxes are the film's boxes.json records: corners, finding, probability."""
    sr = hd.sr.srread(path)
    groups = sr.content.get_planar_roi_measurement_groups(
        referenced_sop_instance_uid=film.SOPInstanceUID)
    assert len(groups) == len(records) > 0
    for group, r in zip(groups, records):
        x1, y1, x2, y2 = r["x1"], r["y1"], r["x2"], r["y2"]
        np.testing.assert_array_equal(
            group.roi.value, [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]])
        assert group.finding_type == finding_code(r["class"])
        (p,) = group.get_measurements(name=codes.DCM.Probability)
        assert p.value == pytest.approx(r["probability"], abs=1e-6)


def _algorithm(path):
    seg = pydicom.dcmread(path, stop_before_pixels=True)
    return seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]


def _check_run(command, run, out, expected_masks):
    """Every film of ``out``: its SEG holds ``expected_masks[stem]`` (the non-empty ones),
    its SR the film's records; the checkpoint's hash among the SEG's parameters."""
    import hashlib

    records = json.loads((out / "boxes.json").read_text())
    done = [json.loads(line) for line in (out / "boxes.jsonl").read_text().splitlines()
            if '"done"' in line]
    digest = hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    assert json.loads((out / "run.json").read_text())["dicom_out"] is True
    for d in done:
        assert d["status"] != "failed", d
        film = pydicom.dcmread(d["done"], stop_before_pixels=True)
        stem, name = d["stem"], Path(d["done"]).name
        mine = [r for r in records if r["image"] == name
                and (r["width"], r["height"]) == (film.Columns, film.Rows)]
        present = {k: m for k, m in expected_masks[stem].items() if m.any()}
        assert present, stem  # the test sees something to compare
        got = seg_masks(out / "dicom" / f"{stem}.seg.dcm", film)
        assert sorted(got) == sorted(present)
        for label in present:
            np.testing.assert_array_equal(got[label], present[label], err_msg=label)
        check_sr(out / "dicom" / f"{stem}.sr.dcm", film, mine)
        assert f"checkpoint_sha256={digest}" in _algorithm(
            out / "dicom" / f"{stem}.seg.dcm").AlgorithmParameters
    assert sorted(p.name for p in (out / "dicom").iterdir()) == sorted(
        f"{d['stem']}.{k}.dcm" for d in done for k in ("seg", "sr"))


def test_heatmap_dicom_out_holds_the_thresholded_heatmaps_and_the_boxes(run, films,
                                                                         tmp_path):
    out = tmp_path / "out"
    assert main(_args("heatmap", run, [films], out, "--dicom-out", "--save-maps")) == 0
    expected = {}
    for p in (out / "maps").iterdir():
        stem, label = p.stem.split("__")
        expected.setdefault(stem, {})[label] = heatmap_masks(np.load(p), 60).astype(bool)
    assert sorted(expected) == ["cr", "film", "film-2"]
    _check_run("heatmap", run, out, expected)
    assert "seg=heatmap > 60/255" in _algorithm(out / "dicom" / "film.seg.dcm") \
        .AlgorithmParameters


def test_segment_dicom_out_holds_its_masks_and_boxes(run, films, tmp_path):
    out = tmp_path / "out"
    assert main(_args("segment", run, [films], out, "--dicom-out")) == 0
    expected = {}
    for p in (out / "masks").iterdir():
        stem, label = p.stem.split("__")
        expected.setdefault(stem, {})[label] = cv2.imread(str(p), 0) > 0
    assert sorted(expected) == ["cr", "film", "film-2"]
    _check_run("segment", run, out, expected)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_dicom_out_on_a_real_cr_chest_film(run, tmp_path, command):
    """RG1_UNCR.dcm (pydicom-data): a real 1955 × 1841 CR chest film. Its SEG is on the
    film's own 1955 × 1841 grid, holding what the run made, its SR the run's boxes."""
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data (the test extra with pydicom's large films) is missing")
    seen = {}

    def keep(result):  # after the DICOM files are written: what the SEG must hold
        maps = result.masks if command == "segment" else {
            k: heatmap_masks(h, 60).astype(bool) for k, h in result.heatmaps.items()}
        seen[result.stem] = maps
        assert result.dicom is not None and result.dicom.SOPInstanceUID  # the worker's

    runner = run_heatmap if command == "heatmap" else run_segment
    options = {"all_classes": True} if command == "heatmap" else {"min_probability": 0.0}
    with pytest.warns(UserWarning, match="1 of 1 input films are not synthetic phantoms"):
        summary = runner(run / "best.pt", [path], tmp_path / "out", batch_size=1,
                         overlays=False, progress=False, workers=0, on_film=keep,
                         dicom_out=True, **options)
    assert summary["images"] == 1 and not summary["failed"]
    assert "trained on wsloc's synthetic phantoms" in summary["warnings"][0]
    film = pydicom.dcmread(path, stop_before_pixels=True)
    assert (film.Rows, film.Columns) == (1955, 1841)
    _check_run(command, run, tmp_path / "out", seen)


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "wsloc.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _every_file(out):
    return {str(p.relative_to(out)): p.read_bytes() for sub in ("dicom", "masks", "overlays")
            for p in sorted((out / sub).glob("*"))}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_killed_dicom_out_run_resumed_writes_the_same_bytes(run, tmp_path, command):
    """Killed with SIGKILL mid-run, resumed: boxes.json and every SEG, SR, mask and overlay
    byte for byte an uninterrupted run's (no clock, no random UID in the DICOM files)."""
    root = tmp_path / "films"
    root.mkdir()
    for k in range(5):
        _chest_film(root / f"f{k}.dcm", run, k, 60 + 4 * k, 72)
    fewer = ["--thresholds", "120"] if command == "heatmap" else []  # fewer boxes: faster SRs
    whole = tmp_path / "whole"
    assert main(_args(command, run, [root], whole, "--dicom-out", *fewer)) == 0
    out = tmp_path / "out"
    killed = _cli(_args(command, run, [root], out, "--dicom-out", "--workers", "0", *fewer),
                  env={"WSLOC_KILL_AFTER_FILMS": "3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "boxes.json").exists() and len(list((out / "dicom").iterdir())) >= 6
    assert main(_args(command, run, [root], out, "--dicom-out", "--resume", *fewer)) == 0
    assert (out / "boxes.json").read_text() == (whole / "boxes.json").read_text()
    a, b = _every_file(whole), _every_file(out)
    assert sorted(a) == sorted(b) and len([k for k in a if k.startswith("dicom/")]) == 10
    for name in a:
        assert a[name] == b[name], name
    # resuming a finished run rewrites nothing; without --dicom-out it is another run
    before = {p: p.stat().st_mtime_ns for p in (out / "dicom").iterdir()}
    assert main(_args(command, run, [root], out, "--dicom-out", "--resume", *fewer)) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "dicom").iterdir()} == before
    assert main(_args(command, run, [root], out, "--resume", *fewer)) == 2


@pytest.mark.parametrize("command", list(COMMANDS))
def test_dicom_out_refuses_png_inputs_before_any_film(run, films, tmp_path, capsys,
                                                       command):
    mixed = tmp_path / "mixed"
    shutil.copytree(films, mixed)
    shutil.copy(_synthetic_images(run)[0], mixed / "b" / "chest.png")
    out = tmp_path / "out"
    assert main(_args(command, run, [mixed], out, "--dicom-out")) == 2
    err = capsys.readouterr().err
    assert f"--dicom-out needs DICOM inputs, and 1 of 4 are not (first: {mixed}/b/chest.png, " \
           "a PNG file)" in err
    assert "must reference its source film's Study, Series and SOP Instance UIDs" in err
    assert not out.exists()  # nothing processed, no folder made


def test_a_film_whose_header_cannot_be_referenced_is_a_listed_failure(run, films, tmp_path,
                                                                      capsys):
    """A DICOM without Study/Series Instance UIDs (wsloc reads its pixels, but a SEG cannot
    reference it): listed with the reason, nothing of its own written, the rest done."""
    mine = tmp_path / "films"
    shutil.copytree(films, mine)
    write_dicom(mine / "b" / "bare.dcm", _film_pixels(run, 3, (64, 64)))
    out = tmp_path / "out"
    assert main(_args("segment", run, [mine], out, "--dicom-out")) == 1
    failed = dict(line.split("\t") for line in (out / "failed.txt").read_text().splitlines())
    assert list(failed) == [str(mine / "b" / "bare.dcm")]
    assert failed[str(mine / "b" / "bare.dcm")].startswith("--dicom-out: ")
    assert "lacks StudyInstanceUID, SeriesInstanceUID" in failed[str(mine / "b" / "bare.dcm")]
    assert not any(p.name.startswith("bare") for sub in ("masks", "overlays", "dicom")
                   for p in (out / sub).iterdir())
    assert len(list((out / "dicom").iterdir())) == 6
    assert "1 input(s) could not be read" in capsys.readouterr().err


def _not_chest(root, run):
    _chest_film(root / "ct.dcm", run, 4, Modality="CT")
    _chest_film(root / "knee.dcm", run, 5, BodyPartExamined="KNEE")
    _chest_film(root / "chest.dcm", run, 6)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_strict_dicom_skips_a_film_that_is_not_a_chest_radiograph(run, tmp_path, capsys,
                                                                  command):
    root = tmp_path / "films"
    root.mkdir()
    _not_chest(root, run)
    out = tmp_path / "out"
    assert main(_args(command, run, [root], out, "--strict-dicom", "--dicom-out")) == 1
    err = capsys.readouterr().err
    assert "2 input(s) could not be read" in err
    failed = dict(line.split("\t") for line in (out / "failed.txt").read_text().splitlines())
    assert sorted(failed) == [str(root / "ct.dcm"), str(root / "knee.dcm")]
    assert failed[str(root / "ct.dcm")] == (
        f"skipped (--strict-dicom): {root / 'ct.dcm'}: the DICOM says this is not a chest "
        "radiograph: Modality CT (a chest radiograph is CR/DX/DR); the model was trained on "
        "chest films and its output here means little")
    assert "Body Part Examined KNEE (not CHEST)" in failed[str(root / "knee.dcm")]
    assert sorted(p.name for p in (out / "dicom").iterdir()) == ["chest.seg.dcm",
                                                                 "chest.sr.dcm"]
    assert json.loads((out / "run.json").read_text())["strict_dicom"] is True


def test_without_strict_dicom_such_a_film_is_processed_with_its_warning(run, tmp_path,
                                                                         capsys):
    root = tmp_path / "films"
    root.mkdir()
    _not_chest(root, run)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the domain warning: its own test
        assert main(_args("heatmap", run, [root], out)) == 0
    err = capsys.readouterr().err
    assert f"warning: {root / 'ct.dcm'}: the DICOM says this is not a chest radiograph" in err
    assert f"warning: {root / 'knee.dcm'}: the DICOM says" in err
    assert "3 film(s) with warnings (listed in" in err  # the third: out of domain
    done = {Path(d["done"]).name: d for d in map(
        json.loads, (out / "boxes.jsonl").read_text().splitlines()) if "done" in d}
    assert {n: d["status"] for n, d in done.items()} == {
        "ct.dcm": "boxes", "knee.dcm": "boxes", "chest.dcm": "boxes"}
    assert "Modality CT" in done["ct.dcm"]["warnings"][0]
    assert done["ct.dcm"]["warnings"][1].startswith("out of domain: ")
    assert len(done["chest.dcm"]["warnings"]) == 1  # out of domain only
    lines = (out / "warnings.txt").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith(f"{root / 'chest.dcm'}\tout of domain")


def test_at_most_ten_such_warnings_are_printed_then_a_count(run, tmp_path, capsys):
    root = tmp_path / "films"
    root.mkdir()
    ct = _chest_film(root / "ct00.dcm", run, 0, 32, 32, Modality="CT")
    for k in range(1, 13):
        shutil.copy(ct, root / f"ct{k:02d}.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_args("heatmap", run, [root], tmp_path / "out", "--no-overlays")) == 0
    err = capsys.readouterr().err
    assert err.count("the DICOM says this is not a chest radiograph") == 10
    assert "... and 3 more film(s) whose DICOM says they are not chest radiographs" in err


def _yellow(panel):
    """How many pixels of an overlay panel are the notes' yellow."""
    return int(np.all(np.abs(panel.astype(int) - (0, 255, 255)) < 60, axis=-1).sum())


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_synthetic_model_on_other_films_says_so_and_inside_its_set_not(run, tmp_path,
                                                                         command):
    runner = run_heatmap if command == "heatmap" else run_segment
    inside = _synthetic_images(run)[0]  # a phantom of the set it was trained on
    outside = tmp_path / "mine" / "chest.png"
    outside.parent.mkdir()
    shutil.copy(inside, outside)  # the same pixels, outside any synthetic set
    with pytest.warns(UserWarning) as caught:
        summary = runner(run / "best.pt", [outside], tmp_path / "out", progress=False,
                         workers=0)
    (text,) = [str(w.message) for w in caught if "trained on" in str(w.message)]
    assert text.startswith(f"wsloc {command}: this model was trained on wsloc's synthetic "
                           "phantoms (generator v")
    assert f"1 of 1 input films are not synthetic phantoms (first: {outside})" in text
    assert summary["warnings"] == [text] and summary["warned"] == 1
    (done,) = [json.loads(line) for line in (tmp_path / "out" / "boxes.jsonl").read_text()
               .splitlines() if '"done"' in line]
    assert done["warnings"] == [
        "out of domain: the model was trained on " + text.split("trained on ")[1].split(
            " and ")[0] + ", and this film is not one of them; its results here mean nothing"]
    assert (tmp_path / "out" / "warnings.txt").read_text() == (
        f"{outside}\t{done['warnings'][0]}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the set: no warning at all
        quiet = runner(run / "best.pt", [inside], tmp_path / "in", progress=False, workers=0)
    assert quiet["warnings"] == [] and quiet["warned"] == 0
    (done,) = [json.loads(line) for line in (tmp_path / "in" / "boxes.jsonl").read_text()
               .splitlines() if '"done"' in line]
    assert "warnings" not in done and not (tmp_path / "in" / "warnings.txt").exists()
    # the overlay's caption carries the tag (yellow, under the film's name): the same film
    # otherwise gives the same overlay, but for the first panel's captions
    warned, plain = (cv2.imread(str(tmp_path / d / "overlays" / f"{stem}.png"))
                     for d, stem in (("out", "chest"), ("in", inside.stem)))
    width = cv2.imread(str(inside), 0).shape[1]  # the first panel: the film
    assert warned.shape == plain.shape
    np.testing.assert_array_equal(warned[:, width:], plain[:, width:])
    assert _yellow(warned[:, :width]) > 20 and _yellow(plain[:, :width]) == 0
