"""``--dicom-out`` of ``wsloc heatmap`` and ``wsloc segment``: per DICOM film, its DICOM
Segmentation and Structured Report (:mod:`wsloc.dicom_out`) in ``OUT/dicom/``, written by the
stream's per-film hook (:class:`DicomOutputs`) before the film counts as done.

What the SEG holds:

- ``wsloc segment``: the masks it writes as ``OUT/masks/<stem>__<Finding>.png``, one
  segment per finding.
- ``wsloc heatmap``: each shown class's heatmap (normalized to [0, 1], as for the boxes)
  thresholded at the run's *lowest* box threshold — the paper's 60 of 255 by default: a
  pixel is in when ``round(255 · heat) > 60`` (:func:`wsloc.boxes.heatmap_masks`), the
  region the thin boxes are drawn around. The threshold is named in the segments' algorithm
  parameters.

The SR holds the film's ``boxes.json`` records (class, probability, corners). Both carry the
checkpoint's sha256 and the method among their algorithm parameters. Their UIDs and dates
follow from the film and the result (:mod:`wsloc.dicom_out`), so a resumed run writes the
same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["DicomOutputs", "require_dicom", "DICOM_DIR"]

DICOM_DIR = "dicom"


def require_dicom(files: Sequence[Path], unreadable: Mapping[str, str] | None = None) -> None:
    """Before any film is read: every input must be a DICOM (by suffix, or the ``DICM``
    magic of a file named without one). Inputs already known to be unreadable (a symlink
    loop) are left to be listed as failures.

    Raises:
        ValueError: naming the first input that is not DICOM, how many are not, and why.
    """
    from wsloc.data.images import is_dicom

    unreadable = unreadable or {}
    bad = [p for p in files if str(p) not in unreadable and not is_dicom(Path(p))]
    if bad:
        kind = Path(bad[0]).suffix.lstrip(".").upper() or "non-DICOM"
        raise ValueError(
            f"--dicom-out needs DICOM inputs, and {len(bad)} of {len(files)} are not (first: "
            f"{bad[0]}, a {kind} file): a DICOM SEG or SR must reference its source film's "
            "Study, Series and SOP Instance UIDs and its patient, which a PNG or JPEG does "
            "not have. Run those films without --dicom-out")


class DicomOutputs:
    """The per-film hook of ``--dicom-out``: ``OUT/dicom/<stem>.seg.dcm`` (the masks) and
    ``<stem>.sr.dcm`` (the boxes), each written whole (:func:`wsloc.engine.rundir.replacing`);
    a film with no mask pixel gets no SEG, one with no box no SR (and a stale one of an
    earlier version of the film is removed).

    A film on which the SEG or SR cannot be built (its header lacks a UID a reference needs,
    say) becomes a listed failure with the reason (:class:`wsloc.engine.stream.FilmFailed`).

    Args:
        out: the run's folder.
        tag: the stream's temporary-file tag.
        parameters: the algorithm parameters written into both (checkpoint hash, method).
        heatmap_threshold: for ``wsloc heatmap``: the SEG is each heatmap above it (on
            [0, 255]); None: the result's masks (``wsloc segment``).
        then: a further callback (the caller's ``on_film``), called after the files are
            written.
    """

    def __init__(self, out: str | Path, tag: str, parameters: Mapping[str, object],
                 heatmap_threshold: int | None = None, then: Callable | None = None) -> None:
        self.folder = Path(out) / DICOM_DIR
        self.tag = tag
        self.parameters = {str(k): str(v) for k, v in parameters.items()}
        self.threshold = heatmap_threshold
        if heatmap_threshold is not None:
            self.parameters["seg"] = (f"heatmap > {int(heatmap_threshold)}/255 (the lowest "
                                      "box threshold)")
        self.then = then

    def masks(self, result) -> dict[str, np.ndarray]:
        """The SEG's masks of a film (:class:`wsloc.engine.stream.FilmResult`)."""
        if self.threshold is None:
            return dict(result.masks)
        from wsloc.boxes import heatmap_masks

        return {label: heatmap_masks(heat, self.threshold).astype(bool)
                for label, heat in result.heatmaps.items()}

    def __call__(self, result) -> None:
        import pydicom

        from wsloc.dicom_out import box_report, segmentation
        from wsloc.engine.rundir import replacing
        from wsloc.engine.stream import FilmFailed

        source = result.dicom
        try:
            if source is None:
                source = pydicom.dcmread(result.source, stop_before_pixels=True)
            made = {"seg": segmentation(source, self.masks(result),
                                        algorithm_parameters=self.parameters),
                    "sr": box_report(source, result.records,
                                     algorithm_parameters=self.parameters)}
        except (ValueError, TypeError) as err:  # this film's header or results, not the run
            raise FilmFailed(f"--dicom-out: {err}") from err
        for kind, dataset in made.items():
            path = self.folder / f"{result.stem}.{kind}.dcm"
            if dataset is None:
                path.unlink(missing_ok=True)
                continue
            with replacing(path, self.tag) as tmp:
                dataset.save_as(tmp, enforce_file_format=True)
        if self.then is not None:
            self.then(result)
