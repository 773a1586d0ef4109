"""Matplotlib helpers shared by the notebooks and reports. Each draws on an ``Axes`` it is given
(or makes a figure) and returns it, so notebooks stay a few lines per picture.

Boxes are ``(x1, y1, x2, y2)``; ``fractions=True`` means fractions of the image, as the data
pipeline and default boxes use them.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from ssdwb.data.coco import to_rgb
from ssdwb.data.transforms import MEAN, STD

__all__ = ["to_numpy_image", "draw_boxes", "show_sample", "draw_default_boxes", "plot_coverage",
           "plot_training", "plot_map", "plot_class_ap", "plot_pr_curves", "plot_size_ap",
           "plot_map_curves", "plot_data_stats"]

_COLOURS = plt.get_cmap("tab20").colors
MLPERF_TARGET = 0.23  # COCO box mAP@[.5:.95] on val2017 that ends an MLPerf SSD run


def to_numpy_image(image) -> np.ndarray:
    """PIL image, uint8 Tensor[3, H, W] or normalised float Tensor[3, H, W] -> uint8 [H, W, 3]."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dtype != torch.uint8:  # undo the normalisation for display

            t = t * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
            t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        return t.permute(1, 2, 0).numpy()
    return np.asarray(to_rgb(image))


def draw_boxes(ax, boxes, labels=None, scores=None, names=None, fractions: bool = True,
               size: tuple[int, int] | None = None, colour=None, linestyle: str = "-",
               linewidth: float = 1.5, text: bool = True):
    """Draws boxes (Tensor/array [N, 4] x1y1x2y2) on ``ax``. ``size`` is the image's (h, w) when
    ``fractions`` (taken from the axes' image otherwise)."""
    boxes = np.asarray(torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4))
    h = w = None
    if size is not None:
        h, w = size
    elif ax.images:
        h, w = ax.images[0].get_array().shape[:2]
    if fractions:
        if h is None:
            raise ValueError("fractions=True needs size=(h, w) or an image on the axes")
        boxes = boxes * np.array([w, h, w, h])
    if h is not None:  # an untrained model's boxes can be huge: draw them clipped to the view
        boxes = np.clip(boxes, [-0.25 * w, -0.25 * h] * 2, [1.25 * w, 1.25 * h] * 2)
    labels = None if labels is None else np.asarray(torch.as_tensor(labels)).reshape(-1)
    scores = None if scores is None else np.asarray(torch.as_tensor(scores)).reshape(-1)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        c = colour or (_COLOURS[int(labels[i]) % len(_COLOURS)] if labels is not None else "lime")
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c,
                                   linewidth=linewidth, linestyle=linestyle))
        if text and labels is not None:
            name = names.get(int(labels[i]), str(int(labels[i]))) if names else str(int(labels[i]))
            s = name if scores is None else f"{name} {scores[i]:.2f}"
            ax.text(x1, y1, s, fontsize=7, color="white", va="bottom", clip_on=True,
                    bbox={"facecolor": c, "alpha": 0.7, "pad": 1, "linewidth": 0})
    return ax


def show_sample(ax, image, target: dict | None = None, names=None, title: str | None = None):
    """An image with its target's boxes (fractions) and labels."""
    img = to_numpy_image(image)
    ax.imshow(img)
    if target is not None:
        draw_boxes(ax, target["boxes"], target["labels"], names=names, size=img.shape[:2])
    ax.set_xlim(-0.5, img.shape[1] - 0.5)  # boxes drawn later never widen the view
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    ax.set_autoscale_on(False)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def draw_default_boxes(ax, dboxes, level: int, cell: tuple[int, int] | None = None,
                       image=None, box_type: int | None = None, every: int = 0):
    """The default boxes of one level: all types at ``cell`` (row, col), plus the level's
    grid of centres; ``every > 0`` also draws one box type at every ``every``-th cell."""
    lv = dboxes.levels[level]
    size = 300 if image is None else to_numpy_image(image).shape[0]
    if image is not None:
        ax.imshow(to_numpy_image(image))
    else:
        ax.imshow(np.full((size, size, 3), 235, dtype=np.uint8))
    h = w = size
    boxes = dboxes.view(level, order="ltrb")  # [T, F, F, 4]
    f = lv.feature_size
    centres = dboxes.view(level, 0, "xywh")[..., :2].reshape(-1, 2).numpy()
    ax.scatter(centres[:, 0] * w, centres[:, 1] * h, s=2 if f > 10 else 6, c="k", alpha=0.4)
    if every:
        t = 0 if box_type is None else box_type
        grid = boxes[t, ::every, ::every].reshape(-1, 4)
        draw_boxes(ax, grid, fractions=True, size=(h, w), colour="grey", linewidth=0.6,
                   text=False)
    if cell is not None:
        r, c = min(cell[0], f - 1), min(cell[1], f - 1)
        types = range(lv.num_types) if box_type is None else [box_type]
        for t in types:
            draw_boxes(ax, boxes[t, r, c].reshape(1, 4), fractions=True, size=(h, w),
                       colour=_COLOURS[(2 * t) % len(_COLOURS)], linewidth=2, text=False)
    ax.set_xlim(-0.25 * w, 1.25 * w)
    ax.set_ylim(1.25 * h, -0.25 * h)
    ax.set_title(f"level {level}: {f}x{f} cells, step {lv.step:g}px, {lv.num_types} box types",
                 fontsize=9)
    return ax


