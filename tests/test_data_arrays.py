"""CocoDetection's numpy arrays give the samples the pycocotools-based reader gave, number for
number; the index is loaded only when asked for, and the dataset is small to copy."""

import json
import pickle

import numpy as np
import pytest
import torch

from ssdwb.data import CocoDetection, train_transform
from ssdwb.data.coco import load_coco_json
from ssdwb.data.synthetic import make_shapes_coco


class OldCocoDetection:
    """The reader before the arrays (ssdwb 2026-12, on pycocotools' index), its targets only."""

    def __init__(self, image_dir, ann_file, drop_empty=True):
        self.image_dir = image_dir
        self.coco = load_coco_json(ann_file)
        cats = self.coco.dataset["categories"]
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.label_names = {self.cat_to_label[c["id"]]: c["name"] for c in cats}
        self.num_classes = len(cats) + 1
        self.ids, self.targets, dropped = [], {}, 0
        for img in self.coco.dataset["images"]:
            w, h = img["width"], img["height"]
            boxes, labels = [], []
            for a in self.coco.imgToAnns.get(img["id"], []):
                x, y, bw, bh = a["bbox"]
                x1, y1 = max(x, 0.0), max(y, 0.0)
                x2, y2 = min(x + bw, w), min(y + bh, h)
                if x2 <= x1 or y2 <= y1:
                    dropped += 1
                    continue
                boxes.append((x1 / w, y1 / h, x2 / w, y2 / h))
                labels.append(self.cat_to_label[a["category_id"]])
            if drop_empty and not boxes:
                continue
            self.ids.append(img["id"])
            self.targets[img["id"]] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                       torch.tensor(labels, dtype=torch.int64))
        self.dropped_boxes = dropped

    def target(self, index):
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        boxes, labels = self.targets[img_id]
        return {"boxes": boxes.clone(), "labels": labels.clone(), "image_id": img_id,
                "orig_size": (info["height"], info["width"])}

    def image_path(self, index):
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def all_boxes(self):
        boxes = [self.targets[i][0] for i in self.ids]
        counts = torch.tensor([len(b) for b in boxes])
        index = torch.repeat_interleave(torch.arange(len(boxes)), counts)
        hw = torch.tensor([[self.coco.imgs[i]["height"], self.coco.imgs[i]["width"]]
                           for i in self.ids], dtype=torch.float64)[index]
        b = torch.cat(boxes)
        wh = (b[:, 2:] - b[:, :2]).double()
        return {"boxes": b, "labels": torch.cat([self.targets[i][1] for i in self.ids]),
                "areas": wh[:, 0] * hw[:, 1] * wh[:, 1] * hw[:, 0], "index": index}


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory):
    """The synthetic set, its annotations shuffled, with polygons, fractional and degenerate boxes,
    boxes over the edges, crowd boxes, an image with only degenerate boxes, one with none."""
    root = make_shapes_coco(tmp_path_factory.mktemp("degenerate"), num_train=16, num_val=2,
                            seed=5)
    ann = root / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    rng = np.random.default_rng(0)
    anns = data["annotations"]
    cats = [c["id"] for c in data["categories"]]
    extra = [[0, 0, 0, 5], [3, 4, -2, 6], [700, 10, 5, 5], [10, 900, 4, 4], [-5, -3, 20.5, 10.25],
             [300.5, 200.25, 900, 900], [1.1, 2.2, 3.3, 4.4], [5, 5, 7, 0], [-10, 3, 10, 5],
             [0.3, 0.1, 1e-9, 2]]
    for i, bbox in enumerate(extra * 3):
        anns.append({"image_id": int(rng.integers(1, 17)), "category_id": cats[i % len(cats)],
                     "bbox": bbox, "iscrowd": int(i % 4 == 0), "area": 1.0})
    only_degenerate = [im["id"] for im in data["images"]][6]
    anns[:] = [a for a in anns if a["image_id"] != only_degenerate]
    anns += [{"image_id": only_degenerate, "category_id": cats[0], "bbox": [2, 2, 0, 0]}]
    no_boxes = {"id": 1000, "file_name": data["images"][0]["file_name"], "width": 50,
                "height": 40}
    data["images"].insert(3, no_boxes)
    for a in anns:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    rng.shuffle(anns)
    for i, a in enumerate(anns):
        a["id"] = i + 1
    ann.write_text(json.dumps(data))
    return root, ann, only_degenerate


