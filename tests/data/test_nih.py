import json
import shutil

import pytest

from wsloc.cli import main
from wsloc.data.inspect import summarize
from wsloc.data.nih import (
    CLASSES,
    MetadataError,
    load_metadata,
    read_bbox_list,
    read_data_entry,
)

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
          "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
ROWS = [
    "00000001_000.png,Cardiomegaly|Emphysema,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,No Finding,1,1,58,M,AP,2894,2729,0.143,0.143",
    "00000002_000.png,Infiltration|Effusion|Mass,0,2,81,F,PA,2500,2048,0.168,0.168",
    "00000003_000.png,Hernia,0,3,74,F,PA,2500,2048,0.168,0.168",
]


def write_release(root, rows=ROWS, trailing_comma=False, lists=True, bbox=True):
    root.mkdir(parents=True, exist_ok=True)
    end = ",\n" if trailing_comma else "\n"
    name = "Data_Entry_2017.csv" if trailing_comma else "Data_Entry_2017_v2020.csv"
    (root / name).write_text(HEADER + end + "".join(r + end for r in rows))
    if bbox:
        (root / "BBox_List_2017.csv").write_text(
            "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
            "00000002_000.png,Infiltrate,225.084745762712,547.019216763771,86.7796610169491,"
            "79.1864406779661\n"
            "00000001_000.png,Cardiomegaly,10,20,300,200,,,\n")
    if lists:
        (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n"
                                                 "00000003_000.png\n")
        (root / "test_list.txt").write_text("00000002_000.png\n")
    return root


@pytest.mark.parametrize("trailing_comma", [False, True])
def test_data_entry_both_releases(tmp_path, trailing_comma):
    root = write_release(tmp_path, trailing_comma=trailing_comma)
    name = "Data_Entry_2017.csv" if trailing_comma else "Data_Entry_2017_v2020.csv"
    records = read_data_entry(root / name)
    assert [r.name for r in records] == [row.split(",")[0] for row in ROWS]
    first = records[0]
    assert first.labels == ("Cardiomegaly", "Emphysema") and first.patient == 1
    assert (first.width, first.height, first.spacing) == (2682, 2749, (0.143, 0.143))
    assert records[1].labels == () and records[1].view == "AP"
    assert records[2].labels == ("Effusion", "Infiltration", "Mass") and records[2].age == 81


def test_bbox_list(tmp_path):
    boxes = read_bbox_list(write_release(tmp_path) / "BBox_List_2017.csv")
    (box,) = boxes["00000002_000.png"]
    assert box.label == "Infiltration"  # "Infiltrate" in the release
    assert box.x1 == pytest.approx(225.084745762712)
    assert box.x2 == pytest.approx(225.084745762712 + 86.7796610169491)
    assert box.y2 == pytest.approx(547.019216763771 + 79.1864406779661)
    assert boxes["00000001_000.png"][0].x2 == 310.0


@pytest.mark.parametrize("bad", ["../etc/passwd.png", "sub/00000009_000.png", "..",
                                 "/abs.png", "a\\b.png"])
def test_names_never_leave_the_root(tmp_path, bad):
    root = write_release(tmp_path, rows=ROWS + [f"{bad},No Finding,0,9,40,M,PA,1,1,0.1,0.1"])
    with pytest.raises(MetadataError, match=r"Data_Entry_2017_v2020.csv:6: .*not a plain file"):
        load_metadata(root)
    with pytest.warns(UserWarning, match=r":6: skipped malformed row"):
        meta = load_metadata(root, on_error="skip")
    assert len(meta.records) == 4


def test_malformed_rows_name_file_and_line(tmp_path):
    root = write_release(tmp_path, rows=ROWS[:2] + ["00000005_000.png,Mass,0,5,40,M,PA"])
    with pytest.raises(MetadataError, match=r"v2020.csv:4: malformed row \(expected 11"):
        load_metadata(root)
    root2 = write_release(tmp_path / "b", rows=ROWS[:1] + ["x.png,Flu,0,5,40,M,PA,1,1,1,1"])
    with pytest.raises(MetadataError, match=r"unknown finding label"):
        load_metadata(root2)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "Data_Entry_2017_v2020.csv").write_text("name,labels\na,b\n")
    with pytest.raises(MetadataError, match=r":1: expected the header"):
        load_metadata(tmp_path / "c")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no Data_Entry_2017_v2020.csv"):
        load_metadata(tmp_path / "d")


