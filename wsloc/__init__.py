"""wsloc: weakly-supervised disease localization on chest X-rays.

Subpackages are imported on first use so that ``import wsloc`` and ``wsloc --help`` stay fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
