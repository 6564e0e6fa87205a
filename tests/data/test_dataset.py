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


def test_hide_pipeline_hides_patches_behind_the_mean_grey():
    import numpy as np

    pipe = build_transform("train_hide", 64)
    pipe.set_random_seed(0)
    image = np.full((128, 128), 0.9, np.float32)  # grey 0.9 everywhere: hidden pixels show
    hidden = [np.isclose(pipe(image=image)["image"], 0.37) for _ in range(40)]
    fractions = np.array([h.mean() for h in hidden])
    assert (fractions > 0).sum() >= 20 and fractions.max() < 0.5  # p = 0.7, 2-6 patches
    ys, xs = np.nonzero(hidden[int(fractions.argmax())])
    assert ys.max() - ys.min() >= 6 and xs.max() - xs.min() >= 6  # patches, not pixels


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


def test_indexing_is_a_sequence_and_never_wraps(synth_root):
    ds = ChestXray14(synth_root, split="test")
    n = len(ds)
    with pytest.raises(IndexError, match=rf"index {n} is out of range .*\({n} images\)"):
        ds[n]
    with pytest.raises(IndexError):
        ds[-n - 1]
    assert ds[-1]["id"] == ds.records[-1].name and ds[-n]["id"] == ds.records[0].name
    items = list(ds)  # Python iterates until IndexError: this must end, with each film once
    assert [it["id"] for it in items] == [r.name for r in ds.records]


