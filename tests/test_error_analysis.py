"""COCO's error analysis (ssdwb.evaluation.error_analysis): the same precision arrays as pycocotools run
the way mmdetection's coco_error_analysis runs it, hand-built cases where one error type alone
moves, and the eval line of a run carrying it."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from ssdwb.evaluation.error_analysis import (
    AREAS,
    COST_NAMES,
    ERROR_TYPES,
    detection_outcomes,
    error_analysis,
    error_costs,
    error_table,
)


# --- the reference: pycocotools, 2K + 1 COCOeval runs ---------------------------------------------
def _coco(dataset):
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = copy.deepcopy(dataset)
    gt.createIndex()
    return gt


def reference_precision(dataset, results) -> np.ndarray:
    """The five matched rows [5, R, K, A] as mmdetection computes them: COCOeval at IoU .75,
    .5, .1, then per class, at IoU .1, with the other classes' GT boxes of the same
    supercategory (Sim) or of any class (Oth) relabelled as crowd boxes of that class."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        base = _coco(dataset)
        dt = base.loadRes(np.asarray(results, dtype=np.float64))
        ev = COCOeval(_coco(dataset), copy.deepcopy(dt), "bbox")
        ev.params.iouThrs, ev.params.maxDets = [0.75, 0.5, 0.1], [100]
        ev.evaluate()
        ev.accumulate()
        out = np.concatenate([ev.eval["precision"][..., 0], np.zeros((2, *ev.eval[
            "precision"].shape[1:4]))])
        for k, cid in enumerate(base.getCatIds()):
            sup = base.cats[cid].get("supercategory")
            family = {c["id"] for c in dataset["categories"]
                      if sup and c.get("supercategory") == sup}
            for row, everyone in ((3, False), (4, True)):
                gt = _coco(dataset)
                for ann in gt.dataset["annotations"]:
                    if ann["category_id"] != cid and (everyone or ann["category_id"] in family):
                        ann.update(ignore=1, iscrowd=1, category_id=cid)
                e = COCOeval(gt, copy.deepcopy(dt), "bbox")
                e.params.iouThrs, e.params.maxDets = [0.1], [100]
                e.evaluate()
                e.accumulate()
                out[row, :, k] = e.eval["precision"][0, :, k, :, 0]
    return out


def random_case(seed: int, images: int = 10, classes: int = 6, crowded: bool = False):
    """GT with crowd boxes, annotation areas apart from the box areas and boxes given twice
    (two GT boxes at the same IoU: pycocotools takes the later); detections near GT
    (some of another class), on background, exact duplicates (equal IoUs) and scores rounded
    to 0.1 (ties); with ``crowded``, groups of more than 100 detections."""
    rng = np.random.default_rng(seed)
    cats = [{"id": 3 * i + 1, "name": f"c{i}", "supercategory": f"s{i % 2}"}
            for i in range(classes)]
    cats[0].pop("supercategory")  # a class without one: Sim forgives nothing for it
    cats.append({"id": 99, "name": "no GT", "supercategory": "s1"})
    imgs, anns, rows = [], [], []
    for im in range(1, images + 1):
        imgs.append({"id": im * 7, "width": 200, "height": 200})
        k = int(rng.integers(0, 8))
        xy = rng.uniform(0, 150, (k, 2))
        wh = np.exp(rng.uniform(np.log(4), np.log(150), (k, 2)))
        cls = rng.integers(0, classes, k)
        if k > 1 and rng.random() < 0.5:  # a GT box twice (another area): equal IoUs
            xy[1], wh[1], cls[1] = xy[0], wh[0], cls[0]
        for j in range(k):
            anns.append({"id": len(anns) + 1, "image_id": im * 7,
                         "category_id": cats[cls[j]]["id"], "bbox": [*xy[j], *wh[j]],
                         "area": float(wh[j].prod() * rng.uniform(0.5, 1)),
                         "iscrowd": int(rng.random() < 0.1)})
        nd = int(rng.integers(0, 40)) + (150 if crowded and im == 1 else 0)
        if k:
            src = rng.integers(0, k, nd)
            box = np.c_[xy[src], wh[src]] + rng.normal(0, rng.choice([1, 5, 20]), (nd, 4))
            lab = np.where(rng.random(nd) < 0.6, cls[src], rng.integers(0, classes + 1, nd))
        else:
            box, lab = rng.uniform(1, 100, (nd, 4)), rng.integers(0, classes + 1, nd)
        bg = rng.random(nd) < 0.2
        box[bg] = rng.uniform(1, 100, (bg.sum(), 4))
        box[:, 2:] = np.abs(box[:, 2:]) + 0.5
        if nd > 1:
            box[rng.random(nd) < 0.2] = box[0]
        rows.append(np.c_[np.full(nd, im * 7), box, np.round(rng.random(nd), 1),
                          [cats[c]["id"] for c in lab]])
    return {"images": imgs, "annotations": anns, "categories": cats}, np.concatenate(rows)


