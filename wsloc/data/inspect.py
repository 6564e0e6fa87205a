"""``wsloc inspect``: what a data root holds, from its metadata alone (images may be absent)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from wsloc.data.nih import CLASSES, NO_FINDING, find_data_entry, load_metadata

__all__ = ["summarize", "format_summary"]


def summarize(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 0,
              on_error: str = "raise") -> dict:
    """Counts of a data root: images, patients, labels, views, splits, boxes, and how many
    listed images are missing on disk."""
    meta = load_metadata(root, val_fraction=val_fraction, seed=seed, on_error=on_error)
    records = meta.records
    labels = Counter(label for r in records for label in r.labels)
    boxes = Counter(b.label for r in records for b in r.boxes)
    missing = [r.name for r in records if meta.paths[r.name] is None]
    splits = Counter(meta.split_of[r.name] for r in records)
    split_patients = {s: len({r.patient for r in records if meta.split_of[r.name] == s})
                      for s in splits}
    return {
        "root": str(Path(root)),
        "data_entry": find_data_entry(Path(root)).name,
        "images": len(records),
        "patients": len({r.patient for r in records}),
        "labels": {c: labels.get(c, 0) for c in CLASSES}
        | {NO_FINDING: sum(1 for r in records if not r.labels)},
        "views": dict(Counter(r.view for r in records)),
        "official_split": meta.official_split,
        "splits": {s: {"images": splits[s], "patients": split_patients[s]}
                   for s in ("train", "val", "test", "unlisted") if s in splits},
        "boxes": {c: boxes[c] for c in CLASSES if boxes.get(c)},
        "boxed_images": sum(1 for r in records if r.boxes),
        "missing_on_disk": len(missing),
        "missing_examples": missing[:5],
    }


def format_summary(s: dict) -> str:
    lines = [
        f"data root      {s['root']}  ({s['data_entry']})",
        f"images         {s['images']:,} listed, {s['missing_on_disk']:,} missing on disk"
        + (f" (e.g. {', '.join(s['missing_examples'])})" if s["missing_on_disk"] else ""),
        f"patients       {s['patients']:,}",
        "views          " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["views"].items())),
        "split          " + ("official lists (val carved by patient)" if s["official_split"]
                             else "by patient with the seed (no official lists)"),
    ]
    for name, part in s["splits"].items():
        lines.append(f"  {name:<12} {part['images']:,} images, {part['patients']:,} patients")
    lines.append("labels")
    for name, count in s["labels"].items():
        lines.append(f"  {name:<20} {count:,}")
    lines.append(f"boxes          {sum(s['boxes'].values()):,} on {s['boxed_images']:,} images")
    for name, count in s["boxes"].items():
        lines.append(f"  {name:<20} {count:,}")
    return "\n".join(lines)
