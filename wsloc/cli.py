"""The ``wsloc`` command: parses arguments and calls the package; no logic lives here."""

from __future__ import annotations

import argparse
import sys

from wsloc import __version__


def _bench_ops(args: argparse.Namespace) -> int:
    from wsloc.bench import ops

    ops.run(device=args.device, quick=args.quick, dtype=args.dtype, out_dir=args.out,
            only=args.only)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from wsloc.data.inspect import format_summary, summarize

    summary = summarize(args.data_root, val_fraction=args.val_fraction, seed=args.seed,
                        on_error="skip" if args.skip_bad else "raise")
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from wsloc.data.cache import prepare_cache

    path = prepare_cache(args.data_root, args.size, cache_dir=args.cache_dir,
                         workers=args.workers, on_error="skip" if args.skip_bad else "raise")
    print(f"wrote {path.with_suffix('.u8')} and {path.name}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from wsloc.data.synthetic import generate

    root = generate(args.out, n=args.n, size=args.size, seed=args.seed, workers=args.workers)
    print(f"wrote {args.n} synthetic films to {root}")
    return 0


def _bench_loader(args: argparse.Namespace) -> int:
    from wsloc.bench import loader

    loader.run(data_root=args.data_root, size=args.size, n=args.n, out_dir=args.out)
    return 0


def _train(args: argparse.Namespace) -> int:
    from wsloc.config import load_config
    from wsloc.engine.train import train

    if args.resume and (args.config or args.overrides or args.out):
        raise ValueError("--resume continues a run with its own config; drop --config, "
                         "--out and overrides")
    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg, out=args.out, resume=args.resume)
    print(f"run directory: {run_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from wsloc.engine.evaluate import evaluate

    evaluate(args.checkpoint, data_root=args.data_root, split=args.split, out=args.out,
             compare=args.compare, method=args.method)
    return 0


def _stream_options(args: argparse.Namespace) -> dict:
    return {"batch_size": args.batch_size, "min_probability": args.min_probability,
            "device": args.device, "overlays": not args.no_overlays, "resume": args.resume,
            "shard": args.shard, "workers": args.workers, "dicom_out": args.dicom_out,
            "strict_dicom": args.strict_dicom}


def _heatmap(args: argparse.Namespace) -> int:
    from wsloc.engine.heatmap import run_heatmap

    summary = run_heatmap(args.checkpoint, args.inputs, args.out, all_classes=args.all_classes,
                          save_maps=args.save_maps, thresholds=args.thresholds,
                          method=args.method, **_stream_options(args))
    print(f"{_where(summary)}{summary['images']} film(s), {summary['boxes']} box(es) "
          f"({args.method}): {_written(summary, args.out, *_dirs(args, 'overlays/'))}")
    _warned(summary, args.out)
    return _failures(summary, args.out)


def _dirs(args: argparse.Namespace, *dirs: str) -> list[str]:
    return [*dirs, *(["dicom/"] if args.dicom_out else [])]


def _warned(summary: dict, out: str) -> None:
    """Say how many films carry warnings, and where they are listed."""
    n = summary.get("warned", 0)
    if n and "shard" not in summary:
        print(f"{n} film(s) with warnings (listed in {out}/warnings.txt)", file=sys.stderr)


def _where(summary: dict) -> str:
    return f"shard {summary['shard']}: " if "shard" in summary else ""


def _written(summary: dict, out: str, *dirs: str) -> str:
    if "rank" in summary:
        return f"{summary['failed_file']}; rank 0 merges"
    if "shard" in summary:
        n = summary["shard"].split("/")[1]
        return f"{summary['failed_file']}; when all {n} shards are done: wsloc merge {out}"
    return ", ".join([f"{out}/boxes.json", *(f"{out}/{d}" for d in dirs)])


def _failures(summary: dict, out: str, show: int = 20) -> int:
    """List the inputs a command could not read (the first ``show``; all are in
    failed.txt); its exit code (1 if any)."""
    failed = summary["failed"]
    if "rank" in summary:  # a torchrun rank but the first: rank 0 lists them all, and exits 1
        return 0
    for path, why in failed[:show]:
        print(f"failed: {path}: {why}", file=sys.stderr)
    if len(failed) > show:
        print(f"... and {len(failed) - show} more", file=sys.stderr)
    if failed:
        where = (f"the done records of {summary['failed_file']}" if "shard" in summary
                 else f"{out}/failed.txt")
        print(f"{len(failed)} input(s) could not be read (listed in {where})",
              file=sys.stderr)
        return 1
    return 0


def _segment(args: argparse.Namespace) -> int:
    from wsloc.engine.segment import run_segment

    summary = run_segment(args.checkpoint, args.inputs, args.out,
                          cam_threshold=args.cam_threshold, n_segments=args.superpixels,
                          compactness=args.compactness, sigma=args.slic_sigma,
                          **_stream_options(args))
    print(f"{_where(summary)}{summary['images']} film(s), {summary['masks']} mask(s) "
          f"({summary['method']}): "
          f"{_written(summary, args.out, *_dirs(args, 'masks/', 'overlays/'))}")
    _warned(summary, args.out)
    return _failures(summary, args.out)


def _merge(args: argparse.Namespace) -> int:
    from wsloc.engine.stream import merge

    summary = merge(args.outs)
    print(f"{summary['images']} film(s), {summary['boxes']} box(es) ({summary['method']}): "
          f"{args.outs[0]}/boxes.json")
    _warned(summary, args.outs[0])
    return _failures(summary, args.outs[0])


def _score_boxes(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from wsloc.engine.score import score_boxes
    from wsloc.report import json_ready, localization_tables, write_metrics

    frame = None
    if args.gt_frame:
        if args.gt_frame == ["image"]:
            frame = "image"
        elif len(args.gt_frame) == 2 and all(v.isdigit() and int(v) > 0 for v in args.gt_frame):
            frame = (int(args.gt_frame[0]), int(args.gt_frame[1]))
        else:
            raise ValueError(f"--gt-frame takes WIDTH HEIGHT or 'image', got "
                             f"{' '.join(args.gt_frame)}")
    scores = score_boxes(args.pred, args.gt, args.images, gt_frame=frame)
    doc = json_ready(scores)
    tables = localization_tables(scores, "pred")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(tables)
        print(f"\n{scores['films']} film(s) scored; {scores['films_without_predictions']} of "
              "them without any predicted box")
        if scores["films_rescaled"]:
            print(f"{scores['films_rescaled']} film(s)' boxes were scaled from the film's own "
                  "size into the ground truth's frame (--gt-frame image: take them as they are)")
    if args.out:
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty; choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        write_metrics(out / "localization.json", doc)
        (out / "results.md").write_text(tables + "\n")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from wsloc.engine.benchmark import run_benchmark

    summary = run_benchmark(args.grid, args.out, data_root=args.data_root, seeds=args.seeds,
                            jobs=args.jobs, cell=args.cell, retry_failed=args.retry_failed)
    c = summary["cells"]
    print(f"{c['done']} of {c['total']} cells done, {c['failed']} failed, {c['pending']} "
          f"pending; wrote {args.out}/results.md, results.json")
    if "this_cell" in summary:  # --cell K: the exit code is that cell's
        return 0 if summary["this_cell"] == "done" else 1
    return 1 if c["failed"] else 0


def _bench_heatmap(args: argparse.Namespace) -> int:
    from wsloc.bench import heatmap

    heatmap.run(checkpoint=args.checkpoint, device=args.device, batch=args.batch,
                frame=args.frame, out_dir=args.out, films=args.films, workers=args.workers)
    return 0


def _bench_segment(args: argparse.Namespace) -> int:
    from wsloc.bench import segment

    segment.run(checkpoint=args.checkpoint, frames=args.frames, n=args.n, out_dir=args.out)
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    from wsloc.bench import train

    train.run(device=args.device, size=args.size, batch=args.batch, out_dir=args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsloc",
        description="Weakly-supervised disease localization on chest X-rays.",
    )
    parser.add_argument("--version", action="version", version=f"wsloc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = sub.add_parser("bench", help="run a benchmark and print its table")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    b_ops = bench_sub.add_parser(
        "ops", help="pooling ops vs. the composed PyTorch formulas (forward, forward+backward)")
    b_ops.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="where to run (auto: CUDA when present)")
    b_ops.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    b_ops.add_argument("--quick", action="store_true", help="small shapes, short timing")
    b_ops.add_argument("--out", default="benchmarks", help="folder for the JSON results")
    b_ops.add_argument("--only", metavar="SUBSTRING",
                       help="run only the rows whose op name contains SUBSTRING (e.g. "
                            "sort_pool2d); writes ops-partial-*.json, never the full file")
    b_ops.set_defaults(func=_bench_ops)
    b_loader = bench_sub.add_parser(
        "loader", help="images/s from the prepared cache vs. from the PNGs, same items")
    b_loader.add_argument("--data-root", help="a data root (default: a synthetic set)")
    b_loader.add_argument("--size", type=int, default=256, help="cache and image size")
    b_loader.add_argument("--n", type=int, default=400, help="images to read per path")
    b_loader.add_argument("--out", default="benchmarks", help="folder for the JSON results")
    b_loader.set_defaults(func=_bench_loader)
    b_train = bench_sub.add_parser(
        "train", help="a ResNet-50 + LSE training step vs. torchvision's avgpool + fc head")
    b_train.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b_train.add_argument("--size", type=int, help="image size (default 512 on CUDA, 160 CPU)")
    b_train.add_argument("--batch", type=int, help="batch size (default 32 on CUDA, 8 CPU)")
    b_train.add_argument("--out", default="benchmarks", help="folder for the JSON results")
    b_train.set_defaults(func=_bench_train)
    b_heat = bench_sub.add_parser(
        "heatmap", help="CAM + boxes vs. the plain forward pass, on one batch; and "
                        "wsloc heatmap end to end from PNG files")
    b_heat.add_argument("--checkpoint", help="a trained model (default: the demo's "
                                             "architecture, untrained)")
    b_heat.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b_heat.add_argument("--batch", type=int, default=32)
    b_heat.add_argument("--frame", type=int, default=256, help="the films' size in pixels")
    b_heat.add_argument("--films", type=int,
                        help="PNG files for the end-to-end row (default 8 batches)")
    b_heat.add_argument("--workers", type=int, default=2,
                        help="the end-to-end row's reader processes (default 2)")
    b_heat.add_argument("--out", default="benchmarks", help="folder for the JSON results")
    b_heat.set_defaults(func=_bench_heatmap)
    b_seg = bench_sub.add_parser(
        "segment", help="what each stage of the pixel pipeline costs per film (CPU)")
    b_seg.add_argument("--checkpoint", help="a trained pixel model (default: the pixel "
                                            "demo's architecture, untrained)")
    b_seg.add_argument("--frames", type=int, nargs="+", default=[256, 1024],
                       help="film sizes in pixels (default 256 1024)")
    b_seg.add_argument("--n", type=int, default=8, help="films per size")
    b_seg.add_argument("--out", default="benchmarks", help="folder for the JSON results")
    b_seg.set_defaults(func=_bench_segment)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-root", required=True, help="the NIH ChestX-ray14 folder")
    common.add_argument("--skip-bad", action="store_true",
                        help="skip malformed rows and unreadable images with a warning each, "
                             "instead of stopping")
    p_inspect = sub.add_parser("inspect", parents=[common],
                               help="summarize a data root from its metadata")
    p_inspect.add_argument("--json", action="store_true", help="print JSON")
    p_inspect.add_argument("--val-fraction", type=float, default=0.1)
    p_inspect.add_argument("--seed", type=int, default=0)
    p_inspect.set_defaults(func=_inspect)

    p_prepare = sub.add_parser("prepare", parents=[common],
                               help="resize all images into one memory-mapped uint8 cache")
    p_prepare.add_argument("--size", type=int, default=512, help="cached image size")
    p_prepare.add_argument("--cache-dir", help="where to write (default DATA_ROOT/wsloc_cache)")
    p_prepare.add_argument("--workers", type=int, help="processes (default: all cores)")
    p_prepare.set_defaults(func=_prepare)

    p_synth = sub.add_parser("synth", help="write a synthetic dataset in the NIH layout")
    p_synth.add_argument("--out", required=True, help="a new folder")
    p_synth.add_argument("--n", type=int, default=2000, help="number of films")
    p_synth.add_argument("--size", type=int, default=256, help="image size in pixels")
    p_synth.add_argument("--seed", type=int, default=0)
    p_synth.add_argument("--workers", type=int, help="processes (default: all cores)")
    p_synth.set_defaults(func=_synth)

    p_train = sub.add_parser(
        "train", help="train a model (default: configs/demo.yaml on the synthetic set)",
        description="Train. Without --config the defaults (= configs/demo.yaml) run on the "
                    "built-in synthetic set. Override any key: wsloc train train.epochs=3 "
                    "data.root=data/nih. Several GPUs or nodes: torchrun --nproc_per_node N "
                    "-m wsloc.cli train ...")
    p_train.add_argument("--config", help="a YAML config (see configs/)")
    p_train.add_argument("--out", help="a new run directory (default runs/<time>)")
    p_train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p_train.add_argument("overrides", nargs="*", metavar="key=value")
    p_train.set_defaults(func=_train)

    from wsloc.cam import METHODS

    method_help = (f"heatmap method: {', '.join(METHODS)} (default cam: one forward pass; the "
                   "others explain the transition features by their gradients, one backward "
                   "pass per class), a package.module:func of your own, or a name registered "
                   "under the entry-point group wsloc.cam_methods.")
    p_eval = sub.add_parser("evaluate", help="AUC per class of a checkpoint, ROC curves, "
                                             "the paper's table beside ours")
    p_eval.add_argument("--checkpoint", required=True, help="a best.pt or last.pt")
    p_eval.add_argument("--data-root", help="default: the data the checkpoint was trained on")
    p_eval.add_argument("--split", default="test", choices=["train", "val", "test"])
    p_eval.add_argument("--out", help="default: eval-<split> beside the checkpoint "
                                      "(eval-<split>-<method> for a --method other than cam)")
    p_eval.add_argument("--compare", metavar="CHECKPOINT",
                        help="another checkpoint whose masks are scored on the same films "
                             "and tabled beside (e.g. a ChestX-ray8 model beside a pixel "
                             "model)")
    p_eval.add_argument("--method", default="cam", metavar="NAME", help=method_help +
                        " The box protocol's heatmaps; the masks' IoU stays CAM's.")
    p_eval.set_defaults(func=_evaluate)

    films = argparse.ArgumentParser(add_help=False)  # what heatmap and segment share
    films.add_argument("--checkpoint", required=True, help="a best.pt or last.pt")
    films.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders")
    films.add_argument("--out", required=True,
                       help="a new folder (or, with --resume, the run's own)")
    films.add_argument("--min-probability", type=float, default=0.5,
                       help="findings at or above it get heatmaps, boxes or masks "
                            "(default 0.5)")
    films.add_argument("--batch-size", type=int, default=16,
                       help="films per forward pass (default 16; recorded: a resume or a "
                            "shard uses the run's)")
    films.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    films.add_argument("--workers", type=int,
                       help="processes reading and resizing films (default: one per core "
                            "but one, at most 4; 0: in the main process)")
    films.add_argument("--no-overlays", action="store_true", help="write no overlay PNGs")
    films.add_argument("--resume", action="store_true",
                       help="continue the run in --out: films already done (same path, size "
                            "and mtime) are skipped; refused if the checkpoint or a setting "
                            "differs")
    films.add_argument("--shard", metavar="I/N",
                       help="only the films whose index is I modulo N, into "
                            "OUT/shards/I-of-N/ (e.g. $SLURM_ARRAY_TASK_ID/N); then "
                            "wsloc merge OUT. Under torchrun each rank takes its own")
    films.add_argument("--dicom-out", action="store_true",
                       help="per film, in OUT/dicom/, a DICOM Segmentation (segment: its "
                            "masks; heatmap: each shown class's heatmap above the lowest "
                            "--thresholds value, 60/255 by default) and a Structured Report "
                            "of its boxes, both referencing the film (every input must be "
                            "DICOM; see docs/dicom.md)")
    films.add_argument("--strict-dicom", action="store_true",
                       help="skip, as a listed failure, a DICOM whose header says it is not "
                            "a chest radiograph (Modality not CR/DX, Body Part Examined not "
                            "chest); without it such a film is processed with a warning")

    p_heat = sub.add_parser(
        "heatmap", parents=[films],
        help="heatmaps, boxes and overlays for your own films (PNG/JPEG/DICOM)",
        description="Localize findings on films with a trained ChestX-ray8 checkpoint: "
                    "OUT/overlays/<name>.png, OUT/boxes.json (boxes in each film's own "
                    "pixels), and with --save-maps the raw heatmaps as .npy. Unreadable "
                    "inputs are listed and the rest processed; the exit code is 1 if any "
                    "failed. Records stream to OUT/boxes.jsonl as films finish: --resume "
                    "continues a killed run, --shard I/N (or torchrun) splits the films, "
                    "wsloc merge joins the shards.")
    p_heat.add_argument("--all-classes", action="store_true",
                        help="every class gets its heatmap and boxes")
    p_heat.add_argument("--thresholds", type=int, nargs="+", default=[60, 180],
                        help="box thresholds on the [0, 255] heatmap (default: the paper's "
                             "60 180)")
    p_heat.add_argument("--save-maps", action="store_true", help="also write raw heatmaps")
    p_heat.add_argument("--method", default="cam", metavar="NAME", help=method_help)
    p_heat.set_defaults(func=_heatmap)

    from wsloc.segment import SLIC_COMPACTNESS, SLIC_SEGMENTS, SLIC_SIGMA

    p_seg = sub.add_parser(
        "segment", parents=[films], help="finding masks for your own films (PNG/JPEG/DICOM)",
        description="Masks with a trained checkpoint: a pixel model's (pixel scores, "
                    "image-level prior, SLIC smoothing prior) or a ChestX-ray8 model's "
                    "thresholded CAMs. Writes OUT/masks/<name>__<Finding>.png (0/255, the "
                    "film's size) for each finding called present, OUT/overlays/<name>.png "
                    "and OUT/boxes.json. Unreadable inputs are listed and the rest "
                    "processed; the exit code is 1 if any failed. Streamed, resumable and "
                    "sharded as wsloc heatmap.")
    p_seg.add_argument("--cam-threshold", type=int, default=60,
                       help="ChestX-ray8 checkpoints: the CAM threshold on [0, 255] "
                            "(default 60)")
    p_seg.add_argument("--superpixels", type=int, default=SLIC_SEGMENTS,
                       help=f"SLIC segments per film (default {SLIC_SEGMENTS})")
    p_seg.add_argument("--compactness", type=float, default=SLIC_COMPACTNESS,
                       help=f"SLIC compactness (default {SLIC_COMPACTNESS})")
    p_seg.add_argument("--slic-sigma", type=float, default=SLIC_SIGMA,
                       help=f"SLIC's pre-smoothing as a fraction of the film's longer side "
                            f"(default 1/64 = {SLIC_SIGMA:.4f})")
    p_seg.set_defaults(func=_segment)

    p_merge = sub.add_parser(
        "merge", help="join the shards of a heatmap or segment run into OUT/boxes.json",
        description="Join the parts that `wsloc heatmap/segment --shard I/N` wrote into "
                    "OUT/boxes.json and OUT/failed.txt, exactly what one process writes. "
                    "Refuses a missing, unfinished or repeated shard, and shards made by "
                    "another checkpoint, other settings or another input list. Further "
                    "folders (shards run with their own --out elsewhere) are merged into "
                    "the first, their files copied there.")
    p_merge.add_argument("outs", nargs="+", metavar="OUT", help="the run's folder(s)")
    p_merge.set_defaults(func=_merge)

    p_bench = sub.add_parser(
        "benchmark", help="a grid of configs × training seeds, trained, evaluated and "
                          "tabled (mean ± std, worst seed)",
        description="Train and evaluate every cell (config × training seed) of a grid file "
                    "as a normal run directory under OUT/cells/, and table each config over "
                    "its seeds in OUT/results.md and results.json. Running the same command "
                    "again continues a killed benchmark. Shipped grids: pooling_demo, "
                    "pooling_nih, cam_methods_demo (configs/benchmarks/).")
    p_bench.add_argument("--grid", required=True, help="a grid file or a shipped grid's name")
    p_bench.add_argument("--out", required=True, help="the benchmark's folder (new, or one "
                                                      "this grid wrote: continued)")
    p_bench.add_argument("--data-root", help="the data every cell trains on (default: each "
                                             "config's own)")
    p_bench.add_argument("--seeds", type=int, help="training seeds per config (default: the "
                                                   "grid's)")
    p_bench.add_argument("--jobs", type=int, default=1,
                         help="cells run at once, each in its own process (default 1)")
    p_bench.add_argument("--cell", type=int, help="run this cell only (0-based; e.g. "
                                                  "$SLURM_ARRAY_TASK_ID)")
    p_bench.add_argument("--retry-failed", action="store_true",
                         help="run cells recorded as failed again")
    p_bench.set_defaults(func=_benchmark)

    p_score = sub.add_parser(
        "score-boxes", help="score any method's boxes by the paper's T(IoU)/T(IoBB) protocol",
        description="Score PRED.json (the boxes.json format) against ground truth in NIH's "
                    "BBox_List_2017.csv format: accuracy per finding at each T(IoU) and "
                    "T(IoBB), AFP, and the pointing game when PRED holds heatmap peaks.")
    p_score.add_argument("--pred", required=True, help="a boxes.json")
    p_score.add_argument("--gt", required=True, help="a BBox_List_2017.csv")
    p_score.add_argument("--images", help="score only the films listed here (e.g. "
                                          "test_list.txt)")
    p_score.add_argument("--gt-frame", nargs="+", metavar="W H | image",
                         help="the pixel frame of the ground truth: WIDTH HEIGHT, or 'image' "
                              "(drawn on each film as it is). Default: as the data layer "
                              "assumes for the CSV's folder (1024 1024 for NIH, a synthetic "
                              "set's own size); boxes whose records give their film's size "
                              "are scaled into it")
    p_score.add_argument("--json", action="store_true", help="print one JSON document")
    p_score.add_argument("--out", help="also write localization.json and results.md here")
    p_score.set_defaults(func=_score_boxes)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            FloatingPointError) as err:
        print(f"wsloc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
