import hashlib
import json
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as F

from ssdwb.data import CocoDetection, build_loader, normalize, set_epoch, train_transform
from ssdwb.data.synthetic import make_shapes_coco
from ssdwb.data.transforms import CROP_OPTIONS, SSDRandomCrop, val_transform


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_coco(tmp_path_factory.mktemp("shapes"), num_train=24, num_val=8, seed=3)


def train_ds(root, **kw):
    return CocoDetection(root / "train", root / "annotations" / "instances_train.json", **kw)


def digest(folder):
    h = hashlib.md5()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_same_seed_same_bytes(tmp_path, shapes):
    again = make_shapes_coco(tmp_path / "again", num_train=24, num_val=8, seed=3)
    assert digest(again) == digest(shapes)
    other = make_shapes_coco(tmp_path / "other", num_train=24, num_val=8, seed=4)
    assert digest(other) != digest(shapes)


def test_synthetic_layout_and_contents(shapes):
    data = json.loads((shapes / "annotations" / "instances_train.json").read_text())
    assert len(data["images"]) == 24 and 8 <= len(data["categories"]) <= 12
    per_image = {}
    for a in data["annotations"]:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert 1 <= min(per_image.values()) and max(per_image.values()) <= 12
    for im in data["images"]:
        assert 320 <= im["width"] <= 640 and 320 <= im["height"] <= 640
        assert (shapes / "train" / im["file_name"]).exists()
    ids = [c["id"] for c in data["categories"]]
    assert ids != list(range(1, len(ids) + 1))  # gaps, like COCO's ids


def test_coco_reader_targets_and_mapping(shapes):
    ds = train_ds(shapes)
    image, t = ds.raw(0)
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4
    assert (t["boxes"] >= 0).all() and (t["boxes"] <= 1).all()
    assert t["labels"].dtype == torch.int64 and t["labels"].min() >= 1
    h, w = t["orig_size"]
    assert (w, h) == image.size
    cats = ds.coco.dataset["categories"]
    assert [ds.cat_to_label[c["id"]] for c in cats] == list(range(1, len(cats) + 1))
    assert all(ds.label_to_cat[ds.cat_to_label[c["id"]]] == c["id"] for c in cats)
    assert ds.num_classes == len(cats) + 1
    # pixel box -> fractions
    ann = ds.coco.imgToAnns[t["image_id"]][0]
    x, y, bw, bh = ann["bbox"]
    assert t["boxes"][0].tolist() == pytest.approx([x / w, y / h, (x + bw) / w, (y + bh) / h])


def write_ann(path, images, annotations, categories=({"id": 1, "name": "a"},)):
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": list(categories)}))
    return path