def same_target(a, b):
    assert a["boxes"].dtype == b["boxes"].dtype == torch.float32
    assert a["labels"].dtype == b["labels"].dtype == torch.int64
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    assert a["image_id"] == b["image_id"] and type(a["image_id"]) is int
    assert a["orig_size"] == b["orig_size"]


@pytest.mark.parametrize("drop_empty", [True, False])
def test_same_samples_as_the_pycocotools_reader(degenerate, drop_empty):
    root, ann, only_degenerate = degenerate
    old = OldCocoDetection(root / "train", ann, drop_empty=drop_empty)
    new = CocoDetection(root / "train", ann, drop_empty=drop_empty)
    assert old.dropped_boxes == new.dropped_boxes > 15
    assert new.ids == old.ids and len(new) == len(old.ids)
    assert (only_degenerate in new.ids) == (1000 in new.ids) == (not drop_empty)
    for attr in ("cat_to_label", "label_to_cat", "label_names", "num_classes"):
        assert getattr(new, attr) == getattr(old, attr)
    for i in range(len(old.ids)):
        same_target(new.raw(i)[1], old.target(i))
        assert new.image_path(i) == old.image_path(i)
    a, b = new.all_boxes(), old.all_boxes()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    # negative indices as before
    same_target(new.raw(-1)[1], old.target(-1))
    assert new.image_path(-2) == old.image_path(-2)
    with pytest.raises(IndexError):
        new.raw(len(new))


def test_same_transformed_samples_for_plain_indices(degenerate):
    """ints draw from torch's global generator, as before."""
    root, ann, _ = degenerate
    old = OldCocoDetection(root / "train", ann)
    new = CocoDetection(root / "train", ann, transform=train_transform())
    t = train_transform()
    for i in range(4):
        torch.manual_seed(i)
        image, target = t(new.load_image(i), old.target(i))
        torch.manual_seed(i)
        image2, target2 = new[i]
        assert torch.equal(image, image2)
        same_target(target, target2)
        assert target["augment"] == target2["augment"] and target2["skipped"] == []


def test_index_is_lazy_and_not_copied(degenerate):
    root, ann, _ = degenerate
    ds = CocoDetection(root / "train", ann)
    assert "coco" not in vars(ds)  # not built with the dataset
    state = pickle.dumps(ds)
    # the arrays: a fraction of the JSON (polygons, dicts and strings are not kept)
    assert len(state) < ann.stat().st_size / 3
    assert not any(isinstance(v, (list, dict)) and len(v) > 100 for v in vars(ds).values())
    coco = ds.coco
    assert ds.coco is coco and len(coco.imgs) == 17 and "segmentation" in coco.anns[1]
    assert "coco" not in vars(pickle.loads(pickle.dumps(ds)))  # not sent to spawned workers
    for a in (ds.boxes, ds.labels, ds.image_ids, ds.sizes, ds.box_offsets):
        assert isinstance(a, np.ndarray) and not a.flags.writeable
    assert ds.boxes.dtype == np.float32 and ds.labels.dtype == np.int64
    assert len(ds.box_offsets) == len(ds) + 1 and ds.box_offsets[-1] == len(ds.boxes)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["images"].append(dict(d["images"][0])), "listed more than once"),
    (lambda d: d["annotations"][0].pop("bbox"), "has no 'bbox'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "must be 4 numbers"),
    (lambda d: d["annotations"][0].pop("category_id"), "has no 'category_id'"),
    (lambda d: d["images"][0].update(id="one"), "must be integers"),
    (lambda d: d["annotations"][0].update(image_id=12345), "1 annotation(s) refer to image ids"),
])
def test_malformed_entries_name_the_file(degenerate, tmp_path, edit, message):
    _, ann, _ = degenerate
    data = json.loads(ann.read_text())
    edit(data)
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError) as e:
        CocoDetection(tmp_path, bad)
    assert message in str(e.value) and "edited.json" in str(e.value)
