"""``wsloc train``: one process, or many through ``torchrun`` (DistributedDataParallel)."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wsloc.config import dump
from wsloc.data import collate
from wsloc.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from wsloc.engine.common import data_root_of, make_dataset, predict
from wsloc.engine.distributed import Dist, setup
from wsloc.engine.domain import training_domain
from wsloc.losses import background_penalty, build_loss
from wsloc.metrics import compute_auc, mean_auc
from wsloc.models import build_model

__all__ = ["train"]


def epoch_seeds(seed: int, rank: int, epoch: int) -> tuple[int, int]:
    """The seeds of one rank's augmentations and of its model's random draws in one epoch:
    derived from the run's seed alone, so a resumed run repeats them exactly, and different
    on every rank, so N processes draw N different streams (not N copies of one)."""
    augmentation, model = np.random.SeedSequence([seed, rank, epoch]).generate_state(2)
    return int(augmentation), int(model)


def _train_loader(train_ds, cfg: dict, d: Dist):
    """The training DataLoader of this rank; its generator is seeded per epoch by
    :func:`_start_epoch`."""
    t, workers = cfg["train"], cfg["data"]["num_workers"]
    sampler = torch.utils.data.DistributedSampler(train_ds, num_replicas=d.world, rank=d.rank,
                                                  shuffle=True, seed=t["seed"])
    return torch.utils.data.DataLoader(
        train_ds, batch_size=t["batch_size"] // d.world, sampler=sampler, num_workers=workers,
        collate_fn=collate, worker_init_fn=_seed_worker if workers else None,
        pin_memory=d.device.type == "cuda", generator=torch.Generator())


def _start_epoch(loader, seed: int, rank: int, epoch: int) -> None:
    """Shuffle for ``epoch`` (the same order on every rank's sampler) and seed this rank's
    augmentations (workers derive theirs from the loader's generator; without workers the
    pipeline is seeded here) and its model's random draws (stochastic pooling's samples):
    different on every rank, and the same again when a run resumes at this epoch."""
    loader.sampler.set_epoch(epoch)
    augmentation, model = epoch_seeds(seed, rank, epoch)
    torch.manual_seed(model)
    loader.generator.manual_seed(augmentation)
    transform = getattr(loader.dataset, "transform", None)
    if not loader.num_workers and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(torch.randint(2**31, (), generator=loader.generator)))


def _check_scores(scores: np.ndarray, classes, epoch: int) -> None:
    """Non-finite validation scores mean the model diverged: say so, naming epoch and class."""
    bad = [c for c, ok in zip(classes, np.isfinite(scores).all(0)) if not ok]
    if bad:
        raise FloatingPointError(f"epoch {epoch}: the model has diverged: its validation "
                                 f"scores for {', '.join(bad)} are NaN or infinite; lower "
                                 "train.lr")


def _seed_worker(_worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream, derived from the loader's
    per-epoch, per-rank seed (see :func:`epoch_seeds`)."""
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def _param_groups(cfg: dict, model: torch.nn.Module) -> list[dict]:
    """The weights at ``train.lr``; a learned LSE sharpness (``log_r``, with
    ``model.learn_r``) in a group of its own at ``train.r_lr`` (default: ``train.lr``) and
    without weight decay, which would pull every r toward 1. At the weights' lr, log r moves
    by about lr per step with Adam: 0.5 over the demo's 500 steps, too little to learn a
    sharpness per class."""
    t = cfg["train"]
    named = list(model.named_parameters())
    sharp = [p for n, p in named if n.endswith("log_r")]
    groups = [{"params": [p for n, p in named if not n.endswith("log_r")]}]
    if sharp:
        r_lr = t["lr"] if t["r_lr"] is None else t["r_lr"]
        groups.append({"params": sharp, "lr": r_lr, "weight_decay": 0.0})
    return groups


def _optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg["train"]
    groups = _param_groups(cfg, model)
    if t["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=t["lr"], weight_decay=t["weight_decay"])
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"],
                               weight_decay=t["weight_decay"])
    raise ValueError(f"unknown train.optimizer {t['optimizer']!r}; choose adam or sgd")


def _scheduler(cfg: dict, opt):
    name, epochs = cfg["train"]["scheduler"], cfg["train"]["epochs"]
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise ValueError(f"unknown train.scheduler {name!r}; choose cosine, step or none")


def _new_run_dir(out: str | Path | None, d: Dist) -> Path:
    run_dir = Path(out) if out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if d.main:
        if run_dir.exists():
            raise FileExistsError(f"{run_dir} exists; a run never overwrites one (pick another "
                                  "--out, or --resume it)")
        run_dir.mkdir(parents=True)
    d.barrier()
    return run_dir