def test_skip_replaces_the_last_item_from_inside_the_split(synth_root, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(synth_root, root)
    last = ChestXray14(root, split="test").records[-1].name
    (root / "images" / last).write_bytes(b"\x89PNG broken")
    ds = ChestXray14(root, split="test", on_error="skip")
    with pytest.warns(UserWarning, match=rf"skipped unreadable image: .*{last}"):
        item = ds[len(ds) - 1]
    assert item["id"] == ds.records[-2].name  # the one before it, not the split's first


def test_a_repeated_data_entry_row_keeps_cache_and_dataset_whole(synth_root, tmp_path):
    root = tmp_path / "set"
    shutil.copytree(synth_root, root)
    entry = root / "Data_Entry_2017_v2020.csv"
    lines = entry.read_text().splitlines(keepends=True)
    entry.write_text("".join(lines + [lines[1]]))  # the first image listed twice
    with pytest.warns(UserWarning, match="dropped an identical repeat"):
        prepare_cache(root, 48, workers=1, progress=False)
    with pytest.warns(UserWarning, match="dropped an identical repeat"):
        ds = ChestXray14(root, split="train", image_size=48,
                         transform=build_transform("eval", 48))
    names = [r.name for r in ds.records]
    assert len(names) == len(set(names)) and ds.cache is not None
    assert [ds[i]["id"] for i in range(len(ds))] == names  # every row of the cache readable


def _two_box_root(tmp_path):
    """One 96² film with a Mass on the left and a Nodule on the right, with their masks."""
    root = tmp_path / "two"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    name = "00000001_000.png"
    cv2.imwrite(str(root / "images" / name), np.full((96, 96), 128, np.uint8))
    spots = {"Mass": (10, 30, 30, 60), "Nodule": (70, 40, 86, 56)}
    rows = []
    for label, (x1, y1, x2, y2) in spots.items():
        mask = np.zeros((96, 96), np.uint8)
        cv2.ellipse(mask, ((x1 + x2) // 2, (y1 + y2) // 2), ((x2 - x1) // 2, (y2 - y1) // 2),
                    0, 0, 360, 255, -1)
        ys, xs = np.nonzero(mask)
        cv2.imwrite(str(root / "masks" / f"00000001_000__{label}.png"), mask)
        rows.append(f"{name},{label},{xs.min()},{ys.min()},{xs.max() + 1 - xs.min()},"
                    f"{ys.max() + 1 - ys.min()}\n")
    (root / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        f"{name},Mass|Nodule,0,1,50,M,PA,96,96,0.143,0.143\n")
    (root / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                             + "".join(rows))
    (root / "synth.json").write_text('{"size": 96}')
    return root


def _check_aligned(item):
    assert len(item["masks"]) == len(item["boxes"])
    for row, mask in zip(item["boxes"], item["masks"]):
        ys, xs = np.nonzero(mask.numpy())
        assert xs.size, "a kept box lost its mask"
        x1, y1, x2, y2 = row[1:].tolist()
        assert x1 - 1.5 <= xs.min() and xs.max() + 1 <= x2 + 1.5
        assert y1 - 1.5 <= ys.min() and ys.max() + 1 <= y2 + 1.5


def test_masks_stay_with_the_boxes_a_transform_keeps(tmp_path):
    import albumentations as A

    from wsloc.data.transforms import Pipeline, _bbox_params

    root = _two_box_root(tmp_path)
    split = load_metadata(root).split_of["00000001_000.png"]
    ds = ChestXray14(root, split=split, return_masks=True)
    whole = ds[0]
    mass = int(CHESTXRAY8_CLASSES.index("Mass"))
    # a crop that keeps the left half drops the Nodule's box: the Mass keeps its own mask
    ds.transform = Pipeline(A.Compose([A.Crop(0, 0, 48, 96)], bbox_params=_bbox_params()))
    item = ds[0]
    assert item["boxes"][:, 0].tolist() == [mass]
    left = whole["masks"][whole["boxes"][:, 0] == mass][0][:, :48]
    assert torch.equal(item["masks"][0], left)
    # the training augmentation, many draws: masks always aligned with the surviving boxes
    ds.transform = build_transform("train", 64)
    ds.transform.set_random_seed(0)
    for _ in range(150):
        _check_aligned(ds[0])


def test_boxes_are_scaled_from_the_release_frame(tmp_path):
    from tests.data.test_nih import write_release

    root = write_release(tmp_path / "nih", lists=False)
    (root / "images").mkdir()
    for name in ("00000001_000.png", "00000001_001.png", "00000002_000.png",
                 "00000003_000.png"):
        cv2.imwrite(str(root / "images" / name), np.zeros((256, 256), np.uint8))
    # a 256² copy of the 1024² release: boxes (in the release's pixels) shrink 4×
    meta = load_metadata(root)
    split = meta.split_of["00000001_000.png"]
    ds = ChestXray14(root, split=split)
    item = next(ds[i] for i in range(len(ds)) if ds.records[i].name == "00000001_000.png")
    assert item["boxes"].tolist() == [[1.0, 2.5, 5.0, 77.5, 55.0]]  # (10, 20, 310, 220) / 4
    # the same from a 128² cache: / 8
    prepare_cache(root, 128, workers=1, progress=False)
    ds = ChestXray14(root, split=split, image_size=128)
    item = next(ds[i] for i in range(len(ds)) if ds.records[i].name == "00000001_000.png")
    assert ds.cache is not None and item["boxes"].tolist() == [[1.0, 1.25, 2.5, 38.75, 27.5]]
    # boxes drawn on the files as they are
    own = ChestXray14(root, split=split, box_frame="image", use_cache=False)
    item = next(own[i] for i in range(len(own)) if own.records[i].name == "00000001_000.png")
    assert item["boxes"].tolist() == [[1.0, 10.0, 20.0, 256.0, 220.0]]  # clipped to the film
    with pytest.raises(ValueError, match=r"`box_frame` must be None, 'image'"):
        ChestXray14(root, split=split, box_frame=0)


def test_cached_pixels_equal_the_png_pixels(synth_root, tmp_path):
    index = prepare_cache(synth_root, 96, cache_dir=tmp_path / "c", workers=1, progress=False)
    cache = ImageCache(index)
    for record in load_metadata(synth_root).records[:20]:
        from wsloc.data import read_image

        np.testing.assert_array_equal(cache.get(record.name),
                                      read_image(synth_root / "images" / record.name))


def test_flip_pipeline_mirrors_half_the_films_and_their_boxes():
    image = np.zeros((128, 128), np.float32)
    image[40:60, 10:30] = 1.0  # a bright square in the left quarter, boxed
    box = [(10.0, 40.0, 30.0, 60.0)]
    sides = {}
    for name in ("train", "train_flip"):
        pipe = build_transform(name, 64)
        pipe.set_random_seed(0)
        right = []
        for _ in range(60):
            out = pipe(image=image, bboxes=box, box_labels=[0])
            x1, _, x2, _ = out["bboxes"][0]
            cols = np.nonzero(out["image"].max(0) > 0.5)[0]
            # the box follows the film: both on the same side of the middle (col 32)
            assert ((x1 + x2) / 2 > 32) == (cols.mean() > 32)
            right.append((x1 + x2) / 2 > 32)
        sides[name] = sum(right)
    assert sides["train"] == 0  # a small affine never carries the square across
    assert 15 <= sides["train_flip"] <= 45  # p = 0.5 of 60 draws


def test_flip_hv_pipeline_turns_half_the_films_upside_down_with_their_boxes():
    image = np.zeros((128, 128), np.float32)
    image[10:30, 10:30] = 1.0  # a bright square in the top-left corner, boxed
    box = [(10.0, 10.0, 30.0, 30.0)]
    pipe = build_transform("train_flip_hv", 64)
    pipe.set_random_seed(0)
    below, right = 0, 0
    for _ in range(80):
        out = pipe(image=image, bboxes=box, box_labels=[0])
        x1, y1, x2, y2 = out["bboxes"][0]
        rows = np.nonzero(out["image"].max(1) > 0.5)[0]
        cols = np.nonzero(out["image"].max(0) > 0.5)[0]
        # the box follows the film on both axes
        assert ((y1 + y2) / 2 > 32) == (rows.mean() > 32)
        assert ((x1 + x2) / 2 > 32) == (cols.mean() > 32)
        below += (y1 + y2) / 2 > 32
        right += (x1 + x2) / 2 > 32
    assert 20 <= below <= 60 and 20 <= right <= 60  # p = 0.5 each, of 80 draws
