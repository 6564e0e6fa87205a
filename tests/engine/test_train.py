import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from wsloc.cli import main
from wsloc.config import load_config
from wsloc.data.nih import load_metadata
from wsloc.data.synthetic import ensure_synthetic
from wsloc.engine import common as common_mod
from wsloc.engine.checkpoint import load_checkpoint
from wsloc.engine.evaluate import evaluate
from wsloc.engine.train import train

TINY = ["data.synthetic.n=48", "data.synthetic.size=64", "data.image_size=64",
        "data.num_workers=0", "model.transition_channels=16", "train.epochs=2",
        "train.batch_size=8",
        "data.train_transform=train"]  # the tiny runs these tests were written on: no flips


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSLOC_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / name)["model"]


def test_train_writes_a_complete_run(cache):
    cfg = load_config(None, TINY)
    run = train(cfg, out=cache / "run", progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.yaml", "history.jsonl",
                                                     "last.pt"]
    assert load_config(run / "config.yaml") == cfg  # the resolved config, reloadable
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"] == cfg and len(ckpt["classes"]) == 8
    with pytest.raises(FileExistsError, match="a run never overwrites"):
        train(cfg, out=run, progress=False)


def test_resume_continues_exactly(cache, monkeypatch):
    cfg = load_config(None, TINY + ["train.epochs=3"])
    full = train(cfg, out=cache / "full", progress=False)

    calls = {"n": 0}
    real = common_mod.predict

    def interrupt_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the run dies during epoch 2's validation
        return real(*args, **kwargs)

    monkeypatch.setattr("wsloc.engine.train.predict", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=cache / "cut", progress=False)
    assert load_checkpoint(cache / "cut" / "last.pt")["epoch"] == 1  # lost only epoch 2
    monkeypatch.setattr("wsloc.engine.train.predict", real)
    assert main(["train", "--resume", str(cache / "cut")]) == 0
    a, b = _weights(full), _weights(cache / "cut")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    drop = ("seconds",)
    strip = lambda hist: [{k: v for k, v in h.items() if k not in drop} for h in hist]  # noqa
    assert strip(load_checkpoint(cache / "cut" / "last.pt")["history"]) == strip(
        load_checkpoint(full / "last.pt")["history"])


