import pytest
import reference
import torch

from ssdwb.anchors import DefaultBoxes
from ssdwb.box_coder import BoxCoder
from ssdwb.detect import postprocess


def compare_with_reference(ploc, plabel, dboxes, **kw):
    out = postprocess(ploc, plabel, dboxes, **kw)
    other = postprocess(ploc, plabel, dboxes, strategy="per_image", **kw)
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


def test_iou_exactly_at_threshold_is_suppressed():
    """Boxes with IoU exactly 0.5 are removed (reference keeps only IoU < 0.5)."""
    d = DefaultBoxes(300, [1], [300], [150, 150], [[]])
    d.xywh = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 1.0]])  # IoU exactly 0.5
    d.ltrb = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0]])
    ploc = torch.zeros(1, 4, 2)
    plabel = torch.tensor([[[0.0, 0.0], [2.0, 1.0]]])
    boxes, labels, scores = postprocess(ploc, plabel, d)[0]
    assert len(scores) == 1 and labels.tolist() == [1]
    d.xywh[1, 2] = 0.5001  # IoU just above 0.5: still removed
    d.xywh = d.xywh.clone()
    d.ltrb = torch.cat([d.xywh[:, :2] - d.xywh[:, 2:] / 2, d.xywh[:, :2] + d.xywh[:, 2:] / 2], 1)
    assert len(postprocess(ploc, plabel, d)[0][2]) == 1
    d.xywh[1] = torch.tensor([0.25, 0.5, 0.4999, 1.0])  # just below: kept
    d.ltrb = torch.cat([d.xywh[:, :2] - d.xywh[:, 2:] / 2, d.xywh[:, :2] + d.xywh[:, 2:] / 2], 1)
    assert len(postprocess(ploc, plabel, d)[0][2]) == 2


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


def test_trained_like_logits_take_the_filtered_path(dboxes):
    """Few scores above the threshold: candidates are ranked by sorting only the survivors."""
    gen = torch.Generator().manual_seed(5)
    ploc = torch.randn(3, 4, 8732, generator=gen) * 0.3
    plabel = torch.randn(3, 81, 8732, generator=gen)
    plabel[:, 0] += 6.0
    plabel[1, 4, :300] += 9.0  # one class with more than 200 survivors in image 1
    probs = torch.softmax(plabel, 1)[:, 1:]
    assert (probs > 0.05).sum() < 2 * 3 * 80 * 200  # the filtered path's condition
    out = compare_with_reference(ploc, plabel, dboxes)
    assert 0 < (out[1][1] == 4).sum() <= 200


def test_perfect_predictions_score_map_one(tmp_path):
    """End to end through encode -> offsets -> postprocess -> COCO results -> coco_eval: a model
    that outputs the encoded ground truth exactly must score mAP ~1 (catches any mismatch of
    box formats, prior order, label maps or pixel conversion between training and evaluation)."""
    import numpy as np

    from ssdwb.anchors import dboxes300_coco
    from ssdwb.box_coder import BoxCoder
    from ssdwb.data import CocoDetection, build_loader, val_transform
    from ssdwb.data.synthetic import make_shapes_coco
    from ssdwb.evaluate import coco_eval, detections_to_coco

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