@pytest.mark.parametrize("seed,crowded", [(0, False), (1, False), (2, True), (3, True)])
def test_equals_pycocotools_run_as_mmdetection_runs_it(seed, crowded):
    gt, res = random_case(seed, crowded=crowded)
    got = error_analysis(gt, res)["precision"]
    want = reference_precision(gt, res)
    assert got.shape == (7, 101, len(gt["categories"]), 4)
    assert np.array_equal(got[:5], want)  # to the bit, -1 for classes without GT included
    has_gt = want[0] > -1
    assert np.array_equal(got[5], np.where(has_gt, want[4] > 0, -1.0))
    assert np.array_equal(got[6], np.where(has_gt, 1.0, -1.0))


def test_iou_blocks_do_not_change_the_result(monkeypatch):
    import ssdwb.evaluation.error_analysis as ea

    gt, res = random_case(8, crowded=True)
    whole = error_analysis(gt, res)["precision"]
    monkeypatch.setattr(ea, "_PAIRS", 7)  # many blocks, cut inside images
    assert np.array_equal(error_analysis(gt, res)["precision"], whole)


def test_tp_needed_is_cocoeval_searchsorted():
    from ssdwb.evaluation.error_analysis import RECALL_THRESHOLDS, _tp_needed

    npig = np.arange(1, 400)
    got = _tp_needed(RECALL_THRESHOLDS, npig)
    for k, n in enumerate(npig):  # COCOeval: searchsorted(tp / npig, recThrs, "left")
        want = np.searchsorted(np.arange(n + 1) / n, RECALL_THRESHOLDS, side="left")
        assert np.array_equal(got[k], want), n


def test_c75_and_c50_are_coco_ap75_and_ap50():
    from ssdwb.evaluation.coco_eval import coco_eval

    gt, res = random_case(5, images=20)
    ap = error_analysis(gt, res)["ap"]
    stats = coco_eval(gt, res, "pycocotools")
    assert ap["all"]["C75"] == pytest.approx(stats["AP75"], abs=1e-12)
    assert ap["all"]["C50"] == pytest.approx(stats["AP50"], abs=1e-12)


def test_results_as_dicts_and_empty():
    from ssdwb.evaluation.coco_eval import array_to_results

    gt, res = random_case(6)
    a, b = error_analysis(gt, res), error_analysis(gt, array_to_results(res))
    assert np.array_equal(a["precision"], b["precision"])
    empty = error_analysis(gt, np.zeros((0, 7)))["ap"]["all"]
    assert empty == {"C75": 0.0, "C50": 0.0, "Loc": 0.0, "Sim": 0.0, "Oth": 0.0, "BG": 0.0,
                     "FN": 1.0}


def test_detection_outcomes_are_cocoeval_matches():
    from pycocotools.cocoeval import COCOeval

    gt, res = random_case(7, crowded=True)
    out = detection_outcomes(gt, res, iou=0.5)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = _coco(gt)
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.params.iouThrs, ev.params.areaRng, ev.params.maxDets = [0.5], [[0, 1e10]], [100]
        ev.evaluate()
    tp = np.zeros(len(res), dtype=bool)
    fp = np.zeros(len(res), dtype=bool)
    gt_of = np.full(len(res), -1)
    ann_pos = {a["id"]: i for i, a in enumerate(gt["annotations"])}
    for e in ev.evalImgs:
        if e is None:
            continue
        ids = np.array(e["dtIds"], dtype=np.int64) - 1  # loadRes numbers the rows from 1
        m, ig = e["dtMatches"][0], e["dtIgnore"][0].astype(bool)
        tp[ids] = (m > 0) & ~ig
        fp[ids] = (m == 0) & ~ig
        gt_of[ids] = [ann_pos.get(int(g), -1) for g in m]
    assert tp.any() and fp.any()
    assert np.array_equal(out["tp"], tp) and np.array_equal(out["fp"], fp)
    assert np.array_equal(out["gt"], gt_of)
    assert np.array_equal(out["counted"], tp | fp)


