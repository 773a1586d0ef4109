import numpy as np
import pytest
import reference
import torch

from ssdwb.ssd.anchors import DefaultBoxes
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.postprocess import postprocess


def compare_with_reference(ploc, plabel, dboxes, **kw):
    out = postprocess(ploc, plabel, dboxes, **kw)
    other = postprocess(ploc, plabel, dboxes, strategy="per_group", **kw)
    for (a, b, c), (x, y, z) in zip(out, other):  # both NMS strategies give the same result
        assert torch.equal(a, x) and torch.equal(b, y) and torch.equal(c, z)
    boxes = BoxCoder(dboxes).decode(ploc)
    probs = torch.softmax(plabel.float(), 1)
    for b, (ob, ol, os_) in enumerate(out):
        ref = reference.greedy_nms_detections(
            boxes[b], probs[b], kw.get("score_threshold", 0.05), kw.get("nms_iou", 0.5),
            kw.get("candidates_per_class", 200), kw.get("max_detections", 200))
        assert len(ref) == len(ol)
        assert torch.all(os_[:-1] >= os_[1:])  # scores descending
        got = sorted(zip(os_.tolist(), ol.tolist(), map(tuple, ob.tolist())))
        want = sorted((s, c, tuple(boxes[b, p].tolist())) for s, c, p in ref)
        assert got == want
    return out


def test_equals_plain_greedy_nms_full_model_size(dboxes):
    gen = torch.Generator().manual_seed(0)
    ploc = torch.randn(2, 4, 8732, generator=gen) * 0.5
    plabel = torch.randn(2, 81, 8732, generator=gen) * 2.5
    out = compare_with_reference(ploc, plabel, dboxes)
    assert all(len(o[0]) == 200 for o in out)  # capped at max_detections


def test_small_design_many_overlaps():
    d = DefaultBoxes(300, [6, 3], [50, 100], [60, 90, 150], [[2], [2]])
    gen = torch.Generator().manual_seed(3)
    ploc = torch.randn(3, 4, d.num_priors, generator=gen) * 0.3
    plabel = torch.randn(3, 5, d.num_priors, generator=gen) * 3
    compare_with_reference(ploc, plabel, d, candidates_per_class=20, max_detections=30)


def f32_iou(a, b) -> float:
    """IoU with the float32 operations of torchvision's nms kernels."""
    a, b = torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    w = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    h = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


HALF_BELOW = float(np.nextafter(np.float32(0.5), np.float32(0)))  # 0.49999997, exact in float32


def threshold_case(width: float, fillers: int, device: str):
    """Prior 0 is [0, 0, 1, 1], prior 1 [0, 0, width, 1] (scores 1st and 2nd of class 1), then
    `fillers` small disjoint boxes of the same class far away (so the class's group has
    2 + fillers boxes)."""
    d = DefaultBoxes(300, [1], [300], [150, 150], [[]])
    xs = 3.0 + 0.25 * torch.arange(fillers, dtype=torch.float32)
    d.xywh = torch.cat([torch.tensor([[0.5, 0.5, 1.0, 1.0], [width / 2, 0.5, width, 1.0]]),
                        torch.stack([xs, torch.full_like(xs, 3.0), torch.full_like(xs, 0.1),
                                     torch.full_like(xs, 0.1)], 1)])
    d.ltrb = torch.cat([d.xywh[:, :2] - d.xywh[:, 2:] / 2, d.xywh[:, :2] + d.xywh[:, 2:] / 2], 1)
    n = 2 + fillers
    ploc = torch.zeros(1, 4, n, device=device)
    plabel = torch.zeros(1, 2, n, device=device)
    plabel[0, 1] = torch.cat([torch.tensor([3.0, 2.0]), torch.ones(fillers)]).to(device)
    return ploc, plabel, d


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"))])
@pytest.mark.parametrize("fillers", [0, 70], ids=["small group", "large group"])
@pytest.mark.parametrize("strategy", ["batched", "per_group"])
def test_iou_exactly_at_threshold_is_suppressed(strategy, fillers, device):
    """The reference removes IoU >= 0.5 in float32: a box with float32 IoU exactly 0.5 with a
    higher-scoring one is removed, one with the largest float32 IoU below 0.5 is kept. With
    strategy="batched", 2 boxes go through the batched pass and 72 (> _BATCHED_MAX) through
    torchvision.ops.nms; "per_group" calls torchvision.ops.nms for both. On CUDA the nms kernel
    takes the threshold as a float (a double below 0.5 would round back to 0.5)."""
    from ssdwb.ssd.postprocess import _BATCHED_MAX

    assert (fillers + 2 > _BATCHED_MAX) == (fillers > 0)
    assert f32_iou([0, 0, 1, 1], [0, 0, 0.5, 1]) == 0.5
    assert f32_iou([0, 0, 1, 1], [0, 0, HALF_BELOW, 1]) == HALF_BELOW
    for width, kept in ((0.5, False), (0.5001, False), (HALF_BELOW, True)):
        ploc, plabel, d = threshold_case(width, fillers, device)
        boxes, labels, scores = postprocess(ploc, plabel, d, strategy=strategy)[0]
        boxes = boxes.cpu()
        assert boxes[0].tolist() == [0, 0, 1, 1]
        assert len(scores) == 1 + kept + fillers, (width, strategy, device)
        second = torch.tensor([0, 0, width, 1], dtype=torch.float32)
        assert bool((boxes == second).all(1).any()) is kept, (width, strategy, device)


