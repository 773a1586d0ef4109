"""From network outputs to detections: decode, softmax, score filter, per-class NMS, top-k.

Reference behaviour (MLPerf v0.6 ``Encoder.decode_batch`` with criteria 0.50, max 200):
per image and per class 1..C-1, keep priors with softmax score > 0.05, take the 200 highest,
run greedy NMS that removes every box whose IoU with a kept box is >= 0.5, then keep the 200
highest-scoring detections of the image over all classes.

Most of that work never reaches the output: with random logits an image has ~16,000 candidates
(80 classes x 200) and keeps 200. A candidate's fate in greedy NMS depends only on the
higher-scoring candidates of its class, so NMS over an image's best N entries (all classes, with
every tie of the N-th) gives those entries their final keep flags; if at least 200 are kept,
nothing below can enter the top 200. ``postprocess`` starts with N = 464 per image and grows N
(x4) only for images where fewer than 200 survive. The whole batch goes through each step at
once: one ``nonzero`` over the score threshold, one ``topk`` per round for the images' N-th
scores, a table with one row per (image, class) for NMS.

NMS, two strategies with the same result (tests compare them with each other, with
``torchvision.ops.nms`` and with a plain greedy loop):

* ``"batched"`` (default): the prefix leaves a few boxes per (image, class) (~6 with random
  logits, at most 16 in the bench), and ~2,500 separate ``torchvision.ops.nms`` calls would
  spend their time in call overhead. Groups of up to 64 boxes go through one greedy pass over a
  padded [groups, L, L] IoU table, with the float32 operations of torchvision's CPU kernel;
  larger groups call ``torchvision.ops.nms``. One pass also suits CUDA (no per-group launches).
* ``"per_group"``: ``torchvision.ops.nms`` on each (image, class) group, as ``batched_nms`` does
  for large inputs.

Both compute IoUs in float32 like the reference. (One per-image call with classes moved apart by
offsets, ``batched_nms``'s trick for small inputs, is not offered: in float32 the offsets round
coordinates, and in float64 the IoUs are no longer the reference's float32 ones.)
The reference removes IoU >= threshold compared in float32, torchvision IoU > threshold: every
comparison here (the ``nms`` calls and the batched pass) uses ``iou > t32``, where ``t32`` is the
largest float32 below float32(threshold) (``_suppress_above``), which turns ``>`` into ``>=``
for every float32 IoU. It must be a float32 value: torchvision's CPU kernel compares with a
double, but its CUDA kernel takes the threshold as a float, which would round the largest
*double* below 0.5 back up to 0.5 (keeping IoU exactly 0.5). Two zero-area boxes at one place
have IoU 0/0 = NaN and both stay, as in torchvision (the reference's ``iou < 0.5`` test would
remove the second).

Every entry carries its prior (default-box) index from the score filter to the output, so
``return_index=True`` adds it to each image's detections at the cost of one more ``split``:
``ssdwb.lab.attribution.prior_cells`` turns it into (level, box type, row, column)
(``bench/bench_postprocess.py`` times both forms against the one before the index).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import nms

from ssdwb.ssd.anchors import DefaultBoxes
from ssdwb.ssd.box_coder import BoxCoder

__all__ = ["postprocess", "Detections", "STRATEGIES"]

Detections = tuple[torch.Tensor, ...]  # boxes_ltrb [K,4], labels, scores (, priors with the index)
STRATEGIES = ("batched", "per_group")


def postprocess(ploc: torch.Tensor, plabel: torch.Tensor, dboxes: DefaultBoxes | BoxCoder,
                score_threshold: float = 0.05, nms_iou: float = 0.5,
                candidates_per_class: int = 200, max_detections: int = 200,
                strategy: str | None = None, return_index: bool = False) -> list[Detections]:
    """Detections per image.

    Args:
        ploc (Tensor[B, 4, P]): predicted offsets.
        plabel (Tensor[B, C, P]): class logits, class 0 = background.
        dboxes: the default boxes (or a ``BoxCoder`` built on them).
        strategy: ``"batched"`` (default) or ``"per_group"`` NMS (see the module docstring).
            Both give the same detections.
        return_index: also return each detection's default box.

    Returns:
        B tuples ``(boxes (Tensor[K, 4]) in (x1, y1, x2, y2) fractions of the image, unclipped,
        labels (Tensor[K]) int64 in 1..C-1, scores (Tensor[K]))``, scores descending, K <= 200;
        with ``return_index`` a fourth entry, ``priors`` (Tensor[K] int64): the index in
        ``dboxes`` (0..P-1) of the default box each detection was decoded from.
    """
    strategy = strategy or "batched"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    coder = dboxes if isinstance(dboxes, BoxCoder) else BoxCoder(dboxes)
    boxes = coder.decode(ploc)  # [B, P, 4]
    scores = torch.softmax(plabel.float(), dim=1)[:, 1:, :]  # [B, C-1, P], background dropped
    bsz, ncls, num_p = scores.shape
    dev = boxes.device
    k = min(candidates_per_class, num_p)

    # Every (image, class, prior) above the threshold; row-major, so grouped by image, class.
    img, cls, prior = (scores > score_threshold).nonzero(as_tuple=True)
    value = scores[img, cls, prior]
    per_image = torch.bincount(img, minlength=bsz)
    packed = _pack(value, img, per_image, -math.inf)  # [B, W]: each image's scores

    results: list[Detections | None] = [None] * bsz
    todo = list(range(bsz))
    wanted = 2 * max_detections + 64  # entries per image to look at first
    while todo:
        # The `wanted` best entries of each image, with all ties of the last one. A box's fate
        # in greedy NMS depends only on higher-scoring boxes of its class, all of which are in
        # this prefix, so the prefix's results are final; if at least max_detections survive,
        # nothing below the prefix can make the image's top max_detections.
        rows = torch.tensor(todo, device=dev)
        n = min(wanted, packed.shape[1])  # the packed width is at least 1
        cut = packed[rows].topk(n, dim=1).values[:, -1]  # -inf if an image has fewer entries
        cut_of = torch.full((bsz,), math.inf, device=dev)
        cut_of[rows] = cut
        sel = (value >= cut_of[img]).nonzero().squeeze(1)
        kept_img, kept_cls, kept_prior, kept_value = _nms_table(
            boxes, img[sel], cls[sel], prior[sel], value[sel], ncls, k, nms_iou, strategy)
        kept_count = torch.bincount(kept_img, minlength=bsz)
        complete = (per_image[rows] <= n) | (kept_count[rows] >= max_detections)
        _collect(results, kept_img, kept_cls, kept_prior, kept_value, boxes, max_detections,
                 rows[complete].tolist(), return_index)
        todo = rows[~complete].tolist()
        wanted *= 4
    return results  # type: ignore[return-value]


def _pack(value: torch.Tensor, group: torch.Tensor, sizes: torch.Tensor, fill: float
          ) -> torch.Tensor:
    """Values of sorted, contiguous groups (Tensor[N]) into rows (Tensor[G, max size]), padded."""
    width = max(int(sizes.max()) if sizes.numel() else 0, 1)
    col = torch.arange(value.shape[0], device=value.device) - (sizes.cumsum(0) - sizes)[group]
    out = torch.full((sizes.shape[0] * width,), fill, dtype=value.dtype, device=value.device)
    out[group * width + col] = value
    return out.view(-1, width)


def _nms_table(boxes, img, cls, prior, value, ncls, k, nms_iou, strategy):
    """Per-class top-k and greedy NMS of the given entries; returns the kept ones.

    Args:
        boxes (Tensor[B, P, 4]); img, cls, prior, value (Tensor[N]): entries sorted by image,
        then class (any order within a class).

    Returns:
        img, cls, prior, value (Tensor[K]) of the kept entries, by (image, class), score
        descending within a class.
    """
    dev = boxes.device
    # within each (image, class): score descending, ties by prior index (stable sorts)
    order = torch.argsort(value, descending=True, stable=True)
    group = img * ncls + cls
    order = order[torch.argsort(group[order], stable=True)]
    img, cls, prior, value, group = img[order], cls[order], prior[order], value[order], group[order]
    _, sizes = torch.unique_consecutive(group, return_counts=True)
    row = torch.repeat_interleave(torch.arange(sizes.shape[0], device=dev), sizes)
    col = torch.arange(group.shape[0], device=dev) - (sizes.cumsum(0) - sizes)[row]
    top = (col < k).nonzero().squeeze(1)  # the class's candidates_per_class best
    img, cls, prior, value, row, col = (t[top] for t in (img, cls, prior, value, row, col))
    keep = _greedy_nms(boxes[img, prior], row, col, sizes.clamp(max=k), nms_iou, strategy)
    return img[keep], cls[keep], prior[keep], value[keep]


def _greedy_nms(boxes: torch.Tensor, row: torch.Tensor, col: torch.Tensor, sizes: torch.Tensor,
                nms_iou: float, strategy: str) -> torch.Tensor:
    """Keep flags (Tensor[N] bool) of greedy NMS within each group.

    Args:
        boxes (Tensor[N, 4]) x1 y1 x2 y2, float32, grouped, score-descending within a group;
        row, col (Tensor[N]): each entry's group and rank in it; sizes (Tensor[G]).
    """
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    threshold = _suppress_above(nms_iou)  # the reference's IoU >= nms_iou as IoU > threshold
    small = (sizes <= _BATCHED_MAX) & (strategy == "batched")
    if bool(small.any()):
        keep_small = _batched_greedy_nms(boxes, row, col, small, threshold)
        keep = torch.where(small[row], keep_small, keep)
    start = (sizes.cumsum(0) - sizes).tolist()
    for g in (~small & (sizes > 1)).nonzero().squeeze(1).tolist():  # scores: the group's order
        a, n = start[g], int(sizes[g])
        kept = nms(boxes[a:a + n], torch.arange(n, 0, -1, dtype=boxes.dtype, device=boxes.device),
                   threshold)
        keep[a:a + n] = False
        keep[a + kept] = True
    return keep


_BATCHED_MAX = 64  # groups up to this size go through one batched pass


def _suppress_above(nms_iou: float) -> float:
    """The largest float32 below float32(nms_iou), as a Python float (exact in float32, so a
    float parameter, as in torchvision's CUDA kernel, holds it unchanged): for a float32 IoU,
    ``iou > _suppress_above(t)`` is the reference's ``iou >= float32(t)``."""
    return float(np.nextafter(np.float32(nms_iou), np.float32(0)))


def _batched_greedy_nms(boxes, row, col, small, threshold: float) -> torch.Tensor:
    """Greedy NMS of all small groups at once, in a padded [groups, L, L] IoU table.

    Per pair the float32 operations are those of ``torchvision.ops.nms``'s CPU kernel
    (intersection of max/min corners clamped at 0, inter / (area_i + area_j - inter)), so the
    same boxes are removed; a test compares the two on the same groups.
    """
    dev = boxes.device
    sel = small[row].nonzero().squeeze(1)
    grp = torch.cumsum(small, 0) - 1  # index among the small groups
    r, c = grp[row[sel]], col[sel]
    num, width = int(small.sum()), int(c.max()) + 1
    table = torch.zeros(num, width, 4, dtype=boxes.dtype, device=dev)
    table[r, c] = boxes[sel]
    valid = torch.zeros(num, width, dtype=torch.bool, device=dev)
    valid[r, c] = True
    x1, y1, x2, y2 = table.unbind(-1)  # [G, L] each
    w = (torch.minimum(x2[:, :, None], x2[:, None, :])
         - torch.maximum(x1[:, :, None], x1[:, None, :])).clamp_(min=0)
    h = (torch.minimum(y2[:, :, None], y2[:, None, :])
         - torch.maximum(y1[:, :, None], y1[:, None, :])).clamp_(min=0)
    inter = w * h
    area = (x2 - x1) * (y2 - y1)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter)
    over = iou > threshold  # float32 IoU against a float32 value: the nms calls' test
    kept = valid.clone()
    for i in range(width - 1):  # box i, if still kept, removes the later boxes it overlaps
        kept[:, i + 1:] &= ~(over[:, i, i + 1:] & kept[:, i:i + 1])
    out = torch.zeros(boxes.shape[0], dtype=torch.bool, device=dev)
    out[sel] = kept[r, c]
    return out


