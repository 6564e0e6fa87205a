"""Inference over archives: results streamed to disk as they are made, a killed run
continued where it stopped, the films split into shards for torchrun ranks or a batch
scheduler's array jobs, and the shards merged — the one home of this for ``wsloc heatmap``
and ``wsloc segment`` (:class:`FilmStream`, :func:`merge`).

An output folder OUT holds:

- ``OUT/run.json``: what produced the results (the checkpoint's sha256, the settings that
  change them, the number of shards); a run with another record is refused, naming each
  difference (:func:`wsloc.engine.rundir.claim`).
- one *part* per shard: ``OUT/boxes.jsonl`` for a run of one process, else
  ``OUT/shards/I-of-N/boxes.jsonl``. Per film, in the order of the inputs: its
  ``boxes.json`` records, one JSON object a line, then its *done record*
  ``{"done": PATH, "i": …, "stem": …, "size": …, "mtime_ns": …, "status": "boxes" | "no
  boxes" | "failed", "boxes": …, "reason": …, "warnings": […]}`` — a film counts as
  finished only once its done record is on disk, after its overlays, maps, masks and DICOM
  outputs. ``warnings`` (only when there are any): what a reader of the film's results must
  know — a DICOM header saying it is not a chest radiograph, a model applied outside the
  domain it was trained on. Lines are flushed per batch;
  a line cut by a kill (or the records of a film whose done record never came) is dropped
  on ``--resume``. ``part.json`` beside it says the part is complete.
- ``OUT/overlays/``, ``OUT/masks/``, ``OUT/maps/``, ``OUT/dicom/``: per film, written whole
  or not at all (:func:`wsloc.engine.rundir.replacing`), shared by all shards: a film's files
  are named by its stem (:func:`unique_stems`), unique over the whole input list.
- ``OUT/boxes.json``, ``OUT/failed.txt`` and ``OUT/warnings.txt`` (each film's warnings, a
  line each: path, tab, warning): assembled from the parts, in input order, when the last
  part is done (:func:`merge`): byte for byte what a single uninterrupted process writes,
  whatever the batches, workers, shards or resumes.

Resuming matches a film by its path as listed, its output stem, its size and its mtime in
nanoseconds — not by a hash of its content, which would mean reading every film of the
archive again (100k DICOMs: the whole archive) before the first new one is processed. A film
changed since (new mtime or size) is done again; a film that failed stays failed unless it
changed (a file that had vanished and is back has a new key).

The network always sees batches of the same size (the last one, and those with failed
films, padded with blank films): on CPU a film's scores differ in the last bits with the
batch's size, so this is what keeps a resumed or sharded run equal to an uninterrupted one.
The batch size is therefore one of the recorded settings.
"""

from __future__ import annotations

import heapq
import json
import os
import sys
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsloc.engine.rundir import RunMismatch, claim, remove_temps, replacing, write_json_atomic

__all__ = ["Film", "FilmResult", "FilmStream", "FilmDataset", "FilmFailed", "MergeError",
           "merge", "parse_shard", "default_workers", "unique_stems", "checkpoint_sha256",
           "write_json_list", "PART", "PART_DONE", "IMAGE_DIRS", "WARNINGS"]

FORMAT = 1
PART = "boxes.jsonl"
PART_DONE = "part.json"
IMAGE_DIRS = ("overlays", "masks", "maps", "dicom")
WARNINGS = "warnings.txt"
SHOWN_WARNINGS = 10  # per-film warnings printed as they come; the rest counted at the end
KILL_ENV = "WSLOC_KILL_AFTER_FILMS"  # tests: SIGKILL this process mid-write after N films


class MergeError(ValueError):
    """Parts that do not make one whole run: missing, overlapping, unfinished, or made by
    different checkpoints, settings or input lists."""