def test_crowd_kept_empty_dropped_degenerate_dropped(tmp_path, caplog):
    Image.new("RGB", (100, 50)).save(tmp_path / "a.jpg")
    Image.new("RGB", (100, 50)).save(tmp_path / "b.jpg")
    ann = write_ann(tmp_path / "ann.json",
                    [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50},
                     {"id": 2, "file_name": "b.jpg", "width": 100, "height": 50}],
                    [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                      "iscrowd": 1},
                     {"id": 2, "image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5],
                      "iscrowd": 0},
                     {"id": 3, "image_id": 1, "category_id": 1, "bbox": [200, 10, 5, 5],
                      "iscrowd": 0},
                     {"id": 4, "image_id": 2, "category_id": 1, "bbox": [1, 1, -3, 5],
                      "iscrowd": 0}])
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(tmp_path, ann)
    assert ds.ids == [1] and ds.dropped_boxes == 3
    assert "dropped 3 degenerate box" in caplog.text and "ann.json" in caplog.text
    assert ds.raw(0)[1]["boxes"].shape == (1, 4)  # the crowd box
    assert CocoDetection(tmp_path, ann, drop_empty=False).ids == [1, 2]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a valid JSON file"),
    (json.dumps({"images": [], "categories": []}), "missing key(s) ['annotations']"),
    (json.dumps([1, 2]), "expected a JSON object"),
    (json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 5, "height": 5}],
                 "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1]}],
                 "categories": [{"id": 1, "name": "a"}]}), "category id(s) [9]"),
])
def test_bad_annotation_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        CocoDetection(tmp_path, path)
    assert message in str(e.value) and "bad.json" in str(e.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(tmp_path, tmp_path / "nope.json")


def test_grey_and_rgb_jpegs_load_as_rgb(tmp_path):
    """COCO has greyscale JPEGs: they come back as RGB; RGB ones come back decoded, file closed."""
    grey = Image.linear_gradient("L").resize((40, 30))
    grey.save(tmp_path / "grey.jpg")
    Image.merge("RGB", [grey, grey, grey]).save(tmp_path / "rgb.jpg")
    ann = write_ann(tmp_path / "ann.json",
                    [{"id": i, "file_name": f, "width": 40, "height": 30}
                     for i, f in ((1, "grey.jpg"), (2, "rgb.jpg"))],
                    [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10]}
                     for i in (1, 2)])
    ds = CocoDetection(tmp_path, ann)
    for i, name in enumerate(("grey.jpg", "rgb.jpg")):
        image = ds.load_image(i)
        assert image.mode == "RGB" and image.size == (40, 30)
        with Image.open(tmp_path / name) as ref:
            assert np.array_equal(np.asarray(image), np.asarray(ref.convert("RGB")))
        assert image.resize((20, 15)).size == (20, 15)  # still usable after the file closed


def test_bad_images_error_or_skip(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    ann = write_ann(tmp_path / "ann.json",
                    [{"id": i, "file_name": f, "width": 64, "height": 64}
                     for i, f in ((1, "missing.jpg"), (2, "broken.jpg"), (3, "ok.jpg"))],
                    [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10]}
                     for i in (1, 2, 3)])
    ds = CocoDetection(tmp_path, ann)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        ds[0]
    with pytest.raises(OSError, match="broken.jpg.*cannot be decoded"):
        ds[1]
    skip = CocoDetection(tmp_path, ann, skip_bad_images=True)
    image, t = skip[0]
    assert t["image_id"] == 3 and skip.bad_images == 2


def test_train_transform_deterministic_and_normalised(shapes):
    ds = train_ds(shapes, transform=train_transform())
    torch.manual_seed(7)
    a = [ds[i] for i in range(6)]
    torch.manual_seed(7)
    b = [ds[i] for i in range(6)]
    for (ia, ta), (ib, tb) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
    img = a[0][0]
    assert img.shape == (3, 300, 300) and img.dtype == torch.uint8
    from ssdwb.data.transforms import _normalize_batch

    images = torch.stack([t for t, _ in a[:3]])
    # the reference: ToTensor (float, / 255) then Normalize, bit for bit; the CPU's image by
    # image passes, the GPU's whole batch (run here on the CPU), and a channels-last batch
    expected = torch.stack([F.normalize(t.float().div(255), [0.485, 0.456, 0.406],
                                        [0.229, 0.224, 0.225]) for t in images])
    channels_last = images.contiguous(memory_format=torch.channels_last)
    for x in (normalize(images), _normalize_batch(images), normalize(channels_last)):
        assert x.dtype == torch.float32 and torch.equal(x, expected)