# --- hand-built cases: one error type moves -------------------------------------------------------
CATS = [{"id": 1, "name": "red square", "supercategory": "square"},
        {"id": 2, "name": "green square", "supercategory": "square"},
        {"id": 5, "name": "red circle", "supercategory": "circle"}]


def grid_case(shift=0.0, wrong=None, background=0, missing=0):
    """Per image three objects (one per class, 40 px, far apart) and a correct detection of
    each (score 0.5). Options: every detection shifted by ``shift`` x its side; ``wrong``
    ("sim"/"oth"): a second detection of each object at score 0.9 labelled with a class of
    the same / another supercategory; ``background``: that many score-0.9 detections per image
    on empty areas; ``missing``: objects per image without their correct detection."""
    images, anns, rows = [], [], []
    other = {"sim": {1: 2, 2: 1, 5: 5}, "oth": {1: 5, 2: 5, 5: 1}}
    for im in range(1, 5):
        images.append({"id": im, "width": 400, "height": 400})
        for j, c in enumerate(CATS):
            box = [20.0 + 130 * j, 20.0, 40.0, 40.0]
            anns.append({"id": len(anns) + 1, "image_id": im, "category_id": c["id"],
                         "bbox": box, "area": 1600.0, "iscrowd": 0})
            det = [box[0] + shift * 40, box[1], 40.0, 40.0]
            if j >= missing:
                rows.append([im, *det, 0.5, c["id"]])
            if wrong and other[wrong][c["id"]] != c["id"]:
                rows.append([im, *box, 0.9, other[wrong][c["id"]]])
        for b in range(background):
            rows.append([im, 20.0 + 130 * b, 300.0, 40.0, 40.0, 0.9, CATS[b % 3]["id"]])
    return {"images": images, "annotations": anns, "categories": CATS}, np.array(rows)


def costs(case) -> dict:
    return error_costs(error_analysis(*case)["ap"]["all"])


def moved(c: dict) -> set:
    return {k for k in COST_NAMES[2:] if abs(c[k]) > 1e-9}


def test_perfect_detections_move_nothing():
    c = costs(grid_case())
    assert c["AP75"] == pytest.approx(1.0) and c["AP50"] == pytest.approx(1.0)
    assert moved(c) == set()


def test_shifted_boxes_move_only_loc():
    # shifted by half a side: IoU (20 x 40) / (2 x 1600 - 800) = 1/3, in [.1, .5)
    c = costs(grid_case(shift=0.5))
    assert c["AP75"] == 0.0 and c["AP50"] == 0.0
    assert moved(c) == {"Loc"} and c["Loc"] == pytest.approx(1.0)


def test_same_supercategory_confusion_moves_only_sim():
    # the two squares are confused with each other; the circle has no confusion
    c = costs(grid_case(wrong="sim"))
    assert moved(c) == {"Sim"}
    # per square class: FP (0.9) before TP (0.5) on each of 4 images: AP .5 -> 1 after Sim
    assert c["AP50"] == pytest.approx((0.5 * 2 + 1.0) / 3, abs=0.01)
    assert c["Sim"] == pytest.approx(1 - c["AP50"], abs=1e-9)


def test_other_supercategory_confusion_moves_only_oth():
    c = costs(grid_case(wrong="oth"))
    assert moved(c) == {"Oth"} and c["Oth"] > 0.3


def test_boxes_on_empty_areas_move_only_bg():
    c = costs(grid_case(background=3))
    assert moved(c) == {"BG"} and c["BG"] > 0.3


