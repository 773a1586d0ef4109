import math

import pytest
import reference
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssdwb.ssd.anchors import DefaultBoxes, coverage, coverage_summary


def test_count_per_level_and_total(dboxes):
    sizes = [lv.stop - lv.start for lv in dboxes.levels]
    assert sizes == [38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4, 1 * 1 * 4]
    assert dboxes.num_priors == 8732
    assert dboxes.num_defaults_per_cell == [4, 6, 6, 6, 4, 4]
    assert dboxes.xywh.dtype == dboxes.ltrb.dtype == torch.float32
    assert dboxes.xywh.shape == dboxes.ltrb.shape == (8732, 4)


def test_matches_loop_reference_exactly(dboxes):
    ref = reference.default_boxes_xywh(300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300],
                                       [21, 45, 99, 153, 207, 261, 315],
                                       [[2], [2, 3], [2, 3], [2, 3], [2], [2]])
    assert torch.equal(dboxes.xywh, ref)


def test_hand_checked_boxes(dboxes):
    x = dboxes.xywh
    # first box: level 0, square s_0 = 21/300, centre (0.5/37.5, 0.5/37.5)
    assert x[0].tolist() == pytest.approx([0.5 / 37.5, 0.5 / 37.5, 0.07, 0.07])
    # next column (j=1) comes next, then the next row (i=1) after 38 boxes
    assert x[1, :2].tolist() == pytest.approx([1.5 / 37.5, 0.5 / 37.5])
    assert x[38, :2].tolist() == pytest.approx([0.5 / 37.5, 1.5 / 37.5])
    # second box type of level 0: sqrt(21*45)/300
    assert x[1444, 2].item() == pytest.approx(math.sqrt(21 * 45) / 300)
    # third type: ratio 2 (wide), fourth: its swap (tall)
    assert x[2 * 1444, 2:].tolist() == pytest.approx([0.07 * math.sqrt(2), 0.07 / math.sqrt(2)])
    assert x[3 * 1444, 2:].tolist() == pytest.approx([0.07 / math.sqrt(2), 0.07 * math.sqrt(2)])
    # last box of level 0 has centre (37.5/37.5) = 1.0 exactly
    assert x[1443, :2].tolist() == [1.0, 1.0]
    # level 5 (1x1): centre 0.5; ratio-2 box is 261/300*sqrt(2) = 1.23 wide -> clamped to 1
    assert x[8730].tolist() == pytest.approx([0.5, 0.5, 1.0, 0.87 / math.sqrt(2)])


def test_clamping_rules(dboxes):
    assert dboxes.xywh.min() >= 0 and dboxes.xywh.max() <= 1
    # ltrb derived from clamped xywh and NOT clamped afterwards
    assert dboxes.ltrb.min() < 0 and dboxes.ltrb.max() > 1
    assert torch.equal(dboxes.ltrb[:, :2], dboxes.xywh[:, :2] - 0.5 * dboxes.xywh[:, 2:])
    assert torch.equal(dboxes.ltrb[:, 2:], dboxes.xywh[:, :2] + 0.5 * dboxes.xywh[:, 2:])
    assert dboxes("xywh") is dboxes.xywh and dboxes("ltrb") is dboxes.ltrb


def test_level_views(dboxes):
    v = dboxes.view(1)
    assert v.shape == (6, 19, 19, 4)
    assert torch.equal(v[2, 3, 4], dboxes.xywh[5776 + 2 * 361 + 3 * 19 + 4])
    assert dboxes.view(0, 1).shape == (38, 38, 4)
    lvl = dboxes.level_of()
    assert lvl.tolist().count(5) == 4 and lvl[5775] == 0 and lvl[5776] == 1


def test_other_designs():
    d = DefaultBoxes(512, [64, 32, 16, 8, 4, 2, 1], [8, 16, 32, 64, 128, 256, 512],
                     [20, 51, 133, 215, 296, 378, 460, 542],
                     [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]])
    assert d.num_priors == sum(f * f * n for f, n in zip([64, 32, 16, 8, 4, 2, 1],
                                                         [4, 6, 6, 6, 6, 4, 4]))
    assert d.xywh.dtype == torch.float32
    with pytest.raises(ValueError, match="scales"):
        DefaultBoxes(300, [38], [8], [21], [[2]])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3),
       st.lists(st.sampled_from([2.0, 3.0, 1.5]), max_size=2))
def test_any_design_matches_loop_reference(feats, ratios):
    steps = [300 / f for f in feats]
    scales = [30 + 40 * k for k in range(len(feats) + 1)]
    ar = [ratios] * len(feats)
    d = DefaultBoxes(300, feats, steps, scales, ar)
    assert torch.equal(d.xywh, reference.default_boxes_xywh(300, feats, steps, scales, ar))


def test_coverage(dboxes):
    prior = dboxes.ltrb[100]
    gt = torch.stack([prior, torch.tensor([0.0, 0.0, 0.001, 0.001]), torch.tensor([0, 0, 1.0, 1])])
    cov = coverage(dboxes, gt)
    assert cov["best_iou"][0] == pytest.approx(1.0)
    assert cov["best_prior"][0] == 100 and cov["best_level"][0] == 0
    assert cov["covered"].tolist() == [True, False, True]
    assert cov["best_level"][2] == 5
    assert cov["num_above"][1] == 0
    assert coverage(dboxes, torch.zeros(0, 4))["covered"].numel() == 0


def test_coverage_summary_by_size_and_level():
    # One level of 2x2 cells, one square type of side 0.5: priors are the four quadrants.
    d = DefaultBoxes(100, [2], [50], [50, 50], [[]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5],  # exactly a prior: covered
                       [0.5, 0.5, 1.0, 1.0],  # exactly a prior: covered
                       [0.0, 0.0, 0.1, 0.1]])  # IoU 0.04 with the best prior: not covered
    areas = torch.tensor([50.0 * 50, 200.0**2, 10.0])  # medium, large, small
    res = coverage_summary(d, gt, areas)
    assert res["count"] == {"all": 3, "small": 1, "medium": 1, "large": 1}
    assert res["share"]["all"] == pytest.approx(2 / 3)
    assert res["share"]["small"] == 0.0 and res["share"]["large"] == 1.0
    assert res["by_level"].tolist() == [3]
    assert res["best_iou"][2] == pytest.approx(0.04)


def test_coverage_summary_empty_bin_is_nan(dboxes):
    res = coverage_summary(dboxes, torch.tensor([[0.1, 0.1, 0.6, 0.6]]), torch.tensor([1e5]))
    assert math.isnan(res["share"]["small"]) and res["count"]["small"] == 0
    assert res["share"]["large"] == 1.0