def test_official_split_is_by_patient(tmp_path):
    meta = load_metadata(write_release(tmp_path), val_fraction=0.5, seed=1)
    assert meta.official_split
    assert meta.split_of["00000002_000.png"] == "test"
    # patient 1's two films land in the same split
    assert meta.split_of["00000001_000.png"] == meta.split_of["00000001_001.png"] != "test"
    (tmp_path / "test_list.txt").write_text("00000001_001.png\n")
    with pytest.raises(MetadataError, match=r"appear in both.*patient 1"):
        load_metadata(tmp_path)


def test_split_without_lists_never_shares_a_patient(synth_root, tmp_path):
    root = tmp_path / "nolists"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("*.txt", "images", "masks"))
    metas = [load_metadata(root, seed=s) for s in (0, 0, 5)]
    assert not metas[0].official_split
    assert metas[0].split_of == metas[1].split_of != metas[2].split_of
    for meta in metas:
        owner: dict[int, str] = {}
        for r in meta.records:
            assert owner.setdefault(r.patient, meta.split_of[r.name]) == meta.split_of[r.name]
        assert set(meta.split_of.values()) == {"train", "val", "test"}


def test_images_found_in_release_folders(tmp_path):
    root = write_release(tmp_path)
    (root / "images_001" / "images").mkdir(parents=True)
    (root / "images_002" / "images").mkdir(parents=True)
    (root / "images_001" / "images" / "00000001_000.png").write_bytes(b"x")
    (root / "images_002" / "images" / "00000002_000.png").write_bytes(b"x")
    meta = load_metadata(root)
    assert meta.paths["00000002_000.png"].parent.parent.name == "images_002"
    assert meta.paths["00000003_000.png"] is None


def test_inspect_on_metadata_alone(tmp_path, capsys):
    root = write_release(tmp_path)
    summary = summarize(root)
    assert summary["images"] == 4 and summary["patients"] == 3
    assert summary["missing_on_disk"] == 4
    assert summary["labels"]["No Finding"] == 1 and summary["labels"]["Hernia"] == 1
    assert summary["boxes"] == {"Cardiomegaly": 1, "Infiltration": 1}
    assert summary["splits"]["test"] == {"images": 1, "patients": 1}
    assert main(["inspect", "--data-root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["views"] == {"PA": 3, "AP": 1}
    assert main(["inspect", "--data-root", str(root)]) == 0
    assert "4 listed, 4 missing on disk" in capsys.readouterr().out
    assert main(["inspect", "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "data root not found" in capsys.readouterr().err


def test_class_order_is_the_papers():
    assert CLASSES[:8] == ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
                           "Nodule", "Pneumonia", "Pneumothorax")
    assert len(CLASSES) == 14 and CLASSES[-1] == "Hernia"


def test_a_repeated_row_is_read_once(tmp_path):
    # an identical repeat is dropped with a warning naming file, lines and image
    root = write_release(tmp_path / "a", rows=ROWS + [ROWS[2]])
    with pytest.warns(UserWarning, match=r"Data_Entry_2017_v2020.csv:6: dropped an identical "
                                         r"repeat of Image Index '00000002_000.png' \(first at "
                                         r"line 4\)"):
        records = read_data_entry(root / "Data_Entry_2017_v2020.csv")
    assert [r.name for r in records] == [row.split(",")[0] for row in ROWS]
    # a repeat with other values is a conflict: an error, or with skip the first row wins
    conflict = ROWS[2].replace(",81,F,", ",82,F,")
    root = write_release(tmp_path / "b", rows=ROWS + [conflict])
    with pytest.raises(MetadataError, match=r":6: Image Index '00000002_000.png' repeats line "
                                            r"4 with different values"):
        read_data_entry(root / "Data_Entry_2017_v2020.csv")
    with pytest.warns(UserWarning, match="dropped a conflicting repeat"):
        records = read_data_entry(root / "Data_Entry_2017_v2020.csv", on_error="skip")
    assert [r.age for r in records if r.name == "00000002_000.png"] == [81]
    # the same rule for BBox_List: an identical box row once; two different boxes both kept
    bbox = root / "BBox_List_2017.csv"
    bbox.write_text(bbox.read_text() + "00000001_000.png,Cardiomegaly,10,20,300,200\n"
                    "00000001_000.png,Cardiomegaly,11,20,300,200\n")
    with pytest.warns(UserWarning, match=r"BBox_List_2017.csv:4: dropped an identical repeat"):
        boxes = read_bbox_list(bbox)
    assert [(b.x1, b.y1) for b in boxes["00000001_000.png"]] == [(10, 20), (11, 20)]
