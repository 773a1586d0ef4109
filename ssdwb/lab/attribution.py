"""Which default boxes the detections come from, and which GT boxes no default box catches.

``postprocess(..., return_index=True)`` (and ``evaluate.infer(..., with_priors=True)``) give
each detection its prior: the index of the default box it was decoded from. Here that index
becomes (level, box type, row, column) in ``DefaultBoxes``' layout (level, then box type, then
row, then column), and the detections of each level and box type are scored:

* TP / FP: what COCOeval made of each detection at IoU .5, all sizes, 100 per image and class
  (``error_analysis.detection_outcomes``: the matching of all detections together, so a level's
  duplicate of another level's hit is a FP);
* AP: COCO mAP@[.5:.95] and AP50 of that level's (box type's) detections alone, as if the other
  levels had detected nothing.

GT boxes no level catches: a GT box whose best IoU with any default box is at most 0.5 gets no
positive prior in the reference encoder but its forced best match (``BoxCoder.encode_batch``),
whatever the network learns. Counted per COCO size (annotation ``area``, COCOeval's bins), with
how many of them were detected anyway (a TP at IoU .5).
"""

from __future__ import annotations

import numpy as np
import torch

from ssdwb.data import build_loader
from ssdwb.evaluation.coco_eval import coco_eval
from ssdwb.evaluation.error_analysis import AREA_RANGES, AREAS, detection_outcomes
from ssdwb.evaluation.inference import infer
from ssdwb.runs.reader import load_run
from ssdwb.runs.trained import load_trained
from ssdwb.runtime import resolve_amp
from ssdwb.ssd.anchors import DefaultBoxes, coverage

__all__ = ["prior_cells", "box_type_names", "attribution", "uncaught_gt", "infer_run",
           "plot_attribution"]


def prior_cells(dboxes: DefaultBoxes, priors) -> dict[str, np.ndarray]:
    """Prior indices -> where the default boxes are.

    Args:
        priors (array [N] int): indices into ``dboxes`` (0..P-1).

    Returns:
        dict of int64 ndarrays [N]: ``level``, ``box_type`` (index within the level, see
        :func:`box_type_names`), ``row``, ``col`` (the feature-map cell) and ``cell``
        (row * feature size + col).
    """
    priors = np.asarray(priors, dtype=np.int64)
    starts = np.array([lv.start for lv in dboxes.levels])
    sides = np.array([lv.feature_size for lv in dboxes.levels])
    if priors.size and (priors.min() < 0 or priors.max() >= dboxes.num_priors):
        raise ValueError(f"prior indices must be in 0..{dboxes.num_priors - 1}")
    level = np.searchsorted(starts, priors, side="right") - 1
    local = priors - starts[level]
    side = sides[level]
    box_type, cell = np.divmod(local, side * side)
    row, col = np.divmod(cell, side)
    return {"level": level, "box_type": box_type, "row": row, "col": col, "cell": cell}


def box_type_names(dboxes: DefaultBoxes) -> list[list[str]]:
    """Per level, a name per box type from its (w, h): ``"1:1"`` for the square ``s_k``,
    ``"1:1 s'"`` for the square ``sqrt(s_k * s_k+1)``, ``"2:1"`` / ``"1:2"`` ... (w:h) for the
    aspect-ratio pairs (``DefaultBoxes``' order); ``"WxH"`` in pixels for a design that lists
    its box types (a fitted one)."""
    names = []
    for lv in dboxes.levels:
        if dboxes.box_types is not None:  # a fitted design: each type by its size in pixels
            row = [f"{w:.3g}x{h:.3g}" for w, h in dboxes.box_types[lv.index]]
            names.append([n if row.count(n) == 1 else f"{n} #{t}" for t, n in enumerate(row)])
            continue
        row = []
        for t, (w, h) in enumerate(lv.sizes):
            if t < 2:
                row.append("1:1" if t == 0 else "1:1 s'")
            else:
                r = w / h
                row.append(f"{r:.2g}:1" if r >= 1 else f"1:{1 / r:.2g}")
        names.append(row)
    return names


