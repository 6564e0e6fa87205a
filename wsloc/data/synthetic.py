"""Synthetic chest X-rays in exactly the NIH layout: the built-in default dataset.

A procedural chest phantom (body and soft tissue, lung fields with vessel markings, ribs and
clavicles, spine, heart, diaphragm domes, noise, and per-image gamma/contrast/brightness
variation) with findings drawn at known places. Each finding has its own look, so a model can
learn it from image labels alone:

============== ==============================================================
Nodule         a small round dense spot in a lung
Mass           a large lobulated dense blob in a lung
Effusion       fluid filling a lung base, with a meniscus rising laterally
Cardiomegaly   the heart enlarged past half the chest's width
Pneumothorax   a dark crescent at a lung's apex and side, without vessel
               markings, edged by a thin bright pleural line
Atelectasis    a thin plate-like dense band in a lower lung
Infiltration   a patch of mottled, reticular density
Pneumonia      a large homogeneous consolidation with dark air bronchograms
============== ==============================================================

Every finding comes with its box (in ``BBox_List_2017.csv``, labelled as NIH does, so
Infiltration is written "Infiltrate") and a pixel mask (``masks/<stem>__<Label>.png``). The
per-image intensity variation is larger than any finding's effect on the mean brightness,
so findings cannot be told apart by global brightness. Deterministic by seed: image ``i``
is drawn from ``numpy.random.default_rng([seed, 0, i, ...])``, whatever the number of workers.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

__all__ = ["FINDINGS", "generate", "ensure_synthetic", "render"]

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax")
FINDING_PROBABILITY = 0.12
VERSION = 3
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(img, (0, 0), sigmaX=max(sigma, 0.3))


def _ellipse(u, v, cx, cy, rx, ry, angle: float = 0.0) -> np.ndarray:
    """Normalised squared radius of a rotated ellipse (< 1 inside)."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cx, v - cy
    a, b = (du * c + dv * s) / rx, (-du * s + dv * c) / ry
    return a * a + b * b


def _soft(d2: np.ndarray, edge: float = 0.15) -> np.ndarray:
    """A shape with a soft rim from a normalised squared radius."""
    return np.clip((1.0 - np.sqrt(d2)) / edge, 0.0, 1.0).astype(np.float32)