def _collect(results, img, cls, prior, value, boxes, max_detections, images,
             return_index: bool = False) -> None:
    """Fill ``results[b]`` for the given images: their best kept entries, score descending
    (and their prior indices with ``return_index``)."""
    if not images:
        return
    wanted = torch.zeros(len(results), dtype=torch.bool, device=img.device)
    wanted[images] = True
    sel = wanted[img].nonzero().squeeze(1)
    img, cls, prior, value = img[sel], cls[sel], prior[sel], value[sel]
    # score descending; ties in (class, score order) as the entries come
    order = torch.argsort(value, descending=True, stable=True)
    order = order[torch.argsort(img[order], stable=True)]
    img, cls, prior, value = img[order], cls[order], prior[order], value[order]
    counts = torch.bincount(img, minlength=len(results))
    rank = torch.arange(img.shape[0], device=img.device) - (counts.cumsum(0) - counts)[img]
    top = rank < max_detections
    img, cls, prior, value = img[top], cls[top], prior[top], value[top]
    counts = counts.clamp(max=max_detections).tolist()
    split = [boxes[img, prior].split(counts), (cls + 1).split(counts), value.split(counts)]
    if return_index:
        split.append(prior.split(counts))
    for b, part in enumerate(zip(*split)):
        if b in images:
            results[b] = part
