"""A dataset in one file (``data_dir=my.yaml``): every command takes it, training checks it first.

The dataset is made here: 12 train and 6 val images of 96x96 in subfolders (``photos/a/...``),
JPEG and PNG in RGB, L, P (with transparency) and RGBA, category ids 3, 17 and 90, and a
``dataset.yaml`` beside ``labels/``. One module-scoped fixture runs the whole pipeline through
the venv's ``ssdwb`` (verify --decode, stats, anchors fit, one tiny epoch, eval, predict); the
unit tests check the refusals and ``ssdwb data split``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ssdwb.cli import main as cli
from ssdwb.data import CocoDetection, resolve_data
from ssdwb.data.check import DatasetRefused, check_dataset
from ssdwb.data.coco import to_rgb
from ssdwb.data.download import DatasetError
from ssdwb.data.verify import verify_quick

SSDWB = str(Path(sys.executable).parent / "ssdwb")
CATEGORIES = [{"id": 3, "name": "plate"}, {"id": 17, "name": "disc"}, {"id": 90, "name": "rod"}]
SIDE = 96
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _image(rng: np.random.Generator, mode: str):
    """A 96x96 image of one mode with 1-2 objects: ``(PIL image, [(category id, [x, y, w, h])])``."""
    im = Image.new("RGB", (SIDE, SIDE), tuple(int(v) for v in rng.integers(90, 170, 3)))
    draw = ImageDraw.Draw(im)
    objects = []
    for _ in range(int(rng.integers(1, 3))):
        cat = CATEGORIES[int(rng.integers(0, 3))]["id"]
        w, h = (int(v) for v in rng.integers(24, 44, 2))
        if cat == 90:
            h = max(8, w // 3)
        x, y = (int(v) for v in rng.integers(0, SIDE - 44, 2))
        fill = {3: (220, 40, 40), 17: (40, 200, 60), 90: (40, 60, 230)}[cat]
        (draw.ellipse if cat == 17 else draw.rectangle)([x, y, x + w - 1, y + h - 1], fill=fill)
        objects.append((cat, [x, y, w, h]))
    if mode == "P":
        im = im.quantize(16)
        im.info["transparency"] = bytes([0, 128] + [255] * 14)  # tRNS: bytes, not one index
    elif mode != "RGB":
        im = im.convert(mode)
    return im, objects


def make_dataset(root: Path, n_train: int = 12, n_val: int = 6) -> Path:
    """The module docstring's dataset under ``root``; returns ``root/dataset.yaml``."""
    rng = np.random.default_rng(0)
    modes = {0: ("RGBA", ".png"), 1: ("L", ".jpg"), 2: ("P", ".png"), 13: ("RGBA", ".png"),
             14: ("L", ".jpg"), 15: ("P", ".png")}
    splits = {"train": range(n_train), "val": range(n_train, n_train + n_val)}
    ann_id = 100
    for split, indices in splits.items():
        images, anns = [], []
        for i in indices:
            mode, ext = modes.get(i, ("RGB", ".jpg"))
            name = f"{'ab'[i % 2]}/{split}_{i:02d}{ext}"
            im, objects = _image(rng, mode)
            path = root / "photos" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            im.save(path, **({"transparency": im.info["transparency"]} if mode == "P" else {}))
            images.append({"id": 1000 + i, "file_name": name, "width": SIDE, "height": SIDE})
            for cat, box in objects:
                ann_id += 1
                anns.append({"id": ann_id, "image_id": 1000 + i, "category_id": cat, "bbox": box,
                             "area": box[2] * box[3], "iscrowd": 0})
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": CATEGORIES}))
    (root / "dataset.yaml").write_text(
        "name: my-parts\n"
        "train: {images: photos, annotations: labels/train.json}\n"
        "val:   {images: photos, annotations: labels/val.json}\n")
    return root / "dataset.yaml"