def test_resize_tensor_is_within_one_level_of_pil(shapes):
    from ssdwb.data.transforms import resize_pil, resize_tensor

    ds = train_ds(shapes)
    differ = total = 0
    for i in range(8):
        image = ds.load_image(i)
        w, h = image.size
        # whole images, shrinking crops and enlarging crops, odd sizes
        for box in ((0, 0, w, h), (13, 7, w - 50, h - 31), (w // 3, h // 4, w // 3 + 97, h // 4 + 61)):
            crop = image.crop(box)
            a = np.asarray(resize_pil(crop, 300)).astype(np.int16)
            b = np.asarray(resize_tensor(crop, 300)).astype(np.int16)
            assert a.shape == b.shape == (300, 300, 3)
            assert np.abs(a - b).max() <= 1
            differ += int((a != b).sum())
            total += a.size
    assert 0 < differ / total < 0.1  # not the reference's pixels, but close


def test_resize_option_changes_only_pixels(shapes):
    ds = train_ds(shapes)
    ref, fast = train_transform(), train_transform(resize="tensor")
    for i in range(6):
        image, target = ds.raw(i)
        torch.manual_seed(i)
        a, ta = ref(image, target)
        torch.manual_seed(i)
        b, tb = fast(image, target)
        assert torch.equal(ta["boxes"], tb["boxes"]) and ta["augment"] == tb["augment"]
        d = (a.short() - b.short()).abs()
        # the jitter spreads the resize's one-level differences: a grey mean one level off
        # shifts the whole contrast table, a hue step near a sector edge moves a channel further
        assert d.float().mean() < 1.0 and d.max() <= 32, (d.max(), d.float().mean())
    with pytest.raises(ValueError, match="resize must be one of"):
        train_transform(resize="cv2")
    from ssdwb.config import TrainConfig
    with pytest.raises(ValueError, match="resize"):
        TrainConfig(resize="cv2")


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8))
def test_crop_rules(seed, n):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 0.9
    boxes = torch.cat([xy, xy + 0.005 + torch.rand(n, 2, generator=gen) * (1 - xy)], 1).clamp(max=1)
    labels = torch.arange(1, n + 1)
    torch.manual_seed(seed)
    crop, out, out_labels, option = SSDRandomCrop()(boxes, labels)
    assert out.shape[0] == out_labels.shape[0] >= 1
    assert ((out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])).all()  # never degenerate
    assert (out >= -1e-6).all() and (out <= 1 + 1e-6).all()
    if crop is None:
        assert CROP_OPTIONS[option] is None and torch.equal(out, boxes)
        return
    left, top, right, bottom = crop
    w, h = right - left, bottom - top
    assert 0.3 <= w <= 1 and 0.3 <= h <= 1 and 0.5 <= w / h <= 2
    min_iou = CROP_OPTIONS[option]
    assert (box_iou(boxes, torch.tensor([crop])) > min_iou).all()
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    inside = (cx > left) & (cx < right) & (cy > top) & (cy < bottom)
    assert torch.equal(out_labels, labels[inside])
    back = out * torch.tensor([w, h, w, h]) + torch.tensor([left, top, left, top])
    clipped = torch.stack([boxes[inside, 0].clamp(min=left), boxes[inside, 1].clamp(min=top),
                           boxes[inside, 2].clamp(max=right), boxes[inside, 3].clamp(max=bottom)], 1)
    assert torch.allclose(back, clipped, atol=1e-6)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 12))
def test_crop_in_numpy_equals_torch_ops(seed, n):
    """Same random draws, crop, boxes (bit for bit) and labels as the crop written in torch ops
    (boxes on a coarse grid: many equal coordinates and boxes)."""
    import reference

    gen = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 10, (n, 2), generator=gen) / 10
    boxes = torch.cat([xy, xy + torch.randint(1, 6, (n, 2), generator=gen) / 10], 1).clamp(max=1)
    labels = torch.arange(1, n + 1)
    results = []
    for crop in (SSDRandomCrop(), reference.TorchSSDRandomCrop()):
        torch.manual_seed(seed)
        results.append((crop(boxes, labels), torch.rand(1)))
    (c1, b1, l1, o1), r1 = results[0]
    (c2, b2, l2, o2), r2 = results[1]
    assert (c1, o1) == (c2, o2) and torch.equal(r1, r2)
    assert torch.equal(b1, b2) and torch.equal(l1, l2) and b1.dtype == torch.float32