class FilmFailed(Exception):
    """Raised by a film's task (or its ``on_film`` callback) when this one film cannot get
    its outputs (e.g. a DICOM SEG that cannot be built on its header): the film becomes a
    listed failure with the message as its reason, and the run goes on. Any other exception
    of a task stops the run."""


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"I/N"`` → (I, N), with 0 ≤ I < N.

    Raises:
        ValueError: anything else, naming ``--shard`` and the value.
    """
    if spec is None:
        return None
    try:
        i, n = (int(v) for v in spec.split("/")) if isinstance(spec, str) else map(int, spec)
    except (ValueError, TypeError):
        raise ValueError(f"--shard must be I/N (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard I/N needs 0 ≤ I < N, got {spec!r}")
    return i, n


def default_workers() -> int:
    """DataLoader workers by default: one per core but one (the main process runs the
    model), at most 4; 0 (read in the main process) on a single core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(4, cores - 1))


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names (overlays, maps, masks), one per input: its file's stem; a stem met
    again (the same name in another folder) gets ``-2``, ``-3`` …, the first that no
    earlier film uses and no film of the list has as its own stem, compared without case
    (so that names stay apart on case-insensitive disks too). Derived from the whole
    input list in its order, so a shard or a resumed run names a film as the whole run
    does."""
    taken = {p.stem.casefold() for p in paths}
    used: set[str] = set()
    out = []
    for p in paths:
        stem = p.stem
        if stem.casefold() in used:
            k = 2
            while f"{stem}-{k}".casefold() in used or f"{stem}-{k}".casefold() in taken:
                k += 1
            stem = f"{stem}-{k}"
        used.add(stem.casefold())
        out.append(stem)
    return out


def checkpoint_sha256(path: str | Path) -> str:
    """The sha256 of a checkpoint file, read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_list(f, records) -> int:
    """Write ``records`` (an iterable of JSON values) to the text file ``f`` exactly as
    ``json.dumps(list(records), indent=1) + "\\n"`` would, one at a time; returns how many."""
    n = 0
    for r in records:
        f.write(("[\n " if n == 0 else ",\n ") + json.dumps(r, indent=1).replace("\n", "\n "))
        n += 1
    f.write("\n]\n" if n else "[]\n")
    return n


def _input_digest(files: Sequence[Path]) -> dict:
    import hashlib

    h = hashlib.sha256()
    for p in files:
        h.update(os.fsencode(str(p)) + b"\n")
    return {"count": len(files), "sha256": h.hexdigest()}


def _stat(path: str | Path) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_size, st.st_mtime_ns


# --- reading films in DataLoader workers ----------------------------------------------

class FilmDataset(torch.utils.data.Dataset):
    """The films still to do, read and transformed for the network; never raises.

    Item ``k`` is a dict: ``i`` (the film's index in ``files``), ``size`` and ``mtime_ns``
    (as seen just before reading; None when the file is gone), ``warnings`` (a list: for a
    DICOM whose header says it is not a chest radiograph,
    :func:`wsloc.dicom_out.dicom_domain_check`'s message), and either ``x``
    (Tensor[1, h, w], the network's input), ``shape`` (the film's (H, W)), ``film``
    (Tensor[H, W] float32 in [0, 1], when ``keep_film``; a tensor so that it crosses from
    a worker through shared memory) and ``header`` (a DICOM's header, a pydicom Dataset
    without pixel data, when ``keep_header``; else None), or ``error``: why it cannot be
    read (a corrupt, truncated or vanished file, a folder that loops — any exception of the
    reader), or why it is skipped (``strict_dicom``).

    A DICOM's header is read (``stop_before_pixels``: a few kB) before its pixels, for the
    chest check; with ``strict_dicom`` a film that fails it is not decoded at all.

    Args:
        files: every input, in order (paths as listed).
        todo: the indices into ``files`` to read, in order.
        transform: the eval transform (``transform(image=film)["image"]``).
        known: reasons already known at listing time, by path (symlink loops, folders that
            cannot be listed).
        keep_film: also return the film itself (overlays, masks).
        keep_header: also return a DICOM's header (``--dicom-out``).
        strict_dicom: a DICOM whose header says it is not a chest radiograph is an
            ``error`` (skipped), not a warning.
    """

    def __init__(self, files: Sequence[str | Path], todo: Sequence[int], transform,
                 known: dict[str, str] | None = None, keep_film: bool = True,
                 keep_header: bool = False, strict_dicom: bool = False) -> None:
        self.files = [str(p) for p in files]
        self.todo = np.asarray(todo, dtype=np.int64)
        self.transform = transform
        self.known = dict(known or {})
        self.keep_film = keep_film
        self.keep_header = keep_header
        self.strict_dicom = strict_dicom

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> dict:
        from wsloc.data.images import read_image

        i = int(self.todo[k])
        path = self.files[i]
        item = {"i": i, "size": None, "mtime_ns": None, "error": None, "warnings": [],
                "header": None}
        if path in self.known:
            item["error"] = self.known[path]
            return item
        try:
            item["size"], item["mtime_ns"] = _stat(path)
            if item["size"] is None:
                raise FileNotFoundError(f"{path}: listed, then gone before it was read")
            header, warning = _dicom_header(path)
            if warning is not None:
                if self.strict_dicom:
                    item["error"] = f"skipped (--strict-dicom): {warning}"
                    return item
                item["warnings"].append(warning)
            if self.keep_header:
                item["header"] = header
            film = read_image(path)
            item["x"] = torch.from_numpy(self.transform(image=film)["image"])[None]
            item["shape"] = tuple(int(v) for v in film.shape)
            if self.keep_film:
                item["film"] = torch.from_numpy(film)
        except Exception as err:  # noqa: BLE001 - any bad file is a listed failure
            item.pop("x", None)
            item["error"] = str(err) if isinstance(err, (ValueError, OSError)) else (
                f"{path}: {type(err).__name__}: {err}")
        return item


