"""From network outputs to detections: decode, softmax, score filter, per-class NMS, top-k.

Reference behaviour (MLPerf v0.6 ``Encoder.decode_batch`` with criteria 0.50, max 200):
per image and per class 1..C-1, keep priors with softmax score > 0.05, take the 200 highest,
run greedy NMS that removes every box whose IoU with a kept box is >= 0.5, then keep the 200
highest-scoring detections of the image over all classes.

Here the whole batch goes through one ``torchvision.ops.nms`` call, classes and images kept
apart by shifting each (image, class) group's boxes to its own region of the plane. Two details
keep this equal to the reference, box for box:

* the shift is done in float64: in float32, adding offsets of a few thousand (torchvision's own
  ``batched_nms`` coordinate trick) rounds coordinates by ~1e-4 and changes small boxes' IoUs;
  float64 holds every float32 coordinate plus the offset, so IoUs stay the float32 boxes' IoUs;
* torchvision removes IoU > threshold, the reference IoU >= threshold: we pass the largest double
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
                candidates_per_class: int = 200, max_detections: int = 200) -> list[Detections]:
    """Detections per image.

    Args:
        ploc (Tensor[B, 4, P]): predicted offsets.
        plabel (Tensor[B, C, P]): class logits, class 0 = background.
        dboxes: the default boxes (or a ``BoxCoder`` built on them).

    Returns:
        B tuples ``(boxes (Tensor[K, 4]) in (x1, y1, x2, y2) fractions of the image, unclipped,
        labels (Tensor[K]) int64 in 1..C-1, scores (Tensor[K]))``, scores descending, K <= 200.
    """
    coder = dboxes if isinstance(dboxes, BoxCoder) else BoxCoder(dboxes)
    boxes = coder.decode(ploc)  # [B, P, 4]
    scores = torch.softmax(plabel.float(), dim=1)[:, 1:, :]  # [B, C-1, P], background dropped
    bsz, ncls, num_p = scores.shape

    # Per (image, class): the top candidates above the threshold.
    k = min(candidates_per_class, num_p)
    top_scores, top_idx = scores.topk(k, dim=2)  # [B, C-1, k], descending
    keep = top_scores > score_threshold
    img_i, cls_i, cand_i = keep.nonzero(as_tuple=True)
    cand_scores = top_scores[img_i, cls_i, cand_i]
    cand_boxes = boxes[img_i, top_idx[img_i, cls_i, cand_i]]  # [K, 4]
    group = img_i * ncls + cls_i

    if cand_boxes.shape[0] > 0:
        shifted = cand_boxes.double()
        extent = (shifted.max() - shifted.min()).item() + 1.0
        shifted = shifted - shifted.min() + (group.double() * extent).unsqueeze(1)
        kept = nms(shifted, cand_scores.double(), math.nextafter(nms_iou, 0.0))  # score-desc
    else:
        kept = torch.zeros(0, dtype=torch.int64, device=boxes.device)

    # Top max_detections per image: stable sort by image keeps the score order inside each.
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
