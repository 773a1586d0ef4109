"""ssdwb.evaluation.coco_eval: the two COCO backends, per-class details, the results JSON."""

import json
import math

import numpy as np
import pytest

from ssdwb.data.coco import load_coco_json
from ssdwb.evaluation.coco_eval import (
    STAT_KEYS,
    array_to_results,
    coco_eval,
    coco_eval_details,
    results_json,
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    return make_shapes_coco(tmp_path_factory.mktemp("shapes"), num_train=6, num_val=4, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    root = tmp_path_factory.mktemp("tiny")
    make_shapes_coco(root / "data", num_train=8, num_val=4, seed=0)
    return root


def test_coco_eval_backends_agree_and_empty_is_zero(tiny):
    gt = load_coco_json(tiny / "data" / "annotations" / "instances_val.json")
    rng = np.random.default_rng(0)
    rows = [[a["image_id"], *(np.array(a["bbox"]) + rng.normal(0, 2, 4)), rng.random(),
             a["category_id"]] for a in gt.dataset["annotations"] if rng.random() < 0.7]
    rows += [[1, 5, 5, 20, 20, 0.3, gt.dataset["categories"][-1]["id"]]]  # a false positive
    arr = np.array(rows)
    a, b = coco_eval(gt, arr, "pycocotools"), coco_eval(gt, arr, "faster-coco-eval")
    assert set(a) == set(STAT_KEYS)
    for k in STAT_KEYS:
        assert a[k] == pytest.approx(b[k], abs=1e-4)
    assert 0 < a["mAP"] < 1
    assert coco_eval(gt, [], "faster-coco-eval") == dict.fromkeys(STAT_KEYS, 0.0)
    assert coco_eval(gt, np.zeros((0, 7)), "pycocotools") == dict.fromkeys(STAT_KEYS, 0.0)
    # the array goes to both backends' loadRes as it is: the same numbers as COCO's dicts
    dicts = array_to_results(arr)
    for backend, want in (("pycocotools", a), ("faster-coco-eval", b)):
        assert coco_eval(gt, dicts, backend) == want


def test_results_json_is_json_dumps_of_the_results():
    rng = np.random.default_rng(1)
    arr = np.column_stack([rng.integers(1, 9, 50), rng.random((50, 4)) * 640 - 20,
                           rng.random(50), rng.integers(1, 91, 50)])
    arr[0, 1:5] = [0.1, 1e-7, 123456789.0, -0.0]  # reprs json writes in its own way
    assert results_json(arr) == json.dumps(array_to_results(arr))
    assert json.loads(results_json(arr)) == array_to_results(arr)
    assert results_json(np.zeros((0, 7))) == "[]"
    arr[1, 1:4] = [np.nan, np.inf, -np.inf]  # an untrained model's overflowing boxes
    assert results_json(arr) == json.dumps(array_to_results(arr))
    assert len(json.loads(results_json(arr))) == 50  # readable back


def test_coco_eval_details_matches_summary(shapes):
    gt = load_coco_json(shapes / "annotations" / "instances_val.json")
    rng = np.random.default_rng(0)
    results = []
    for a in gt.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        jit = rng.normal(0, 2, 4)
        results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": [x + jit[0], y + jit[1], w + jit[2], h + jit[3]],
                        "score": float(rng.uniform(0.2, 1))})
    d = coco_eval_details(gt, results)
    assert d["stats"] == pytest.approx(coco_eval(gt, results, "pycocotools"), abs=1e-12)
    assert d["precision"].shape[:3] == (10, 101, len(d["cat_ids"]))
    present = {a["category_id"] for a in gt.dataset["annotations"]}
    for cid, name in zip(d["cat_ids"], d["class_names"]):
        assert math.isnan(d["per_class_ap"][name]) == (cid not in present)
    # the summary mAP is the mean over classes that have GT
    vals = [v for v in d["per_class_ap"].values() if not math.isnan(v)]
    assert d["stats"]["mAP"] == pytest.approx(np.mean(vals), abs=1e-9)
    empty = coco_eval_details(gt, [])
    assert empty["stats"]["mAP"] == 0.0
    for cid, name in zip(empty["cat_ids"], empty["class_names"]):  # same convention as above
        ap = empty["per_class_ap"][name]
        assert math.isnan(ap) if cid not in present else ap == 0.0