def _dicom_header(path: str) -> tuple[object | None, str | None]:
    """A DICOM's header (pydicom Dataset, no pixel data) and its chest check's warning;
    (None, None) for another file, or a header pydicom cannot read (the pixel reader then
    says why)."""
    from wsloc.data.images import is_dicom

    if not is_dicom(Path(path)):
        return None, None
    import pydicom

    from wsloc.dicom_out import dicom_domain_check

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - read_image reports the file's problem
        return None, None
    return header, dicom_domain_check(header)


def _as_list(items: list) -> list:
    return items


# --- parts: one shard's streamed records ----------------------------------------------

@dataclass
class _Group:
    """Where one film's lines lie in a part file (its done record last)."""

    i: int
    path: str
    stem: str
    size: int | None
    mtime_ns: int | None
    start: int
    length: int


def _scan(path: Path) -> tuple[list[_Group], int]:
    """The films finished in a part file, and the byte offset where the whole lines end."""
    groups: list[_Group] = []
    good = pos = 0
    if not path.exists():
        return groups, 0
    with open(path, "rb") as f:
        for line in f:
            end = pos + len(line)
            try:
                obj = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                obj = None
            if obj is None:  # a line cut by a kill; anything after it is redone
                if f.read(1):
                    warnings.warn(f"{path}: a broken line at byte {pos} before the end; the "
                                  "films after it are done again", stacklevel=3)
                break
            if isinstance(obj, dict) and "done" in obj:
                groups.append(_Group(int(obj["i"]), obj["done"], obj["stem"], obj["size"],
                                     obj["mtime_ns"], good, end - good))
                good = end
            pos = end
    return groups, good


def _read_groups(path: Path) -> Iterator[tuple[int, list[dict], dict]]:
    """(index, records, done record) of each film of a complete part file, in order."""
    records: list[dict] = []
    with open(path, "rb") as f:
        for line in f:
            obj = json.loads(line)
            if "done" in obj:
                yield int(obj["i"]), records, obj
                records = []
            else:
                records.append(obj)


class _Part:
    """One shard's part file, open for appending: what it already holds (on ``resume``,
    its torn tail cut off) and the films written since."""

    def __init__(self, folder: Path, tag: str, resume: bool) -> None:
        self.folder, self.tag = folder, tag
        self.path = folder / PART
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PART_DONE).unlink(missing_ok=True)  # complete again only when finished
        groups, good = _scan(self.path) if resume else ([], 0)
        if self.path.exists() and self.path.stat().st_size != good:
            with open(self.path, "r+b") as f:
                f.truncate(good)
        self.done = {(g.path, g.stem, g.size, g.mtime_ns) for g in groups}
        self.file = open(self.path, "ab")

    def write(self, text: str) -> None:
        self.file.write(text.encode())

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def finish(self, files: Sequence[Path], stems: Sequence[str], mine: range,
               info: dict) -> None:
        """Check that every film of the shard is in the part (the last record of each
        counts), rewrite it in input order when a resume left it otherwise (films done
        again, a changed input list), and mark it complete with ``part.json``."""
        self.close()
        groups, good = _scan(self.path)
        index = {(str(files[i]), stems[i]): i for i in mine}
        best: dict[int, _Group] = {}
        clean, last = True, -1
        for g in groups:
            i = index.get((g.path, g.stem))
            if i is None:
                clean = False
                continue
            if i in best or i != g.i or i <= last:
                clean = False
            best[i] = g
            last = max(last, i)
        missing = [i for i in mine if i not in best]
        if missing:
            raise RuntimeError(f"{self.path}: {len(missing)} film(s) of the shard have no "
                               f"done record (first: {files[missing[0]]})")
        if not clean or good != self.path.stat().st_size:
            with open(self.path, "rb") as src, replacing(self.path, self.tag) as tmp, \
                    open(tmp, "wb") as dst:
                for i in mine:
                    g = best[i]
                    src.seek(g.start)
                    chunk = src.read(g.length)
                    if g.i != i:  # the input list changed: the film's index with it
                        head, _, done = chunk[:-1].rpartition(b"\n")
                        obj = dict(json.loads(done), i=i)
                        chunk = (head + b"\n" if head else b"") + json.dumps(obj).encode() + b"\n"
                    dst.write(chunk)
        write_json_atomic(self.folder / PART_DONE, info)


