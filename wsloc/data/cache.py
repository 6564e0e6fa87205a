"""A fast image cache: every image resized to S×S uint8 in one memory-mapped array.

``wsloc prepare --data-root R --size S`` writes ``R/wsloc_cache/images_S.u8`` (the array,
[N, S, S]) and ``images_S.json`` (its index: names, which rows are filled, each image's size
on disk so boxes can be scaled). :class:`wsloc.data.ChestXray14` uses a cache when one is
present whose size is at least the size it trains at. Both files are written under temporary
names and renamed when complete, so an interrupted ``prepare`` leaves no half cache behind.
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from wsloc.data.images import ImageReadError, read_image

__all__ = ["CACHE_DIRNAME", "ImageCache", "prepare_cache"]

CACHE_DIRNAME = "wsloc_cache"
FORMAT = 1


class ImageCache:
    """A read-only view of a prepared cache. The memory map opens lazily in each process,
    so a dataset holding one can be sent to DataLoader workers."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = Path(index_path)
        info = json.loads(self.index_path.read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"{index_path}: unknown cache format {info.get('format')!r}; "
                             "run `wsloc prepare` again")
        self.size = int(info["size"])
        self.array_path = self.index_path.with_suffix(".u8")
        self.rows = len(info["names"])  # the array's length, whatever the names hold
        self.row = {n: i for i, (n, ok) in enumerate(zip(info["names"], info["ok"])) if ok}
        self.disk_size = {n: tuple(s) for n, s in zip(info["names"], info["disk_size"])}
        self._array: np.memmap | None = None

    @classmethod
    def find(cls, root: Path, min_size: int | None, cache_dir: Path | None = None):
        """The smallest cache under ``cache_dir`` (default ``root/wsloc_cache``) whose size is
        at least ``min_size`` (any size when None); None when there is none."""
        folder = Path(cache_dir) if cache_dir else Path(root) / CACHE_DIRNAME
        sizes = []
        for path in folder.glob("images_*.json"):
            try:
                size = int(path.stem.split("_")[1])
            except (IndexError, ValueError):
                continue
            if (min_size is None or size >= min_size) and path.with_suffix(".u8").is_file():
                sizes.append((size, path))
        return cls(min(sizes)[1]) if sizes else None

    def __contains__(self, name: str) -> bool:
        return name in self.row

    def get(self, name: str) -> np.ndarray:
        """The cached image as float32 [S, S] in [0, 1]."""
        if self._array is None:
            self._array = np.memmap(self.array_path, dtype=np.uint8, mode="r",
                                    shape=(max(self.rows, 1), self.size, self.size))
        # divided as read_image divides, so a cached pixel equals the PNG's to the bit
        return self._array[self.row[name]].astype(np.float32) / 255.0

    def __getstate__(self):  # never pickle an open memory map into a worker
        state = self.__dict__.copy()
        state["_array"] = None
        return state


def _fill(job: tuple[str, int, int, list[tuple[int, str]], str]) -> list[tuple[int, str, tuple]]:
    """Worker: read, resize and write a chunk of rows; returns (row, error, (h, w))."""
    import cv2

    array_path, n, size, rows, on_error = job
    array = np.memmap(array_path, dtype=np.uint8, mode="r+", shape=(n, size, size))
    results = []
    for i, path in rows:
        try:
            img = read_image(path)
        except (ImageReadError, FileNotFoundError) as err:
            if on_error != "skip":
                raise
            results.append((i, str(err), (0, 0)))
            continue
        small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        array[i] = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
        results.append((i, "", img.shape))
    array.flush()
    return results


def prepare_cache(root: str | os.PathLike, size: int, cache_dir: str | os.PathLike | None = None,
                  workers: int | None = None, on_error: str = "raise",
                  progress: bool = True) -> Path:
    """Resize every image listed in Data_Entry to ``size``×``size`` uint8 into one memory
    map; returns the index path. Missing images are left out (with a warning); unreadable
    ones raise, or with ``on_error="skip"`` are left out with a warning line each."""
    from tqdm import tqdm

    from wsloc.data.nih import find_data_entry, index_images, read_data_entry

    root = Path(root)
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"--size must be an int >= 8, got {size!r}")
    records = read_data_entry(find_data_entry(root), on_error)
    on_disk = index_images(root)
    names = [r.name for r in records]
    missing = [n for n in names if n not in on_disk]
    if missing:
        warnings.warn(f"{root}: {len(missing)} listed image(s) are not on disk and are left "
                      f"out of the cache (e.g. {missing[0]})", stacklevel=2)
    folder = Path(cache_dir) if cache_dir else root / CACHE_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / f"images_{size}.json"
    tmp_array = folder / f".images_{size}.u8.tmp"
    n = len(names)
    np.memmap(tmp_array, dtype=np.uint8, mode="w+", shape=(max(n, 1), size, size)).flush()
    rows = [(i, str(on_disk[nm])) for i, nm in enumerate(names) if nm in on_disk]
    chunk = 64
    jobs = [(str(tmp_array), max(n, 1), size, rows[j:j + chunk], on_error)
            for j in range(0, len(rows), chunk)]
    ok = [False] * n
    disk_size = [[0, 0]] * n
    workers = workers or min(os.cpu_count() or 1, 8)
    bar = tqdm(total=len(rows), desc=f"prepare {size}px", unit="img", disable=not progress)
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for results in pool.map(_fill, jobs):
                for i, error, shape in results:
                    if error:
                        warnings.warn(f"skipped: {error}", stacklevel=2)
                    else:
                        ok[i] = True
                        disk_size[i] = [int(shape[0]), int(shape[1])]
                bar.update(len(results))
    except BaseException:
        tmp_array.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    os.replace(tmp_array, index_path.with_suffix(".u8"))
    tmp_index = folder / f".images_{size}.json.tmp"
    tmp_index.write_text(json.dumps({"format": FORMAT, "size": size, "names": names, "ok": ok,
                                     "disk_size": disk_size}))
    os.replace(tmp_index, index_path)
    skipped = len(rows) - sum(ok)
    if skipped:
        warnings.warn(f"{skipped} unreadable image(s) were left out of the cache", stacklevel=2)
    return index_path