def test_suppress_above_is_the_float32_just_below():
    from ssdwb.ssd.postprocess import _suppress_above

    for t in (0.5, 0.45, 0.6, 0.3):
        below = _suppress_above(t)
        assert float(np.float32(below)) == below  # a float kernel parameter keeps it
        assert below < np.float32(t) and np.nextafter(np.float32(below), np.float32(1)) == np.float32(t)


def test_no_detections_and_threshold(dboxes):
    ploc = torch.zeros(2, 4, 8732)
    plabel = torch.zeros(2, 81, 8732)
    plabel[:, 0] = 10.0  # everything background
    out = postprocess(ploc, plabel, dboxes)
    assert [len(o[0]) for o in out] == [0, 0]
    assert out[0][0].shape == (0, 4) and out[0][1].dtype == torch.int64


def test_classes_kept_apart(dboxes):
    """Two classes on the same box both survive: NMS is per class."""
    ploc = torch.zeros(1, 4, 8732)
    plabel = torch.full((1, 81, 8732), -20.0)
    plabel[0, 0] = 0.0
    plabel[0, 3, 100] = 5.0
    plabel[0, 7, 100] = 5.0
    boxes, labels, scores = postprocess(ploc, plabel, dboxes)[0]
    assert sorted(labels.tolist()) == [3, 7]
    assert torch.allclose(boxes[0], dboxes.ltrb[100])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu(dboxes):
    gen = torch.Generator().manual_seed(0)
    ploc = torch.randn(2, 4, 8732, generator=gen) * 0.5
    plabel = torch.randn(2, 81, 8732, generator=gen) * 2.5
    for (a, b, c), (x, y, z) in zip(postprocess(ploc, plabel, dboxes),
                                    postprocess(ploc.cuda(), plabel.cuda(), dboxes)):
        assert torch.equal(b, y.cpu()) and torch.allclose(a, x.cpu()) and torch.allclose(c, z.cpu())


def test_trained_like_logits(dboxes):
    """Few scores above the threshold, and one class with more than 200 of them."""
    gen = torch.Generator().manual_seed(5)
    ploc = torch.randn(3, 4, 8732, generator=gen) * 0.3
    plabel = torch.randn(3, 81, 8732, generator=gen)
    plabel[:, 0] += 6.0
    plabel[1, 4, :300] += 9.0  # one class with more than 200 survivors in image 1
    out = compare_with_reference(ploc, plabel, dboxes)
    assert 0 < (out[1][1] == 4).sum() <= 200