def attribution(coco_gt, results: np.ndarray, priors, dboxes: DefaultBoxes,
                ap: bool = True, backend: str = "faster-coco-eval") -> dict:
    """TP/FP counts and AP per feature-map level and per box type.

    Args:
        coco_gt: the val ``COCO`` (or its dataset dict).
        results (array [N, 7]): detections (image_id, x, y, w, h, score, category_id).
        priors (array [N]): each row's default box (``infer(..., with_priors=True)``).
        ap: also score each level's and box type's detections alone (one ``coco_eval`` each).

    Returns:
        dict with ``by_level`` and ``by_type`` (DataFrames: detections, TP, FP, precision (TP /
        (TP + FP)), and with ``ap`` mAP and AP50 of those detections alone), ``by_level_type``
        (DataFrame of TP and FP counts, level x box type), and the per-row arrays ``cells``
        (:func:`prior_cells`) and ``outcomes`` (``detection_outcomes`` at IoU .5).
    """
    # lazy: only the notebooks' table helpers need pandas (a second to import)
    import pandas as pd


    results = np.asarray(results, dtype=np.float64).reshape(-1, 7)
    priors = np.asarray(priors, dtype=np.int64)
    if len(priors) != len(results):
        raise ValueError(f"{len(results)} detections but {len(priors)} prior indices")
    cells = prior_cells(dboxes, priors)
    out = detection_outcomes(coco_gt, results, iou=0.5)
    names = box_type_names(dboxes)
    types = list(dict.fromkeys(n for row in names for n in row))  # distinct names, in order
    # (level, box type) -> index into `types`, looked up for all rows at once
    first_type = np.cumsum([0] + [len(row) for row in names])
    code = np.array([types.index(n) for row in names for n in row], dtype=np.int64)
    type_code = code[first_type[cells["level"]] + cells["box_type"]]
    levels = [f"{lv.index} ({lv.feature_size}x{lv.feature_size})" for lv in dboxes.levels]

    def table(masks, labels) -> pd.DataFrame:
        rows = {}
        for m, label in zip(masks, labels):
            tp, fp = int(out["tp"][m].sum()), int(out["fp"][m].sum())
            row = {"detections": int(m.sum()), "TP": tp, "FP": fp,
                   "precision": tp / (tp + fp) if tp + fp else float("nan")}
            if ap:
                stats = coco_eval(coco_gt, results[m], backend)
                row.update({"mAP": stats["mAP"], "AP50": stats["AP50"]})
            rows[label] = row
        return pd.DataFrame(rows).T.astype({"detections": int, "TP": int, "FP": int})

    by_level = table([cells["level"] == k for k in range(len(levels))], levels)
    by_type = table([type_code == t for t in range(len(types))], types)
    # TP and FP per (level, box type): one bincount each over level * T + type
    flat = cells["level"] * len(types) + type_code
    counts = {k: np.bincount(flat[out[k]], minlength=len(levels) * len(types)).reshape(
        len(levels), len(types)).astype(float) for k in ("tp", "fp")}
    present = np.zeros((len(levels), len(types)), dtype=bool)
    for k, row in enumerate(names):
        present[k, [types.index(n) for n in row]] = True
    index = pd.MultiIndex.from_product([levels, ["TP", "FP"]], names=["level", ""])
    grid = np.stack([np.where(present, counts["tp"], np.nan),
                     np.where(present, counts["fp"], np.nan)], 1).reshape(-1, len(types))
    by_level_type = pd.DataFrame(grid, index=index, columns=types).astype("Int64")
    return {"by_level": by_level, "by_type": by_type, "by_level_type": by_level_type,
            "cells": cells, "outcomes": out}


