"""From network outputs to detections: decode, softmax, score filter, per-class NMS, top-k.

Reference behaviour (MLPerf v0.6 ``Encoder.decode_batch`` with criteria 0.50, max 200):
per image and per class 1..C-1, keep priors with softmax score > 0.05, take the 200 highest,
run greedy NMS that removes every box whose IoU with a kept box is >= 0.5, then keep the 200
highest-scoring detections of the image over all classes.

Score filtering and the per-class top-200 are done for the whole batch at once: one ``topk`` over
all priors when most classes fill their 200 candidates (random logits), otherwise a sort of only
the scores above the threshold (a trained model). NMS then runs on groups of one (image, class),
which come out of the filter already contiguous and score-sorted:

* ``"per_group"`` (default on CPU): ``torchvision.ops.nms`` on each group's slice. Exact float32
  IoUs, as the reference computes them. One call per group is what ``batched_nms`` itself does for
  large inputs, minus its ``where`` scan per class; a single call over all groups is no option on
  CPU, where the kernel compares every kept box with every later box of any group (quadratic in
  the batch's candidates: ~7 s for 4 images of random logits).
* ``"per_image"`` (default on CUDA): one ``nms`` call per image, classes moved apart by offsets.
  The offsets are added in float64, where every float32 coordinate plus an offset is exact
  (torchvision's own float32 coordinate trick rounds small boxes' coordinates by ~1e-4).

torchvision removes IoU > threshold and the reference IoU >= threshold: we pass the largest double
below the threshold, which turns ``>`` into ``>=`` for every float32 or float64 IoU.
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import nms

from ssdwb.anchors import DefaultBoxes
from ssdwb.box_coder import BoxCoder

__all__ = ["postprocess", "Detections"]

Detections = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # boxes_ltrb [K,4], labels, scores


def postprocess(ploc: torch.Tensor, plabel: torch.Tensor, dboxes: DefaultBoxes | BoxCoder,
                score_threshold: float = 0.05, nms_iou: float = 0.5,
                candidates_per_class: int = 200, max_detections: int = 200,
                strategy: str | None = None) -> list[Detections]:
    """Detections per image.

    Args:
        ploc (Tensor[B, 4, P]): predicted offsets.
        plabel (Tensor[B, C, P]): class logits, class 0 = background.
        dboxes: the default boxes (or a ``BoxCoder`` built on them).
        strategy: ``"per_group"`` or ``"per_image"`` NMS (see the module docstring); None picks
            by device. Both give the same detections.

    Returns:
        B tuples ``(boxes (Tensor[K, 4]) in (x1, y1, x2, y2) fractions of the image, unclipped,
        labels (Tensor[K]) int64 in 1..C-1, scores (Tensor[K]))``, scores descending, K <= 200.
    """
    coder = dboxes if isinstance(dboxes, BoxCoder) else BoxCoder(dboxes)
    boxes = coder.decode(ploc)  # [B, P, 4]
    scores = torch.softmax(plabel.float(), dim=1)[:, 1:, :]  # [B, C-1, P], background dropped
    bsz, ncls, num_p = scores.shape

    # Per (image, class): the top candidates above the threshold, grouped and score-sorted.
    k = min(candidates_per_class, num_p)
    above = scores > score_threshold
    if int(above.sum()) > 2 * bsz * ncls * k:  # most classes full: one topk over all priors
        top_scores, top_idx = scores.topk(k, dim=2)  # [B, C-1, k], descending
        img_i, cls_i, cand_i = (top_scores > score_threshold).nonzero(as_tuple=True)
        cand_scores = top_scores[img_i, cls_i, cand_i]
        prior_i = top_idx[img_i, cls_i, cand_i]
    else:  # few survivors (a trained model): rank only them
        img_i, cls_i, prior_i = above.nonzero(as_tuple=True)  # row-major: grouped
        cand_scores = scores[img_i, cls_i, prior_i]
        order = torch.argsort(cand_scores, descending=True, stable=True)
        order = order[torch.argsort(img_i[order] * ncls + cls_i[order], stable=True)]
        img_i, cls_i, prior_i, cand_scores = (img_i[order], cls_i[order], prior_i[order],
                                              cand_scores[order])
        group = img_i * ncls + cls_i
        sizes = torch.bincount(group, minlength=bsz * ncls)
        rank = torch.arange(group.shape[0], device=group.device) - (sizes.cumsum(0) - sizes)[group]
        top = rank < k
        img_i, cls_i, prior_i, cand_scores = img_i[top], cls_i[top], prior_i[top], cand_scores[top]
    cand_boxes = boxes[img_i, prior_i]  # [K, 4]
    group = img_i * ncls + cls_i

    if strategy is None:
        strategy = "per_image" if boxes.device.type == "cuda" else "per_group"
    threshold = math.nextafter(nms_iou, 0.0)
    if strategy == "per_group":
        sizes = torch.bincount(group, minlength=bsz * ncls)
        kept_parts, start = [], 0
        for n in sizes[sizes > 0].tolist():  # groups are contiguous: nonzero() is row-major
            kept_parts.append(nms(cand_boxes[start:start + n], cand_scores[start:start + n],
                                  threshold) + start)
            start += n
    elif strategy == "per_image":
        sizes = torch.bincount(img_i, minlength=bsz)
        kept_parts, start = [], 0
        for n in sizes[sizes > 0].tolist():
            b = cand_boxes[start:start + n].double()
            shift = (b.max() - b.min()).item() + 1.0  # > any box's extent: groups never touch
            b = b + (cls_i[start:start + n].double() * shift).unsqueeze(1)
            kept_parts.append(nms(b, cand_scores[start:start + n].double(), threshold) + start)
            start += n
    else:
        raise ValueError(f"strategy must be 'per_group' or 'per_image', not {strategy!r}")
    kept = (torch.cat(kept_parts) if kept_parts
            else torch.zeros(0, dtype=torch.int64, device=boxes.device))
    # Score descending, then (stable) by image: each image's detections in score order.
    kept = kept[torch.argsort(cand_scores[kept], descending=True, stable=True)]
    kept = kept[torch.argsort(img_i[kept], stable=True)]
    per_image = torch.bincount(img_i[kept], minlength=bsz)
    first = torch.cumsum(per_image, 0) - per_image
    rank = torch.arange(kept.shape[0], device=kept.device) - first[img_i[kept]]
    kept = kept[rank < max_detections]
    counts = torch.clamp(per_image, max=max_detections).tolist()
    out_boxes = cand_boxes[kept].split(counts)
    out_labels = (cls_i[kept] + 1).split(counts)
    out_scores = cand_scores[kept].split(counts)
    return list(zip(out_boxes, out_labels, out_scores))
