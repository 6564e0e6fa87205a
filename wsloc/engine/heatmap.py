"""``wsloc heatmap``: heatmaps, boxes and overlays for a user's own films (PNG, JPEG, DICOM)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wsloc.boxes import PAPER_THRESHOLDS

__all__ = ["collect_inputs", "open_user_run", "UserRun", "run_heatmap", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic"}


def collect_inputs(inputs: Sequence[str | Path],
                   unreadable: dict[str, str] | None = None) -> list[Path]:
    """Files as given, and the images in folders (recursively, by suffix or DICOM magic;
    each folder's files sorted by path), in a stable order. Symlinked folders are followed,
    except one that links back to a folder above it (a loop). A path that does not exist is
    an error naming it.

    Args:
        inputs: files and folders.
        unreadable: when given, what cannot be walked — a symlink loop, a folder that
            cannot be listed — is returned in the list too (sorted among its folder's
            files) and ``unreadable[str(path)]`` says why, so that a run lists it as a
            failure; otherwise it is left out.
    """
    from wsloc.data.images import is_dicom

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            problems: dict[str, str] = {}
            found = [p for p in _walk(path, problems) if p.suffix.lower() in IMAGE_SUFFIXES
                     or (not p.suffix and is_dicom(p))]
            if not found and not problems:
                raise FileNotFoundError(f"{path}: no PNG, JPEG or DICOM file in this folder")
            if unreadable is not None:
                unreadable.update(problems)
                found += [Path(p) for p in problems]
            files.extend(sorted(found))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


def _walk(root: Path, problems: dict[str, str]):
    """Every file under ``root``, following symlinked folders but not a loop (a folder
    that is its own ancestor); the loops and the folders that cannot be listed go into
    ``problems``. Each folder's entries in sorted order, so the walk is the same every
    time."""
    import os

    def key(p):
        st = os.stat(p)
        return st.st_dev, st.st_ino

    above = {str(root): {key(root)}}

    def failed(err: OSError) -> None:
        problems[str(err.filename)] = f"{err.filename}: cannot list this folder ({err.strerror})"

    for folder, dirs, names in os.walk(root, followlinks=True, onerror=failed):
        mine = above.pop(folder, set())
        keep = []
        for d in sorted(dirs):
            sub = os.path.join(folder, d)
            try:
                k = key(sub)
            except OSError as err:
                problems[sub] = f"{sub}: cannot read this folder ({err.strerror})"
                continue
            if k in mine:
                problems[sub] = (f"{sub}: a symlink loop (it leads back to a folder above "
                                 "it); not followed")
                continue
            above[sub] = mine | {k}
            keep.append(d)
        dirs[:] = keep
        for name in sorted(names):
            yield Path(folder, name)


class UserRun(NamedTuple):
    """What :func:`open_user_run` returns."""

    files: list[Path]
    unreadable: dict[str, str]
    model: object
    cfg: dict
    classes: list[str]
    digest: str  # the checkpoint's sha256
    dist: object  # wsloc.engine.distributed.Dist
    domain: dict  # what the model was trained on (wsloc.engine.domain.checkpoint_domain)


def open_user_run(checkpoint, inputs: Sequence[str | Path], batch_size: int, device: str,
                  dicom_out: bool = False) -> UserRun:
    """What `wsloc heatmap` and `wsloc segment` start with: the arguments checked, the input
    files found (with those that cannot be walked, and why), with ``dicom_out`` every one
    of them a DICOM (:func:`wsloc.engine.dicom_run.require_dicom`, before the model is
    loaded), the trained model on its device and the domain it was trained on."""
    from wsloc.engine.common import load_trained
    from wsloc.engine.distributed import setup
    from wsloc.engine.domain import checkpoint_domain
    from wsloc.engine.stream import checkpoint_sha256

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be a positive int, got {batch_size!r}")
    unreadable: dict[str, str] = {}
    files = collect_inputs(inputs, unreadable)
    if dicom_out:
        from wsloc.engine.dicom_run import require_dicom

        require_dicom(files, unreadable)
    d = setup(device)
    model, cfg, classes, ckpt = load_trained(checkpoint, d.device)
    return UserRun(files, unreadable, model, cfg, classes, checkpoint_sha256(checkpoint), d,
                   checkpoint_domain(ckpt))


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names; see :func:`wsloc.engine.stream.unique_stems`."""
    from wsloc.engine.stream import unique_stems

    return unique_stems(paths)


def method_name(method) -> str:
    """A heatmap method as run.json records it: its name, or a callable's module:name."""
    if callable(method):
        return f"{getattr(method, '__module__', '?')}:{getattr(method, '__qualname__', method)}"
    return str(method)


def run_heatmap(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path,
                batch_size: int = 16, min_probability: float = 0.5, all_classes: bool = False,
                save_maps: bool = False, thresholds: Sequence[int] = PAPER_THRESHOLDS,
                device: str = "auto", overlays: bool = True, progress: bool = True,
                method: str = "cam", resume: bool = False, shard: str | None = None,
                workers: int | None = None, on_film=None, settings: dict | None = None,
                dicom_out: bool = False, strict_dicom: bool = False) -> dict:
    """Localize every input film with a trained ChestX-ray8 checkpoint, by the heatmap
    ``method`` (a name of :data:`wsloc.cam.METHODS`, a user's ``package.module:func`` or a
    name registered under the entry-point group ``wsloc.cam_methods``; see
    :func:`wsloc.cam.cell_maps`).

    Writes ``OUT/overlays/<stem>.png`` (the film, then one panel per shown class: heatmap,
    boxes, name and probability), ``OUT/boxes.json`` (one record per box, in the original
    film's pixels, in input order), ``OUT/maps/<stem>__<Class>.npy`` with ``save_maps``
    (float32 [H, W] in [0, 1], the film's size), and ``OUT/failed.txt`` listing unreadable
    inputs with their reasons (the others are processed). ``<stem>`` is the file's stem,
    with ``-2``, ``-3`` … for a name met again in another folder
    (:func:`wsloc.engine.stream.unique_stems`). The records are streamed to
    ``OUT/boxes.jsonl`` as films finish, and ``OUT/run.json`` records the checkpoint's hash
    and the settings: see :mod:`wsloc.engine.stream` for the layout, ``resume`` and
    ``shard``. An unknown method, or one that does not apply, fails before any film is read.

    A model applied to films outside the domain it was trained on (a synthetic-trained model
    on real films, or the other way round) warns once (``warnings.warn``, counting the
    films; in the summary's ``warnings``), and each such film says so in its done record,
    ``OUT/warnings.txt`` and its overlay's caption. So does a DICOM whose header says it is
    not a chest radiograph (:func:`wsloc.dicom_out.dicom_domain_check`), unless
    ``strict_dicom`` skips it.

    Args:
        resume: continue the run in OUT: films already done are skipped (matched by path,
            size and mtime), the rest processed; the outputs are then those of an
            uninterrupted run. Without it OUT must be new or empty.
        shard: ``"I/N"``: only the films whose index in the input list is I modulo N, into
            ``OUT/shards/I-of-N/``; ``wsloc merge OUT`` joins the N shards. Under torchrun
            each rank takes its own shard and rank 0 merges.
        workers: DataLoader processes reading and resizing films (None: a default from the
            core count; 0: in this process).
        on_film: called once per finished film with a
            :class:`wsloc.engine.stream.FilmResult` (source, shape, records, heatmaps), in
            a writer thread, before the film counts as done.
        settings: further settings that change the outputs (recorded in run.json).
        dicom_out: every input must be a DICOM (else a ValueError before any film is read);
            per film, ``OUT/dicom/<stem>.seg.dcm`` (each shown class's heatmap above the
            lowest of ``thresholds``) and ``<stem>.sr.dcm`` (its boxes):
            :mod:`wsloc.engine.dicom_run`.
        strict_dicom: a DICOM whose header says it is not a chest radiograph is skipped, a
            listed failure with that reason.

    Returns:
        A summary: images, boxes, failed, warned (films with warnings), warnings (the run's
        own: the domain), out, method (for a shard of a larger run: its own, with
        ``shard``).
    """
    from wsloc.data.transforms import build_transform
    from wsloc.engine.localize import Localizer
    from wsloc.engine.stream import FilmStream

    files, unreadable, model, cfg, classes, digest, d, domain = open_user_run(
        checkpoint, inputs, batch_size, device, dicom_out)
    if cfg["model"].get("name", "chestxray8") != "chestxray8":
        raise ValueError(f"{checkpoint}: `wsloc heatmap` takes a ChestX-ray8 checkpoint, got "
                         f"model {cfg['model']['name']!r}")
    size = cfg["data"]["image_size"]
    transform = build_transform("eval", size)
    keep_maps = overlays or save_maps or on_film is not None or dicom_out
    localizer = Localizer(model, classes, (size, size), thresholds, min_probability,
                          all_classes, keep_maps=keep_maps,
                          channels_last=cfg["train"]["channels_last"], method=method)
    record = {"checkpoint_sha256": digest, "method": method_name(method),
              "thresholds": [int(t) for t in thresholds],
              "min_probability": float(min_probability), "all_classes": bool(all_classes),
              "overlays": bool(overlays), "save_maps": bool(save_maps),
              **_dicom_settings(dicom_out, strict_dicom), **(settings or {})}
    dirs = (("overlays",) if overlays else ()) + (("maps",) if save_maps else ()) + (
        ("dicom",) if dicom_out else ())
    stream = FilmStream("heatmap", out, files, unreadable, record, batch_size, transform, d,
                        resume=resume, shard=shard, workers=workers,
                        keep_film=overlays or on_film is not None, dirs=dirs,
                        progress=progress, domain=domain, keep_header=dicom_out,
                        strict_dicom=strict_dicom)
    out = stream.out
    if dicom_out:
        from wsloc.engine.dicom_run import DicomOutputs

        on_film = DicomOutputs(out, stream.tag, {"checkpoint_sha256": digest,
                                                 "method": method_name(method)},
                               heatmap_threshold=min(int(t) for t in thresholds),
                               then=on_film)
    for films, x in stream:
        results = localizer(x, [f.shape for f in films], [f.name for f in films])
        for film, loc in zip(films, results):
            # a record names its film's outputs too: two films of one name in different
            # folders share `image` (x.png) but not `stem` (x, x-2)
            loc.boxes = [{"image": b["image"], "stem": film.stem, **b} for b in loc.boxes]
            if not keep_maps:
                stream.put(film, records=loc.boxes)
                continue
            stream.put(film, partial(_heatmap_outputs, out, film, loc, overlays, save_maps,
                                     on_film, stream.tag))
    summary = stream.finish()
    summary.pop("masks", None)
    return summary


def _dicom_settings(dicom_out: bool, strict_dicom: bool) -> dict:
    """What run.json records of the DICOM options: each only when set, so that a run made
    before they existed is continued as it was."""
    return ({"dicom_out": True} if dicom_out else {}) | (
        {"strict_dicom": True} if strict_dicom else {})


def _heatmap_outputs(out: Path, film, loc, overlays: bool, save_maps: bool, on_film,
                     tag: str) -> tuple[list[dict], dict]:
    """One film's files (in a writer thread): the callback first (it may fail the film:
    :class:`wsloc.engine.stream.FilmFailed`), then its overlay and maps, each written
    whole."""
    from wsloc.engine.rundir import replacing
    from wsloc.report import overlay_png

    if on_film is not None:
        from wsloc.engine.stream import FilmResult

        heat = loc.heatmaps if loc.heatmaps is not None else []
        on_film(FilmResult(film.path, film.stem, film.shape, loc.boxes,
                           heatmaps=dict(zip(loc.shown, heat)), film=film.film,
                           dicom=film.header, warnings=list(film.warnings)))
    if overlays:
        with replacing(out / "overlays" / f"{film.stem}.png", tag) as tmp:
            overlay_png(tmp, film.film, loc, notes=film.notes)
    if save_maps:
        for label, heat in zip(loc.shown, loc.heatmaps if loc.heatmaps is not None else []):
            with replacing(out / "maps" / f"{film.stem}__{label}.npy", tag) as tmp:
                np.save(tmp, heat.astype(np.float32))
    return loc.boxes, {}
