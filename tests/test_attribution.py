"""Per-level attribution (ssdwb.lab.attribution): the default box of each detection through
postprocess, its (level, box type, cell), TP/FP and AP per level and box type, and the GT
boxes no default box catches."""

import numpy as np
import pandas as pd
import pytest
import torch

from ssdwb.lab.attribution import attribution, box_type_names, prior_cells, uncaught_gt
from ssdwb.ssd.anchors import DefaultBoxes
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.postprocess import postprocess


def test_prior_cells_name_every_default_box(dboxes):
    cells = prior_cells(dboxes, np.arange(dboxes.num_priors))
    assert np.bincount(cells["level"]).tolist() == [lv.stop - lv.start for lv in dboxes.levels]
    for lv in dboxes.levels:  # the (type, row, col) view of each level holds the same box
        m = cells["level"] == lv.index
        view = dboxes.view(lv.index)  # [T, F, F, 4]
        got = view[cells["box_type"][m], cells["row"][m], cells["col"][m]]
        assert torch.equal(got, dboxes.xywh[lv.slice])
        assert (cells["cell"][m] == cells["row"][m] * lv.feature_size + cells["col"][m]).all()
    # centres follow the cell: column -> x, row -> y
    p = np.array([dboxes.levels[1].start + 2 * 19 * 19 + 5 * 19 + 7])  # level 1, type 2, (5, 7)
    c = prior_cells(dboxes, p)
    assert (c["level"][0], c["box_type"][0], c["row"][0], c["col"][0]) == (1, 2, 5, 7)
    assert dboxes.xywh[p[0], 0] == pytest.approx((7 + 0.5) / (300 / 16))
    assert dboxes.xywh[p[0], 1] == pytest.approx((5 + 0.5) / (300 / 16))
    with pytest.raises(ValueError, match="0..8731"):
        prior_cells(dboxes, [8732])


def test_box_type_names(dboxes):
    names = box_type_names(dboxes)
    assert names[0] == ["1:1", "1:1 s'", "2:1", "1:2"]
    assert names[1] == ["1:1", "1:1 s'", "2:1", "1:2", "3:1", "1:3"]
    assert [len(n) for n in names] == dboxes.num_defaults_per_cell


@pytest.mark.parametrize("strategy", ["batched", "per_group"])
def test_postprocess_index_gives_the_same_detections_and_their_boxes(dboxes, strategy):
    gen = torch.Generator().manual_seed(1)
    ploc = torch.randn(3, 4, 8732, generator=gen) * 0.5
    plabel = torch.randn(3, 81, 8732, generator=gen) * 2.5
    plabel[2, 0] += 30  # background everywhere: an image with nothing above the threshold
    plain = postprocess(ploc, plabel, dboxes, strategy=strategy)
    indexed = postprocess(ploc, plabel, dboxes, strategy=strategy, return_index=True)
    boxes = BoxCoder(dboxes).decode(ploc)
    probs = torch.softmax(plabel, 1)
    for b, ((pb, pl, ps), (ib, il, is_, ip)) in enumerate(zip(plain, indexed)):
        assert torch.equal(pb, ib) and torch.equal(pl, il) and torch.equal(ps, is_)
        assert ip.dtype == torch.int64 and ip.shape == il.shape
        # the index is the box the detection was decoded from, with its class's score there
        assert torch.equal(boxes[b, ip], ib)
        assert torch.equal(probs[b, il, ip], is_)
    assert len(indexed[2][3]) == 0
    assert len(set(indexed[0][3].tolist())) > 50  # not one prior for all


def _one_image_case():
    """One 300x300 image, two GT boxes: one a default box of level 2 exactly, one 4x4 px (no
    default box reaches IoU 0.5 with it)."""
    from ssdwb.ssd.anchors import dboxes300_coco

    d = dboxes300_coco()
    lv = d.levels[2]
    p = lv.start + 0 * lv.feature_size ** 2 + 4 * lv.feature_size + 5  # type 0, row 4, col 5
    cx, cy, w, h = (d.xywh[p] * 300).tolist()
    big = [cx - w / 2, cy - h / 2, w, h]
    gt = {"images": [{"id": 1, "width": 300, "height": 300}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": big,
                           "area": w * h, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 2, "bbox": [10, 10, 4, 4],
                           "area": 16.0, "iscrowd": 0}]}
    results = np.array([[1, *big, 0.9, 1],                     # TP, from level 2
                        [1, big[0] + 1, big[1], w, h, 0.8, 1],  # duplicate: FP, level 0
                        [1, 200, 200, 30, 30, 0.7, 2],          # background: FP, level 0
                        [1, 10, 10, 4, 4, 0.6, 2]])              # the tiny box: TP, level 0
    priors = np.array([p, 17, 18, 19])
    return d, gt, results, priors