def test_missed_objects_move_only_fn():
    c = costs(grid_case(missing=1))  # the first class is never detected
    assert moved(c) == {"FN"} and c["FN"] == pytest.approx(1 / 3)


def test_sizes_split_by_annotation_area():
    gt, res = grid_case(shift=0.5)  # every object is medium (area 1600)
    ap = error_analysis(gt, res)["ap"]
    assert ap["small"]["C50"] == -1.0 and ap["large"]["FN"] == -1.0  # no GT of those sizes
    assert ap["medium"] == ap["all"]
    table = error_table(ap)
    assert list(table.index) == list(AREAS) and list(table.columns) == list(COST_NAMES)
    assert np.isnan(table.loc["small", "Loc"]) and table.loc["medium", "Loc"] == pytest.approx(1)


def test_synthetic_shapes_have_families_that_sim_forgives(tmp_path):
    """The synthetic set's supercategory is the shape: a detection of the same shape in
    another colour is a Sim error, of another shape an Oth error."""
    from ssdwb.data.synthetic import make_shapes_coco

    root = make_shapes_coco(tmp_path, num_train=1, num_val=6, seed=4)
    gt = json.loads((root / "annotations" / "instances_val.json").read_text())
    by_id = {c["id"]: c for c in gt["categories"]}
    assert {c["supercategory"] for c in gt["categories"]} == {"square", "circle", "triangle",
                                                               "cross"}
    assert all(c["name"].endswith(c["supercategory"]) for c in gt["categories"])

    def touches_another(a) -> bool:  # objects overlap now and then: keep those out
        x, y, w, h = a["bbox"]
        return any(b is not a and b["image_id"] == a["image_id"]
                   and min(x + w, b["bbox"][0] + b["bbox"][2]) > max(x, b["bbox"][0])
                   and min(y + h, b["bbox"][1] + b["bbox"][3]) > max(y, b["bbox"][1])
                   for b in gt["annotations"])

    def relabelled(same_shape: bool) -> dict:
        rows = []
        for a in gt["annotations"]:
            rows.append([a["image_id"], *a["bbox"], 0.5, a["category_id"]])
            if touches_another(a):
                continue
            sup = by_id[a["category_id"]]["supercategory"]
            other = next(c["id"] for c in gt["categories"] if c["id"] != a["category_id"]
                         and (c["supercategory"] == sup) == same_shape)
            rows.append([a["image_id"], *a["bbox"], 0.9, other])
        return costs((gt, np.array(rows)))

    assert moved(relabelled(True)) == {"Sim"}
    assert moved(relabelled(False)) == {"Oth"}


# --- the eval line ----------------------------------------------------------------------------------
def test_evaluate_returns_errors_as_plain_floats(tmp_path):
    import torch

    from ssdwb.data import CocoDetection, build_loader, val_transform
    from ssdwb.data.synthetic import make_shapes_coco
    from ssdwb.evaluation.inference import evaluate
    from ssdwb.ssd.anchors import dboxes300_coco
    from ssdwb.ssd.box_coder import BoxCoder
    from ssdwb.ssd.model import SSD300

    root = make_shapes_coco(tmp_path, num_train=1, num_val=3, seed=0, size=(300, 300),
                            max_objects=3)
    ds = CocoDetection(root / "val", root / "annotations" / "instances_val.json",
                       transform=val_transform(300))
    torch.manual_seed(0)
    model = SSD300(num_classes=ds.num_classes, width=0.25)
    loader = build_loader(ds, 3, train=False, num_workers=0)
    coder = BoxCoder(dboxes300_coco())
    stats, results = evaluate(model, loader, coder, ds, torch.device("cpu"))
    errors = stats["errors"]
    assert set(errors) == set(AREAS) and all(set(v) == set(ERROR_TYPES) for v in errors.values())
    assert all(type(x) is float for v in errors.values() for x in v.values())
    assert json.loads(json.dumps(stats)) == stats  # goes into metrics.jsonl as it is
    assert errors == error_analysis(ds.coco, results)["ap"]
    assert errors["all"]["FN"] == 1.0
    plain, _ = evaluate(model, loader, coder, ds, torch.device("cpu"), errors=False)
    assert "errors" not in plain and plain == {k: v for k, v in stats.items() if k != "errors"}