class _Writer:
    """Films' outputs made in a small thread pool, off the model's loop; their lines go to
    the part in input order, each film's after its files are on disk."""

    def __init__(self, part: _Part, threads: int, max_pending: int) -> None:
        self.part = part
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="wsloc-out")
        self.pending: deque[tuple[dict, Future | tuple]] = deque()
        self.max_pending = max_pending
        self.written = 0
        self.kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

    def put(self, done: dict, task: Callable[[], tuple[list[dict], dict]] | tuple) -> None:
        """``task()`` → (the film's records, extra done-record fields), run in the pool; or
        that pair itself, when there is nothing to write."""
        self.pending.append((done, self.pool.submit(task) if callable(task) else task))
        while len(self.pending) > self.max_pending:
            self._commit(block=True)

    def _commit(self, block: bool) -> None:
        done, result = self.pending[0]
        if isinstance(result, Future):
            if not block and not result.done():
                return
            try:
                records, extra = result.result()
            except FilmFailed as err:  # this film only: a listed failure, no results
                records, extra = [], {"status": "failed", "reason": str(err)}
            except Exception as err:  # an output that cannot be written stops the run
                raise RuntimeError(f"{done['done']}: {type(err).__name__}: {err}") from err
        else:
            records, extra = result
        self.pending.popleft()
        if done["status"] != "failed":
            done["status"] = "boxes" if records else "no boxes"
        done.update(boxes=len(records), **extra)
        text = "".join(json.dumps(r) + "\n" for r in records) + json.dumps(done) + "\n"
        if self.kill_after and self.written == self.kill_after:
            self.part.write(text[: len(text) // 2])  # a film cut mid-write, as a kill does
            self.part.flush()
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        self.part.write(text)
        self.written += 1

    def flush(self) -> None:
        """Write the films finished so far (those that follow one still being made wait)."""
        while self.pending and (not isinstance(self.pending[0][1], Future)
                                or self.pending[0][1].done()):
            self._commit(block=False)
        self.part.flush()

    def close(self) -> None:
        while self.pending:
            self._commit(block=True)
        self.part.flush()
        self.pool.shutdown()

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.part.flush()


# --- the loop ------------------------------------------------------------------------

@dataclass
class Film:
    """One film of a batch, as the loop hands it to a command.

    ``film`` is float32 [H, W] in [0, 1] (None when the stream was made without
    ``keep_film``); ``shape`` its (H, W); ``name`` the file's name (``boxes.json``'s
    ``image``); ``stem`` its output name; ``warnings`` what its done record will carry;
    ``notes`` the same as short tags for its overlay's caption (e.g. ``OUT OF DOMAIN:
    synthetic-trained model``); ``header`` its DICOM header (a pydicom Dataset without
    pixel data) when the stream keeps headers, else None."""

    i: int
    path: Path
    name: str
    stem: str
    shape: tuple[int, int]
    film: np.ndarray | None
    size: int | None = None
    mtime_ns: int | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    header: object | None = None


@dataclass
class FilmResult:
    """What a per-film callback (``on_film`` of ``run_heatmap``/``run_segment``) receives,
    once per finished film, in a writer thread (so it must be thread-safe), once its
    results are made and before its overlays/maps/masks are written and its done record is:
    a film counts as finished only when the callback has returned and those files are on
    disk. :class:`FilmFailed` from the callback makes this film a listed failure (no
    records, no files of its own written) and the run goes on; any other exception stops
    the run (the film is done again on ``--resume``). Files it writes should go through
    :func:`wsloc.engine.rundir.replacing`.

    Attributes:
        source: the input file.
        stem: the film's output name.
        shape: (height, width) of the film, the frame of the records' coordinates.
        records: its ``boxes.json`` records.
        masks: finding → boolean mask [H, W] (``wsloc segment``: the masks written).
        heatmaps: class → float32 heatmap [H, W] in [0, 1] (``wsloc heatmap``: each shown
            class's, the map its boxes were drawn from).
        film: the film, float32 [H, W] in [0, 1].
        dicom: its DICOM header (a pydicom Dataset without pixel data) when the run keeps
            headers (``--dicom-out``), else None.
        warnings: what the film's done record carries (see :class:`Film`).
    """

    source: Path
    stem: str
    shape: tuple[int, int]
    records: list[dict]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    film: np.ndarray | None = None
    dicom: object | None = None
    warnings: list[str] = field(default_factory=list)


class FilmStream:
    """The streaming loop ``wsloc heatmap`` and ``wsloc segment`` share: claims OUT, reads
    the films still to do in DataLoader workers, hands them over in batches of one fixed
    size, writes each film's outputs off the loop and its records to the part file, and at
    the end merges the parts into ``boxes.json`` (when this is the only part, or on torchrun's
    rank 0 once every rank's part is done).

    Iterating yields ``(films, x)``: the batch's readable :class:`Film`\\s and x
    [batch_size, 1, h, w], the first ``len(films)`` rows theirs (the rest blank). For each
    film the command calls :meth:`put` with a task that writes its files and returns its
    records; unreadable films are recorded by the stream itself.

    Args:
        command: ``"heatmap"`` or ``"segment"`` (named in messages and in run.json).
        out: the output folder.
        files: every input, in order (:func:`wsloc.engine.heatmap.collect_inputs`).
        known: inputs already known to be unreadable at listing time → the reason.
        record: the settings that change results (JSON-ready); stored in ``run.json``.
        batch_size: films per forward pass.
        transform: the eval transform.
        dist: the :class:`wsloc.engine.distributed.Dist` of this process.
        resume: continue the run in ``out`` (else ``out`` must be new or empty).
        shard: (I, N): do only the films whose index is I modulo N (a batch scheduler's
            array job); under torchrun each rank takes (rank, world) by itself.
        workers: DataLoader workers (None: :func:`default_workers`; 0: read in this
            process).
        keep_film: the task needs the film's pixels (overlays, masks).
        dirs: the sub-folders of ``out`` the command writes into.
        progress: a progress bar.
        domain: the model's training domain (:func:`wsloc.engine.domain.checkpoint_domain`):
            when films lie outside it, one warning for the run (``warnings.warn``, counting
            them; in the summary's ``warnings``) and one in each such film's done record
            and overlay caption.
        keep_header: hand each DICOM's header over with its film (``--dicom-out``).
        strict_dicom: skip, as a listed failure, a DICOM whose header says it is not a
            chest radiograph; without it the film is processed, its warning printed (the
            first :data:`SHOWN_WARNINGS`, then a count) and kept in its done record.

    Raises:
        FileExistsError: ``out`` is not empty and ``resume`` is not set.
        RunMismatch: ``out`` holds a run with another record (the differences named).
    """

    def __init__(self, command: str, out: str | Path, files: Sequence[Path],
                 known: dict[str, str], record: dict, batch_size: int, transform, dist, *,
                 resume: bool = False, shard=None, workers: int | None = None,
                 keep_film: bool = True, dirs: Sequence[str] = (), progress: bool = True,
                 domain: dict | None = None, keep_header: bool = False,
                 strict_dicom: bool = False) -> None:
        self.command, self.out, self.files = command, Path(out), list(files)
        self.stems = unique_stems(self.files)
        self.dist = dist
        shard = parse_shard(shard)
        if dist.world > 1:
            if shard is not None:
                raise ValueError("--shard and torchrun both split the films; use one")
            shard = (dist.rank, dist.world)
        self.shard = shard or (0, 1)
        i, n = self.shard
        if workers is None:
            workers = default_workers()
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"--workers must be an int ≥ 0, got {workers!r}")
        self.record = json.loads(json.dumps({"command": command, "format": FORMAT,
                                             **record, "batch_size": batch_size,
                                             "device": dist.device.type, "shards": n}))
        self.part_dir = self.out if n == 1 else self.out / "shards" / f"{i}-of-{n}"
        self.tag = f"p{i}-{n}"
        self.token = self._claim(resume, shard is not None and dist.world == 1)
        for d in dirs:
            (self.out / d).mkdir(exist_ok=True)
            remove_temps(self.out / d, self.tag)
        self.dirs = tuple(dirs)
        self.part = _Part(self.part_dir, self.tag, resume)
        self.mine = range(i, len(self.files), n)
        done = self.part.done
        todo = [k for k in self.mine
                if not done or (str(self.files[k]), self.stems[k], *_stat(self.files[k]))
                not in done]
        self.skipped = len(self.mine) - len(todo)
        self.batch_size = min(batch_size, max(1, len(self.files)))
        dataset = FilmDataset(self.files, todo, transform, known, keep_film, keep_header,
                              strict_dicom)
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers,
            collate_fn=_as_list)  # each worker runs torch on one thread
        self.progress = progress
        # its threads start with the first film handed over, after the readers' fork
        self.writer = _Writer(self.part, threads=2, max_pending=2 * self.batch_size)
        self._pending: dict = {}
        self.warnings: list[str] = []  # the run's own (the domain), for the summary
        self._domain = self._domain_check(domain)
        self._warned = 0  # films with a DICOM warning met in this process

    def _domain_check(self, domain: dict | None) -> tuple[str, str, str] | None:
        """Warn once when films lie outside the model's domain; (its kind, a film's done
        record warning, its overlay tag), or None when no film does."""
        from wsloc.engine.domain import describe, domain_warning

        if domain is None:
            return None
        text = domain_warning(domain, self.files)
        if text is None:
            return None
        text = f"wsloc {self.command}: {text}"
        self.warnings.append(text)
        if self.dist.main:
            warnings.warn(text, stacklevel=3)
        kind = domain.get("kind")
        if kind == "synthetic":
            return (kind, f"out of domain: the model was trained on {describe(domain)}, and "
                    "this film is not one of them; its results here mean nothing",
                    "OUT OF DOMAIN: synthetic-trained model")
        return (kind, f"out of domain: the model was trained on {describe(domain)}, and this "
                "film is a synthetic phantom", "OUT OF DOMAIN: real-film model on a phantom")

    def _film_warnings(self, path: Path, found: list[str]) -> tuple[list[str], list[str]]:
        """(done-record warnings, overlay tags) of a film read with ``found`` (the
        reader's); the DICOM ones printed, the first :data:`SHOWN_WARNINGS` of them."""
        from wsloc.engine.domain import film_domain

        out, notes = list(found), []
        if found:
            notes.append("NOT A CHEST RADIOGRAPH (its DICOM header)")
            self._warned += 1
            if self._warned <= SHOWN_WARNINGS:
                from tqdm import tqdm

                for w in found:
                    tqdm.write(f"warning: {w}", file=sys.stderr)
        if self._domain is not None and film_domain(path) != self._domain[0]:
            out.append(self._domain[1])
            notes.append(self._domain[2])
        return out, notes

    def _claim(self, resume: bool, scheduled_shard: bool) -> str | None:
        """Claim OUT (rank 0 first under torchrun, the others after it); the token the
        ranks' parts carry so that rank 0 merges this run's parts, not older ones."""
        import torch.distributed as tdist

        def claim_here() -> None:
            if not resume:
                here = self.part_dir if scheduled_shard else self.out
                if here.exists() and any(here.iterdir()):
                    what = (f"shard {self.shard[0]}/{self.shard[1]} ran in {here} before"
                            if scheduled_shard else f"{here} is not empty")
                    raise FileExistsError(f"{what}: pass --resume to continue that run, or "
                                          "choose another --out")
            claim(self.out, self.record, f"wsloc {self.command} run")

        if self.dist.world == 1:
            claim_here()
            return None
        message = [None, uuid.uuid4().hex]
        if self.dist.main:
            try:
                claim_here()
            except (FileExistsError, RunMismatch) as err:
                message[0] = str(err)
        tdist.broadcast_object_list(message, src=0)
        if message[0] is not None:
            raise ValueError(message[0])
        if not self.dist.main:
            claim(self.out, self.record, f"wsloc {self.command} run")
        return message[1]

    def __iter__(self) -> Iterator[tuple[list[Film], torch.Tensor]]:
        from tqdm import tqdm

        batches = iter(self.loader)  # the workers start (fork) before any writer thread
        bar = tqdm(total=len(self.mine), initial=self.skipped, desc=self.command, unit="img",
                   disable=not self.progress)
        try:
            for items in batches:
                films, xs = [], []
                for it in items:
                    i = it["i"]
                    if it["error"] is not None:
                        continue
                    film = it.get("film")
                    found, notes = self._film_warnings(self.files[i], it.get("warnings") or [])
                    films.append(Film(i, self.files[i], self.files[i].name, self.stems[i],
                                      it["shape"], None if film is None else film.numpy(),
                                      it["size"], it["mtime_ns"], found, notes,
                                      it.get("header")))
                    xs.append(it["x"])
                self._pending = {}
                if films:
                    x = torch.stack(xs)
                    if len(xs) < self.batch_size:  # always one batch size: see the module
                        x = torch.cat([x, x.new_zeros(self.batch_size - len(xs), *x.shape[1:])])
                    self._pending = {f.i: f for f in films}
                    yield films, x
                self._record_batch(items)
                self.writer.flush()
                bar.update(len(items))
        except BaseException:
            self.writer.abort()
            self.part.close()
            raise
        finally:
            bar.close()

    def _done(self, i: int, size, mtime_ns, status: str, reason: str | None = None) -> dict:
        d = {"done": str(self.files[i]), "i": i, "stem": self.stems[i], "size": size,
             "mtime_ns": mtime_ns, "status": status}
        if reason is not None:
            d["reason"] = reason
        return d

    def put(self, film: Film, task: Callable[[], tuple[list[dict], dict]] | None = None,
            records: list[dict] | None = None) -> None:
        """Hand over a film of the current batch: ``task()`` (run in a writer thread)
        writes its files and returns (its records, extra done-record fields such as
        ``{"masks": 3}``); or, when it has no files to write, its ``records`` directly."""
        self._pending[film.i] = (film, task if task is not None else (list(records or []), {}))

    def _record_batch(self, items: list[dict]) -> None:
        """The batch's films to the writer, in input order: failures and finished films."""
        for it in items:
            i = it["i"]
            if it["error"] is not None:
                self.writer.put(self._done(i, it["size"], it["mtime_ns"], "failed",
                                           it["error"]), ([], {}))
                continue
            entry = self._pending.get(i)
            if not isinstance(entry, tuple):
                raise RuntimeError(f"{self.files[i]}: the command handed no result back")
            film, task = entry
            done = self._done(i, film.size, film.mtime_ns, "boxes")
            if film.warnings:
                done["warnings"] = film.warnings
            self.writer.put(done, task)
        self._pending = {}

    def finish(self) -> dict:
        """Wait for every film's outputs, complete the part, and merge when this process
        merges (the only part; torchrun's rank 0, once every rank's part is done). Returns
        the summary of :func:`merge`, or of this shard alone (``"shard": "I/N"``)."""
        self.writer.close()
        if self._warned > SHOWN_WARNINGS:
            print(f"warning: ... and {self._warned - SHOWN_WARNINGS} more film(s) whose DICOM "
                  "says they are not chest radiographs (each in its done record and "
                  f"{self.out / WARNINGS})", file=sys.stderr)
        i, n = self.shard
        info = {"shard": [i, n], "films": len(self.mine), "inputs": _input_digest(self.files),
                "token": self.token, "record": self.record}
        self.part.finish(self.files, self.stems, self.mine, info)
        if n == 1 or (self.dist.world > 1 and self.dist.main):
            if n > 1:
                self._wait_for_parts(n)
            return dict(merge([self.out]), warnings=list(self.warnings))
        summary = _part_summary(self.part_dir / PART)
        summary.update(shard=f"{i}/{n}", out=str(self.out), failed_file=str(self.part.path),
                       method=self.record.get("method"), warnings=list(self.warnings))
        if self.dist.world > 1:  # rank 0 merges, and reports every rank's failures
            summary["rank"] = self.dist.rank
        return summary

    def _wait_for_parts(self, n: int) -> None:
        """Rank 0: until every rank's part of this run is complete (by file, not by a
        collective: a rank with many more films left would outlast a barrier's timeout;
        torchrun stops every rank when one fails)."""
        while True:
            waiting = []
            for k in range(n):
                path = self.out / "shards" / f"{k}-of-{n}" / PART_DONE
                try:
                    ok = json.loads(path.read_text()).get("token") == self.token
                except (OSError, ValueError):
                    ok = False
                if not ok:
                    waiting.append(k)
            if not waiting:
                return
            time.sleep(0.5)