def test_attribution_counts_and_scores_per_level_and_type():
    d, gt, results, priors = _one_image_case()
    a = attribution(gt, results, priors, d)
    lv = a["by_level"]
    assert lv["TP"].tolist() == [1, 0, 1, 0, 0, 0] and lv["FP"].tolist() == [2, 0, 0, 0, 0, 0]
    assert lv["detections"].sum() == 4
    assert lv.loc["2 (10x10)", "precision"] == 1.0
    # level 2's detection alone finds class a's box: mAP 1 for a, 0 for b -> 0.5
    assert lv.loc["2 (10x10)", "mAP"] == pytest.approx(0.5)
    # level 0 alone: its duplicate of a's box is no longer a duplicate (AP50 1 for a), and b's
    # box comes after a background FP (AP50 0.5 for b)
    assert lv.loc["0 (38x38)", "AP50"] == pytest.approx(0.75)
    assert np.isnan(lv.loc["1 (19x19)", "precision"])
    ty = a["by_type"]
    assert ty.loc["1:1", "detections"] == 4 and ty.loc["1:1", "TP"] == 2
    grid = a["by_level_type"]
    assert grid.loc[("0 (38x38)", "FP"), "1:1"] == 2 and grid.loc[("2 (10x10)", "TP"), "1:1"] == 1
    assert pd.isna(grid.loc[("0 (38x38)", "TP"), "3:1"])  # level 0 has no 3:1 boxes
    assert grid.loc[("1 (19x19)", "TP"), "3:1"] == 0
    with pytest.raises(ValueError, match="prior indices"):
        attribution(gt, results, priors[:2], d, ap=False)


def test_uncaught_gt_by_size():
    d, gt, results, priors = _one_image_case()
    a = attribution(gt, results, priors, d, ap=False)
    u = uncaught_gt(gt, d, a["outcomes"])
    t = u["table"]
    assert t.loc["all", "GT"] == 2 and t.loc["all", "uncaught"] == 1
    assert t.loc["small", "uncaught"] == 1 and t.loc["small", "share uncaught"] == 1.0
    assert t.loc["medium", "uncaught"] + t.loc["large", "uncaught"] == 0
    assert t.loc["all", "detected"] == 2 and t.loc["small", "uncaught detected"] == 1
    assert u["best_iou"][0] == pytest.approx(1.0, abs=1e-5) and u["best_level"][0] == 2
    assert u["uncaught"].tolist() == [False, True]
    assert u["by_level"]["uncaught"].sum() == 1


def test_uncaught_gt_edge_of_the_threshold():
    # one level of 2x2 cells, squares of side 0.5: the quadrants; a box of IoU exactly 0.5 with
    # the first is uncaught (the encoder's positives need IoU > 0.5), one just above is caught
    d = DefaultBoxes(100, [2], [50], [50, 50], [[]])
    gt = {"images": [{"id": 1, "width": 100, "height": 100}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 25, 50],
                           "area": 1250.0, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 26, 50],
                           "area": 1300.0, "iscrowd": 0}]}
    u = uncaught_gt(gt, d)
    assert u["uncaught"].tolist() == [True, False] and u["detected"] is None
    assert "detected" not in u["table"].columns


def test_infer_with_priors_lines_up_with_the_rows(tmp_path):
    from ssdwb.data import CocoDetection, build_loader, val_transform
    from ssdwb.data.synthetic import make_shapes_coco
    from ssdwb.evaluation.inference import infer
    from ssdwb.ssd.anchors import dboxes300_coco
    from ssdwb.ssd.model import SSD300

    root = make_shapes_coco(tmp_path, num_train=1, num_val=3, seed=0, size=(300, 300))
    ds = CocoDetection(root / "val", root / "annotations" / "instances_val.json",
                       transform=val_transform(300))
    torch.manual_seed(0)
    model = SSD300(num_classes=ds.num_classes, width=0.25)
    loader = build_loader(ds, 2, train=False, num_workers=0)
    coder = BoxCoder(dboxes300_coco())
    cpu = torch.device("cpu")
    res, seen = infer(model, loader, coder, ds.label_to_cat, cpu)
    res2, seen2, priors = infer(model, loader, coder, ds.label_to_cat, cpu, with_priors=True)
    assert np.array_equal(res, res2) and np.array_equal(seen, seen2)
    assert priors.shape == (len(res),) and priors.dtype == np.int64
    # each row's box is its prior's decoded box, in pixels of its image (300x300 here)
    model.eval()
    with torch.no_grad():
        batch = next(iter(loader))
        from ssdwb.data.transforms import normalize

        ploc, _ = model(normalize(batch["images"]))
    boxes = coder.decode(ploc)[0].double() * 300  # image 0 of the first batch
    rows = res[:, 0] == batch["image_ids"][0].item()
    ltrb = boxes[torch.from_numpy(priors[rows])]
    xywh = torch.cat([ltrb[:, :2], ltrb[:, 2:] - ltrb[:, :2]], 1).numpy()
    assert rows.sum() > 0 and np.allclose(res[rows, 1:5], xywh, atol=1e-3)