def test_evaluate_writes_metrics_roc_and_table(cache, capsys):
    run = train(load_config(None, TINY), out=cache / "run", progress=False)
    with pytest.warns(UserWarning):  # a tiny test split lacks some findings: NaN, warned
        result = evaluate(run / "best.pt", progress=False)
    out = run / "eval-test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == result["images"] > 0
    finite = [v for v in metrics["auc"].values() if v is not None]
    assert finite and all(0 <= v <= 1 for v in finite)
    assert metrics["mean_auc"] == pytest.approx(np.mean(finite))
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "results.md").read_text()
    assert "| ResNet-50, ChestX-ray8 (Wang et al. 2017) | 0.7069 | 0.8141 |" in table
    assert "| Atel | Card |" in table
    # the split has boxes: the paper's localization protocol, its tables and boxes.json
    assert "| T(IoBB) |" in table and "| T(IoU) |" in table and "| pointing game |" in table
    assert "| | 8-class ResNet-50 (Wang et al. 2017) Acc. |" in table
    loc = json.loads((out / "localization.json").read_text())
    assert set(loc["iobb"]) == {"0.1", "0.25", "0.5", "0.75", "0.9"}
    assert set(loc["iou"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"}
    # the same boxes scored by `wsloc score-boxes` give the same figures
    root = next((cache / "cache" / "wsloc").glob("synthetic-*"))
    capsys.readouterr()
    assert main(["score-boxes", "--pred", str(out / "boxes.json"), "--gt",
                 str(root / "BBox_List_2017.csv"), "--images", str(root / "test_list.txt"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for kind in ("iou", "iobb", "afp_iou", "afp_iobb"):
        assert again[kind] == loc[kind]
    assert again["pointing"] == loc["pointing"]
    # evaluated again: a new folder, never over the first
    with pytest.warns(UserWarning):
        again = evaluate(run / "best.pt", progress=False)
    assert again["out"].endswith("eval-test-2")


def test_evaluate_rejects_a_bad_checkpoint(cache, capsys):
    (cache / "x.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(cache / "x.pt")]) == 2
    assert "not a wsloc checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(cache / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def _even_synthetic(cache, batch):
    """A synthetic set whose train split divides into whole batches (so 1 and 2 processes
    see exactly the same batches)."""
    for n in range(40, 90, 2):
        root = ensure_synthetic(n=n, size=64, seed=0, progress=False)
        if len(load_metadata(root).by_split("train")) % batch == 0:
            return n
    raise AssertionError("no suitable n")


def test_two_processes_match_one(cache):
    n = _even_synthetic(cache, 8)
    # SGD: Adam's m/√v would turn rounding-level gradient differences into full steps
    args = TINY + [f"data.synthetic.n={n}", "data.train_transform=eval",
                   "model.freeze_bn=true", "train.loss=bce", "train.device=cpu",
                   "train.optimizer=sgd", "train.lr=0.05"]
    one = train(load_config(None, args), out=cache / "one", progress=False)
    env = {"WSLOC_CACHE": str(cache / "cache"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "wsloc.cli", "train",
           "--out", str(cache / "two"), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = _weights(one), _weights(cache / "two")
    for key in a:
        # the same steps; only fp32 summation order differs (seen: 1e-4 after 10 steps)
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-3, msg=key)
    h1 = load_checkpoint(one / "last.pt")["history"]
    h2 = load_checkpoint(cache / "two" / "last.pt")["history"]
    assert h1[-1]["val_mean_auc"] == pytest.approx(h2[-1]["val_mean_auc"], abs=1e-3)


def _one_film_dataset(cfg):
    """The train split with every record replaced by its first: any difference between two
    loaders' batches can only come from augmentation."""
    from wsloc.engine.common import data_root_of, make_dataset

    ds = make_dataset(cfg, data_root_of(cfg, progress=False), "train", "train")
    ds.records = [ds.records[0]] * 16
    return ds


@pytest.mark.parametrize("workers", [0, 2])
def test_each_rank_draws_its_own_augmentations(cache, workers):
    from wsloc.engine.distributed import Dist
    from wsloc.engine.train import _start_epoch, _train_loader

    cfg = load_config(None, TINY + [f"data.num_workers={workers}"])

    def first_batch(rank, epoch=0):
        ds = _one_film_dataset(cfg)
        loader = _train_loader(ds, cfg, Dist(rank=rank, world=2))
        _start_epoch(loader, cfg["train"]["seed"], rank, epoch)
        return next(iter(loader))["image"]

    rank0, rank1 = first_batch(0), first_batch(1)
    assert not torch.equal(rank0, rank1)  # two ranks: two augmentation streams
    assert torch.equal(rank0, first_batch(0))  # a resumed rank 0 repeats its own stream
    assert not torch.equal(rank0, first_batch(0, epoch=1))  # and each epoch is new


def test_each_rank_draws_its_own_model_samples(cache):
    """Stochastic pooling samples from torch's global generator: each rank gets its own
    stream, and a run resumed at an epoch draws that epoch's samples again."""
    from wsloc.engine.distributed import Dist
    from wsloc.engine.train import _start_epoch, _train_loader
    from wsloc.ops import StochasticPool2d

    cfg = load_config(None, TINY)
    pool = StochasticPool2d(2, 2).train()
    x = torch.rand(2, 4, 8, 8)

    def pooled(rank, epoch=0):
        loader = _train_loader(_one_film_dataset(cfg), cfg, Dist(rank=rank, world=2))
        _start_epoch(loader, cfg["train"]["seed"], rank, epoch)
        return pool(x)

    rank0 = pooled(0)
    assert not torch.equal(rank0, pooled(1))
    assert torch.equal(rank0, pooled(0))
    assert not torch.equal(rank0, pooled(0, epoch=1))


def test_without_validation_best_is_the_last_epoch(cache, capsys):
    run = train(load_config(None, TINY + ["data.val_fraction=0"]), out=cache / "run",
                progress=False)
    out = capsys.readouterr().out
    assert "no validation images" in out and "best.pt = last" in out
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["epoch"] == last["epoch"] == 2
    for key in last["model"]:
        assert torch.equal(best["model"][key], last["model"][key])
    with pytest.warns(UserWarning):  # the tiny test split lacks some findings
        assert evaluate(run / "best.pt", progress=False)["images"] > 0


def test_nan_validation_scores_are_a_divergence(cache, monkeypatch):
    real = common_mod.predict

    def nan_scores(*args, **kwargs):
        scores, labels = real(*args, **kwargs)
        scores[:, 2] = np.nan
        return scores, labels

    monkeypatch.setattr("wsloc.engine.train.predict", nan_scores)
    with pytest.raises(FloatingPointError, match=r"epoch 1: the model has diverged: its "
                                                 r"validation scores for Effusion are NaN"):
        train(load_config(None, TINY), out=cache / "run", progress=False)


def test_a_learned_r_gets_its_own_lr_and_no_weight_decay():
    from wsloc.engine.train import _optimizer
    from wsloc.models import build_model

    cfg = load_config(None, ["model.learn_r=true", "train.r_lr=0.05"])
    model = build_model(cfg["model"], 8)
    opt = _optimizer(cfg, model)
    weights, sharp = opt.param_groups
    assert sharp["params"] == [model.pool.log_r] and sharp["lr"] == 0.05
    assert sharp["weight_decay"] == 0.0 and weights["weight_decay"] == cfg["train"]["weight_decay"]
    assert len(weights["params"]) == len(list(model.parameters())) - 1
    assert weights["lr"] == cfg["train"]["lr"]
    # without train.r_lr, r learns at the weights' lr; without learn_r there is one group
    cfg = load_config(None, ["model.learn_r=true"])
    assert [g["lr"] for g in _optimizer(cfg, build_model(cfg["model"], 8)).param_groups] == [
        1e-3, 1e-3]
    cfg = load_config(None)
    assert len(_optimizer(cfg, build_model(cfg["model"], 8)).param_groups) == 1


def test_the_background_term_joins_the_loss_only_when_weighted(cache, monkeypatch):
    import wsloc.engine.train as train_mod

    seen = []

    def spy(maps):
        value = real(maps)
        seen.append((tuple(maps.shape), value.item()))
        return value

    real = train_mod.background_penalty
    monkeypatch.setattr(train_mod, "background_penalty", spy)
    plain = train(load_config(None, TINY + ["train.epochs=1", "train.background_weight=0"]),
                  out=cache / "plain", progress=False)
    assert seen == []  # weight 0: the term is never computed
    weighted = train(load_config(None, TINY + ["train.epochs=1", "train.background_weight=2"]),
                     out=cache / "weighted", progress=False)
    assert seen and all(shape[1:] == (8, 16, 16) for shape, _ in seen)  # [N, C, S, S]
    assert all(value > 0 for _, value in seen)
    # the same seed and data: only the term can make the weights differ (runs are exact)
    a, b = _weights(plain), _weights(weighted)
    assert any(not torch.equal(a[k], b[k]) for k in a)