def _part_summary(path: Path) -> dict:
    images = boxes = masks = warned = 0
    failed = []
    for _, records, done in _read_groups(path):
        boxes += len(records)
        masks += int(done.get("masks", 0))
        warned += bool(done.get("warnings"))
        if done["status"] == "failed":
            failed.append((done["done"], done.get("reason", "")))
        else:
            images += 1
    return {"images": images, "boxes": boxes, "masks": masks, "failed": failed,
            "warned": warned}


# --- merging parts --------------------------------------------------------------------

def _parts_of(out: Path) -> tuple[dict, list[tuple[Path, dict | None]]]:
    record_path = out / "run.json"
    if not record_path.is_file():
        raise MergeError(f"{out}: no run.json; not a folder `wsloc heatmap` or `wsloc "
                         "segment` wrote")
    record = json.loads(record_path.read_text())
    if int(record.get("shards", 1)) == 1:
        folders = [out]
    else:
        folders = sorted(p for p in (out / "shards").glob("*-of-*") if p.is_dir())
    parts = []
    for folder in folders:
        done = folder / PART_DONE
        parts.append((folder, json.loads(done.read_text()) if done.is_file() else None))
    return record, parts


def merge(outs: Sequence[str | Path], progress: bool = False) -> dict:
    """Join the parts of a run into ``boxes.json`` and ``failed.txt`` (``wsloc merge``):
    what one uninterrupted process writes. The parts are those of ``outs[0]``, and of any
    further folders (shards run elsewhere, with their own OUT), whose parts, overlays,
    masks and maps are copied into ``outs[0]``.

    Returns:
        A summary: images (films read), boxes, masks, failed [(path, reason)], warned (films
        with warnings, listed in ``warnings.txt``), out, method.

    Raises:
        MergeError: a shard missing, unfinished, given twice, or made from another input
            list; RunMismatch: folders made with different checkpoints or settings (each
            difference named).
    """
    import shutil

    from wsloc.engine.rundir import differences

    outs = [Path(o) for o in outs]
    if not outs:
        raise MergeError("wsloc merge needs at least one OUT folder")
    record, parts = _parts_of(outs[0])
    for other in outs[1:]:
        rec, more = _parts_of(other)
        diff = differences(record, rec)
        if diff:
            raise RunMismatch(f"{other} holds a run made differently from {outs[0]}'s: "
                              + "; ".join(diff))
        parts += more
    n = int(record.get("shards", 1))
    unfinished = [str(f) for f, info in parts if info is None]
    if unfinished:
        raise MergeError("unfinished shard(s): " + ", ".join(unfinished) + " (no "
                         f"{PART_DONE}); run each again with --resume")
    seen: dict[int, Path] = {}
    for folder, info in parts:
        i, of = info["shard"]
        if of != n:
            raise MergeError(f"{folder}: shard {i}/{of} of a run split into {n}")
        if i in seen:
            raise MergeError(f"shard {i}/{n} is given twice: {seen[i]} and {folder}")
        seen[i] = folder
        diff = differences(record, info["record"])
        if diff:
            raise RunMismatch(f"{folder} was made differently: " + "; ".join(diff))
    missing = [f"{i}/{n}" for i in range(n) if i not in seen]
    if missing:
        raise MergeError(f"missing shard(s) {', '.join(missing)} of {outs[0]}: run them "
                         f"(--shard I/{n}), then merge again")
    digests = {json.dumps(info["inputs"], sort_keys=True) for _, info in parts}
    if len(digests) > 1:
        raise MergeError("the shards were made from different input lists ("
                         + " vs ".join(sorted(digests)) + "); run every shard on the same "
                         "INPUT arguments")
    dest = outs[0]
    for other in outs[1:]:  # bring the other folders' files home
        for sub in (*IMAGE_DIRS, "shards"):
            if not (other / sub).is_dir():
                continue
            for src in (other / sub).rglob("*"):
                if src.is_file() and not src.name.startswith("."):
                    target = dest / src.relative_to(other)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with replacing(target) as tmp:
                        shutil.copyfile(src, tmp)
    total = json.loads(next(iter(digests)))["count"]
    streams = [_read_groups(folder / PART) for folder, _ in sorted(parts, key=lambda p:
                                                                    p[1]["shard"][0])]
    summary = {"images": 0, "boxes": 0, "masks": 0, "failed": [], "warned": 0,
               "out": str(dest), "method": record.get("method")}
    expected = 0
    warned = dest / WARNINGS

    def films(notes):
        nonlocal expected
        for i, records, done in heapq.merge(*streams, key=lambda g: g[0]):
            if i != expected:
                raise MergeError(f"film {min(i, expected)} of {total} is "
                                 f"{'missing from' if i > expected else 'twice in'} the "
                                 "shards")
            expected += 1
            summary["masks"] += int(done.get("masks", 0))
            if done.get("warnings"):
                summary["warned"] += 1
                notes.write("".join(f"{done['done']}\t{w}\n" for w in done["warnings"]))
            if done["status"] == "failed":
                summary["failed"].append((done["done"], done.get("reason", "")))
            else:
                summary["images"] += 1
            yield from records

    with replacing(dest / "boxes.json") as tmp, open(tmp, "w") as f, \
            replacing(warned) as notes_tmp, open(notes_tmp, "w") as notes:
        summary["boxes"] = write_json_list(f, films(notes))
        if expected != total:
            raise MergeError(f"the shards hold {expected} of {total} films")
    if not summary["warned"]:
        warned.unlink()
    failed = dest / "failed.txt"
    if summary["failed"]:
        with replacing(failed) as tmp:
            tmp.write_text("".join(f"{p}\t{why}\n" for p, why in summary["failed"]))
    else:
        failed.unlink(missing_ok=True)
    for sub in IMAGE_DIRS:
        remove_temps(dest / sub)
    return summary
