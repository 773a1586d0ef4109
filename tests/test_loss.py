import math

import pytest
import reference
import torch

from ssdwb.ssd.anchors import DefaultBoxes
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.loss import MultiBoxLoss, hard_negative_mining


def small_design():
    return DefaultBoxes(300, [3, 2], [100, 150], [60, 120, 200], [[2], []])  # 9*4 + 4*2 = 44


def test_hand_computed_case():
    """Two priors, one positive with perfect regression.

    3 * num_pos = 3 > 2 priors, so both priors are "hard negatives" (the positive's CE is zeroed
    only for ranking): the positive's CE counts twice, as in the reference.
    """
    d = DefaultBoxes(300, [1], [300], [150, 150], [[]])  # 2 priors, both (0.5, 0.5, 0.5, 0.5)
    crit = MultiBoxLoss(d)
    gloc = d.xywh.t().unsqueeze(0).clone()  # encoded boxes = the priors: zero offsets
    ploc = torch.zeros(1, 4, 2)
    plabel = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0]]])  # 2 classes
    glabel = torch.tensor([[1, 0]])
    # prior 0: p(class 1) = 3/4 -> CE = log(4/3); prior 1: negative, p(bg) = 1/2 -> CE = log 2
    expected = 2 * math.log(4 / 3) + math.log(2)
    assert crit(ploc, plabel, gloc, glabel).item() == pytest.approx(expected, rel=1e-6)
    # SmoothL1: offset error 0.5 on x (quadratic part) and 2 on w (linear part)
    ploc[0, 0, 0], ploc[0, 2, 0] = 0.5, 2.0
    expected += 0.5 * 0.25 + (2 - 0.5)
    assert crit(ploc, plabel, gloc, glabel).item() == pytest.approx(expected, rel=1e-6)


def test_no_positive_image_counts_in_mean():
    d = DefaultBoxes(300, [1], [300], [150, 150], [[]])
    crit = MultiBoxLoss(d)
    gloc = d.xywh.t().unsqueeze(0).repeat(2, 1, 1)
    plabel = torch.zeros(2, 2, 2)
    one = crit(torch.zeros(1, 4, 2), plabel[:1], gloc[:1], torch.tensor([[1, 0]]))
    two = crit(torch.zeros(2, 4, 2), plabel, gloc, torch.tensor([[1, 0], [0, 0]]))
    assert two.item() == pytest.approx(one.item() / 2)


def test_matches_loop_reference_on_random_batch():
    d = small_design()
    coder = BoxCoder(d)
    gen = torch.Generator().manual_seed(0)
    gts = [torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]]),
           torch.tensor([[0.0, 0.0, 0.3, 0.3]]), torch.zeros(0, 4)]
    labels = [torch.tensor([3, 1]), torch.tensor([2]), torch.zeros(0, dtype=torch.int64)]
    gloc, glabel = coder.encode_batch(gts, labels)
    gloc = gloc.transpose(1, 2)
    ploc = torch.randn(3, 4, d.num_priors, generator=gen)
    plabel = torch.randn(3, 4, d.num_priors, generator=gen) * 2
    got = MultiBoxLoss(d)(ploc, plabel, gloc, glabel).item()
    want = reference.loss(ploc, plabel, gloc, glabel, d.xywh)
    assert got == pytest.approx(want, rel=1e-5)


def test_hard_negative_mining_picks_highest_ce():
    ce = torch.tensor([[5.0, 1.0, 4.0, 3.0, 2.0, 0.5, 9.0]])
    pos = torch.tensor([[True, False, False, False, False, False, False]])
    neg = hard_negative_mining(ce, pos)  # 3 negatives: 9, 4, 3
    assert neg.tolist() == [[False, False, True, True, False, False, True]]
    # more wanted negatives than priors: all are taken (positives included, as the reference)
    many = hard_negative_mining(ce, torch.ones_like(pos))
    assert many.all()


def test_gradients_and_autocast_dtypes(dboxes):
    coder = BoxCoder(dboxes)
    gloc, glabel = coder.encode_batch([torch.tensor([[0.2, 0.2, 0.6, 0.7]])], [torch.tensor([5])])
    ploc = torch.randn(1, 4, 8732, requires_grad=True)
    plabel = torch.randn(1, 81, 8732, requires_grad=True)
    crit = MultiBoxLoss(dboxes)
    loss = crit(ploc.bfloat16(), plabel.bfloat16(), gloc.transpose(1, 2), glabel)
    assert loss.dtype == torch.float32
    loss.backward()
    assert ploc.grad is not None and torch.isfinite(plabel.grad).all()
