"""Reports: metrics JSON, Markdown tables beside the paper's figures, ROC curves as PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["PAPER_AUC", "PAPER_LOCALIZATION", "write_metrics", "auc_table", "plot_roc",
           "localization_tables", "segmentation_table", "json_ready", "overlay_png",
           "mask_overlay_png", "benchmark_table", "benchmark_plots"]

# Wang et al. (CVPR 2017), ResNet-50 with W-CEL: the 8-class ChestX-ray8 table, and the
# 14-class ChestX-ray14 figures on the official patient-level split.
PAPER_AUC = {
    "ResNet-50, ChestX-ray8 (Wang et al. 2017)": dict(zip(
        ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
         "Pneumonia", "Pneumothorax"),
        (.7069, .8141, .7362, .6128, .5609, .7164, .6333, .7891))),
    "ResNet-50, ChestX-ray14 (Wang et al. 2017)": dict(zip(
        ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
         "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
         "Pleural_Thickening", "Hernia"),
        (.7003, .8100, .7585, .6614, .6933, .6687, .6580, .7993, .7032, .8052, .8330, .7859,
         .6835, .8717))),
}
_EIGHT = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
          "Pneumonia", "Pneumothorax")


def _rows(text: str) -> dict:
    """{threshold: {finding: value}} from 'T: v v v v v v v v' lines."""
    out = {}
    for line in text.strip().splitlines():
        t, values = line.split(":")
        out[float(t)] = dict(zip(_EIGHT, (float(v) for v in values.split())))
    return out


# Wang et al. (CVPR 2017), the 8-class ResNet-50 model on the 984 NIH boxes: Table 4's
# accuracy and AFP, and Appendix Table 7 (the 14-class model, T(IoBB) only).
PAPER_LOCALIZATION = {
    "8-class ResNet-50 (Wang et al. 2017)": {
        "iobb": _rows("""0.1: .7277 .9931 .7124 .7886 .4352 .1645 .7500 .4591
            0.25: .5500 .9794 .5424 .5772 .2823 .0506 .5583 .3469
            0.5: .2833 .8767 .3333 .4227 .1411 .0126 .3833 .1836
            0.75: .1666 .7260 .2418 .3252 .1176 .0126 .2583 .1020
            0.9: .1333 .6849 .2091 .2520 .0588 .0126 .2416 .0816"""),
        "iou": _rows("""0.1: .6888 .9383 .6601 .7073 .4000 .1392 .6333 .3775
            0.2: .4722 .6849 .4509 .4796 .2588 .0506 .3500 .2346
            0.3: .2444 .4589 .3006 .2764 .1529 .0379 .1666 .1326
            0.4: .0944 .2808 .2026 .1219 .0705 .0126 .0750 .0714
            0.5: .0500 .1780 .1111 .0650 .0117 .0126 .0333 .0306
            0.6: .0222 .0753 .0457 .0243 .0000 .0126 .0166 .0306
            0.7: .0055 .0273 .0196 .0000 .0000 .0000 .0083 .0204"""),
        "afp_iobb": _rows("""0.1: .8323 .3506 .7998 .5589 .6423 .6047 .9055 .4776
            0.25: .9167 .4553 .8598 .6077 .6707 .6158 .9614 .5000
            0.5: 1.0203 .5630 .9268 .6585 .6941 .6189 1.0132 .5285
            0.75: 1.0619 .6616 .9603 .6921 .7043 .6199 1.0569 .5396
            0.9: 1.0752 .7226 .9797 .7124 .7144 .6199 1.0732 .5437"""),
        "afp_iou": _rows("""0.1: .8943 .5996 .8343 .6250 .6666 .6077 1.0203 .4949
            0.2: .9827 .7205 .9096 .6849 .6941 .6158 1.0793 .5173
            0.3: 1.0417 .7815 .9472 .7236 .7073 .6168 1.1067 .5325
            0.4: 1.0783 .8140 .9705 .7489 .7164 .6189 1.1239 .5427
            0.5: 1.0884 .8354 .9919 .7571 .7215 .6189 1.1291 .5478
            0.6: 1.0935 .8506 1.0051 .7632 .7226 .6189 1.1321 .5478
            0.7: 1.0965 .8577 1.0090 .7663 .7226 .6199 1.1331 .5488"""),
    },
    "14-class ResNet-50 (Wang et al. 2017, appendix)": {
        "iobb": _rows("""0.1: .6222 1 .7974 .9106 .5882 .1519 .8583 .5204
            0.25: .3944 .9863 .6339 .7967 .4588 .0506 .7083 .3367
            0.5: .1944 .9452 .4183 .6504 .3058 0 .4833 .2653
            0.75: .0889 .8151 .2287 .4390 .1647 0 .2917 .1735
            0.9: .0722 .6507 .1373 .3577 .0941 0 .2333 .1224"""),
        "afp_iobb": _rows("""0.1: .8293 .1768 .6148 .4919 .3933 .4685 .4360 .4543
            0.25: .9319 .2042 .6880 .5447 .4288 .4786 .4959 .4857
            0.5: .9979 .2785 .7652 .6006 .4604 .4827 .5630 .5030
            0.75: 1.0285 .4045 .8222 .6697 .4827 .4827 .6169 .5243
            0.9: 1.0356 .4837 .8445 .7043 .4939 .4827 .6331 .5346"""),
    },
}
SHORT = {"Pleural_Thickening": "P.Thick", "Cardiomegaly": "Card", "Pneumothorax": "Pnth"}


def _short(name: str) -> str:
    return SHORT.get(name, name[:4])


def auc_table(classes: Sequence[str], aucs: Sequence[float], label: str) -> str:
    """A Markdown table laid out like the paper's, our row first, the paper's rows after
    (the paper's figures are on NIH data: they compare only on the NIH release)."""
    def fmt(v):
        return "—" if v is None or not np.isfinite(v) else f"{v:.4f}"

    head = "| model | " + " | ".join(_short(c) for c in classes) + " | mean |"
    rows = [head, "|---|" + "---|" * (len(classes) + 1)]
    ours = [float(a) for a in aucs]
    finite = [a for a in ours if np.isfinite(a)]
    rows.append(f"| {label} | " + " | ".join(fmt(a) for a in ours) + " | "
                + fmt(np.mean(finite) if finite else None) + " |")
    for name, figures in PAPER_AUC.items():
        if not set(classes) & set(figures):
            continue
        vals = [figures.get(c) for c in classes]
        known = [v for v in vals if v is not None]
        rows.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + " | "
                    + fmt(np.mean(known)) + " |")
    return "\n".join(rows)


