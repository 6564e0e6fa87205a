"""The ``wsloc`` command: parses arguments and calls the package; no logic lives here."""

from __future__ import annotations

import argparse
import sys

from wsloc import __version__


def _bench_ops(args: argparse.Namespace) -> int:
    from wsloc.bench import ops

    ops.run(device=args.device, quick=args.quick, dtype=args.dtype, out_dir=args.out)
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
    b_ops.set_defaults(func=_bench_ops)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"wsloc: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