def test_perfect_predictions_score_map_one(tmp_path):
    """End to end through encode -> offsets -> postprocess -> COCO results -> coco_eval: a model
    that outputs the encoded ground truth exactly must score mAP ~1 (catches any mismatch of
    box formats, prior order, label maps or pixel conversion between training and evaluation)."""
    import numpy as np

    from ssdwb.data import CocoDetection, build_loader, val_transform
    from ssdwb.data.synthetic import make_shapes_coco
    from ssdwb.evaluation.coco_eval import coco_eval, detections_to_coco
    from ssdwb.ssd.anchors import dboxes300_coco
    from ssdwb.ssd.box_coder import BoxCoder

    root = make_shapes_coco(tmp_path / "s", num_train=1, num_val=6, seed=5)
    ds = CocoDetection(root / "val", root / "annotations" / "instances_val.json",
                       transform=val_transform())
    coder = BoxCoder(dboxes300_coco())
    parts = []
    for b in build_loader(ds, 3, train=False, num_workers=0):
        gloc, glabel = coder.encode_batch(b["boxes"], b["labels"])
        ploc = coder.offsets(gloc).transpose(1, 2)
        plabel = 20.0 * torch.nn.functional.one_hot(glabel, ds.num_classes).float().transpose(1, 2)
        dets = postprocess(ploc, plabel, coder)
        parts.append(detections_to_coco(dets, b["image_ids"], b["orig_sizes"], ds.label_to_cat))
    stats = coco_eval(ds.coco, np.concatenate(parts))
    assert stats["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert stats["mAP"] > 0.99


def test_heavy_suppression_needs_more_rounds(monkeypatch):
    """Priors in two clusters of near-duplicates: most candidates are suppressed, so the first
    2 * max_detections + 64 entries of an image keep too few and postprocess must look further
    (and stay exact)."""
    import ssdwb.ssd.postprocess as detect

    d = DefaultBoxes(300, [2], [150], [100, 200], [[2, 3]])  # 24 priors, replaced below
    gen = torch.Generator().manual_seed(11)
    centre = torch.tensor([[0.3, 0.3], [0.6, 0.5]]).repeat_interleave(12, 0)
    d.xywh = torch.cat([centre + torch.rand(24, 2, generator=gen) * 0.02,
                        0.3 + torch.rand(24, 2, generator=gen) * 0.05], 1)
    d.ltrb = torch.cat([d.xywh[:, :2] - d.xywh[:, 2:] / 2, d.xywh[:, :2] + d.xywh[:, 2:] / 2], 1)
    ploc = torch.randn(2, 4, 24, generator=gen) * 0.05
    plabel = torch.randn(2, 11, 24, generator=gen) * 0.3
    plabel[:, 0] -= 5.0  # all 10 classes above the threshold on every prior: 240 entries
    rounds = []
    real = detect._nms_table
    monkeypatch.setattr(detect, "_nms_table", lambda *a: rounds.append(len(a[1])) or real(*a))
    out = compare_with_reference(ploc, plabel, d, max_detections=30)
    # per strategy: the best 2 * 30 + 64 entries of both images, then all of them (~240 each)
    assert len(rounds) == 4 and rounds[0] == 2 * 124 and rounds[1] > 2 * 230
    assert all(len(o[2]) == 20 for o in out)  # one box per (cluster, class) survives


@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_equals_torchvision_nms(seed):
    """The batched greedy pass removes exactly what torchvision.ops.nms removes, group by group,
    with many IoUs near the threshold (boxes on a coarse grid) and groups up to the batch limit."""
    from torchvision.ops import nms

    from ssdwb.ssd.postprocess import _BATCHED_MAX, _greedy_nms

    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, _BATCHED_MAX + 20, (40,), generator=gen)
    n = int(sizes.sum())
    xy = torch.randint(0, 8, (n, 2), generator=gen).float() / 8
    wh = torch.randint(1, 5, (n, 2), generator=gen).float() / 8
    boxes = torch.cat([xy, xy + wh], 1)
    row = torch.repeat_interleave(torch.arange(40), sizes)
    col = torch.arange(n) - (sizes.cumsum(0) - sizes)[row]
    for strategy in ("batched", "per_group"):
        keep = _greedy_nms(boxes, row, col, sizes, 0.5, strategy)
        start = 0
        for g in sizes.tolist():
            want = torch.zeros(g, dtype=torch.bool)
            want[nms(boxes[start:start + g], torch.arange(g, 0, -1).float(), 0.4999999)] = True
            assert torch.equal(keep[start:start + g], want)
            start += g