def json_ready(obj):
    """``obj`` with float keys (thresholds) written as the tables write them ("0.25")."""
    if isinstance(obj, dict):
        return {(f"{k:g}" if isinstance(k, float) else k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def write_metrics(path: str | Path, payload) -> None:
    Path(path).write_text(json.dumps(json_ready(payload), indent=2) + "\n")


def plot_roc(path: str | Path, scores: np.ndarray, labels: np.ndarray,
             classes: Sequence[str], aucs: Sequence[float]) -> None:
    """One ROC curve per class (scikit-learn's roc_curve) in a single PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    for c, name in enumerate(classes):
        if not np.isfinite(aucs[c]):
            continue
        fpr, tpr, _ = roc_curve(labels[:, c], scores[:, c])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} ({aucs[c]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
           title="ROC per finding (AUC)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def localization_tables(scores: dict, label: str) -> str:
    """Markdown tables laid out like the paper's Table 4 (and Appendix Table 7): for each
    T(IoBB) and T(IoU), our accuracy and AFP per finding, the paper's beside them; then the
    pointing game. ``scores`` is :func:`wsloc.metrics.localization_scores`' result."""
    found = list(scores["boxes"])

    def fmt(v):
        return "—" if v is None or not np.isfinite(v) else f"{v:.4f}"

    parts = []
    for kind, title in (("iobb", "T(IoBB)"), ("iou", "T(IoU)")):
        head = (f"| {title} | | " + " | ".join(_short(c) for c in found) + " | mean |\n"
                + "|---|---|" + "---|" * (len(found) + 1))
        rows = [head]
        for t, acc in scores[kind].items():
            afp = scores[f"afp_{kind}"][t]
            rows.append(f"| {t:g} | {label} Acc. | " + " | ".join(fmt(acc[c]) for c in found)
                        + f" | {fmt(acc['mean'])} |")
            rows.append(f"| | {label} AFP | " + " | ".join(fmt(afp[c]) for c in found)
                        + f" | {fmt(afp['mean'])} |")
            for name, paper in PAPER_LOCALIZATION.items():
                for what, key in (("Acc.", kind), ("AFP", f"afp_{kind}")):
                    row = paper.get(key, {}).get(float(t))
                    if row is None:
                        continue
                    vals = [row.get(c) for c in found]
                    known = [v for v in vals if v is not None]
                    rows.append(f"| | {name} {what} | " + " | ".join(
                        "—" if v is None else f"{v:.4f}" for v in vals)
                        + f" | {fmt(np.mean(known)) if known else '—'} |")
        parts.append("\n".join(rows))
    if "pointing" in scores:
        p = scores["pointing"]
        parts.append("| pointing game | " + " | ".join(_short(c) for c in found)
                     + " | mean |\n|---|" + "---|" * (len(found) + 1) + f"\n| {label} | "
                     + " | ".join(fmt(p[c]) for c in found) + f" | {fmt(p['mean'])} |")
    counts = ", ".join(f"{c} {n}" for c, n in scores["boxes"].items())
    return ("\n\n".join(parts) + f"\n\nGround-truth boxes: {counts}. A box is localized when a "
            "predicted box of its class on its film has IoU (IoBB) > T; AFP = predicted boxes "
            "of a finding matching none of its boxes, per film that has one.")


def segmentation_table(result: dict, label: str, header: bool = True) -> str:
    """Mask IoU per finding and mean IoU, one row per mask stage, from
    :func:`wsloc.engine.segment.segment_split`; without ``header``, rows to append to
    another such table (each stage then named with ``label``)."""
    stages = result["stages"]
    classes = list(next(iter(stages.values()))["iou"])
    lines = []
    if header:
        lines = [f"| mask IoU, {label} ({result['images']} films) | "
                 + " | ".join(_short(c) for c in classes) + " | mean IoU |",
                 "|" + "---|" * (len(classes) + 2)]
    for stage, r in stages.items():
        cells = ["–" if r["iou"][c] is None else f"{r['iou'][c]:.4f}" for c in classes]
        mean = "–" if r["mean_iou"] is None else f"{r['mean_iou']:.4f}"
        name = stage if header else f"{label}: {stage}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


class _Panels:
    """Side-by-side panels of one film for an overlay PNG: the film scaled to fit
    ``max_side``, captions, and the row written out."""

    def __init__(self, film: np.ndarray, max_side: int = 384) -> None:
        import cv2

        h, w = film.shape
        self.scale = min(1.0, max_side / max(h, w))
        self.size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        gray = cv2.resize(np.clip(film * 255, 0, 255).astype(np.uint8), self.size,
                          interpolation=cv2.INTER_AREA)
        self.base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        self.font_scale = max(0.35, self.size[0] / 700)
        self.panels: list[np.ndarray] = []

    def add(self, panel: np.ndarray, text: str, notes: Sequence[str] = ()) -> None:
        """A panel with its caption (white on black, top left) and, below it, each of
        ``notes`` on a line of its own in yellow: warnings a reader must not miss."""
        import cv2

        font = cv2.FONT_HERSHEY_SIMPLEX
        top = 0
        for line, color in [(text, (255, 255, 255)), *((n, (0, 255, 255)) for n in notes)]:
            (tw, th), base_line = cv2.getTextSize(line, font, self.font_scale, 1)
            cv2.rectangle(panel, (0, top), (tw + 8, top + th + base_line + 8), (0, 0, 0), -1)
            cv2.putText(panel, line, (4, top + th + 4), font, self.font_scale, color, 1,
                        cv2.LINE_AA)
            top += th + base_line + 8
        self.panels.append(panel)

    def write(self, path: str | Path) -> None:
        import cv2

        gap = np.full((self.size[1], 4, 3), 255, np.uint8)
        row = self.panels[0]
        for p in self.panels[1:]:
            row = np.concatenate([row, gap, p], axis=1)
        if not cv2.imwrite(str(path), row):
            raise OSError(f"cannot write {path}")


def overlay_png(path: str | Path, film: np.ndarray, loc, max_side: int = 384,
                notes: Sequence[str] = ()) -> None:
    """One PNG a person reads at a glance: the film, then one panel per shown class with
    its heatmap (JET, blended by heat), its boxes (thin: threshold 60, thick: the higher
    thresholds), its name and probability. ``loc`` is a
    :class:`wsloc.engine.localize.Localization` with heatmaps kept. ``notes``: short
    warnings written under the film's caption, one a line (e.g. ``OUT OF DOMAIN:
    synthetic-trained model``)."""
    import cv2

    out = _Panels(film, max_side)
    out.add(out.base.copy(), loc.image if loc.shown else f"{loc.image}: no finding shown",
            notes)
    lowest = min((b["threshold"] for b in loc.boxes), default=None)
    for j, label in enumerate(loc.shown):
        heat = cv2.resize(loc.heatmaps[j], out.size, interpolation=cv2.INTER_LINEAR)
        color = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8),
                                  cv2.COLORMAP_JET)
        alpha = (0.6 * heat)[..., None]
        panel = (out.base * (1 - alpha) + color * alpha).astype(np.uint8)
        for b in loc.boxes:
            if b["class"] != label:
                continue
            p1 = (int(b["x1"] * out.scale), int(b["y1"] * out.scale))
            p2 = (max(p1[0], int(b["x2"] * out.scale) - 1),
                  max(p1[1], int(b["y2"] * out.scale) - 1))
            thick = 1 if b["threshold"] == lowest else 2
            cv2.rectangle(panel, p1, p2, (255, 255, 255) if thick == 1 else (0, 255, 0), thick)
        out.add(panel, f"{label} p={loc.probability(label):.2f}")
    out.write(path)