def test_to_tensor_equals_pil_to_tensor():
    from ssdwb.data.transforms import to_tensor

    rng = np.random.default_rng(0)
    for w, h in ((300, 300), (97, 61), (1, 5)):
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        x = to_tensor(rgb)
        assert x.is_contiguous() and x.dtype == torch.uint8
        assert torch.equal(x, F.pil_to_tensor(rgb))
        grey = rgb.convert("L")  # other modes: torchvision's conversion
        assert torch.equal(to_tensor(grey), F.pil_to_tensor(grey))


def test_fast_path_pixels_equal_literal_reference_order(shapes):
    """flip after resize == crop, flip, resize done literally."""
    ds = train_ds(shapes)
    t = train_transform()
    t.jitter = lambda im: im  # colour jitter is the same call in both orders
    for seed in range(12):
        image, target = ds.raw(seed % len(ds))
        torch.manual_seed(seed)
        fast, out = t(image, target)
        l, tp, r, b = out["augment"]["box"]
        ref = image.crop((l, tp, r, b))
        if out["augment"]["flip"]:
            ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
        ref = torch.from_numpy(np.array(ref.resize((300, 300), Image.BILINEAR)))
        assert torch.equal(fast, ref.permute(2, 0, 1)), seed


def test_loader_shards_are_disjoint_and_cover(shapes):
    ds = train_ds(shapes, transform=val_transform())
    seen = []
    for rank in range(2):
        loader = build_loader(ds, 4, train=True, rank=rank, world_size=2, seed=1)
        set_epoch(loader, 0)
        seen.append([int(i) for b in loader for i in b["image_ids"]])
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) == len(seen[1]) == 12
    loader = build_loader(ds, 4, train=True, rank=0, world_size=2, seed=1)
    set_epoch(loader, 1)
    assert [int(i) for b in loader for i in b["image_ids"]] != seen[0]  # reshuffled per epoch


def test_loader_workers_are_deterministic_and_encode_in_worker(shapes, dboxes):
    from ssdwb.ssd.box_coder import BoxCoder

    coder = BoxCoder(dboxes)
    ds = train_ds(shapes, transform=train_transform())

    def run():
        loader = build_loader(ds, 4, train=True, num_workers=2, seed=5, coder=coder)
        set_epoch(loader, 3)
        return [b for _, b in zip(range(2), loader)]

    a, b = run(), run()
    for x, y in zip(a, b):
        assert torch.equal(x["images"], y["images"]) and torch.equal(x["glabel"], y["glabel"])
    batch = a[0]
    # uint8 across processes; the consumer normalises on its device
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (4, 3, 300, 300)
    assert batch["gloc"].shape == (4, 8732, 4) and batch["orig_sizes"].shape == (4, 2)
    assert len(batch["boxes"]) == 4  # variable box counts kept as a list
    on_device = coder.encode_batch(batch["boxes"], batch["labels"])
    assert torch.equal(on_device[0], batch["gloc"]) and torch.equal(on_device[1], batch["glabel"])


def test_batch_crosses_processes_intact(shapes, dboxes):
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers the shared-memory tensor reducers)

    from ssdwb.data.loader import Batch, Collate
    from ssdwb.ssd.box_coder import BoxCoder

    ds = train_ds(shapes, transform=train_transform())
    torch.manual_seed(0)
    batch = Collate(BoxCoder(dboxes))([ds[i] for i in range(5)])
    batch["boxes"][2] = batch["boxes"][2][:0]  # an image without boxes
    batch["labels"][2] = batch["labels"][2][:0]
    back = pickle.loads(ForkingPickler.dumps(batch))  # what a worker's queue does
    assert isinstance(back, Batch) and back.keys() == batch.keys()
    assert back["bad_images"] == batch["bad_images"] == []
    for key, value in batch.items():
        if key == "bad_images":
            continue
        if isinstance(value, list):
            assert len(back[key]) == 5
            assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(value, back[key]))
        else:
            assert torch.equal(value, back[key]) and value.dtype == back[key].dtype