def run(args: list[str], root: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, SSDWB_ROOT=str(root), PYTHONUNBUFFERED="1")
    out = subprocess.run([SSDWB, *args], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    if ok:
        assert out.returncode == 0, f"{args}\n{(out.stdout + out.stderr)[-4000:]}"
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Every command on the dataset file, as subprocesses: their outputs by name."""
    root = tmp_path_factory.mktemp("dataset-file")
    data = make_dataset(root)
    out = {"root": root, "data": data}
    out["verify"] = run(["data", "verify", str(data), "--decode", "--workers", "1"], root)
    out["stats"] = run(["data", "stats", str(data), "--plot", "x.png"], root)
    out["anchors"] = run(["anchors", "fit", "--data", str(data), "--sample", "500"], root)
    small = ["epochs=1", "model_width=0.125", "batch_size=4", "eval_batch_size=6",
             "num_workers=0", "warmup=2", "eval_at=[1]", "lr_decay_at=[]", "amp=off",
             "channels_last=false"]
    # through the training notebook, as Slurm jobs and sweeps run it (the demo preset's notebook
    # makes the synthetic set where data_dir points: never over a dataset file)
    out["train"] = run(["notebook", str(NOTEBOOKS / "train.ipynb"), "runs/r/train.ipynb",
                        "-r", "preset", "demo", "-r", "data_dir", str(data), "-r", "run_dir",
                        "runs", "-r", "run_id", "r",
                        "-p", "extra", json.dumps(small), "--no-progress"], root)
    ckpt = str(root / "runs" / "r" / "checkpoint.pt")
    out["eval"] = run(["eval", "--checkpoint", ckpt, "--data", str(data), "--workers", "0",
                       "--device", "cpu", "--batch-size", "6"], root)
    out["predict"] = run(["predict", "--checkpoint", ckpt, str(root / "photos" / "a"), "--out",
                          "preds", "--score", "0.0", "--workers", "0", "--device", "cpu"], root)
    return out


def test_the_file_resolves_relative_to_its_folder(tmp_path):
    data = make_dataset(tmp_path, 4, 2)
    paths = resolve_data(data)
    assert paths["train_images"] == tmp_path / "photos" and paths["name"] == "my-parts"
    assert paths["val_ann"] == tmp_path / "labels" / "val.json" and paths["kind"] == "file"
    ds = CocoDetection(paths["train_images"], paths["train_ann"])
    assert ds.file_name(0) == "a/train_00.png"  # subfolders in file_name
    assert [ds.label_to_cat[k] for k in (1, 2, 3)] == [3, 17, 90]  # file order, not contiguous
    # the same file as JSON, with absolute paths
    spec = {"train": {"images": str(tmp_path / "photos"), "annotations": "labels/train.json"},
            "val": {"images": "photos", "annotations": str(tmp_path / "labels" / "val.json")}}
    (tmp_path / "d.json").write_text(json.dumps(spec))
    assert resolve_data(tmp_path / "d.json") == {**paths, "name": "d",
                                                  "source": tmp_path / "d.json"}


def test_every_mode_loads_as_rgb_without_warnings(tmp_path):
    data = make_dataset(tmp_path, 4, 2)
    paths = resolve_data(data)
    ds = CocoDetection(paths["train_images"], paths["train_ann"])
    modes = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's P -> RGB transparency warning would fail here
        for i in range(len(ds)):
            with Image.open(ds.image_path(i)) as raw:
                modes[raw.mode] = raw.info.get("transparency")
            im = ds.load_image(i)
            assert im.mode == "RGB" and im.size == (SIDE, SIDE)
        assert to_rgb(Image.new("LA", (4, 4))).mode == "RGB"
    assert {"RGBA", "L", "P", "RGB"} <= set(modes) and isinstance(modes["P"], bytes)


def test_the_pipeline_runs_on_the_file(pipeline):
    root = pipeline["root"]
    assert "12 images" in pipeline["verify"].stdout and "ok" in pipeline["verify"].stdout
    assert "photos: 12 of 12 images decode" in pipeline["verify"].stdout
    stats = pipeline["stats"].stdout
    for name, cat in (("plate", 3), ("disc", 17), ("rod", 90)):
        assert any(line.split()[:2] == [name, str(cat)] for line in stats.splitlines()), stats
    assert "objects per image" in stats and "small (< 32²)" in stats
    assert (root / "x.png").stat().st_size > 1000
    design = json.loads((root / "anchors" / "my-parts.json").read_text())  # the dataset's name
    assert design["fit"]["data"] == str(pipeline["data"])
    summary = json.loads((root / "runs" / "r" / "summary.json").read_text())
    assert summary["status"] == "success", summary
    # every image mode is made RGB without PIL's palette warning, TensorBoard's pictures too
    assert "Palette images with Transparency" not in (root / "runs/r/train.ipynb").read_text()
    assert '"mAP"' in pipeline["eval"].stdout
    assert "class names: the checkpoint" in pipeline["predict"].stdout
    dets = json.loads((root / "preds" / "detections.json").read_text())
    assert dets and {d["category"] for d in dets} <= {"plate", "disc", "rod"}
    assert {d["category_id"] for d in dets} <= {3, 17, 90}
    assert len({d["file_name"] for d in dets}) == 9  # photos/a: every even index, 3 modes


def _write(path: Path, images, annotations, categories=CATEGORIES):
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))


def test_category_mismatch_shows_the_difference(tmp_path):
    data = make_dataset(tmp_path, 4, 2)
    val = tmp_path / "labels" / "val.json"
    spec = json.loads(val.read_text())
    spec["categories"] = [{"id": 3, "name": "plates"}, {"id": 17, "name": "disc"},
                          {"id": 91, "name": "pin"}]
    spec["annotations"] = [a for a in spec["annotations"] if a["category_id"] != 90]
    val.write_text(json.dumps(spec))
    with pytest.raises(DatasetError) as e:
        verify_quick(data)
    msg = str(e.value)
    assert "only in train: 90 'rod'" in msg and "only in val: 91 'pin'" in msg
    assert "renamed: 3: 'plate' in train, 'plates' in val" in msg and str(val) in msg


def test_missing_files_are_refused_naming_ten(tmp_path, capsys):
    data = make_dataset(tmp_path, 14, 2)
    train = tmp_path / "labels" / "train.json"
    names = [im["file_name"] for im in json.loads(train.read_text())["images"]]
    for name in names[:12]:
        (tmp_path / "photos" / name).unlink()
    paths = resolve_data(data)
    check = check_dataset(CocoDetection(paths["train_images"], paths["train_ann"]),
                          CocoDetection(paths["val_images"], paths["val_ann"]))
    with pytest.raises(DatasetRefused) as e:
        check.raise_if_refused()
    msg = str(e.value)
    assert "12 image file(s) missing" in msg and str(train) in msg and "(12 in all)" in msg
    assert sum(n in msg for n in names[:12]) == 10 and names[12] not in msg
    assert cli(["data", "verify", str(data)]) == 1
    assert "12 image file(s) missing" in capsys.readouterr().err


def test_training_refuses_missing_files_before_the_first_step(tmp_path):
    from ssdwb.config import preset
    from ssdwb.engine.loop import train

    data = make_dataset(tmp_path, 4, 2)
    (tmp_path / "photos" / "b" / "train_01.jpg").unlink()
    config = preset("demo", data_dir=str(data), run_dir=str(tmp_path / "runs"), run_id="x",
                    epochs=1, num_workers=0, model_width=0.125, amp="off")
    with pytest.raises(DatasetRefused, match="b/train_01.jpg"):
        train(config)
    assert not (tmp_path / "runs" / "x" / "checkpoint.pt").exists()


def test_clipped_and_zero_boxes_are_counted_with_their_ids(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (50, 40)).save(tmp_path / "img" / "x.jpg")
    images = [{"id": 1, "file_name": "x.jpg", "width": 50, "height": 40}]
    boxes = {7: [10, 10, 20, 20], 8: [40, 30, 20, 20], 9: [-5, 0, 10, 10], 10: [5, 5, 0, 10],
             11: [60, 5, 10, 10], 12: [5, 5, 10, -3]}
    anns = [{"id": i, "image_id": 1, "category_id": 3, "bbox": b} for i, b in boxes.items()]
    _write(tmp_path / "a.json", images, anns)
    (tmp_path / "d.yaml").write_text("train: {images: img, annotations: a.json}\n"
                                     "val: {images: img, annotations: a.json}\n")
    assert cli(["data", "verify", str(tmp_path / "d.yaml")]) == 0
    out = capsys.readouterr().out
    assert "2 box(es) reach outside their image and were clipped (annotation ids 8, 9)" in out
    assert "3 box(es) have no area" in out and "(annotation ids 10, 11, 12)" in out


def test_unknown_images_and_categories_name_the_annotation_ids(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    images = [{"id": 1, "file_name": "x.jpg", "width": 50, "height": 40}]
    anns = [{"id": 5, "image_id": 1, "category_id": 4, "bbox": [1, 1, 5, 5]}]
    _write(tmp_path / "a.json", images, anns)
    _write(tmp_path / "b.json", images, [{**anns[0], "category_id": 3, "image_id": 2}])
    for ann, why in (("a.json", "category id(s) [4]"), ("b.json", "image ids not in 'images'")):
        (tmp_path / "d.yaml").write_text(f"train: {{images: img, annotations: {ann}}}\n"
                                         f"val: {{images: img, annotations: {ann}}}\n")
        assert cli(["data", "verify", str(tmp_path / "d.yaml")]) == 1
        err = capsys.readouterr().err
        assert why in err and "(annotation ids 5)" in err and ann in err


@pytest.mark.parametrize("content,message", [
    ("train: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping with 'train' and 'val'"),
    ("train: {images: photos, annotations: labels/train.json}\n", "missing key(s) ['val']"),
    ("train: {images: photos}\nval: {images: photos, annotations: labels/val.json}\n",
     "'train' has no 'annotations'"),
    ("train: {images: pics, annotations: labels/train.json}\n"
     "val: {images: photos, annotations: labels/val.json}\n", "'train.images' is 'pics'"),
])
def test_a_bad_dataset_file_is_named(tmp_path, content, message, capsys):
    make_dataset(tmp_path, 2, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        resolve_data(bad)
    assert str(bad) in str(e.value) and message in str(e.value)
    assert cli(["anchors", "fit", "--data", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err


def test_a_coco_file_as_data_suggests_data_split(tmp_path, capsys):
    make_dataset(tmp_path, 2, 2)
    ann = tmp_path / "labels" / "train.json"
    with pytest.raises(ValueError, match="ssdwb data split"):
        resolve_data(ann)
    assert cli(["data", "stats", str(ann)]) == 1
    assert "is a COCO annotation file, not a dataset file" in capsys.readouterr().err


def test_split_writes_files_that_verify_and_cover_the_input(tmp_path, capsys):
    make_dataset(tmp_path / "export", 10, 2)
    export = tmp_path / "export"
    (export / "photos").rename(export / "images")
    whole = json.loads((export / "labels" / "train.json").read_text())
    out = tmp_path / "mine"
    assert cli(["data", "split", str(export / "labels" / "train.json"), "--val", "0.3",
                "--seed", "1", "--out", str(out)]) == 0
    assert "../images of the annotation file" in capsys.readouterr().out
    parts = [json.loads((out / f"{s}.json").read_text()) for s in ("train", "val")]
    assert [len(p["images"]) for p in parts] == [7, 3]
    assert sorted(im["id"] for p in parts for im in p["images"]) == \
        sorted(im["id"] for im in whole["images"])
    assert sorted(a["id"] for p in parts for a in p["annotations"]) == \
        sorted(a["id"] for a in whole["annotations"])
    for p in parts:
        ids = {im["id"] for im in p["images"]}
        assert all(a["image_id"] in ids for a in p["annotations"])
        assert p["categories"] == CATEGORIES
    paths = resolve_data(out / "dataset.yaml")
    assert paths["train_images"].resolve() == (export / "images").resolve()
    assert cli(["data", "verify", str(out / "dataset.yaml"), "--decode", "--workers", "1"]) == 0
    # the same seed, the same split
    assert cli(["data", "split", str(export / "labels" / "train.json"), "--val", "0.3",
                "--seed", "1", "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "val.json").read_text() == (out / "val.json").read_text()
