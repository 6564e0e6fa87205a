"""What runs that outlive a process share: an output folder that records what produced it
and refuses to be mixed with another run, and files written whole or not at all.

A run claims its folder with :func:`claim`: the first claim writes ``record`` (the settings
that determine the results) into ``OUT/run.json``; a later claim with the same record
continues that run, and one with a different record is refused, naming each difference.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["RunMismatch", "claim", "write_atomic", "write_json_atomic", "differences",
           "replacing", "remove_temps", "TEMP_MARK"]

RECORD = "run.json"


class RunMismatch(ValueError):
    """An output folder that holds another run's results."""


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename:
    a reader (or a process killed mid-write) sees the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would make it, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TEMP_MARK = ".wsloc-tmp"


@contextlib.contextmanager
def replacing(path: str | Path, tag: str = ""):
    """Write a file whole or not at all, by any writer that takes a path (``cv2.imwrite``,
    ``np.save``): yields a temporary path beside ``path`` — hidden, with the same suffix so
    that writers choosing a format by it still do — and renames it onto ``path`` when the
    block ends without an error (removing it when it raises). A process killed inside the
    block leaves only the temporary file, which :func:`remove_temps` clears.

    ``tag`` goes into the temporary name, so that concurrent writers of different files
    (shards) clear only their own leftovers.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{tag}{TEMP_MARK}{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(f"cannot write {path}: the writer wrote nothing")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temps(folder: str | Path, tag: str | None = None) -> int:
    """Remove what :func:`replacing` left in ``folder`` from killed writers: those of
    ``tag`` only, or of every tag when it is None. Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        if p.name.startswith(".") and (f".{tag}{TEMP_MARK}" if tag is not None
                                       else TEMP_MARK) in p.name:
            p.unlink(missing_ok=True)
            n += 1
    return n


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_json_atomic(path: str | Path, payload) -> None:
    from wsloc.report import json_ready

    write_atomic(path, json.dumps(json_ready(payload), indent=2) + "\n")


def differences(old, new, where: str = "") -> list[str]:
    """Each place where two JSON-like values differ, as ``key: old → new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            here = f"{where}.{key}" if where else str(key)
            if key not in old:
                out.append(f"{here}: (absent) → {new[key]!r}")
            elif key not in new:
                out.append(f"{here}: {old[key]!r} → (absent)")
            else:
                out += differences(old[key], new[key], here)
        return out
    return [] if old == new else [f"{where or 'value'}: {old!r} → {new!r}"]


def _read_record(path: Path, tries: int = 50) -> dict:
    """The record, waiting a moment for a claim another process is writing right now."""
    import time

    for _ in range(tries):
        text = path.read_text()
        if text.strip():
            return json.loads(text)
        time.sleep(0.1)
    raise RunMismatch(f"{path} is empty: a claim was interrupted; remove it and run again")


def claim(out: str | Path, record: dict, what: str, extends=None) -> tuple[Path, bool]:
    """Claim ``out`` for the run described by ``record`` (JSON-ready). ``extends(old,
    new)``, when given, accepts a record that only grows the old one (the stored record is
    then replaced by the new).

    Returns:
        (the folder, whether it already held this run).

    Raises:
        RunMismatch: ``out`` holds a different run (each difference named), or files but no
            record of a run (not a folder this command wrote).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RECORD
    record = json.loads(json.dumps(record))  # as it will read back
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        old = _read_record(path)
        diff = differences(old, record)
        if diff and extends is not None and extends(old, record):
            write_atomic(path, json.dumps(record, indent=2) + "\n")
            return out, True
        if diff:
            raise RunMismatch(f"{out} holds another {what} ({path}); it differs in: "
                              + "; ".join(diff) + ". Use another --out, or the same "
                              "settings to continue it") from None
        return out, True
    if any(p.name != RECORD for p in out.iterdir()):
        os.close(fd)
        path.unlink()
        raise RunMismatch(f"{out} is not empty and holds no {RECORD}: not a {what} folder; "
                          "use a new --out")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    return out, False
