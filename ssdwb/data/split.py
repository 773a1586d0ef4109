"""One COCO annotation file (an export) split into train and val: ``ssdwb data split``.

    ssdwb data split export/annotations.json --val 0.1 --seed 0 --out data/mine
    ssdwb train --set data_dir=data/mine/dataset.yaml

Images are drawn at random (seeded), each with all its annotations; both files keep every
category (so train and val list the same ones) and the export's other top-level keys (``info``,
``licenses``). ``DIR/dataset.yaml`` points, relative to DIR, at the export's image folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ssdwb.data.coco import read_coco_json
from ssdwb.files import atomic_write

__all__ = ["split_coco", "default_image_dir"]


def default_image_dir(ann_file: Path) -> tuple[Path, str]:
    """``(folder, why)``: ``images/`` beside the annotation file if it exists, else
    ``../images``, else the annotation file's folder."""
    for folder, why in ((ann_file.parent / "images", "images/ beside the annotation file"),
                        (ann_file.parent.parent / "images", "../images of the annotation file")):
        if folder.is_dir():
            return folder, why
    return ann_file.parent, "the annotation file's folder (no images/ beside it or above it)"


def _dataset_yaml(name: str, images: str) -> str:
    # lazy: PyYAML is only needed when a dataset file is written or read
    import yaml

    split = {s: {"images": images, "annotations": f"{s}.json"} for s in ("train", "val")}
    return yaml.safe_dump({"name": name, **split}, sort_keys=False)


def split_coco(ann_file: str | os.PathLike, out_dir: str | os.PathLike, val: float = 0.1,
               seed: int = 0, images: str | os.PathLike | None = None) -> dict:
    """Splits a COCO annotation file by image into ``out_dir``'s ``train.json``, ``val.json``
    and ``dataset.yaml``.

    Args:
        ann_file: the COCO annotation file (checked as training reads it).
        out_dir: where the three files go (made if missing).
        val: share of the images that go to val, in (0, 1); at least one image each way.
        seed: the draw's seed (the same seed and file give the same split).
        images: the image folder ``file_name`` is relative to (default:
            :func:`default_image_dir`).

    Returns:
        ``{"train": images, "val": images, "train_boxes", "val_boxes", "images": folder,
        "images_from": why that folder, "dataset": the dataset.yaml path}``.
    """
    ann_file, out = Path(ann_file), Path(out_dir)
    if not 0.0 < val < 1.0:
        raise ValueError(f"--val {val}: the share of images for val must be between 0 and 1")
    data, cols = read_coco_json(ann_file)
    n = len(cols["image_ids"])
    if n < 2:
        raise ValueError(f"{ann_file}: {n} image(s), a split needs at least 2")
    if images is None:
        folder, why = default_image_dir(ann_file)
    else:
        folder, why = Path(images), "--images"
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder}: not a folder")
    n_val = min(n - 1, max(1, round(val * n)))
    is_val = np.zeros(n, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    val_ids = cols["image_ids"][is_val]
    ann_val = np.isin(cols["ann_images"], val_ids)
    counts = {}
    for split, img_mask, ann_mask in (("train", ~is_val, ~ann_val), ("val", is_val, ann_val)):
        part = {**data, "images": [data["images"][i] for i in np.flatnonzero(img_mask)],
                "annotations": [data["annotations"][i] for i in np.flatnonzero(ann_mask)]}
        text = json.dumps(part)
        atomic_write(out / f"{split}.json", lambda f, t=text: f.write(t.encode()))
        counts[split], counts[f"{split}_boxes"] = int(img_mask.sum()), int(ann_mask.sum())
    rel = Path(os.path.relpath(folder.resolve(), out.resolve())).as_posix()
    text = _dataset_yaml(out.resolve().name, rel)
    atomic_write(out / "dataset.yaml", lambda f: f.write(text.encode()))
    return {**counts, "images": folder, "images_from": why, "dataset": out / "dataset.yaml"}