def train(cfg: dict, out: str | Path | None = None, resume: str | Path | None = None,
          progress: bool = True) -> Path:
    """Train ``cfg``; returns the run directory (config.yaml, last.pt, best.pt,
    history.jsonl). With ``resume``, continue that run from its last checkpoint (epoch,
    optimizer, scheduler and RNG states): an interruption loses at most one epoch."""
    d = setup(cfg["train"]["device"])
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt = load_checkpoint(run_dir / "last.pt")
        cfg = ckpt["config"]
    else:
        run_dir = _new_run_dir(out, d)
        if d.main:
            (run_dir / "config.yaml").write_text(dump(cfg))
    t = cfg["train"]
    if t["batch_size"] % d.world:
        raise ValueError(f"train.batch_size ({t['batch_size']}) must divide by the number of "
                         f"processes ({d.world})")
    torch.manual_seed(t["seed"])
    np.random.seed(t["seed"])
    random.seed(t["seed"])

    root = data_root_of(cfg, d, progress)
    domain = training_domain(root)  # recorded in each checkpoint (wsloc.engine.domain)
    train_ds = make_dataset(cfg, root, "train", cfg["data"]["train_transform"])
    val_ds = make_dataset(cfg, root, "val", cfg["data"]["eval_transform"])
    classes = train_ds.classes
    workers = cfg["data"]["num_workers"]
    loader = _train_loader(train_ds, cfg, d)
    if d.main and len(val_ds) == 0:
        print("no validation images (data.val_fraction=0?): best.pt is the last epoch",
              flush=True)

    model = build_model(cfg["model"], len(classes)).to(d.device)
    cuda = d.device.type == "cuda"
    channels_last = t["channels_last"]  # also faster on CPU (oneDNN): ~10-15% at 96²
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if d.world > 1 and cuda and t["sync_bn"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if cuda
                                                     else None) if d.world > 1 else model)
    opt = _optimizer(cfg, model)
    sched = _scheduler(cfg, opt)
    amp = cuda and t["amp"]
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = build_loss(t["loss"])
    background = t.get("background_weight", 0.0)  # runs from before the key have none
    start, best, history = 0, -math.inf, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start, best, history = ckpt["epoch"], ckpt["best"], list(ckpt["history"])
        set_rng_state(ckpt["rng"])
        if d.main:
            # the checkpoint's history is the record: a kill after last.pt was written but
            # before history.jsonl was appended would otherwise lose that epoch's line
            (run_dir / "history.jsonl").write_text(
                "".join(json.dumps(h) + "\n" for h in history))
            print(f"resuming {run_dir} after epoch {start}/{t['epochs']}")

    for epoch in range(start, t["epochs"]):
        began = time.perf_counter()
        _start_epoch(loader, t["seed"], d.rank, epoch)
        net.train()
        losses, seen = [], 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t['epochs']}", unit="batch",
                   disable=not (progress and d.main), leave=False)
        for batch in bar:
            x = batch["image"].to(d.device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = batch["labels"].to(d.device, non_blocking=True)
            with torch.autocast(device_type=d.device.type, dtype=torch.float16, enabled=amp):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            if background:
                loss = loss + background * background_penalty(model.class_maps)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"epoch {epoch + 1}: the loss is {loss.item()}; lower "
                                         "train.lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
            seen += len(x) * d.world
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}",
                            img_s=f"{seen / (time.perf_counter() - began):.1f}")
        sched.step()
        scores, labels = predict(model, val_ds, d, t["batch_size"], workers, channels_last, amp)
        _check_scores(scores, classes, epoch + 1)
        aucs = compute_auc(scores, labels, classes) if len(labels) else np.full(len(classes),
                                                                                np.nan)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                  "val_mean_auc": mean_auc(aucs),
                  "val_auc": {c: (None if np.isnan(a) else float(a)) for c, a in
                              zip(classes, aucs)},
                  "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - began}
        history.append(record)
        if d.main:
            # without a validation AUC (no val split, or one class value only) the last
            # epoch is the best one known
            no_auc = not np.isfinite(record["val_mean_auc"])
            improved = no_auc or record["val_mean_auc"] > best
            best = best if no_auc or not improved else record["val_mean_auc"]
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "epoch": epoch + 1, "best": best, "config": cfg, "classes": list(classes),
                     "history": history, "rng": rng_state(), "domain": domain}
            # best.pt before last.pt: a run killed between the two resumes from the epoch
            # before and writes both again, never leaving last.pt ahead of a stale best.pt
            if improved:
                save_checkpoint(state, run_dir / "best.pt")
            save_checkpoint(state, run_dir / "last.pt")
            with open(run_dir / "history.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"epoch {epoch + 1}/{t['epochs']}  loss {record['train_loss']:.4f}  "
                  f"val mean AUC {record['val_mean_auc']:.4f}{'  (best)' if improved else ''}"
                  f"{'  (no val AUC: best.pt = last)' if no_auc else ''}"
                  f"  {record['seconds']:.0f} s", flush=True)
        d.barrier()
    if d.main:
        _calibrate(cfg, run_dir, val_ds, progress)
    d.barrier()
    return run_dir


def _calibrate(cfg: dict, run_dir: Path, val_ds, progress: bool) -> None:
    """``train.calibrate: mirror``: measure the horizontal offset of best.pt's class maps on
    the validation films (:func:`wsloc.engine.calibrate.mirror_shift`; no box is read) and
    record it in best.pt and last.pt, where ``load_trained`` applies it. Deterministic, so
    a run resumed after training redoes it to the same figure."""
    if cfg["train"].get("calibrate", "none") != "mirror" or cfg["model"]["name"] != "chestxray8":
        return
    from wsloc.engine.calibrate import mirror_shift
    from wsloc.engine.common import load_trained

    if len(val_ds) == 0:
        print("no validation images: the maps are not calibrated", flush=True)
        return
    model, *_ = load_trained(run_dir / "best.pt")
    model.cam_shift_x = 0.0
    found = mirror_shift(model, val_ds, cfg["train"]["batch_size"],
                         cfg["train"]["channels_last"])
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run_dir / name)
        state["calibration"] = found
        save_checkpoint(state, run_dir / name)
    if progress:
        print(f"mirror calibration: the class maps sit {found['shift_x']:+.2f} input px to "
              f"the right of the evidence (median of {found['maps']} maps); their columns "
              "are read that much to the left", flush=True)