def render(seed: int, index: int, size: int, findings: bool = True
           ) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Draw image ``index``: (uint8 image [S, S], {finding: bool mask}, info).

    Anatomy, findings and acquisition draw from separate random streams, so
    ``findings=False`` renders the very same film without its findings (the tests compare the
    two against the masks).
    """
    rng = np.random.default_rng([seed, 0, index, 0])  # anatomy
    rng_f = np.random.default_rng([seed, 0, index, 1])  # findings
    rng_a = np.random.default_rng([seed, 0, index, 2])  # acquisition
    g = np.linspace(0.0, 1.0, size, dtype=np.float32)
    u, v = np.meshgrid(g, g)  # u: left→right, v: top→bottom
    jit = lambda scale: 1.0 + rng.uniform(-scale, scale)  # noqa: E731

    # --- anatomy ---------------------------------------------------------------------
    body = _soft(_ellipse(u, v, 0.5, 0.55, 0.47 * jit(0.04), 0.62 * jit(0.04)), 0.08)
    img = 0.05 + 0.40 * body + 0.06 * body * (1 - v)
    lungs = []
    for side in (-1, 1):
        cx = 0.5 + side * 0.2 * jit(0.05)
        lung = _soft(_ellipse(u, v, cx, 0.45, 0.14 * jit(0.06), 0.29 * jit(0.05)), 0.12)
        lung *= np.clip((0.78 * jit(0.02) - v) / 0.05 + (u - cx) ** 2 * 8, 0, 1)  # dome
        lungs.append((cx, lung))
    lung_all = np.maximum(lungs[0][1], lungs[1][1])
    vessels = _blur(rng.standard_normal((size, size)).astype(np.float32), size / 90)
    vessels = np.abs(vessels) / (np.abs(vessels).max() + 1e-6)
    hilum = np.exp(-(((u - 0.5) / 0.25) ** 2 + ((v - 0.45) / 0.25) ** 2))
    markings = 0.10 * vessels * (0.4 + hilum)
    img = img - 0.30 * lung_all + markings * lung_all
    thorax = _soft(_ellipse(u, v, 0.5, 0.47, 0.40, 0.36), 0.1)
    for k in range(10):  # posterior ribs: arcs sloping down and out
        v0 = 0.14 + k * 0.062 * jit(0.02)
        arc = v0 + 0.35 * (u - 0.5) ** 2 - 0.03
        img += 0.09 * thorax * np.exp(-(((v - arc) / 0.011) ** 2))
    for side in (-1, 1):  # clavicles
        line = 0.16 + side * (u - 0.5) * -0.25
        img += 0.10 * body * np.exp(-(((v - line) / 0.012) ** 2)) * (np.abs(u - 0.5) < 0.33)
    spine = np.exp(-(((u - 0.5) / 0.045) ** 2)) * (0.55 + 0.15 * np.cos(v * size / 9.0) ** 2)
    img += 0.30 * spine * body
    present = {name: bool(rng_f.random() < FINDING_PROBABILITY) and findings
               for name in FINDINGS}
    cardiomegaly = present["Cardiomegaly"]
    h_rx = (0.135 if not cardiomegaly else 0.205) * jit(0.05)
    h_ry = (0.12 if not cardiomegaly else 0.14) * jit(0.05)
    h_cx, h_cy = 0.54 + (0.03 if cardiomegaly else 0.0), 0.63 * jit(0.02)
    heart_d2 = _ellipse(u, v, h_cx, h_cy, h_rx, h_ry, angle=-0.35)
    heart = _soft(heart_d2, 0.1)
    img = img * (1 - heart) + (0.58 + 0.04 * v) * heart
    below = np.clip((v - (0.76 + 0.35 * (u - 0.5) ** 2)) / 0.03, 0, 1) * body
    img = img * (1 - below) + 0.62 * below  # diaphragm and abdomen

    # --- findings --------------------------------------------------------------------
    masks: dict[str, np.ndarray] = {}
    if cardiomegaly:
        masks["Cardiomegaly"] = heart_d2 < 1.0

    def lung_point(margin: float) -> tuple[float, float, int]:
        side = int(rng_f.integers(2))
        cx, lung = lungs[side]
        for _ in range(50):
            px, py = rng_f.uniform(cx - 0.12, cx + 0.12), rng_f.uniform(0.22, 0.68)
            iy, ix = int(py * (size - 1)), int(px * (size - 1))
            if lung[iy, ix] > 0.9 and heart_d2[iy, ix] > 1.6:
                return px, py, side
        return cx, 0.45, side

    for name in ("Nodule", "Mass"):
        if present[name]:
            px, py, _ = lung_point(0.05)
            r = rng_f.uniform(0.024, 0.034) if name == "Nodule" else rng_f.uniform(0.05, 0.075)
            d2 = _ellipse(u, v, px, py, r, r * jit(0.15))
            if name == "Mass":  # lobulated outline
                ang = np.arctan2(v - py, u - px)
                d2 = d2 * (1 + 0.18 * np.sin(3 * ang + rng_f.uniform(0, 6)))
            blob = _soft(d2, 0.45)
            img += (0.26 if name == "Nodule" else 0.28) * blob
            masks[name] = d2 < 1.0
    if present["Effusion"]:  # Effusion: a base filled with fluid
        cx, lung = lungs[int(rng_f.integers(2))]
        level = rng_f.uniform(0.52, 0.6) - 0.3 * np.abs(u - cx)  # meniscus: higher laterally
        fluid = (lung > 0.3) & (v > level) & (np.abs(u - cx) < 0.16)
        soft_fluid = _blur(fluid.astype(np.float32), size / 120)
        img = img * (1 - soft_fluid) + 0.55 * soft_fluid
        masks["Effusion"] = fluid
    if present["Pneumothorax"]:  # Pneumothorax: dark apical/lateral crescent
        side = int(rng_f.integers(2))
        cx, lung = lungs[side]
        inner = _ellipse(u, v, cx - side * 0.03, 0.49, 0.12, 0.24)
        crescent = (lung > 0.5) & (inner > 1.0) & (v < 0.62)
        soft_c = _blur(crescent.astype(np.float32), size / 200)
        img = img - soft_c * (markings * lung_all + 0.06)
        pleura = np.exp(-(((np.sqrt(inner) - 1.0) / 0.02) ** 2)) * (lung > 0.5) * (v < 0.62)
        pleura *= _blur(crescent.astype(np.float32), size / 100) > 0.05  # edges the crescent
        img += 0.10 * pleura
        masks["Pneumothorax"] = crescent
    if present["Atelectasis"]:  # Atelectasis: a plate-like band, lower lung
        cx, _ = lungs[int(rng_f.integers(2))]
        py = rng_f.uniform(0.55, 0.66)
        ang = rng_f.uniform(-0.35, 0.35)
        d2 = _ellipse(u, v, cx, py, rng_f.uniform(0.08, 0.11), rng_f.uniform(0.016, 0.022), ang)
        img += 0.24 * _soft(d2, 0.5)
        masks["Atelectasis"] = d2 < 1.3
    if present["Infiltration"]:  # Infiltration: mottled, reticular patch
        px, py, _ = lung_point(0.08)
        d2 = _ellipse(u, v, px, py, rng_f.uniform(0.07, 0.1), rng_f.uniform(0.07, 0.1))
        mottle = _blur(rng_f.standard_normal((size, size)).astype(np.float32), size / 140)
        mottle = np.clip(mottle / (mottle.std() + 1e-6), 0, None)
        img += 0.18 * mottle * _soft(d2, 0.4)
        masks["Infiltration"] = d2 < 1.0
    if present["Pneumonia"]:  # Pneumonia: consolidation + air bronchograms
        px, py, _ = lung_point(0.1)
        ang = np.arctan2(v - py, u - px)
        d2 = _ellipse(u, v, px, py, rng_f.uniform(0.085, 0.11), rng_f.uniform(0.1, 0.13))
        d2 = d2 * (1 + 0.12 * np.sin(4 * ang + rng_f.uniform(0, 6)))
        patch = _soft(d2, 0.35)
        img = img * (1 - 0.8 * patch) + 0.6 * 0.8 * patch
        for _ in range(3):
            a = rng_f.uniform(0, 2 * np.pi)
            dist = np.abs((u - px) * np.sin(a) - (v - py) * np.cos(a))
            along = (u - px) * np.cos(a) + (v - py) * np.sin(a)
            img -= 0.12 * patch * np.exp(-((dist / 0.006) ** 2)) * (np.abs(along) < 0.07)
        masks["Pneumonia"] = d2 < 1.0

    # --- acquisition: noise, blur, exposure ----------------------------------------------
    img = _blur(img.astype(np.float32), size / 400)
    img = img + rng_a.normal(0, 0.018, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    img = img ** rng_a.uniform(0.75, 1.3)
    img = (img - 0.5) * rng_a.uniform(0.8, 1.2) + 0.5 + rng_a.uniform(-0.08, 0.08)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out, masks, {"findings": sorted(masks)}


def _box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(
        ys.max() + 1 - ys.min())


def _write_chunk(job: tuple[str, int, int, list[tuple[int, str]]]) -> list[tuple[str, list]]:
    import cv2

    out_dir, seed, size, items = job
    root = Path(out_dir)
    rows = []
    for index, name in items:
        img, masks, _ = render(seed, index, size)
        if not cv2.imwrite(str(root / "images" / name), img):
            raise OSError(f"cannot write {root / 'images' / name}")
        boxes = []
        for label, mask in sorted(masks.items()):
            box = _box(mask)
            if box is None:
                continue
            boxes.append((label, box))
            cv2.imwrite(str(root / "masks" / f"{Path(name).stem}__{label}.png"),
                        mask.astype(np.uint8) * 255)
        rows.append((name, boxes))
    return rows


def generate(out: str | os.PathLike, n: int = 2000, size: int = 256, seed: int = 0,
             workers: int | None = None, progress: bool = True) -> Path:
    """Write ``n`` synthetic films of ``size``² into ``out`` in the NIH layout.

    Writes ``images/``, ``masks/``, ``Data_Entry_2017_v2020.csv``, ``BBox_List_2017.csv``,
    ``train_val_list.txt`` / ``test_list.txt`` (80/20 by patient) and ``synth.json``.
    ``out`` must not exist or be empty.
    """
    from tqdm import tqdm

    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--n must be a positive int, got {n!r}")
    if not isinstance(size, int) or size < 64:
        raise ValueError(f"--size must be an int >= 64, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative int, got {seed!r}")
    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose a new --out")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    # patients with 1-4 follow-up films each
    patients, follow = [], []
    pid = 0
    while len(patients) < n:
        pid += 1
        for f in range(int(rng.integers(1, 5))):
            patients.append(pid)
            follow.append(f)
    patients, follow = patients[:n], follow[:n]
    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(patients, follow)]
    # demographics per patient (age grows by a year per follow-up film)
    person = {p: (int(rng.integers(20, 80)), "M" if rng.random() < 0.55 else "F")
              for p in sorted(set(patients))}
    jobs = [(str(root), seed, size, [(i, names[i]) for i in range(j, min(j + 32, n))])
            for j in range(0, n, 32)]
    workers = workers or min(os.cpu_count() or 1, 8)
    boxes: dict[str, list] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool, tqdm(
            total=n, desc="synth", unit="img", disable=not progress) as bar:
        for rows in pool.map(_write_chunk, jobs):
            for name, bx in rows:
                boxes[name] = bx
            bar.update(len(rows))
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        f.write(HEADER + "\n")
        writer = csv.writer(f, lineterminator="\n")
        for i, name in enumerate(names):
            labels = "|".join(label for label, _ in boxes[name]) or "No Finding"
            age, sex = person[patients[i]]
            writer.writerow([name, labels, follow[i], patients[i], age + follow[i], sex,
                             "PA" if rng.random() < 0.6 else "AP", size, size, 0.143, 0.143])
    with open(root / "BBox_List_2017.csv", "w", newline="") as f:
        f.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
        writer = csv.writer(f, lineterminator="\n")
        for name in names:
            for label, (x, y, w, h) in boxes[name]:
                writer.writerow([name, "Infiltrate" if label == "Infiltration" else label,
                                 x, y, w, h])
    unique = sorted(set(patients))
    order = np.random.default_rng([seed, 2]).permutation(len(unique))
    test_patients = {unique[i] for i in order[: max(1, round(0.2 * len(unique)))]}
    (root / "test_list.txt").write_text(
        "".join(nm + "\n" for nm, p in zip(names, patients) if p in test_patients))
    (root / "train_val_list.txt").write_text(
        "".join(nm + "\n" for nm, p in zip(names, patients) if p not in test_patients))
    (root / "synth.json").write_text(json.dumps(
        {"version": VERSION, "n": n, "size": size, "seed": seed}) + "\n")
    return root


def default_cache_root() -> Path:
    base = os.environ.get("WSLOC_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "wsloc" if base else Path.home() / ".cache" / "wsloc"


def ensure_synthetic(n: int = 2000, size: int = 256, seed: int = 0,
                     cache_root: str | os.PathLike | None = None,
                     progress: bool = True) -> Path:
    """The synthetic set for (n, size, seed), generated on first use into the cache folder
    (``$WSLOC_CACHE``, else ``~/.cache/wsloc``) and reused after; written to a temporary
    folder and renamed, so an interrupted run never leaves a half set behind."""
    root = Path(cache_root) if cache_root else default_cache_root()
    target = root / f"synthetic-v{VERSION}-n{n}-s{size}-seed{seed}"
    if (target / "synth.json").is_file():
        return target
    tmp = root / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        generate(tmp, n=n, size=size, seed=seed, progress=progress)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "synth.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