def plot_coverage(results: dict[str, dict], bins: int = 40, axes=None):
    """Side by side per design: histogram of each GT box's best IoU, and the covered share by
    object size. ``results``: ``{design name: anchors.coverage_summary(...)}``."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for name, res in results.items():
        axes[0].hist(res["best_iou"].numpy(), bins=bins, range=(0, 1), histtype="step",
                     linewidth=1.5, label=name)
    axes[0].axvline(0.5, color="k", linestyle=":")
    axes[0].set_xlabel("best IoU of a GT box with any default box")
    axes[0].set_ylabel("GT boxes")
    axes[0].legend(fontsize=8)
    keys = ["all", "small", "medium", "large"]
    width = 0.8 / max(1, len(results))
    for k, (name, res) in enumerate(results.items()):
        vals = [res["share"][key] for key in keys]
        xs = np.arange(len(keys)) + k * width
        bars = axes[1].bar(xs, vals, width=width, label=name)
        for b, n in zip(bars, [res["count"][key] for key in keys]):
            axes[1].text(b.get_x() + b.get_width() / 2, b.get_height(), f"{b.get_height():.2f}\n"
                         f"n={n}", ha="center", va="bottom", fontsize=7)
    axes[1].set_xticks(np.arange(len(keys)) + width * (len(results) - 1) / 2, keys)
    axes[1].set_ylim(0, 1.15)
    axes[1].set_ylabel("share with best IoU > 0.5")
    axes[1].legend(fontsize=8)
    return axes


def plot_training(steps: list[dict], axes=None):
    """Loss and learning rate against iterations (``Run.steps``)."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    it = [s["iteration"] for s in steps]
    axes[0].plot(it, [s["loss"] for s in steps])
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss")
    axes[0].set_title("training loss (mean per log interval)", fontsize=9)
    axes[1].plot(it, [s["lr"] for s in steps], color="tab:orange")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("learning rate")
    axes[1].set_title("learning rate (warmup, decays)", fontsize=9)
    return axes


