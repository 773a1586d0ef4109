"""Why the mAP is what it is: COCO's Hoiem-style error analysis, vectorised.

The breakdown of COCO's ``analyze()`` (the MATLAB ``CocoEval.analyze``, mmdetection's
``tools/analysis_tools/coco_error_analysis.py``): per class and object size (all, small, medium,
large), precision-recall at 100 detections per image for seven successively easier settings:

========  ==================================================================================
``C75``   PR at IoU .75 (COCO's ``AP75`` for ``all``)
``C50``   PR at IoU .5 (``AP50``)
``Loc``   PR at IoU .1: localisation errors forgiven (duplicates still count as false)
``Sim``   IoU .1, and a detection on a GT box of another class of the same supercategory is
          ignored instead of false (the other class's boxes become crowd boxes of this class)
``Oth``   IoU .1, and a detection on a GT box of any other class is ignored
``BG``    1 at every recall ``Oth`` reaches, 0 beyond: all background false positives forgiven
``FN``    1 everywhere: the missed objects forgiven
========  ==================================================================================

The gap between two consecutive settings is what that error type costs (``Loc`` - ``C50`` is
the AP lost to boxes at IoU .1-.5 of an object, ...). Each row is the precision array of
``pycocotools.cocoeval.COCOeval`` with exactly the GT changes mmdetection makes, so the numbers
are those of running COCOeval 2K + 1 times (tests compare with that, to the bit). Averaging over
classes follows COCOeval's ``summarize``: classes without GT in a size range are left out
(mmdetection counts them as 0, and their ``FN`` as 1).

How (numpy; no loop over detections, classes or images): the IoU of every detection with
every GT box of its image, in pycocotools' double-precision ``bbIou`` (crowd-style ``inter / det
area`` for crowd boxes and for the other classes' boxes), in blocks of ~1M pairs; only pairs at
IoU >= .1 can match in any setting, so each (image, class) group keeps the few GT boxes its
detections reach. Then COCOeval's greedy matching for all 20 (setting, size) pairs and all
groups at once: a loop over the rank of a detection in its group (at most 100 steps), each step
a few array operations over [GT columns, settings, groups]. The precision curves come from
cumulative sums over each class's score-sorted detections; the 101 recall points are found by
counting true positives (:func:`_tp_needed`) instead of ``searchsorted`` per class. It is cheap
enough to run at every evaluation: a fraction of faster-coco-eval's own time (measured:
docs/performance.md).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ERROR_TYPES", "AREAS", "AREA_RANGES", "COST_NAMES", "error_analysis",
           "errors_summary", "detection_outcomes", "error_costs", "error_table",
           "plot_error_breakdown", "plot_error_trends"]

ERROR_TYPES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREAS = ("all", "small", "medium", "large")
# COCOeval's default area ranges (annotation ``area`` in pixels; both ends inclusive)
AREA_RANGES = ((0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # COCOeval's p.recThrs
# The matched settings: (name, IoU threshold, which other-class GT boxes are forgiven). 0.75 is
# COCOeval's own iouThrs[5] (np.linspace(.5, .95, 10)[5] == 0.75 exactly).
_SETTINGS = (("C75", 0.75, "none"), ("C50", 0.5, "none"), ("Loc", 0.1, "none"),
             ("Sim", 0.1, "super"), ("Oth", 0.1, "all"))


# --- the data as arrays ---------------------------------------------------------------------------
class _Problem:
    """Ground truth and detections as flat arrays, in COCOeval's orders.

    GT (``g_*``, [G]): sorted by image (COCOeval's sorted image ids), then dataset order; image i
    owns ``g_start[i]:g_start[i + 1]``. Detections (``d_*``, [D]): only those COCOeval scores
    (known image and class, the ``max_dets`` best of their (image, class)), sorted by image,
    class, score descending, input order; ``d_row`` is the row in the caller's results.
    Boxes are COCO (x, y, w, h) pixels, float64.
    """

    def __init__(self, coco_gt, results, max_dets: int = 100):
        dataset = coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset
        cats = sorted(dataset["categories"], key=lambda c: c["id"])
        self.cat_ids = np.array([c["id"] for c in cats], dtype=np.int64)
        self.names = [c.get("name", str(c["id"])) for c in cats]
        supers = [c.get("supercategory") or f"\0{c['id']}" for c in cats]  # none: no siblings
        self.super = np.unique(supers, return_inverse=True)[1].astype(np.int64)
        self.image_ids = np.unique(np.array([im["id"] for im in dataset["images"]],
                                            dtype=np.int64))
        anns = dataset.get("annotations", [])
        img = np.array([a["image_id"] for a in anns], dtype=np.int64)
        cat = np.array([a["category_id"] for a in anns], dtype=np.int64)
        box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        area = np.array([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns],
                        dtype=np.float64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        img_pos, img_ok = _lookup(self.image_ids, img)
        cls, cat_ok = _lookup(self.cat_ids, cat)
        keep = np.flatnonzero(img_ok & cat_ok)
        keep = keep[np.argsort(img_pos[keep], kind="stable")]
        self.g_ann = keep  # index in the dataset's annotation list
        self.g_img, self.g_cls, self.g_box = img_pos[keep], cls[keep], box[keep]
        self.g_area, self.g_crowd = area[keep], crowd[keep]
        self.g_start = np.searchsorted(self.g_img, np.arange(len(self.image_ids) + 1))

        res = _as_array(results)
        r_img, r_img_ok = _lookup(self.image_ids, res[:, 0].astype(np.int64))
        r_cls, r_cat_ok = _lookup(self.cat_ids, res[:, 6].astype(np.int64))
        rows = np.flatnonzero(r_img_ok & r_cat_ok)
        score = res[rows, 5]
        # COCOeval: per (image, class) score descending, ties in input order (mergesort)
        order = np.lexsort((rows, -score, r_cls[rows], r_img[rows]))
        rows = rows[order]
        group = r_img[rows] * len(self.cat_ids) + r_cls[rows]
        rank = _rank_in_runs(group)
        rows, rank = rows[rank < max_dets], rank[rank < max_dets]
        self.d_row, self.d_rank = rows, rank
        self.d_img, self.d_cls = r_img[rows], r_cls[rows]
        self.d_box, self.d_score = res[rows, 1:5], res[rows, 5]
        self.d_area = res[rows, 3] * res[rows, 4]  # loadRes: w * h
        self.num_results = len(res)
        # COCOeval's accumulate order per class, over all images: score descending, then
        # image, then rank in the image (its mergesort of the images' lists)
        self.accumulate_order = np.lexsort((rank, self.d_img, -self.d_score, self.d_cls))


def _as_array(results) -> np.ndarray:
    """COCO results (list of dicts) or array [N, 7] -> float64 array [N, 7]."""
    if isinstance(results, np.ndarray):
        return np.ascontiguousarray(results, dtype=np.float64).reshape(-1, 7)
    return np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in results],
                    dtype=np.float64).reshape(-1, 7)


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in ``sorted_ids`` and whether each is there."""
    pos = np.searchsorted(sorted_ids, ids).clip(max=max(len(sorted_ids) - 1, 0))
    ok = sorted_ids[pos] == ids if len(sorted_ids) else np.zeros(len(ids), dtype=bool)
    return pos, ok


def _rank_in_runs(key: np.ndarray) -> np.ndarray:
    """Position of each entry within its run of equal consecutive keys (ndarray[N] -> [N])."""
    if len(key) == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.r_[True, key[1:] != key[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
    return np.arange(len(key)) - start


def _bbox_iou(d, g, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' ``bbIou`` in float64, the same operations in the same order (so the same
    bits), pair by pair: ``d``, ``g``: (x, y, w, h) as four ndarrays [N] each; where ``crowd``,
    inter / det area. Returns ndarray[N]."""
    dx, dy, dw, dh = d
    gx, gy, gw, gh = g
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    hit = (w > 0) & (h > 0)
    da, ga = dw * dh, gw * gh
    union = np.where(crowd, da, da + ga - w * h)
    return np.where(hit, w * h / np.where(hit, union, 1.0), 0.0)


# --- matching -------------------------------------------------------------------------------------
def _match(p: _Problem, settings):
    """COCOeval's ``evaluateImg`` matching for several settings at once.

    Args:
        settings: ``(IoU threshold, forgiven, (area lo, area hi))`` per setting; forgiven is
            ``"none"``, ``"super"`` (other classes of the same supercategory) or ``"all"``.

    Returns:
        ``gt`` (ndarray[C, D] int64: the matched GT's index in ``p.g_*``, -1 if none) and
        ``ignored`` (ndarray[C, D] bool: matched a crowd, out-of-range or forgiven GT box).
    """
    num_s, num_d = len(settings), len(p.d_row)
    out_gt = np.full((num_s, num_d), -1, dtype=np.int64)
    out_ign = np.zeros((num_s, num_d), dtype=bool)
    n_gt = np.diff(p.g_start)[p.d_img] if num_d else np.zeros(0, dtype=np.int64)
    if num_d == 0 or not n_gt.any():
        return out_gt, out_ign
    thr = np.array([min(t, 1 - 1e-10) for t, _, _ in settings])
    for rows, iou, gidx in _candidates(p, n_gt, thr.min()):
        gt_b, ign_b = _greedy(p, rows, iou, gidx, thr, settings)
        out_gt[:, rows], out_ign[:, rows] = gt_b, ign_b
    return out_gt, out_ign


_PAIRS = 1 << 20  # (detection, GT) pairs per IoU block


def _candidates(p: _Problem, n_gt: np.ndarray, lowest: float):
    """The IoU tables the greedy matching needs.

    The IoU of every detection with every GT box of its image (flat pairs, no padding); only
    pairs at IoU >= ``lowest`` can match in any setting, so only detections with such a pair
    take part (the others match nowhere and consume nothing), and each (image, class) group
    keeps only the GT boxes one of its detections reaches, in GT order (ties still go to the
    later GT): a group sees ~2 GT boxes, not its image's all. Groups are bucketed by that
    count (next power of two).

    Args:
        n_gt (ndarray[D]): GT boxes in each detection's image.

    Yields:
        (rows (ndarray[L]: detection indices, sorted: whole groups by rank), iou (ndarray[L, W]
        float64, -1 where a GT is out of the detection's reach or padding), gidx (ndarray[L, W]:
        GT index per column, -1 in padding)).
    """
    num_k = len(p.cat_ids)
    d_cols, g_cols = np.ascontiguousarray(p.d_box.T), np.ascontiguousarray(p.g_box.T)
    ends = np.cumsum(n_gt)
    parts = []
    # every (detection, GT of its image) pair, ~1M pairs at a time (bounded memory); only the
    # pairs in reach are kept
    cuts = np.searchsorted(ends, np.arange(_PAIRS, ends[-1], _PAIRS))
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(n_gt)]):
        n = n_gt[lo:hi]
        det = np.repeat(np.arange(lo, hi), n)
        g = np.arange(len(det)) - np.repeat(np.cumsum(n) - n, n) + p.g_start[p.d_img[det]]
        # other classes' boxes are crowd boxes of this class in the forgiving settings
        crowd = p.g_crowd[g] | (p.g_cls[g] != p.d_cls[det])
        iou = _bbox_iou([c[det] for c in d_cols], [c[g] for c in g_cols], crowd)
        reach = np.flatnonzero(iou >= lowest)
        parts.append((det[reach], g[reach], iou[reach]))
    det, g, iou = (np.concatenate(x) for x in zip(*parts))
    if len(det) == 0:
        return
    key = p.d_img * num_k + p.d_cls  # the (image, class) group of each detection
    group = np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1
    # the GT boxes each group reaches, in GT order: columns of its table
    pair, col_of = np.unique(group[det] * len(p.g_img) + g, return_inverse=True)
    pair_group, pair_g = np.divmod(pair, len(p.g_img))
    col = np.arange(len(pair)) - np.searchsorted(pair_group, pair_group)  # rank in the group
    width = np.bincount(pair_group, minlength=group[-1] + 1)
    packed = np.where(width > 0, 1 << np.ceil(np.log2(np.maximum(width, 1))).astype(np.int64), 0)
    live = np.zeros(len(n_gt), dtype=bool)
    live[det] = True
    for w in np.unique(packed[packed > 0]):
        rows = np.flatnonzero(live & (packed[group] == w))
        at = np.full(len(n_gt), -1, dtype=np.int64)
        at[rows] = np.arange(len(rows))
        table = np.full((len(rows), w), -1.0)
        mine = packed[group[det]] == w
        table[at[det[mine]], col[col_of[mine]]] = iou[mine]
        gidx_g = np.full((len(width), w), -1, dtype=np.int64)  # per group, its columns' GT
        in_w = packed[pair_group] == w
        gidx_g[pair_group[in_w], col[in_w]] = pair_g[in_w]
        yield rows, table, gidx_g[group[rows]]


def _greedy(p: _Problem, rows: np.ndarray, iou: np.ndarray, gidx: np.ndarray,
            thr: np.ndarray, settings):
    """COCOeval's greedy matching of the detections ``rows`` (whole groups, by group then
    rank) for every setting: a loop over the rank in the group, each step all groups at once.

    Returns:
        (gt (ndarray[C, L] int64: matched GT index, -1), ignored (ndarray[C, L] bool)).
    """
    num_s, width = len(settings), iou.shape[1]
    key = p.d_img[rows] * len(p.cat_ids) + p.d_cls[rows]
    first = np.r_[True, key[1:] != key[:-1]]
    group = np.cumsum(first) - 1
    rank = _rank_in_runs(key)
    size = np.bincount(group)
    # Groups by size descending: the groups still going at rank r are a prefix, and the
    # detections of rank r, ordered by group, a contiguous block.
    by_size = np.argsort(-size, kind="stable")
    place = np.empty_like(by_size)
    place[by_size] = np.arange(len(by_size))
    order = np.lexsort((place[group], rank))
    active = np.searchsorted(-size[by_size], -np.arange(size.max()), side="left")
    block = np.r_[0, np.cumsum(active)]

    # status per (setting, group, slot): 0 not a candidate (or consumed), 1 regular GT,
    # 2 ignored GT that one detection consumes (out of the area range), 3 ignored GT that any
    # number of detections may match (crowd, or another class forgiven)
    lead = np.flatnonzero(first)[by_size]  # a detection of each group, in group place
    g_idx = gidx[lead]
    g_valid = g_idx >= 0
    gi = g_idx.clip(min=0)
    own = g_valid & (p.g_cls[gi] == p.d_cls[rows[lead]][:, None])
    same_super = g_valid & (p.super[p.g_cls[gi]] == p.super[p.d_cls[rows[lead]]][:, None])
    crowd, area = p.g_crowd[gi], p.g_area[gi]
    status = np.zeros((num_s, len(lead), width), dtype=np.int8)
    for k, (_, forgive, (lo, hi)) in enumerate(settings):
        in_range = (area >= lo) & (area <= hi)
        st = np.where(own & ~crowd, np.where(in_range, 1, 2), np.where(own, 3, 0))
        other = {"none": False, "super": same_super & ~own, "all": g_valid & ~own}[forgive]
        status[k] = np.where(other, 3, st)
    # Slot-major layout ([W, C, groups]): the reductions over the few slots run along the
    # leading axis, as elementwise maxima of contiguous rows. numpy, not torch: the steps are
    # small, and torch's thread pool made them ~10x slower on a busy 2-core machine.
    status_s = np.ascontiguousarray(status.transpose(2, 0, 1))
    iou_r = np.ascontiguousarray(iou[order].T)  # [W, L], rank-major
    thr3 = thr[None, :, None]
    slot1 = np.arange(1, width + 1)[:, None, None]
    pick = np.empty((num_s, len(rows)), dtype=np.int64)
    use_reg = np.empty((num_s, len(rows)), dtype=bool)
    for r in range(len(active)):
        a, b, n = block[r], block[r + 1], active[r]
        cur = iou_r[:, None, a:b]  # [W, 1, n]
        st = status_s[:, :, :n]  # [W, C, n], a view: consumption below writes through
        ok = cur >= thr3
        reg = ok & (st == 1)
        has_reg = reg.any(0)  # [C, n]
        # regular GT boxes first; only when none qualifies, the ignored ones
        pool = np.where(has_reg, reg, ok & (st >= 2))
        vals = np.where(pool, cur, -1.0)
        best = vals.max(0)
        # the last slot of the best IoU: pycocotools moves to a later GT at an equal IoU
        chosen = ((pool & (vals == best)) * slot1).max(0) - 1  # [C, n], -1: no match
        pick[:, a:b], use_reg[:, a:b] = chosen, has_reg
        ci, gj = np.nonzero(chosen >= 0)
        taken = chosen[ci, gj]
        once = st[taken, ci, gj] <= 2
        st[taken[once], ci[once], gj[once]] = 0
    pick_np, reg_np = pick, use_reg
    matched = pick_np >= 0
    slot_gt = gidx[order][np.arange(len(order))[None, :], pick_np.clip(min=0)]  # [C, L]
    res_gt = np.empty((num_s, len(rows)), dtype=np.int64)
    res_ign = np.empty((num_s, len(rows)), dtype=bool)
    res_gt[:, order] = np.where(matched, slot_gt, -1)
    res_ign[:, order] = matched & ~reg_np
    return res_gt, res_ign


# --- precision curves -----------------------------------------------------------------------------
def _precision(p: _Problem, gt: np.ndarray, ignored: np.ndarray, area: tuple[float, float]
               ) -> np.ndarray:
    """COCOeval's ``accumulate`` precision for each setting at one area range.

    Args:
        gt, ignored (ndarray[C, D]): from :func:`_match` at this area range.

    Returns:
        ndarray[C, R, K] float64: precision at the 101 recall thresholds per class, -1 for a
        class without (non-ignored) GT in the range.
    """
    lo, hi = area
    num_k, num_r = len(p.cat_ids), len(RECALL_THRESHOLDS)
    in_range = (p.g_area >= lo) & (p.g_area <= hi)
    npig = np.bincount(p.g_cls[~p.g_crowd & in_range], minlength=num_k)  # per class
    order = p.accumulate_order
    cls = p.d_cls[order]
    seg_start = np.searchsorted(cls, np.arange(num_k))
    seg_end = np.searchsorted(cls, np.arange(num_k), side="right")
    out_of_range = ((p.d_area < lo) | (p.d_area > hi))[order]
    thr = RECALL_THRESHOLDS
    out = np.empty((gt.shape[0], num_r, num_k))
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(gt.shape[0]):  # one setting at a time: arrays of D, not C x D
            matched = gt[c, order] >= 0
            skip = ignored[c, order] | (~matched & out_of_range)
            tp, fp = matched & ~skip, ~matched & ~skip
            tp_cum, fp_cum = np.r_[0, np.cumsum(tp)], np.r_[0, np.cumsum(fp)]
            base_tp, base_fp = tp_cum[seg_start], fp_cum[seg_start]  # before each class
            tp_in = (tp_cum[1:] - base_tp[cls]).astype(np.float64)
            fp_in = (fp_cum[1:] - base_fp[cls]).astype(np.float64)
            pr = tp_in / (fp_in + tp_in + np.spacing(1))
            total_tp = tp_cum[seg_end] - base_tp
            # searchsorted(rc, thr, "left") with rc = tp / npig: the first detection where the
            # running TP count reaches n = min{n : n / npig >= thr}
            n = _tp_needed(thr, npig)  # [K, R]
            valid = (npig[:, None] > 0) & (n <= total_tp[:, None]) & \
                (seg_end > seg_start)[:, None]
            tp_pos = np.flatnonzero(tp)
            nth = (base_tp[:, None] + n.clip(min=1).astype(np.int64) - 1).clip(
                0, max(len(tp_pos) - 1, 0))
            pos = np.where(n == 0, seg_start[:, None], tp_pos[nth] if len(tp_pos) else 0)
            # precision at pos made monotone: max of pr over [pos, segment end). One reduceat
            # over the pieces between consecutive positions, then a running max from the right.
            end = seg_end[:, None]
            idx = np.concatenate([np.where(valid, pos, end), end], axis=1)  # [K, R + 1]
            piece = np.maximum.reduceat(np.r_[pr, 0.0], idx.ravel()).reshape(num_k, num_r + 1)
            piece = np.where(valid, piece[:, :num_r], 0.0)
            q = np.maximum.accumulate(piece[:, ::-1], axis=1)[:, ::-1]
            out[c] = np.where(npig[:, None] > 0, q, -1.0).T
    return out


def _tp_needed(thr: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """min{n : n / npig >= thr} in float64 (the division COCOeval's recall makes), per class
    and recall threshold: ndarray [K, R] (float). ceil(thr * npig) is off by one now and then
    (npig 20, thr .95: 19, though 19 / 20 < .95000000000000001), hence the two corrections."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n = np.ceil(thr[None, :] * npig[:, None])
        n = np.where((n > 0) & ((n - 1) / npig[:, None] >= thr[None, :]), n - 1, n)
        return np.where(n / npig[:, None] < thr[None, :], n + 1, n)


def error_analysis(coco_gt, results, max_dets: int = 100) -> dict:
    """The error breakdown of ``results`` against ``coco_gt`` (see the module docstring).

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` (or its ``dataset`` dict); categories may carry a
            ``supercategory`` (without one a class has no siblings: ``Sim`` equals ``Loc``).
        results: array [N, 7] (image_id, x, y, w, h, score, category_id) or COCO result dicts.
        max_dets: detections per image and class, as COCOeval's ``maxDets[-1]``.

    Returns:
        dict with ``precision`` (ndarray [7, R=101, K, A=4]: ``ERROR_TYPES`` x recall thresholds
        x classes x ``AREAS``; -1 where a class has no GT in the area range), ``curves``
        (ndarray [7, A, R]: mean over the classes with GT), ``ap`` ({area: {type: AP}}, -1.0
        where no class has GT), ``cat_ids``, ``class_names``, ``recall_thresholds``.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        # an untrained model decodes inf/NaN boxes (kept, as the reference keeps them): their
        # IoUs are NaN and match nothing, without numpy's warnings in a report's stderr
        return _error_analysis(coco_gt, results, max_dets)


def _error_analysis(coco_gt, results, max_dets: int) -> dict:
    p = _Problem(coco_gt, results, max_dets)
    num_k = len(p.cat_ids)
    prec = np.empty((len(ERROR_TYPES), len(RECALL_THRESHOLDS), num_k, len(AREAS)))
    # every (setting, area) pair in one matching pass: the IoU tables are built once
    pairs = [(t, f, rng) for rng in AREA_RANGES for _, t, f in _SETTINGS]
    gt, ign = _match(p, pairs)
    n = len(_SETTINGS)
    for a, rng in enumerate(AREA_RANGES):
        prec[:5, :, :, a] = _precision(p, gt[a * n:(a + 1) * n], ign[a * n:(a + 1) * n], rng)
    has_gt = prec[0] > -1  # [R, K, A], the same for every row
    prec[5] = np.where(has_gt, (prec[4] > 0).astype(np.float64), -1.0)
    prec[6] = np.where(has_gt, 1.0, -1.0)
    counted = has_gt[0]  # [K, A]
    curves = np.full((len(ERROR_TYPES), len(AREAS), len(RECALL_THRESHOLDS)), -1.0)
    ap = {}
    for a, name in enumerate(AREAS):
        k = counted[:, a]
        if k.any():
            curves[:, a] = prec[:, :, k, a].mean(axis=2)
        ap[name] = {t: float(curves[i, a].mean()) if k.any() else -1.0
                    for i, t in enumerate(ERROR_TYPES)}
    return {"precision": prec, "curves": curves, "ap": ap, "cat_ids": p.cat_ids.tolist(),
            "class_names": p.names, "recall_thresholds": RECALL_THRESHOLDS}


def errors_summary(analysis: dict) -> dict[str, dict[str, float]]:
    """The plain-float part of :func:`error_analysis` for ``metrics.jsonl``: ``{area: {type:
    AP}}`` with ``AREAS`` x ``ERROR_TYPES``."""
    return {a: dict(v) for a, v in analysis["ap"].items()}


def detection_outcomes(coco_gt, results, iou: float = 0.5, max_dets: int = 100) -> dict:
    """What COCOeval made of each detection at one IoU threshold (all areas, ``max_dets``).

    Returns:
        dict of ndarrays [N] over the rows of ``results``: ``tp`` (matched a GT box), ``fp``
        (matched none), ``counted`` (tp or fp: false for rows COCOeval ignores: a crowd box's
        match, beyond the ``max_dets`` best of its image and class, unknown image or class) and
        ``gt`` (the matched annotation's index in ``coco_gt.dataset["annotations"]``, -1).
    """
    p = _Problem(coco_gt, results, max_dets)
    gt, ign = _match(p, [(iou, "none", AREA_RANGES[0])])
    n = p.num_results
    tp, fp = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    matched = gt[0] >= 0
    lo, hi = AREA_RANGES[0]
    tp[p.d_row] = matched & ~ign[0]
    fp[p.d_row] = ~matched & (p.d_area >= lo) & (p.d_area <= hi)
    out_gt = np.full(n, -1, dtype=np.int64)
    out_gt[p.d_row[matched]] = p.g_ann[gt[0][matched]]
    return {"tp": tp, "fp": fp, "counted": tp | fp, "gt": out_gt}


# --- tables and figures -------------------------------------------------------------------------
COST_NAMES = ("AP75", "AP50", "Loc", "Sim", "Oth", "BG", "FN")


def error_costs(ap: dict[str, float]) -> dict[str, float]:
    """One area's ``{type: AP}`` -> AP75, AP50 and what each error type costs: the AP gained by
    forgiving it (``Loc`` = AP(Loc) - AP(C50), ``Sim`` = AP(Sim) - AP(Loc), ...). NaN when the
    area has no GT."""
    if ap["C75"] < 0:
        return dict.fromkeys(COST_NAMES, math.nan)
    out = {"AP75": ap["C75"], "AP50": ap["C50"]}
    for prev, cur in zip(ERROR_TYPES[1:-1], ERROR_TYPES[2:]):
        out[cur] = ap[cur] - ap[prev]
    return out


def error_table(errors: dict[str, dict[str, float]]):
    """``{area: {type: AP}}`` (an eval line's ``errors``) -> DataFrame, areas x
    :func:`error_costs`."""
    # lazy: only the notebooks' table helpers need pandas (a second to import)
    import pandas as pd

    return pd.DataFrame({area: error_costs(ap) for area, ap in errors.items()}).T


_COLOURS = ((1.0, 1.0, 1.0), (0.31, 0.51, 0.74), (0.75, 0.31, 0.30), (0.36, 0.90, 0.38),
            (0.50, 0.39, 0.64), (1.0, 0.6, 0.0))  # mmdetection's band colours after C75


def plot_error_breakdown(analysis: dict, area: str = "all", ax=None, title: str | None = None):
    """COCO's stacked PR areas for one size (:func:`error_analysis`'s mean curves): each band is
    what forgiving that error adds."""
    # lazy: only the figure helpers need matplotlib's pyplot or canvas
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    a = AREAS.index(area)
    rs = analysis["recall_thresholds"]
    ap = analysis["ap"][area]
    if ap["C75"] < 0:
        ax.text(0.5, 0.5, f"no GT of size {area}", ha="center", va="center")
    else:
        below = np.zeros_like(rs)
        for k, name in enumerate(ERROR_TYPES):
            colour = (0.85, 0.85, 0.85) if k == 0 else _COLOURS[k - 1]
            top = analysis["curves"][k, a]
            ax.fill_between(rs, below, top, color=colour, label=f"[{ap[name]:.3f}] {name}",
                            edgecolor="black", linewidth=0.4)
            below = top
        ax.legend(loc="upper right", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision",
           title=title or f"errors, {area} sizes")
    return ax


def plot_error_trends(runs, area: str = "all", axes=None):
    """:func:`error_costs` over epochs, one panel per quantity and one line per run.

    Args:
        runs: ``ssdwb.runs.reader.Run`` objects; eval lines without ``errors`` are skipped.
    """
    # lazy: only the figure helpers need matplotlib's pyplot or canvas
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, len(COST_NAMES), figsize=(2.5 * len(COST_NAMES), 2.8),
                               sharex=True)
    for r in runs:
        evals = [e for e in r.evals if "errors" in e]
        costs = [error_costs(e["errors"][area]) for e in evals]
        for ax, name in zip(axes, COST_NAMES):
            ax.plot([e["epoch"] for e in evals], [c[name] for c in costs], "o-", ms=3,
                    label=r.name)
    # lazy: only the figure helpers need matplotlib's pyplot or canvas
    from matplotlib.ticker import MaxNLocator

    for ax, name in zip(axes, COST_NAMES):
        ax.set(title=name if name.startswith("AP") else f"{name} error", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"AP, {area} sizes")
    axes[-1].legend(fontsize=7)
    return axes
