"""DICOM films through pydicom: modality LUT, VOI LUT or window, MONOCHROME1 inverted."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsloc.data.images import ImageReadError

__all__ = ["read_dicom"]

# What to install for each compressed transfer syntax family (pydicom's pixel plugins).
_PLUGINS = {
    "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",
    "JPEG-LS": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "JPEG": "pylibjpeg pylibjpeg-libjpeg (or python-gdcm)",
    "RLE": "pylibjpeg pylibjpeg-rle",
    "Deflate": "(pydicom reads it itself; the file may be damaged)",
}


def _plugin_hint(transfer_syntax: object) -> str:
    name = getattr(transfer_syntax, "name", str(transfer_syntax))
    for key, packages in _PLUGINS.items():
        if key.lower() in name.lower():
            return f"pip install {packages}"
    return "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"


def _voi_range(ds) -> tuple[float, float] | None:
    """The output range pydicom's VOI LUT / windowing maps onto, found by probing it with
    the lowest and highest possible inputs; None when the file has neither."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" not in ds and "WindowCenter" not in ds:
        return None
    probe = np.array([-(2.0**40), 2.0**40])
    if "VOILUTSequence" in ds:
        probe = np.array([-(2**31), 2**31 - 1], dtype=np.int64)
    out = np.asarray(apply_voi_lut(probe, ds), dtype=np.float64)
    low, high = float(out.min()), float(out.max())
    return (low, high) if high > low else None


def read_dicom(path: str | Path) -> np.ndarray:
    """Read one DICOM image as float32 [H, W] in [0, 1], bone bright.

    Applies the modality LUT (rescale slope/intercept or LUT), then the VOI LUT or the
    window center/width when present (pydicom's ``apply_voi_lut``), scaled onto [0, 1] by
    the range that transform maps to; without either, the image's own min–max. MONOCHROME1
    (bright = low values) is inverted. Compressed transfer syntaxes decode through pydicom's
    pixel plugins. RGB files are converted to gray.

    Raises:
        ImageReadError: not a DICOM file, truncated, no pixel data (a report or plan, not an
            image), multi-frame, or a compressed syntax whose plugin is missing (the message
            says what to install).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as err:
        raise ImageReadError(f"{path}: not a DICOM file ({err})") from err
    except (OSError, EOFError, ValueError, KeyError, TypeError) as err:
        raise ImageReadError(f"{path}: cannot parse the DICOM file (truncated? {err})") from err
    if "PixelData" not in ds:
        kind = getattr(ds.get("SOPClassUID"), "name", None) or ds.get("Modality", "unknown")
        raise ImageReadError(f"{path}: the DICOM file has no pixel data (a non-image object: "
                             f"{kind})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; "
                             "export the frame you want as its own file")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as err:
        if syntax is not None and getattr(syntax, "is_compressed", False):
            raise ImageReadError(
                f"{path}: cannot decode {getattr(syntax, 'name', syntax)} pixel data: "
                f"{_plugin_hint(syntax)} ({err})") from err
        raise ImageReadError(f"{path}: cannot decode the pixel data ({err})") from err
    except (ValueError, EOFError, OSError) as err:
        raise ImageReadError(f"{path}: the pixel data is truncated or malformed ({err})") from err

    if pixels.ndim == 3:  # one frame of colour samples
        pixels = pixels.astype(np.float64).mean(-1) if pixels.shape[-1] in (3, 4) else None
        if pixels is None:
            raise ImageReadError(f"{path}: unexpected pixel array shape")
    elif pixels.ndim != 2:
        raise ImageReadError(f"{path}: unexpected pixel array shape {pixels.shape}")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(pixels, ds)
        voi = _voi_range(ds)
        if voi is not None:
            if "VOILUTSequence" in ds and values.dtype.kind == "f":
                values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
            low, high = voi
        else:
            values = values.astype(np.float64)
            low, high = float(values.min()), float(values.max())
    else:  # colour data has no modality/VOI LUT
        values = pixels.astype(np.float64)
        low, high = float(values.min()), float(values.max())
    out = np.zeros_like(values) if high <= low else (values - low) / (high - low)
    out = np.clip(out, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)
