"""Anchor designs that train (issue 18, item 3): design files, the fit, and a fitted design
through train(), `ssdwb eval`, predict and attribution."""

import json
import math

import numpy as np
import pytest
import torch

from ssdwb.lab.anchor_fit import best_iou_per_type, design_coverage, fit_design
from ssdwb.ssd.anchors import (
    DefaultBoxes,
    coverage,
    dboxes300_coco,
    default_boxes,
    load_design,
    save_design,
)


def random_gt(n, seed=0, elongated=False):
    """GT boxes (x1, y1, x2, y2) fractions, with areas in pixels of a 300x300 image."""
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(n).uniform_(math.log(0.03), math.log(0.7), generator=g))
    r = (torch.exp(torch.empty(n).uniform_(math.log(3), math.log(8), generator=g)) if elongated
         else torch.empty(n).uniform_(0.7, 1.4, generator=g))
    flip = torch.rand(n, generator=g) < 0.5
    w = torch.where(flip, side * r.sqrt(), side / r.sqrt()).clamp(max=0.98)
    h = torch.where(flip, side / r.sqrt(), side * r.sqrt()).clamp(max=0.98)
    x1 = torch.rand(n, generator=g) * (1 - w)
    y1 = torch.rand(n, generator=g) * (1 - h)
    boxes = torch.stack([x1, y1, x1 + w, y1 + h], 1)
    return boxes, (w * 300 * h * 300).double()


def fitted_like():
    """A box_types design with the reference's grids and other types per level."""
    types = [[(24.0, 24.0), (40.0, 12.0), (12.0, 40.0)],
             [(50.0, 50.0), (90.0, 22.0), (22.0, 90.0), (70.0, 35.0), (35.0, 70.0)],
             [(100.0, 100.0), (160.0, 40.0)], [(150.0, 150.0)],
             [(200.0, 200.0), (260.0, 90.0), (90.0, 260.0)], [(280.0, 280.0), (300.0, 150.0)]]
    return DefaultBoxes(300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300], box_types=types)


@pytest.mark.parametrize("design", ["reference", "box_types"])
def test_best_iou_per_type_is_the_best_iou_over_all_priors(design):
    d = dboxes300_coco() if design == "reference" else fitted_like()
    gt, areas = random_gt(3000, seed=1)
    gt = torch.cat([gt, torch.tensor([[0.0, 0.0, 0.05, 0.05], [0.95, 0.95, 1.0, 1.0],
                                      [0.0, 0.4, 1.0, 0.6]])])  # corners, a full-width bar
    from ssdwb.lab.anchor_fit import _type_matrix

    fast = _type_matrix(d, gt)[0].max(1).values
    slow = coverage(d, gt)["best_iou"]
    torch.testing.assert_close(fast, slow, atol=2e-6, rtol=0)
    # and per type: the best box of one (level, type) grid is at the nearest centre
    lv = d.levels[1]
    from torchvision.ops import box_iou

    per_type = best_iou_per_type(gt, d.xywh[lv.slice].reshape(lv.num_types, -1, 4)[0, :19, 0],
                                 torch.tensor(lv.sizes))
    brute = box_iou(gt, d.ltrb[lv.slice]).reshape(len(gt), lv.num_types, -1).max(2).values
    torch.testing.assert_close(per_type, brute, atol=2e-6, rtol=0)


def test_design_round_trips_bit_for_bit(tmp_path):
    ref = dboxes300_coco()
    again = default_boxes(ref.to_dict())
    assert torch.equal(again.xywh, ref.xywh) and torch.equal(again.ltrb, ref.ltrb)
    assert default_boxes("reference").num_priors == default_boxes(None).num_priors == 8732
    d = fitted_like()
    path = save_design(d, tmp_path / "d.json", fit={"note": "kept"})
    loaded = load_design(path)
    assert torch.equal(loaded.xywh, d.xywh) and loaded.num_defaults_per_cell == [3, 5, 2, 1, 3, 2]
    assert json.loads(path.read_text())["fit"] == {"note": "kept"}
    assert default_boxes(str(path)).num_priors == d.num_priors


def test_bad_design_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_design(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        load_design(bad)
    bad.write_text(json.dumps({"feature_sizes": [38]}))
    with pytest.raises(ValueError, match="bad.json: not an anchor design"):
        load_design(bad)
    d = fitted_like().to_dict()
    d["box_types"][2] = []
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="bad.json: not a valid anchor design.*non-empty"):
        load_design(bad)
    d["box_types"][2] = [[10, -1]]
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="two positive pixel sizes"):
        load_design(bad)


def test_model_heads_follow_the_design_and_other_grids_are_refused():
    from ssdwb.ssd.model import build_model

    d = fitted_like()
    model = build_model(5, d, width=0.125).eval()
    with torch.no_grad():
        ploc, plabel = model(torch.zeros(1, 3, 300, 300))
    assert ploc.shape == (1, 4, d.num_priors) and plabel.shape == (1, 5, d.num_priors)
    other = DefaultBoxes(300, [19, 10, 5, 3, 1, 1], [16, 32, 64, 100, 300, 300],
                         [21, 45, 99, 153, 207, 261, 315], [[2]] * 6)
    with pytest.raises(ValueError, match="my.json: SSD300 makes feature maps"):
        build_model(5, other, width=0.125, source="my.json")
    shifted = DefaultBoxes(300, [38, 19, 10, 5, 3, 1], [8, 16, 30, 60, 100, 300],
                           [21, 45, 99, 153, 207, 261, 315], [[2]] * 6)
    with pytest.raises(ValueError, match="steps"):
        build_model(5, shifted, width=0.125)


