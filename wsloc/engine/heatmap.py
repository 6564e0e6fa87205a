"""``wsloc heatmap``: heatmaps, boxes and overlays for a user's own films (PNG, JPEG, DICOM)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from wsloc.boxes import PAPER_THRESHOLDS

__all__ = ["collect_inputs", "film_batches", "open_user_run", "run_heatmap",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic"}


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, and the images in folders (recursively, by suffix or DICOM magic),
    in a stable order. A path that does not exist is an error naming it."""
    from wsloc.data.images import is_dicom

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and (
                p.suffix.lower() in IMAGE_SUFFIXES or (not p.suffix and is_dicom(p))))
            if not found:
                raise FileNotFoundError(f"{path}: no PNG, JPEG or DICOM file in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


def film_batches(files: Sequence[Path], batch_size: int, transform, failed: list,
                 desc: str, progress: bool = True):
    """Batches of a user's films, read and transformed for the network, with a progress
    bar: yields (indices into ``files``, the films [H, W] in [0, 1], x [n, 1, h, w]). An
    unreadable film is appended to ``failed`` as (path, reason) and skipped."""
    from tqdm import tqdm

    from wsloc.data.images import ImageReadError, read_image

    bar = tqdm(total=len(files), desc=desc, unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        chunk = list(range(start, min(start + batch_size, len(files))))
        films, tensors, keep = [], [], []
        for i in chunk:
            try:
                film = read_image(files[i])
            except (ImageReadError, FileNotFoundError, OSError) as err:
                failed.append((files[i], str(err)))
                continue
            films.append(film)
            tensors.append(torch.from_numpy(transform(image=film)["image"])[None])
            keep.append(i)
        if keep:
            yield keep, films, torch.stack(tensors)
        bar.update(len(chunk))
    bar.close()


def open_user_run(checkpoint, inputs: Sequence[str | Path], out: str | Path,
                  batch_size: int, device: str):
    """What `wsloc heatmap` and `wsloc segment` start with: the arguments checked, the input
    files found, a new output folder, the trained model on its device. Returns (files, out,
    model, cfg, classes)."""
    from wsloc.engine.common import load_trained
    from wsloc.engine.distributed import setup

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive int, got {batch_size!r}")
    files = collect_inputs(inputs)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new --out")
    model, cfg, classes, _ = load_trained(checkpoint, setup(device).device)
    return files, out, model, cfg, classes


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names: each file's stem, with ``-2``, ``-3`` ... when stems repeat."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        k = seen.get(p.stem, 0) + 1
        seen[p.stem] = k
        out.append(p.stem if k == 1 else f"{p.stem}-{k}")
    return out


def run_heatmap(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path,
                batch_size: int = 16, min_probability: float = 0.5, all_classes: bool = False,
                save_maps: bool = False, thresholds: Sequence[int] = PAPER_THRESHOLDS,
                device: str = "auto", overlays: bool = True, progress: bool = True,
                method: str = "cam") -> dict:
    """Localize every input film with a trained ChestX-ray8 checkpoint, by the heatmap
    ``method`` (a name of :data:`wsloc.cam.METHODS`, a user's ``package.module:func`` or a
    name registered under the entry-point group ``wsloc.cam_methods``; see
    :func:`wsloc.cam.cell_maps`).

    Writes ``OUT/overlays/<stem>.png`` (the film, then one panel per shown class: heatmap,
    boxes, name and probability), ``OUT/boxes.json`` (one record per box, in the original
    film's pixels), ``OUT/maps/<stem>__<Class>.npy`` with ``save_maps`` (float32 [H, W] in
    [0, 1], the film's size), and ``OUT/failed.txt`` listing unreadable inputs with their
    reasons (the others are processed). Returns a summary: images, boxes, failed, out,
    method. An unknown method, or one that does not apply, fails before any film is read.
    """
    from wsloc.data.transforms import build_transform
    from wsloc.engine.localize import Localizer
    from wsloc.report import overlay_png

    files, out, model, cfg, classes = open_user_run(checkpoint, inputs, out, batch_size, device)
    if cfg["model"].get("name", "chestxray8") != "chestxray8":
        raise ValueError(f"{checkpoint}: `wsloc heatmap` takes a ChestX-ray8 checkpoint, got "
                         f"model {cfg['model']['name']!r}")
    size = cfg["data"]["image_size"]
    transform = build_transform("eval", size)
    localizer = Localizer(model, classes, (size, size), thresholds, min_probability,
                          all_classes, keep_maps=overlays or save_maps,
                          channels_last=cfg["train"]["channels_last"], method=method)
    out.mkdir(parents=True, exist_ok=True)
    if overlays:
        (out / "overlays").mkdir()
    if save_maps:
        (out / "maps").mkdir()
    stems = _unique_stems(files)
    boxes: list[dict] = []
    failed: list[tuple[Path, str]] = []
    for keep, films, x in film_batches(files, batch_size, transform, failed, "heatmap",
                                       progress):
        results = localizer(x, [f.shape for f in films], [files[i].name for i in keep])
        for film, i, loc in zip(films, keep, results):
            boxes.extend(loc.boxes)
            if overlays:
                overlay_png(out / "overlays" / f"{stems[i]}.png", film, loc)
            if save_maps:
                for label, heat in zip(loc.shown, loc.heatmaps):
                    np.save(out / "maps" / f"{stems[i]}__{label}.npy", heat.astype(np.float32))
    (out / "boxes.json").write_text(json.dumps(boxes, indent=1) + "\n")
    if failed:
        (out / "failed.txt").write_text("".join(f"{p}\t{why}\n" for p, why in failed))
    return {"images": len(files) - len(failed), "boxes": len(boxes),
            "failed": [(str(p), why) for p, why in failed], "out": str(out), "method": method}