def mask_overlay_png(path: str | Path, film: np.ndarray, name: str,
                     shown: list[tuple[str, float, np.ndarray]], max_side: int = 384,
                     notes: Sequence[str] = ()) -> None:
    """The film, then one panel per finding: its mask filled in red with a yellow outline,
    its name and probability. ``shown``: (finding, probability, boolean mask [H, W]).
    ``notes``: as for :func:`overlay_png`."""
    import cv2

    out = _Panels(film, max_side)
    out.add(out.base.copy(), name if shown else f"{name}: no finding", notes)
    for label, p, mask in shown:
        m = cv2.resize(mask.astype(np.uint8), out.size, interpolation=cv2.INTER_NEAREST)
        panel = out.base.copy()
        panel[m > 0] = (0.55 * panel[m > 0] + 0.45 * np.array([0, 0, 255])).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(panel, contours, -1, (0, 255, 255), 1)
        out.add(panel, f"{label} p={p:.2f}")
    out.write(path)


BENCH_COLUMNS = (("mean_auc", "mean AUC", 4), ("tiobb", "T(IoBB = 0.5)", 3),
                 ("tiou", "T(IoU = 0.3)", 3), ("pointing", "pointing", 3),
                 ("afp", "AFP at T(IoBB = 0.5)", 2), ("weakest", "weakest finding", 3),
                 ("train_s", "train s", 0))