def test_fit_beats_the_reference_on_elongated_boxes_within_the_budget():
    gt, areas = random_gt(6000, seed=2, elongated=True)
    design, report = fit_design(gt, areas, budget=8732)
    ref, fit = report["coverage"]["reference"], report["coverage"]["fitted"]
    assert design.num_priors <= 8732 and report["boxes"] == design.num_priors
    assert fit["all"] > ref["all"] + 0.2, report
    worst = min(fit[k] for k in ("small", "medium", "large"))
    assert worst > min(ref[k] for k in ("small", "medium", "large")), report
    assert fit["objective"] >= ref["objective"]
    # the report's coverage is the IoU > 0.5 share computed with box_iou over all priors
    exact = coverage(design, gt)["covered"].float().mean()
    assert fit["all"] == pytest.approx(float(exact), abs=2e-3)
    # a smaller budget and max_types are kept; a budget below one type per level is refused
    small, _ = fit_design(gt, areas, budget=3000)
    assert small.num_priors <= 3000
    few, _ = fit_design(gt, areas, max_types=3)
    assert max(few.num_defaults_per_cell) <= 3
    with pytest.raises(ValueError, match="one box type per level"):
        fit_design(gt, areas, budget=1000)


def test_fit_never_scores_below_the_reference_on_square_boxes():
    gt, areas = random_gt(4000, seed=3)
    design, report = fit_design(gt, areas)
    assert report["coverage"]["fitted"]["objective"] >= report["coverage"]["reference"][
        "objective"] - 1e-6
    assert design.box_types is not None and all(len(t) <= 8 for t in design.box_types)
    cov = design_coverage(design, gt, areas)
    assert cov["all"] == report["coverage"]["fitted"]["all"]


def test_thin_profile_makes_bars(tmp_path):
    from ssdwb.data.synthetic import THIN_SHAPES, make_shapes_coco

    out = make_shapes_coco(tmp_path / "thin", 20, 4, seed=0, **THIN_SHAPES)
    anns = json.loads((out / "annotations" / "instances_train.json").read_text())["annotations"]
    wh = np.array([a["bbox"][2:] for a in anns], dtype=float)
    ratio = np.maximum(wh[:, 0], wh[:, 1]) / np.minimum(wh[:, 0], wh[:, 1])
    assert len(anns) >= 20 and np.median(ratio) > 2.5 and (ratio > 1.8).mean() > 0.8
    x = np.array([a["bbox"] for a in anns], dtype=float)
    assert (x[:, 0] + x[:, 2] <= 300).all() and (x[:, 1] + x[:, 3] <= 300).all()
    again = make_shapes_coco(tmp_path / "again", 20, 4, seed=0, **THIN_SHAPES)
    assert ((again / "annotations" / "instances_train.json").read_bytes()
            == (out / "annotations" / "instances_train.json").read_bytes())


def test_a_fitted_design_trains_evaluates_and_predicts(tmp_path, capsys):
    """ssdwb anchors fit -> train(anchors=file) -> `ssdwb eval` of the checkpoint rebuilds the
    same model and boxes (the same 12 stats), predict and attribution use them too."""
    from test_train import tiny_config

    from ssdwb.cli import main
    from ssdwb.data.synthetic import THIN_SHAPES, make_shapes_coco
    from ssdwb.engine.loop import train
    from ssdwb.runs.checkpoint import load_checkpoint
    from ssdwb.runs.trained import load_trained

    make_shapes_coco(tmp_path / "data", num_train=8, num_val=4, seed=0, **THIN_SHAPES)
    design_file = tmp_path / "fitted.json"
    assert main(["anchors", "fit", "--data", str(tmp_path / "data"), "--out",
                 str(design_file)]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "fitted" in out and str(design_file) in out
    fitted = load_design(design_file)
    assert json.loads(design_file.read_text())["fit"]["budget"] == 8732

    summary = train(tiny_config(tmp_path, "fitted", anchors=str(design_file), eval_at=[2]))
    assert summary["status"] == "success", summary
    run = tmp_path / "runs" / "fitted"
    assert json.loads((run / "config.json").read_text())["anchors"] == str(design_file)
    assert torch.equal(load_design(run / "anchors.json").xywh, fitted.xywh)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["anchors"] == fitted.to_dict()

    design_file.unlink()  # the checkpoint carries the design: no need for the file any more
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "checkpoint.pt"), "--workers", "0",
                 "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    stats = json.loads(printed[printed.index("{"):])
    final = summary["evals"][-1]
    keys = ["mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
            "ARl"]
    assert [stats[k] for k in keys] == [final[k] for k in keys]
    trained = load_trained(run / "checkpoint.pt")
    assert trained.coder.dboxes.num_priors == fitted.num_priors
    assert trained.model.num_defaults == fitted.num_defaults_per_cell

    from ssdwb.lab.attribution import box_type_names, infer_run

    inferred = infer_run(run)
    assert inferred["dboxes"].num_priors == fitted.num_priors
    names = box_type_names(inferred["dboxes"])
    assert [len(n) for n in names] == fitted.num_defaults_per_cell
    assert all(len(set(n)) == len(n) for n in names)

    with pytest.raises(ValueError, match="a run keeps its anchor design"):
        train(resume=run, overrides=["anchors=reference", "epochs=3"])
