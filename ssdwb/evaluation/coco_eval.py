"""COCO box evaluation: the COCO results format, and ``coco_eval`` on two backends. (The
inference that produces the detections is ``ssdwb.evaluation.inference``.)

``coco_eval(coco_gt, results, backend)``: ``"faster-coco-eval"`` (C++, the default) or
``"pycocotools"`` (the reference's ``COCOeval``); both give the same 12 numbers (tests check it
to 1e-4). The headline is ``mAP`` = ``stats[0]``, box mAP@[.5:.95].

``evaluate`` also returns COCO's error analysis (``ssdwb.evaluation.error_analysis``: AP at IoU .75, .5,
then with localisation, similar-class, other-class, background and missed-object errors
forgiven, per object size) in its stats as ``stats["errors"]`` = ``{area: {type: AP}}``, plain
floats, so each eval line of ``metrics.jsonl`` carries it. It costs a fraction of the COCO
evaluation itself (measured: docs/performance.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["STAT_KEYS", "coco_eval", "coco_eval_details", "detections_to_coco", "array_to_results",
           "results_json"]

STAT_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
             "ARl")


@contextlib.contextmanager
def _quiet():
    """The evaluators' prints, and numpy's warnings on the NaN/inf boxes an untrained model can
    decode (the box area of loadRes): a report must not show them as a red stderr block."""
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"):
        yield


def coco_eval(coco_gt, results, backend: str = "faster-coco-eval") -> dict[str, float]:
    """COCO box metrics of ``results`` against ``coco_gt``.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` (or its ``dataset`` dict).
        results: list of ``{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"}``
            or a float array [N, 7] (image_id, x, y, w, h, score, category_id).
        backend: ``"faster-coco-eval"`` or ``"pycocotools"``.

    Returns:
        dict with ``STAT_KEYS`` (all 0.0 when there are no results). Every image of ``coco_gt``
        counts, as in the reference.
    """
    dataset = coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset
    if len(results) == 0:
        return dict.fromkeys(STAT_KEYS, 0.0)
    if isinstance(results, np.ndarray):  # both backends' loadRes take the [N, 7] array itself
        results = np.ascontiguousarray(results, dtype=np.float64)
    quiet = _quiet()
    if backend == "pycocotools":
        # lazy: each COCO backend is imported only when it is the one asked for
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with quiet:
            gt = COCO()
            gt.dataset = dataset
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    elif backend == "faster-coco-eval":
        # lazy: each COCO backend is imported only when it is the one asked for
        from faster_coco_eval import COCO, COCOeval_faster

        with quiet:
            gt = COCO(dataset)
            ev = COCOeval_faster(gt, gt.loadRes(results), iouType="bbox",
                                 print_function=lambda *a, **k: None)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
    else:
        raise ValueError(f"backend must be 'faster-coco-eval' or 'pycocotools', not {backend!r}")
    return {k: float(v) for k, v in zip(STAT_KEYS, ev.stats[:12])}


def coco_eval_details(coco_gt, results) -> dict:
    """The reference ``COCOeval`` (pycocotools) kept open for plots: per-class AP and
    precision-recall curves, beyond the 12 summary numbers.

    Returns:
        dict with ``stats`` (as :func:`coco_eval`), ``precision`` (ndarray [T, R, K, A, M]:
        IoU thresholds x 101 recall points x classes x area ranges (all, small, medium, large)
        x maxDets (1, 10, 100); -1 where a class has no GT), ``iou_thresholds``,
        ``recall_thresholds``, ``cat_ids``, ``class_names`` and ``per_class_ap`` (name ->
        AP@[.5:.95] at maxDets 100, NaN for a class without GT).
    """
    # lazy: each COCO backend is imported only when it is the one asked for
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset
    if isinstance(results, np.ndarray):
        results = np.ascontiguousarray(results, dtype=np.float64)
    with _quiet():
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        cat_ids = sorted(gt.getCatIds())
        names = [gt.cats[c]["name"] for c in cat_ids]
        if len(results) == 0:  # nothing detected: AP 0 where there is GT, NaN where there is none
            with_gt = {a["category_id"] for a in dataset.get("annotations", [])}
            return {"stats": dict.fromkeys(STAT_KEYS, 0.0),
                    "precision": np.full((10, 101, len(cat_ids), 4, 3), -1.0),
                    "iou_thresholds": np.linspace(0.5, 0.95, 10),
                    "recall_thresholds": np.linspace(0, 1, 101), "cat_ids": cat_ids,
                    "class_names": names,
                    "per_class_ap": {n: 0.0 if c in with_gt else float("nan")
                                     for c, n in zip(cat_ids, names)}}
        ev = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"]
    per_class = {}
    for k, name in enumerate(names):
        p = prec[:, :, k, 0, -1]
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return {"stats": {k: float(v) for k, v in zip(STAT_KEYS, ev.stats[:12])}, "precision": prec,
            "iou_thresholds": ev.params.iouThrs, "recall_thresholds": ev.params.recThrs,
            "cat_ids": cat_ids, "class_names": names, "per_class_ap": per_class}


def array_to_results(arr: np.ndarray) -> list[dict]:
    """Array [N, 7] (image_id, x, y, w, h, score, category_id) -> COCO results (dicts)."""
    return [{"image_id": int(r[0]), "bbox": [float(r[1]), float(r[2]), float(r[3]), float(r[4])],
             "score": float(r[5]), "category_id": int(r[6])} for r in arr]


_RESULT_ROW = '{"image_id": %d, "bbox": [%r, %r, %r, %r], "score": %r, "category_id": %d}'


def results_json(arr: np.ndarray) -> str:
    """Array [N, 7] -> the JSON text of its COCO results on one line: the bytes
    ``json.dumps(array_to_results(arr))`` gives (``%r`` is the shortest round-trip repr, as
    json's), in half its time, with no dict per row (``bench/bench_detections.py``)."""
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        # An untrained model's decoded boxes can overflow (exp) to inf and NaN, which the
        # reference keeps. %r would write them as nan/inf, which json cannot read back; json
        # writes NaN/Infinity, which it can.
        return json.dumps(array_to_results(arr))
    rows = map(tuple, arr.tolist())
    return "[" + ", ".join([_RESULT_ROW % r for r in rows]) + "]"


def detections_to_coco(detections, image_ids: torch.Tensor, orig_sizes: torch.Tensor,
                       label_to_cat: dict[int, int]) -> np.ndarray:
    """Per-image ``(boxes_ltrb fractions, labels, scores)`` -> array [N, 7] in COCO's pixel xywh.

    Args:
        image_ids (Tensor[B]), orig_sizes (Tensor[B, 2]) as (h, w).
    """
    counts = [len(d[2]) for d in detections]
    if sum(counts) == 0:
        return np.zeros((0, 7))
    boxes = torch.cat([d[0] for d in detections]).double().cpu()
    labels = torch.cat([d[1] for d in detections]).cpu()
    scores = torch.cat([d[2] for d in detections]).double().cpu()
    rep = torch.repeat_interleave(torch.arange(len(detections)), torch.tensor(counts))
    h, w = orig_sizes[rep, 0].double(), orig_sizes[rep, 1].double()
    lut = torch.zeros(max(label_to_cat) + 1, dtype=torch.float64)
    lut[list(label_to_cat)] = torch.tensor(list(label_to_cat.values()), dtype=torch.float64)
    out = torch.stack([image_ids[rep].double(), boxes[:, 0] * w, boxes[:, 1] * h,
                       (boxes[:, 2] - boxes[:, 0]) * w, (boxes[:, 3] - boxes[:, 1]) * h,
                       scores, lut[labels]], 1)
    return out.numpy()


