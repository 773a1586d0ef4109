"""Plain, slow, loop-by-loop versions of the SPEC.md maths, written for the tests only.

Each function follows SPEC.md's wording one step at a time (per box, per image, per class), so
that the vectorized code in ssdwb can be compared against something obviously right.
"""

from __future__ import annotations

import itertools
import math

import torch
import torchvision


def default_boxes_xywh(fig, feats, steps, scales, ratios):
    out = []
    for k, f in enumerate(feats):
        fk = fig / steps[k]
        s1, s2 = scales[k] / fig, scales[k + 1] / fig
        sizes = [(s1, s1), (math.sqrt(s1 * s2), math.sqrt(s1 * s2))]
        for a in ratios[k]:
            sizes.append((s1 * math.sqrt(a), s1 / math.sqrt(a)))
            sizes.append((s1 / math.sqrt(a), s1 * math.sqrt(a)))
        for w, h in sizes:
            for i, j in itertools.product(range(f), repeat=2):
                out.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    return torch.tensor(out, dtype=torch.float32).clamp(0, 1)


def iou_matrix(a, b):
    """IoU of every box in a [N,4] with every box in b [M,4], ltrb, float32 arithmetic."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode(gt_ltrb, labels, prior_ltrb, threshold=0.5):
    """One image, one GT at a time where SPEC.md says so."""
    num_p = prior_ltrb.shape[0]
    iou = iou_matrix(gt_ltrb, prior_ltrb)  # [N, P]
    best_iou, best_gt = iou.max(dim=0)
    best_iou, best_gt = best_iou.clone(), best_gt.clone()
    for g in range(gt_ltrb.shape[0]):  # later GTs overwrite earlier ones
        p = int(iou[g].argmax())
        best_iou[p] = 2.0
        best_gt[p] = g
    boxes = prior_ltrb.clone()
    out_labels = torch.zeros(num_p, dtype=torch.int64)
    for p in range(num_p):
        if best_iou[p] > threshold:
            boxes[p] = gt_ltrb[best_gt[p]]
            out_labels[p] = labels[best_gt[p]]
    l, t, r, b = boxes.unbind(1)
    return torch.stack([0.5 * (l + r), 0.5 * (t + b), r - l, b - t], 1), out_labels


def loss(ploc, plabel, gloc, glabel, dxywh, scale_xy=0.1, scale_wh=0.2):
    """Per image: loc SmoothL1 over positives + CE over positives and 3*num_pos hardest negatives."""
    total = []
    for b in range(ploc.shape[0]):
        pos = [p for p in range(ploc.shape[2]) if glabel[b, p] > 0]
        if not pos:
            total.append(0.0)
            continue
        loc = 0.0
        for p in pos:
            g, d = gloc[b, :, p], dxywh[p]
            target = [
                (g[0] - d[0]) / d[2] / scale_xy,
                (g[1] - d[1]) / d[3] / scale_xy,
                math.log(g[2] / d[2]) / scale_wh,
                math.log(g[3] / d[3]) / scale_wh,
            ]
            for k in range(4):
                x = abs(float(ploc[b, k, p]) - float(target[k]))
                loc += 0.5 * x * x if x < 1 else x - 0.5
        ce = [float(-torch.log_softmax(plabel[b, :, p].double(), 0)[glabel[b, p]])
              for p in range(ploc.shape[2])]
        ranked = [0.0 if p in pos else ce[p] for p in range(len(ce))]
        order = sorted(range(len(ce)), key=lambda p: -ranked[p])
        hard = order[: min(3 * len(pos), len(ce))]
        conf = sum(ce[p] for p in pos) + sum(ce[p] for p in hard)
        total.append((loc + conf) / len(pos))
    return sum(total) / len(total)


def greedy_nms_detections(boxes_ltrb, probs, threshold=0.05, iou=0.5, per_class=200, max_out=200):
    """One image: boxes [P,4], probs [C,P] softmax. Per class: filter, top-k, greedy NMS."""
    det = []
    for c in range(1, probs.shape[0]):
        cand = [(float(probs[c, p]), p) for p in range(probs.shape[1]) if probs[c, p] > threshold]
        cand.sort(key=lambda t: -t[0])
        cand = cand[:per_class]
        while cand:
            s, p = cand.pop(0)
            det.append((s, c, p))
            if cand:
                others = torch.stack([boxes_ltrb[q] for _, q in cand])
                ious = iou_matrix(boxes_ltrb[p][None], others)[0]
                cand = [t for t, v in zip(cand, ious.tolist()) if v < iou]
    det.sort(key=lambda t: -t[0])
    return det[:max_out]


def _uniform(lo, hi):
    return lo + (hi - lo) * float(torch.rand(()))


CROP_OPTIONS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -math.inf)


class TorchSSDRandomCrop:
    """The SSD crop in torch ops, step by step as the reference (ssdwb's runs in numpy).

    ``__call__(boxes, labels) -> (crop, boxes, labels, option)``: ``crop`` is (left, top, right,
    bottom) fractions or None, ``option`` the index into ``CROP_OPTIONS`` that succeeded.
    """

    def __call__(self, boxes: torch.Tensor, labels: torch.Tensor):
        while True:
            option = int(torch.randint(len(CROP_OPTIONS), ()))
            min_iou = CROP_OPTIONS[option]
            if min_iou is None:
                return None, boxes, labels, option
            w, h = _uniform(0.3, 1.0), _uniform(0.3, 1.0)
            if w / h < 0.5 or w / h > 2:
                continue
            left, top = _uniform(0, 1.0 - w), _uniform(0, 1.0 - h)
            right, bottom = left + w, top + h
            crop = torch.tensor([[left, top, right, bottom]])
            if not bool((torchvision.ops.box_iou(boxes, crop) > min_iou).all()):
                continue
            cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
            cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
            inside = (cx > left) & (cx < right) & (cy > top) & (cy < bottom)
            if not bool(inside.any()):
                continue
            kept = boxes[inside]
            kept = torch.stack([kept[:, 0].clamp(min=left), kept[:, 1].clamp(min=top),
                                kept[:, 2].clamp(max=right), kept[:, 3].clamp(max=bottom)], 1)
            kept = (kept - torch.tensor([left, top, left, top])) / torch.tensor([w, h, w, h])
            return (left, top, right, bottom), kept, labels[inside], option
