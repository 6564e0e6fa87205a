"""Benchmark wsloc's pooling ops against the composed PyTorch formulas (same as
``wsloc bench ops``). Usage: python scripts/bench_ops.py [--device cuda] [--quick]"""

import sys

from wsloc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ops", *sys.argv[1:]]))
