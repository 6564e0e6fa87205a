"""Chest X-ray data: NIH ChestX-ray14 as released, DICOM, transforms, a cache, synthetic films.

``read_image`` is the one way in for images. Heavy libraries (OpenCV, pydicom,
albumentations) are imported where they are used.
"""

from wsloc.data.dataset import ChestXray14, collate, resolve_classes
from wsloc.data.images import ImageReadError, read_image
from wsloc.data.nih import CHESTXRAY8_CLASSES, CLASSES, MetadataError

__all__ = [
    "ChestXray14", "collate", "resolve_classes", "read_image", "ImageReadError",
    "MetadataError", "CLASSES", "CHESTXRAY8_CLASSES",
]
