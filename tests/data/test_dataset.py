import shutil

import cv2
import numpy as np
import pytest
import torch

from wsloc.data import CHESTXRAY8_CLASSES, ChestXray14, ImageReadError, collate
from wsloc.data.cache import ImageCache, prepare_cache
from wsloc.data.nih import load_metadata
from wsloc.data.transforms import build_transform


def test_items_labels_and_boxes(synth_root):
    ds = ChestXray14(synth_root, split="train", classes="chestxray8")
    meta = load_metadata(synth_root)
    assert len(ds) == len(meta.by_split("train"))
    for i in range(len(ds)):
        item = ds[i]
        record = ds.records[i]
        assert item["image"].shape == (1, 96, 96) and item["image"].dtype == torch.float32
        expected = torch.tensor([float(c in record.labels) for c in CHESTXRAY8_CLASSES])
        assert torch.equal(item["labels"], expected)
        assert len(item["boxes"]) == len(record.boxes)
        for row, box in zip(item["boxes"].tolist(), record.boxes):
            assert CHESTXRAY8_CLASSES[int(row[0])] == box.label
            assert row[1:] == pytest.approx([box.x1, box.y1, box.x2, box.y2])


def test_boxes_and_masks_follow_the_transform(synth_root):
    ds = ChestXray14(synth_root, split="train", transform=build_transform("eval", 48),
                     return_masks=True)
    seen = 0
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (1, 48, 48)
        for row, mask in zip(item["boxes"], item["masks"]):
            ys, xs = np.nonzero(mask.numpy())
            # the resized mask's extent matches the halved box (nearest resize: ±1 px)
            assert row[1:].tolist() == pytest.approx(
                [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], abs=1.01)
            seen += 1
    assert seen > 10


def test_class_subset_views_and_collate(synth_root):
    ds = ChestXray14(synth_root, split="train", classes=["Mass", "Nodule"], views=["pa"])
    assert all(r.view == "PA" for r in ds.records)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 1, 96, 96) and batch["labels"].shape == (3, 2)
    assert len(batch["boxes"]) == 3 and all(b.shape[1] == 5 for b in batch["boxes"])
    assert all(int(c) in (0, 1) for b in batch["boxes"] for c in b[:, 0])
    np.testing.assert_array_equal(ds.labels()[:3], batch["labels"].numpy())
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    assert next(iter(loader))["image"].shape == (4, 1, 96, 96)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"`split` must be one of train, val, test"):
        ChestXray14("/nowhere", split="dev")
    with pytest.raises(ValueError, match=r"`views` must be among PA, AP"):
        ChestXray14("/nowhere", views=["LL"])
    with pytest.raises(ValueError, match=r"`classes` must be distinct names"):
        ChestXray14("/nowhere", classes=["Flu"])
    with pytest.raises(ValueError, match=r"unknown transform 'strong'"):
        build_transform("strong", 64)


@pytest.fixture
def damaged(synth_root, tmp_path):
    root = tmp_path / "damaged"
    shutil.copytree(synth_root, root)
    train = load_metadata(root).by_split("train")
    (root / "images" / train[0].name).unlink()  # listed but missing
    data = (root / "images" / train[1].name).read_bytes()
    (root / "images" / train[1].name).write_bytes(data[: len(data) // 2])  # truncated
    return root, train[0].name, train[1].name


def test_missing_and_corrupt_images(damaged):
    root, missing, corrupt = damaged
    with pytest.raises(FileNotFoundError, match=rf"1 image\(s\) .* not on disk \(e.g. {missing}"):
        ChestXray14(root, split="train")
    with pytest.warns(UserWarning, match=rf"skipped {missing}: listed but not on disk"):
        ds = ChestXray14(root, split="train", on_error="skip")
    assert missing not in [r.name for r in ds.records]
    index = [r.name for r in ds.records].index(corrupt)
    with pytest.warns(UserWarning, match=rf"skipped unreadable image: .*{corrupt}"):
        item = ds[index]
    assert item["id"] == ds.records[index + 1].name  # the next item, never a zero image
    strict = ChestXray14(root, split="train", on_error="skip")
    strict.on_error = "raise"
    with pytest.raises(ImageReadError, match=rf"{corrupt}: PNG is truncated"):
        strict[index]


def test_cache_is_used_transparently(synth_root, tmp_path):
    cache_dir = tmp_path / "cache"
    index = prepare_cache(synth_root, 64, cache_dir=cache_dir, workers=1, progress=False)
    prepare_cache(synth_root, 80, cache_dir=cache_dir, workers=1, progress=False)
    assert ImageCache.find(synth_root, 48, cache_dir).size == 64  # smallest that is enough
    assert ImageCache.find(synth_root, 72, cache_dir).size == 80
    assert ImageCache.find(synth_root, 96, cache_dir) is None
    assert index.with_suffix(".u8").stat().st_size == 80 * 64 * 64
    kw = dict(split="test", transform=build_transform("eval", 64), image_size=64,
              cache_dir=cache_dir)
    cached = ChestXray14(synth_root, **kw)
    plain = ChestXray14(synth_root, use_cache=False, **kw)
    assert cached.cache is not None and plain.cache is None
    for i in range(len(plain)):
        a, b = cached[i], plain[i]
        assert (a["image"] - b["image"]).abs().mean() < 0.01
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
    # the stored rows are what read_image + INTER_AREA resize give
    array = np.memmap(index.with_suffix(".u8"), np.uint8, "r", shape=(80, 64, 64))
    first = load_metadata(synth_root).records[0]
    img = cv2.imread(str(synth_root / "images" / first.name), 0) / 255.0
    expected = np.rint(cv2.resize(img.astype(np.float32), (64, 64),
                                  interpolation=cv2.INTER_AREA) * 255)
    assert np.abs(array[0].astype(int) - expected).max() <= 1


def test_prepare_stops_cleanly_on_a_bad_image(damaged, tmp_path):
    root, _, corrupt = damaged
    with pytest.raises(ImageReadError, match=corrupt):
        prepare_cache(root, 32, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert list((tmp_path / "c").iterdir()) == []  # no half-written cache left behind
    with pytest.warns(UserWarning, match=r"skipped: .*PNG is truncated"):
        index = prepare_cache(root, 32, cache_dir=tmp_path / "c", workers=1, on_error="skip",
                              progress=False)
    cache = ImageCache(index)
    assert corrupt not in cache and len(cache.row) == 78


def test_bench_loader_on_a_given_root(synth_root, tmp_path, capsys):
    from wsloc.cli import main

    assert main(["bench", "loader", "--data-root", str(synth_root), "--size", "32", "--n", "10",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| PNG files (read_image + resize) |" in out and "cache / PNG:" in out
    import json

    (path,) = tmp_path.glob("loader-*.json")
    data = json.loads(path.read_text())
    assert data["items"] == 10 and data["speedup"] == pytest.approx(
        data["cache_images_per_s"] / data["png_images_per_s"])
