"""The one way in for images: ``read_image(path)`` → float32 [H, W] in [0, 1], bone bright."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["ImageReadError", "read_image", "is_dicom"]

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}


class ImageReadError(ValueError):
    """An image file that exists but cannot be read; the message names the file and why."""


def is_dicom(path: Path) -> bool:
    """By suffix, or by the 'DICM' magic at byte 128 (files named without a suffix)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _check_complete(path: Path, data: np.ndarray) -> None:
    """Truncated PNG/JPEG files can decode into partly grey images: refuse them instead."""
    head = bytes(data[:8])
    tail = bytes(data[-12:])
    if head.startswith(b"\x89PNG") and b"IEND" not in tail:
        raise ImageReadError(f"{path}: PNG is truncated (no IEND chunk at the end)")
    if head.startswith(b"\xff\xd8") and not bytes(data[-2:]) == b"\xff\xd9":
        raise ImageReadError(f"{path}: JPEG is truncated (no end-of-image marker)")


def _to_unit_gray(img: np.ndarray, path: Path) -> np.ndarray:
    import cv2

    if img.ndim == 3:
        code = {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}.get(img.shape[2])
        if code is None:
            raise ImageReadError(f"{path}: unsupported channel count {img.shape[2]}")
        img = cv2.cvtColor(img, code)  # RGBA (as some NIH PNGs are): alpha is dropped
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    raise ImageReadError(f"{path}: unsupported pixel type {img.dtype} (8- or 16-bit expected)")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a chest film as float32 [H, W] in [0, 1], bone bright.

    PNG and JPEG (8- and 16-bit gray, RGB, RGBA) go through OpenCV; DICOM through pydicom
    (see :func:`wsloc.data.dicom.read_dicom`: modality LUT, VOI LUT or window,
    MONOCHROME1 inverted).

    Raises:
        FileNotFoundError: no such file.
        ImageReadError: the file is corrupt, truncated, not an image, or of a kind wsloc does
            not read; the message names the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if is_dicom(path):
        from wsloc.data.dicom import read_dicom

        return read_dicom(path)
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"{path}: the file is empty")
    _check_complete(path, data)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{path}: cannot decode the image (corrupt, or not a PNG/JPEG)")
    return _to_unit_gray(img, path)
