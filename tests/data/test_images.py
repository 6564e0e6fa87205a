import cv2
import numpy as np
import pytest

from wsloc.data import ImageReadError, read_image


@pytest.fixture
def gray():
    return (np.arange(48 * 64) % 256).astype(np.uint8).reshape(48, 64)


def test_png_8_and_16_bit(tmp_path, gray):
    cv2.imwrite(str(tmp_path / "a.png"), gray)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (48, 64)
    np.testing.assert_allclose(out, gray / 255.0, atol=1e-7)
    deep = gray.astype(np.uint16) * 257 + 3
    cv2.imwrite(str(tmp_path / "b.png"), deep)
    np.testing.assert_allclose(read_image(tmp_path / "b.png"), deep / 65535.0, atol=1e-7)


def test_rgb_and_rgba_become_gray(tmp_path, gray):
    rgb = np.stack([gray] * 3, -1)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    rgba = np.concatenate([rgb, np.full_like(gray, 17)[..., None]], -1)  # alpha ignored
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    for name in ("rgb.png", "rgba.png"):
        np.testing.assert_allclose(read_image(tmp_path / name), gray / 255.0, atol=1e-7)


def test_jpeg(tmp_path, gray):
    cv2.imwrite(str(tmp_path / "a.jpg"), gray, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert np.abs(read_image(tmp_path / "a.jpg") - gray / 255.0).max() < 0.03


def test_bad_files_name_the_file(tmp_path, gray):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    cv2.imwrite(str(tmp_path / "full.png"), gray)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut.png: PNG is truncated"):
        read_image(tmp_path / "cut.png")
    cv2.imwrite(str(tmp_path / "full.jpg"), gray)
    jpg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) - 40])
    with pytest.raises(ImageReadError, match=r"cut.jpg: JPEG is truncated"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "junk.png").write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageReadError, match=r"junk.png: cannot decode"):
        read_image(tmp_path / "junk.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.png: the file is empty"):
        read_image(tmp_path / "empty.png")
