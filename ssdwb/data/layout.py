"""Where a dataset's files are: the COCO 2017 layout or the synthetic set's."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_data"]


def resolve_data(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Image folders and annotation files of a COCO 2017 or synthetic-layout dataset."""
    root = Path(data_dir)
    for tr, va, tra, vaa in (("train2017", "val2017", "instances_train2017.json",
                              "instances_val2017.json"),
                             ("train", "val", "instances_train.json", "instances_val.json")):
        paths = {"train_images": root / tr, "val_images": root / va,
                 "train_ann": root / "annotations" / tra, "val_ann": root / "annotations" / vaa}
        if paths["train_ann"].exists() or paths["val_ann"].exists():
            return paths
    raise FileNotFoundError(
        f"{root}: no COCO 2017 (annotations/instances_train2017.json) or synthetic "
        f"(annotations/instances_train.json) dataset here. Make one with `ssdwb data synth {root}`"
        f" or fetch COCO with `ssdwb data download {root}`.")
