"""A training step of ResNet-50 + LSE vs. torchvision's avgpool + fc head (same as
``wsloc bench train``). Usage: python scripts/bench_train.py [--device cuda] [--size 512]"""

import sys

from wsloc.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
