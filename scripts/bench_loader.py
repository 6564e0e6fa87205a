"""Loading from the prepared cache vs. from the PNGs (same as ``wsloc bench loader``).
Usage: python scripts/bench_loader.py [--data-root R] [--size 512] [--n 400]"""

import sys

from wsloc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "loader", *sys.argv[1:]]))