def _spread_cell(m: dict | None, digits: int, seeds: int) -> str:
    if m is None:
        return "—"
    text = f"{m['mean']:.{digits}f}"
    if seeds > 1:
        text += f" ± {m['std']:.{digits}f} ({m['worst']:.{digits}f})"
    if "finding" in m:
        text += f" {_short(m['finding'])}"
    return text


def benchmark_table(summary: dict) -> str:
    """``results.md`` of ``wsloc benchmark``: one row per (config, method), each metric as
    mean ± sample std over the seeds finished, the worst seed in brackets; then T(IoBB = 0.5)
    per finding, the goals, and the failed cells with their reasons."""
    c = summary["cells"]
    lines = [f"# Benchmark `{summary['grid']}`", "",
             f"Grid: `{summary['path']}` (base config `{summary['base']}`), "
             f"{summary['seeds']} training seed(s) per row, methods: "
             f"{', '.join(summary['methods'])}.", "",
             f"- selected on: {summary['select']}",
             f"- reported on: {summary['report']}",
             f"- cells: {c['done']} done, {c['failed']} failed, {c['pending']} pending, of "
             f"{c['total']}", "",
             "Each figure: mean ± sample standard deviation over the seeds done (the worst "
             "seed's value); the weakest finding is the lowest per-finding accuracy at "
             "T(IoBB = 0.5), named for the worst seed.", ""]
    goals = summary.get("goals") or {}
    head = ["config", "method", "seeds"] + [name for _, name, _ in BENCH_COLUMNS]
    if goals:
        head.append("seeds meeting every goal")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        n = len(r["seeds_done"])
        cells = [r["row"], r["method"], f"{n}" + (f" (+{len(r['failed'])} failed)"
                                                  if r["failed"] else "")]
        cells += [_spread_cell(r["metrics"].get(k), d, n) for k, _, d in BENCH_COLUMNS]
        if goals:
            cells.append(f"{len(r.get('goals_met', []))}/{n}" if n else "—")
        lines.append("| " + " | ".join(cells) + " |")
    paper = summary.get("paper")
    if paper:
        cells = [paper["row"], "CAM", "1"] + [
            "—" if paper.get(k) is None else f"{paper[k]:.{d}f}" for k, _, d in BENCH_COLUMNS]
        lines.append("| " + " | ".join(cells + ([""] if goals else [])) + " |")
    findings = sorted({f for r in summary["rows"] for f in r["findings"]},
                      key=lambda f: (_EIGHT.index(f) if f in _EIGHT else 99, f))
    if findings:
        lines += ["", "T(IoBB = 0.5) accuracy per finding (mean ± std over seeds):", "",
                  "| config | method | " + " | ".join(_short(f) for f in findings) + " |",
                  "|---|---|" + "---|" * len(findings)]
        for r in summary["rows"]:
            vals = [r["findings"].get(f) for f in findings]
            lines.append(f"| {r['row']} | {r['method']} | " + " | ".join(
                "—" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}" for v in vals) + " |")
    if goals:
        from wsloc.engine.grid import GOALS

        lines += ["", "Goals, each to hold on every seed: " + "; ".join(
            f"{GOALS[k]} {v:g}" for k, v in goals.items()) + "."]
    failures = [(r["row"], f) for r in summary["rows"] if r["method"] == summary["methods"][0]
                for f in r["failed"]]
    if failures:
        lines += ["", "Failed cells:", ""]
        lines += [f"- cell {f['cell']} ({row}, seed {f['seed']}): {f['reason']}"
                  for row, f in failures]
    return "\n".join(lines) + "\n"


def benchmark_plots(summary: dict, out: str | Path) -> None:
    """``localization_vs_auc.png`` (T(IoBB = 0.5) against mean AUC per config and method,
    each seed a dot, the mean with ± std bars) and ``findings.png`` (T(IoBB = 0.5) per
    finding, a bar group per finding, one bar per config and method, ± std, each seed a
    dot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    rows = [r for r in summary["rows"] if "tiobb" in r["metrics"]]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, r in enumerate(rows):
        m = r["metrics"]
        colour = f"C{i % 10}"
        ax.scatter(m["mean_auc"]["values"], m["tiobb"]["values"], s=14, alpha=0.5,
                   color=colour)
        ax.errorbar(m["mean_auc"]["mean"], m["tiobb"]["mean"], xerr=m["mean_auc"]["std"],
                    yerr=m["tiobb"]["std"], fmt="o", color=colour, capsize=3,
                    label=f"{r['row']} ({r['method']})")
    goals = summary.get("goals") or {}
    if "tiobb" in goals:
        ax.axhline(goals["tiobb"], color="grey", lw=0.8, ls="--")
    if "mean_auc" in goals:
        ax.axvline(goals["mean_auc"], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("mean AUC")
    ax.set_ylabel("T(IoBB = 0.5) accuracy")
    ax.set_title(f"{summary['grid']}: each seed a dot, mean ± std", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save_whole(fig, out / "localization_vs_auc.png")
    plt.close(fig)

    findings = sorted({f for r in rows for f in r["findings"]},
                      key=lambda f: (_EIGHT.index(f) if f in _EIGHT else 99, f))
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(findings)), 4.0))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(findings))]
        vals = [r["findings"].get(f, {"mean": 0.0, "std": 0.0}) for f in findings]
        ax.bar(xs, [v["mean"] for v in vals], width, yerr=[v["std"] for v in vals],
               capsize=2, color=f"C{i % 10}", alpha=0.75, label=f"{r['row']} ({r['method']})")
        for x, v in zip(xs, vals):  # each seed a dot: a lost finding shows as one low dot
            seeds = v.get("values", [])
            ax.scatter([x] * len(seeds), seeds, s=10, color="black", zorder=3)
    ax.set_xticks(range(len(findings)), [_short(f) for f in findings], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("T(IoBB = 0.5) accuracy")
    ax.set_title(f"{summary['grid']}: per finding, mean ± std over seeds (dots: seeds)",
                 fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    _save_whole(fig, out / "findings.png")
    plt.close(fig)


def _save_whole(fig, path: Path) -> None:
    """Save through a temporary file and a rename: a reader never sees half a PNG."""
    import os

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