def test_end_to_end_batch_feeds_the_loss(shapes, dboxes):
    from ssdwb.ssd.box_coder import BoxCoder
    from ssdwb.ssd.loss import MultiBoxLoss
    from ssdwb.ssd.model import SSD300

    ds = train_ds(shapes, transform=train_transform())
    coder = BoxCoder(dboxes)
    loader = build_loader(ds, 2, train=True, coder=coder, seed=0)
    set_epoch(loader, 0)
    batch = next(iter(loader))
    model = SSD300(num_classes=ds.num_classes)
    ploc, plabel = model(normalize(batch["images"]))
    loss = MultiBoxLoss(dboxes)(ploc, plabel, batch["gloc"].transpose(1, 2), batch["glabel"])
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()


EXIT_SCRIPT = """
import sys
from ssdwb.data import CocoDetection, build_loader, train_transform
root = sys.argv[1]
ds = CocoDetection(root + "/train", root + "/annotations/instances_train.json",
                   transform=train_transform())
loader = build_loader(ds, 4, train=True, num_workers=2, persistent_workers=sys.argv[2] == "1")
if sys.argv[2] == "1":
    for batch in loader:  # a whole epoch: the persistent workers stay, idle
        pass
else:
    part_way = iter(loader)  # an iterator left part-way through an epoch
    next(part_way)
print("end of script", flush=True)
"""


@pytest.mark.parametrize("persistent", [True, False])
def test_exit_does_not_wait_for_workers(shapes, tmp_path, persistent):
    # Module-level loaders whose workers outlive the code (a script, a notebook kernel): the
    # workers ignore SIGTERM, so without Loader's exit hook multiprocessing's exit handler
    # waited for them forever.
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(EXIT_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(shapes), str(int(persistent))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "end of script" in out.stdout


def test_all_boxes_areas_match_annotations(shapes):
    ds = CocoDetection(shapes / "val", shapes / "annotations" / "instances_val.json")
    gt = ds.all_boxes()
    anns = json.loads((shapes / "annotations" / "instances_val.json").read_text())["annotations"]
    assert len(gt["boxes"]) == len(anns)
    imgs = {i["id"]: i for i in json.loads(
        (shapes / "annotations" / "instances_val.json").read_text())["images"]}
    expected = []  # the box clipped to the image, in pixels
    for a in anns:
        x, y, w, h = a["bbox"]
        im = imgs[a["image_id"]]
        expected.append((min(x + w, im["width"]) - x) * (min(y + h, im["height"]) - y))
    assert sorted(gt["areas"].tolist()) == pytest.approx(sorted(expected), rel=1e-5)
    assert gt["index"].max() == len(ds) - 1


def test_augmentation_stats(shapes):
    from ssdwb.data.transforms import augmentation_stats

    ds = CocoDetection(shapes / "train", shapes / "annotations" / "instances_train.json")
    a = augmentation_stats(ds, num_draws=30, seed=1)
    b = augmentation_stats(ds, num_draws=30, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # seeded
    assert len(a["option"]) == 30 and a["option"].max() < len(CROP_OPTIONS)
    assert (a["kept"] >= 1).all()
    assert len(a["size_after"]) == a["kept"].sum()
    assert len(a["size_before"]) == sum(len(ds.raw(i % len(ds))[1]["labels"]) for i in range(30))
    # "whole image" draws keep every box at its size
    assert ((a["option"] == 0) <= (a["dropped"] == 0)).all()


def test_missing_dataset_message(tmp_path):
    from ssdwb.data import resolve_data

    with pytest.raises(FileNotFoundError, match="ssdwb data synth"):
        resolve_data(tmp_path)
