"""ssdwb predict: a checkpoint on image files gives the evaluation path's detections, COCO rows
with file names, a PNG per image, class names from the right place, and unreadable images
reported by name while the rest still run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssdwb.config import preset


def make_checkpoint(path, data_dir, num_classes=13, width=0.25, conf_scale=5.0, **extra):
    """A checkpoint as training saves one (weights + config), of an untrained tiny SSD300 whose
    class heads are scaled up so that its scores spread like a trained model's (some above 0.3,
    most below) instead of all sitting near 1 / num_classes."""
    from ssdwb.ssd.model import SSD300

    torch.manual_seed(0)
    model = SSD300(num_classes=num_classes, width=width)
    with torch.no_grad():
        for head in model.conf:
            head.weight.mul_(conf_scale)
    config = preset("demo", data_dir=str(data_dir), model_width=width)
    torch.save({"model": model.state_dict(), "config": config.to_dict(), **extra}, path)
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    root = tmp_path_factory.mktemp("predict")
    make_shapes_coco(root / "data", num_train=4, num_val=5, seed=1)
    make_checkpoint(root / "checkpoint.pt", root / "data")
    return root


def test_predict_gives_the_evaluation_detections(shapes, tmp_path):
    """Same images through ssdwb.evaluation.inference.infer (the evaluator training uses) and through
    predict at the evaluation's score threshold: the same rows, image by image."""
    from ssdwb.apps.predict import predict
    from ssdwb.data import CocoDetection, build_loader, val_transform
    from ssdwb.evaluation.inference import infer
    from ssdwb.runs.trained import load_trained
    from ssdwb.ssd.anchors import dboxes300_coco
    from ssdwb.ssd.box_coder import BoxCoder

    data = shapes / "data"
    ds = CocoDetection(data / "val", data / "annotations" / "instances_val.json",
                       transform=val_transform(300))
    trained = load_trained(shapes / "checkpoint.pt")
    ref, _ = infer(trained.model, build_loader(ds, 2, train=False, num_workers=0),
                   BoxCoder(dboxes300_coco()), ds.label_to_cat, torch.device("cpu"))
    files = [ds.image_path(i) for i in range(len(ds))]
    summary = predict(shapes / "checkpoint.pt", files, tmp_path, score=0.05, batch_size=3,
                      progress=False)
    assert summary["images"] == len(files) and summary["skipped"] == []
    rows = json.loads((tmp_path / "detections.json").read_text())
    assert len(rows) == len(ref) == summary["detections"] > 0
    for i, f in enumerate(files):
        mine = [r for r in rows if r["file_name"] == str(f)]
        theirs = ref[ref[:, 0] == ds.image_ids[i]]
        assert {r["image_id"] for r in mine} <= {i + 1}
        got = np.array([[*r["bbox"], r["score"], r["category_id"]] for r in mine]).reshape(-1, 6)
        np.testing.assert_allclose(got, theirs[:, 1:], rtol=0, atol=1e-9)
    names = {c["id"]: c["name"] for c in json.loads(
        (data / "annotations" / "instances_val.json").read_text())["categories"]}
    assert all(r["category"] == names[r["category_id"]] for r in rows)
    assert summary["classes_from"].endswith("instances_val.json")


def test_score_threshold_pngs_and_unreadable_images(shapes, tmp_path, capsys):
    from ssdwb.cli import main

    images = tmp_path / "in"
    images.mkdir()
    good = sorted((shapes / "data" / "val").iterdir())[:3]
    for f in good:
        (images / f.name).write_bytes(f.read_bytes())
    (images / "broken.jpg").write_bytes(good[0].read_bytes()[:200])  # a truncated JPEG
    (images / "notes.txt").write_text("not an image, not picked from a folder")
    out = tmp_path / "out"
    rc = main(["predict", "--checkpoint", str(shapes / "checkpoint.pt"), str(images),
               str(tmp_path / "missing.png"), "--out", str(out), "--score", "0.3",
               "--workers", "1", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 1  # something was skipped
    assert "broken.jpg" in captured.err and "missing.png" in captured.err
    assert "3 image(s)" in captured.out
    rows = json.loads((out / "detections.json").read_text())
    assert rows and all(r["score"] > 0.3 for r in rows)
    assert {Path(r["file_name"]).name for r in rows} <= {f.name for f in good}
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f.stem + ".png" for f in good)
    for f in good:
        with Image.open(f) as src, Image.open(out / (f.stem + ".png")) as drawn:
            assert drawn.size == src.size
            mine = [r for r in rows if Path(r["file_name"]).name == f.name]
            # boxes were drawn on the image where there are detections
            assert (np.asarray(drawn.convert("RGB")) != np.asarray(src.convert("RGB"))).any() \
                == bool(mine)


def test_class_names_come_from_checkpoint_dataset_coco_or_numbers(shapes, tmp_path):
    from ssdwb.runs.trained import load_trained

    saved = [{"id": 100 + i, "name": f"thing{i}"} for i in range(12)]
    t = load_trained(make_checkpoint(tmp_path / "a.pt", shapes / "data", classes=saved))
    assert t.classes_from == "the checkpoint" and t.label_names[1] == "thing0"
    assert t.label_to_cat[12] == 111
    gone = tmp_path / "gone"
    t = load_trained(make_checkpoint(tmp_path / "b.pt", gone, num_classes=81))
    assert t.classes_from.startswith("COCO 2017") and len(t.label_names) == 80
    assert (t.label_names[1], t.label_to_cat[1]) == ("person", 1)
    assert (t.label_names[80], t.label_to_cat[80]) == ("toothbrush", 90)
    assert t.label_names[12] == "stop sign" and t.label_to_cat[12] == 13  # id 12 is unused
    t = load_trained(make_checkpoint(tmp_path / "c.pt", gone, num_classes=4))
    assert t.label_names == {1: "class 1", 2: "class 2", 3: "class 3"}
    # the dataset is there but has another number of classes than the weights: not used
    t = load_trained(make_checkpoint(tmp_path / "d.pt", shapes / "data", num_classes=5))
    assert t.classes_from.startswith("numbered")


def test_model_is_built_from_the_checkpoint_config(shapes, tmp_path):
    from ssdwb.runs.trained import load_trained

    t = load_trained(make_checkpoint(tmp_path / "w.pt", shapes / "data", width=0.5))
    assert t.model.width == 0.5 and t.num_classes == 13 and not t.model.training
    ckpt = torch.load(tmp_path / "w.pt", weights_only=True)
    ckpt["config"]["model_width"] = 0.25  # weights of width 0.5 under a config saying 0.25
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad.pt: the weights do not fit SSD300\(width=0.25"):
        load_trained(tmp_path / "bad.pt")


def test_no_images_is_an_error_naming_the_inputs(shapes, tmp_path, capsys):
    from ssdwb.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", str(shapes / "checkpoint.pt"),
                 str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "no images in" in capsys.readouterr().err