def plot_map(evals: list[dict], target: float = MLPERF_TARGET, ax=None, label: str | None = None,
             stop_at: float | None = None):
    """mAP@[.5:.95] (and AP50) per eval epoch against the MLPerf target line (``target``), and
    the run's own stopping threshold ``stop_at`` when it is another reachable value."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    ep = [e["epoch"] for e in evals]
    ax.plot(ep, [e["mAP"] for e in evals], "o-", label=label or "mAP@[.5:.95]")
    if label is None:
        ax.plot(ep, [e["AP50"] for e in evals], "s--", alpha=0.6, label="AP50")
    ax.axhline(target, color="red", linestyle=":", label=f"MLPerf target {target}")
    if stop_at is not None and stop_at < 1 and stop_at != target:
        ax.axhline(stop_at, color="grey", linestyle="--", label=f"run stops at {stop_at}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("COCO box AP")
    top = [target, stop_at if stop_at is not None and stop_at < 1 else 0]
    ax.set_ylim(0, min(1.0, max([t * 1.2 for t in top]
                                + [e.get("AP50", e["mAP"]) * 1.1 for e in evals])))
    ax.legend(fontsize=8)
    return ax


def plot_map_curves(runs, ax=None, target: float | None = None):
    """mAP per eval epoch of several runs (``ssdwb.runs.reader.Run``) overlaid; the target
    line once a run comes within half of it (below that it would squash the curves), else the
    target is named in the title."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8))
    for r in runs:
        ax.plot([e["epoch"] for e in r.evals], [e["mAP"] for e in r.evals], "o-", label=r.name)
    if target is None:  # the runs' own threshold when it is reachable, else MLPerf's
        own = runs[0].config.get("target_map", MLPERF_TARGET) if runs else MLPERF_TARGET
        target = own if own < 1 else MLPERF_TARGET
    best = max((e["mAP"] for r in runs for e in r.evals), default=0.0)
    if best >= target / 2:
        ax.axhline(target, color="red", linestyle=":", label=f"target {target}")
    else:
        ax.set_title(f"target {target}, off this scale", fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP@[.5:.95]")
    ax.legend(fontsize=8)
    return ax


def plot_class_ap(per_class: dict[str, float], ax=None, title: str = "AP@[.5:.95] per class"):
    """Horizontal bars, best class on top; classes never evaluated (nan) are shown as 0."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.25 * len(per_class) + 1))
    items = sorted(per_class.items(), key=lambda kv: -1 if math.isnan(kv[1]) else kv[1])
    ax.barh([k for k, _ in items], [0 if math.isnan(v) else v for _, v in items])
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    return ax


def plot_pr_curves(details: dict, iou: float = 0.5, names: list[str] | None = None, ax=None):
    """Precision-recall curves per class at one IoU threshold (``evaluate.coco_eval_details``)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.5))
    t = int(np.argmin(np.abs(details["iou_thresholds"] - iou)))
    rec = details["recall_thresholds"]
    for k, name in enumerate(details["class_names"]):
        if names and name not in names:
            continue
        p = details["precision"][t, :, k, 0, -1]  # all areas, maxDets=100
        if (p < 0).all():
            continue
        ax.plot(rec, np.where(p < 0, np.nan, p), label=name, color=_COLOURS[k % len(_COLOURS)])
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"precision-recall per class at IoU {details['iou_thresholds'][t]:.2f}",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_size_ap(stats: dict[str, float], ax=None):
    """AP and AR by COCO object size (small < 32^2 <= medium < 96^2 <= large pixels)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    sizes = ["small", "medium", "large"]
    x = np.arange(3)
    ax.bar(x - 0.2, [stats["APs"], stats["APm"], stats["APl"]], 0.4, label="AP@[.5:.95]")
    ax.bar(x + 0.2, [stats["ARs"], stats["ARm"], stats["ARl"]], 0.4, label="AR@100")
    ax.set_xticks(x, sizes)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("by object size (-1 = no such objects)", fontsize=9)
    return ax


def plot_data_stats(stats: dict, axes=None):
    """A dataset's first look (``ssdwb.lab.data_stats.dataset_stats``) in three panels: boxes per
    class, images by objects per image, and boxes per COCO size bin with the reference default
    boxes' coverage (best IoU > 0.5) written on each bar. Returns the axes."""
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    classes = stats["classes"]
    axes[0].barh([c["name"] for c in classes][::-1], [c["boxes"] for c in classes][::-1],
                 color=_COLOURS[0])
    axes[0].set_xlabel("boxes")
    axes[0].set_title(f"{stats['name']} {stats['split']}: boxes per class", fontsize=10)
    hist = stats["objects_histogram"]
    axes[1].bar(np.arange(len(hist)), hist, color=_COLOURS[2])
    axes[1].set_xlabel("objects in the image")
    axes[1].set_ylabel("images")
    axes[1].set_title(f"objects per image (mean {stats['objects_per_image']['mean']:.2f})",
                      fontsize=10)
    keys = ["small", "medium", "large"]
    bars = axes[2].bar(keys, [stats["sizes"][k]["boxes"] for k in keys], color=_COLOURS[4])
    for b, k in zip(bars, keys):
        cov = stats["sizes"][k]["coverage"]
        axes[2].text(b.get_x() + b.get_width() / 2, b.get_height(),
                     "-" if math.isnan(cov) else f"covered {cov:.2f}", ha="center",
                     va="bottom", fontsize=8)
    axes[2].set_ylabel("boxes")
    axes[2].set_title("boxes per COCO size (reference anchors' coverage)", fontsize=10)
    return axes


def plot_sweep(rows: list[dict], keys: list[str], target: float | None = None):
    """Final and best mAP against each swept parameter: one column per key in ``keys``, final
    mAP above, best below, a line per combination of the other keys' values.

    Args:
        rows: one dict per run with each key's value (strings, as the grid lists them),
            ``final_map`` and ``best_map`` (None for a run with no eval yet).
        keys: the swept config keys, in grid order.
        target: the target mAP, drawn once the runs come within half of it.
    """
    fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 6), squeeze=False)
    for col, key in enumerate(keys):
        values = list(dict.fromkeys(r[key] for r in rows))
        try:  # numbers on a numeric axis, anything else one tick per value
            xs = {v: float(v) for v in values}
        except ValueError:
            xs = {v: i for i, v in enumerate(values)}
        others = [k for k in keys if k != key]
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault(tuple(r[k] for k in others), []).append(r)
        for row, metric in enumerate(("final_map", "best_map")):
            ax = axes[row][col]
            for group, members in groups.items():
                pts = sorted((xs[r[key]], r[metric]) for r in members if r[metric] is not None)
                label = ", ".join(f"{k}={v}" for k, v in zip(others, group)) or "mAP"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
            shown = [r[metric] for r in rows if r[metric] is not None]
            if target is not None and shown and max(shown) >= target / 2:  # else it squashes them
                ax.axhline(target, color="red", linestyle=":", linewidth=1)
            ax.set_xticks(sorted(xs.values()), [v for v, _ in sorted(xs.items(),
                                                                    key=lambda kv: kv[1])])
            ax.set_xlabel(key)
            ax.set_ylabel(f"{metric.split('_')[0]} mAP@[.5:.95]")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