def uncaught_gt(coco_gt, dboxes: DefaultBoxes, outcomes: dict | None = None,
                iou_threshold: float = 0.5) -> dict:
    """The GT boxes no default box catches (best IoU <= ``iou_threshold``), by COCO size.

    GT boxes are taken as the val transform sees them: fractions of their image (the whole
    image is resized to the input). Crowd boxes are left out (COCOeval does not count them).

    Args:
        outcomes: ``detection_outcomes`` of the run's detections, to count the uncaught GT boxes
            that were detected anyway (a TP matched them).

    Returns:
        dict with ``table`` (DataFrame by size all/small/medium/large: GT boxes, uncaught,
        share uncaught, and with ``outcomes`` detected (of all) and uncaught detected),
        ``by_level`` (DataFrame: per level, GT boxes whose best default box is there, and how
        many of those are uncaught), and the per-GT arrays ``ann_index`` (index in the dataset's
        annotations), ``best_iou``, ``best_level``, ``area``, ``uncaught``, ``detected``.
    """
    # lazy: only the notebooks' table helpers need pandas (a second to import)
    import pandas as pd


    dataset = coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset
    sizes = {im["id"]: (im["width"], im["height"]) for im in dataset["images"]}
    anns = dataset.get("annotations", [])
    keep = [i for i, a in enumerate(anns) if not a.get("iscrowd", 0) and a["image_id"] in sizes]
    xywh = np.array([anns[i]["bbox"] for i in keep], dtype=np.float64).reshape(-1, 4)
    wh = np.array([sizes[anns[i]["image_id"]] for i in keep], dtype=np.float64).reshape(-1, 2)
    area = np.array([anns[i].get("area", anns[i]["bbox"][2] * anns[i]["bbox"][3]) for i in keep],
                    dtype=np.float64)
    # clipped to the image, as the dataset reader does
    frac = (np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) / np.tile(wh, 2)).clip(0, 1)
    cov = coverage(dboxes, torch.from_numpy(frac), iou_threshold)
    uncaught = ~cov["covered"].numpy()
    ann_index = np.array(keep, dtype=np.int64)
    detected = None
    if outcomes is not None:
        hit = np.zeros(len(anns), dtype=bool)
        hit[outcomes["gt"][outcomes["tp"]]] = True
        detected = hit[ann_index]
    rows = {}
    for name, (lo, hi) in zip(AREAS, AREA_RANGES):
        m = (area >= lo) & (area <= hi)
        n = int(m.sum())
        row = {"GT": n, "uncaught": int(uncaught[m].sum()),
               "share uncaught": float(uncaught[m].mean()) if n else float("nan")}
        if detected is not None:
            row["detected"] = int(detected[m].sum())
            row["uncaught detected"] = int((detected & uncaught)[m].sum())
        rows[name] = row
    best_level = cov["best_level"].numpy()
    by_level = pd.DataFrame({
        "GT (best default box here)": np.bincount(best_level, minlength=len(dboxes.levels)),
        "uncaught": np.bincount(best_level[uncaught], minlength=len(dboxes.levels))},
        index=[f"{lv.index} ({lv.feature_size}x{lv.feature_size})" for lv in dboxes.levels])
    return {"table": pd.DataFrame(rows).T, "by_level": by_level, "ann_index": ann_index,
            "best_iou": cov["best_iou"].numpy(), "best_level": best_level, "area": area,
            "uncaught": uncaught, "detected": detected}


def infer_run(run, device: str = "cpu", batch_size: int | None = None,
              data_dir: str | None = None) -> dict:
    """The detections of a run's ``checkpoint.pt`` on its val split, with their priors.

    The detection files of a run hold no prior index; this re-runs the evaluation's inference
    (``evaluate.infer``, with the run's amp and memory layout) from the checkpoint: the model of
    the run's last finished epoch. On the machine and device that trained it, the detections
    are those of the run's last ``detections_epochN.json``.

    Args:
        run: a ``ssdwb.runs.reader.Run`` (or its folder).
        batch_size: default the run's ``eval_batch_size``.
        data_dir: the dataset (default: the run's ``data_dir``).

    Returns:
        dict with ``epoch`` (the checkpoint's), ``results`` (array [N, 7]), ``priors`` (array
        [N] int64), ``dboxes`` and ``dataset`` (the val ``CocoDetection``).
    """

    run = load_run(run) if not hasattr(run, "path") else run
    trained = load_trained(run.path / "checkpoint.pt", device)
    ds = trained.val_dataset(data_dir)
    config = trained.config
    loader = build_loader(ds, batch_size or config.eval_batch_size, train=False, num_workers=0,
                          device=trained.device)
    # the run's precision and layout, as its evaluations had
    results, _, priors = infer(trained.with_layout(), loader, trained.coder, ds.label_to_cat,
                               trained.device, resolve_amp(config.amp, trained.device),
                               config.channels_last, with_priors=True)
    return {"epoch": trained.epoch, "results": results, "priors": priors,
            "dboxes": trained.dboxes, "dataset": ds}


def plot_attribution(table, title: str, axes=None):
    """TP / FP bars and, when scored, mAP / AP50 of one :func:`attribution` table."""
    # lazy: only the figure helpers need matplotlib's pyplot or canvas
    import matplotlib.pyplot as plt

    scored = "mAP" in table.columns
    if axes is None:
        _, axes = plt.subplots(1, 2 if scored else 1, figsize=(11 if scored else 5.5, 3.2),
                               squeeze=False)
        axes = axes[0]
    x = np.arange(len(table))
    axes[0].bar(x - 0.2, table["TP"].astype(float), 0.4, label="TP (IoU .5)")
    axes[0].bar(x + 0.2, table["FP"].astype(float), 0.4, label="FP")
    axes[0].set(xticks=x, title=f"{title}: detections", ylabel="count")
    axes[0].set_xticklabels(table.index, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    if scored:
        axes[1].bar(x - 0.2, table["mAP"].astype(float), 0.4, label="mAP@[.5:.95]")
        axes[1].bar(x + 0.2, table["AP50"].astype(float), 0.4, label="AP50")
        axes[1].set(xticks=x, title=f"{title}: its detections alone", ylabel="AP")
        axes[1].set_xticklabels(table.index, rotation=30, ha="right", fontsize=8)
        axes[1].legend(fontsize=8)
    return axes
