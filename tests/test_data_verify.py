"""``ssdwb data verify DIR --decode``: every train and val image decoded by a process pool, the
bad files listed with the reason, exit code 1 if any (both dataset layouts); without
``--decode`` on the synthetic layout, the quick check (tests/test_dataset_file.py has more)."""

import json
import shutil

import pytest

from ssdwb.cli import main as cli
from ssdwb.data.synthetic import make_shapes_coco


@pytest.fixture()
def shapes(tmp_path_factory):
    return make_shapes_coco(tmp_path_factory.mktemp("verify"), num_train=6, num_val=3, seed=1)


def test_clean_set_passes(shapes, capsys):
    assert cli(["data", "verify", str(shapes), "--decode", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{shapes / 'train'}: 6 of 6 images decode" in out
    assert f"{shapes / 'val'}: 3 of 3 images decode" in out and out.rstrip().endswith("ok")


def break_files(train, val):
    truncated = train / "000000000002.jpg"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    missing = val / "000000000003.jpg"
    missing.unlink()
    return truncated, missing


def test_truncated_and_missing_are_listed(shapes, capsys):
    truncated, missing = break_files(shapes / "train", shapes / "val")
    assert cli(["data", "verify", str(shapes), "--decode", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "2 bad image(s) of 9" in err
    assert f"{truncated}: truncated" in err and f"{missing}: missing" in err
    lines = [line for line in err.splitlines() if ".jpg:" in line]
    assert len(lines) == 2  # only those two


def test_undecodable_and_wrong_size(shapes, capsys):
    (shapes / "train" / "000000000001.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    ann = shapes / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    data["images"][0]["width"] += 1
    ann.write_text(json.dumps(data))
    assert cli(["data", "verify", str(shapes), "--decode", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "000000000001.jpg: cannot be decoded" in err
    assert f"{shapes / 'val' / '000000000001.jpg'}: decodes to" in err
    assert "the annotation file says" in err


def test_coco2017_layout(shapes, capsys):
    """train2017/val2017 with instances_*2017.json: the COCO checks run too (counts here are
    not COCO's: reported), then every image is decoded."""
    (shapes / "train").rename(shapes / "train2017")
    (shapes / "val").rename(shapes / "val2017")
    for split in ("train", "val"):
        shutil.move(shapes / "annotations" / f"instances_{split}.json",
                    shapes / "annotations" / f"instances_{split}2017.json")
    truncated, missing = break_files(shapes / "train2017", shapes / "val2017")
    assert cli(["data", "verify", str(shapes), "--decode", "--skip-md5"]) == 1
    err = capsys.readouterr().err
    assert "6 images, expected 118287" in err  # verify_coco's finding
    assert f"{truncated}: truncated" in err and f"{missing}: missing" in err


def test_unreadable_annotation_file_falls_back_to_the_folder(shapes, capsys):
    (shapes / "annotations" / "instances_val.json").write_text("{oops")
    assert cli(["data", "verify", str(shapes), "--decode", "--workers", "2"]) == 1
    captured = capsys.readouterr()
    assert "instances_val.json: not a valid JSON file" in captured.err
    assert f"{shapes / 'val'}: 3 of 3 images decode" not in captured.out  # not printed on error
    assert "bad image(s) of 9" in captured.err  # the folder's 3 files were decoded


def test_without_decode_the_quick_check_runs(shapes, capsys):
    """The synthetic layout (as a dataset file): the check training makes, no image opened."""
    assert cli(["data", "verify", str(shapes)]) == 0
    out = capsys.readouterr().out
    assert "train: 6 images" in out and "val: 3 images" in out and out.rstrip().endswith("ok")
    (shapes / "val" / "000000000002.jpg").unlink()
    assert cli(["data", "verify", str(shapes)]) == 1
    assert "1 image file(s) missing" in capsys.readouterr().err
