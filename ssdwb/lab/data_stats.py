"""A first look at a dataset, before ``ssdwb anchors fit``: ``ssdwb data stats DATA``.

Per class: boxes and images; objects per image (mean, median, max, images without objects);
boxes per COCO size bin (small < 32², medium < 96², large, on the original image's pixel area)
with the share of them that the reference default boxes cover (best IoU > 0.5, as the encoder
matches; :func:`ssdwb.lab.anchor_fit.design_coverage`). A bin the reference covers poorly is
what a fitted design (``ssdwb anchors fit``) improves.

Boxes are counted as training reads them: clipped to their image, degenerate ones dropped.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ssdwb.data.coco import CocoDetection
from ssdwb.data.layout import resolve_data
from ssdwb.lab.anchor_fit import design_coverage
from ssdwb.ssd.anchors import SIZE_BINS, dboxes300_coco

__all__ = ["dataset_stats", "format_stats"]


def dataset_stats(data: str | os.PathLike, split: str = "train") -> dict:
    """The statistics of one split of a dataset folder or file.

    Returns:
        ``{"data", "name", "split", "annotations": file, "images", "boxes",
        "classes": [{"name", "id", "boxes", "images"}] in label order,
        "objects_per_image": {"mean", "median", "max", "empty"},
        "objects_histogram": [images with 0, 1, 2, ... boxes],
        "sizes": {bin: {"boxes", "coverage"}} for small, medium, large and all}``; coverage is
        the reference design's share of the bin's boxes with best IoU > 0.5 (NaN when empty).
    """
    paths = resolve_data(data)
    ds = CocoDetection(paths[f"{split}_images"], paths[f"{split}_ann"], drop_empty=False)
    per_image = np.diff(ds.box_offsets)  # [M] boxes per image
    image_of_box = np.repeat(np.arange(len(ds)), per_image)  # [N]
    labels = ds.labels  # [N] in 1..C
    num_labels = ds.num_classes
    boxes_per_label = np.bincount(labels, minlength=num_labels)
    # distinct (image, label) pairs -> images per label
    pairs = np.unique(image_of_box * num_labels + labels)
    images_per_label = np.bincount(pairs % num_labels, minlength=num_labels)
    classes = [{"name": ds.label_names[k], "id": int(ds.label_to_cat[k]),
                "boxes": int(boxes_per_label[k]), "images": int(images_per_label[k])}
               for k in range(1, num_labels)]
    gt = ds.all_boxes()
    coverage = design_coverage(dboxes300_coco(), gt["boxes"], gt["areas"])
    areas = gt["areas"].numpy()
    sizes = {name: {"boxes": int(((areas >= lo) & (areas < hi)).sum()),
                    "coverage": coverage[name]} for name, (lo, hi) in SIZE_BINS.items()}
    sizes["all"] = {"boxes": int(len(areas)), "coverage": coverage["all"]}
    empty = per_image.size == 0
    return {
        "data": str(data), "name": paths["name"], "split": split,
        "annotations": str(paths[f"{split}_ann"]), "images": len(ds), "boxes": int(len(labels)),
        "classes": classes,
        "objects_per_image": {"mean": math.nan if empty else float(per_image.mean()),
                              "median": math.nan if empty else float(np.median(per_image)),
                              "max": 0 if empty else int(per_image.max()),
                              "empty": int((per_image == 0).sum())},
        "objects_histogram": np.bincount(per_image).tolist(),
        "sizes": sizes,
    }


def format_stats(stats: dict) -> str:
    """The terminal report of :func:`dataset_stats`."""
    o = stats["objects_per_image"]
    lines = [f"{stats['name']} {stats['split']}: {stats['images']} images, {stats['boxes']} "
             f"boxes ({stats['annotations']})", "",
             f"  {'class':<24}{'id':>8}{'boxes':>9}{'images':>9}"]
    lines += [f"  {c['name'][:23]:<24}{c['id']:>8}{c['boxes']:>9}{c['images']:>9}"
              for c in stats["classes"]]
    lines += ["", f"objects per image: mean {o['mean']:.2f}, median {o['median']:g}, max "
                  f"{o['max']}; {o['empty']} image(s) without objects", "",
              "boxes per COCO size (original-image pixels) and the reference default boxes' "
              "coverage (best IoU > 0.5):",
              f"  {'size':<22}{'boxes':>8}{'coverage':>10}"]
    labels = {"small": "small (< 32²)", "medium": "medium (32² - 96²)", "large": "large (≥ 96²)",
              "all": "all"}
    for key in ("small", "medium", "large", "all"):
        s = stats["sizes"][key]
        cov = "-" if math.isnan(s["coverage"]) else f"{s['coverage']:.3f}"
        lines.append(f"  {labels[key]:<22}{s['boxes']:>8}{cov:>10}")
    lines += ["", f"fit default boxes to it: ssdwb anchors fit --data {stats['data']}"]
    return "\n".join(lines)
