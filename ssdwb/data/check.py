"""The quick check of a dataset before training: ``ssdwb data verify FILE`` and every run's set-up.

Cheap enough for every rank of every run (no image is opened): it works on the arrays
:class:`ssdwb.data.CocoDetection` built from the annotation files (read once, for training too).

* Every ``file_name`` exists: one directory listing per folder the names use, then set lookups.
  Missing files refuse the dataset (the error names up to 10), before the first training step.
* Every annotation names an image and a category of its file: the annotation file's reader
  refuses it otherwise, naming the annotation ids (:func:`ssdwb.data.coco.read_coco_json`).
* Boxes lie inside their image with width and height > 0: the reader clips them and drops the
  degenerate ones; the check counts both and lists their annotation ids (first 10 and a count).
* Train and val list the same categories (ids, names, order): labels 1..C follow the file's
  category order, so a model trained on one split would score the other under other names. The
  error shows the difference (only in train, only in val, renamed, reordered).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ssdwb.data.coco import CocoDetection

__all__ = ["DataCheck", "SplitCheck", "check_dataset", "check_split", "category_difference",
           "DatasetRefused"]

SHOWN = 10  # ids or files listed per kind of problem


class DatasetRefused(ValueError):
    """A dataset that cannot be trained on; the message lists every reason."""


def _first(items: list, n: int = SHOWN) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def missing_files(image_dir: Path, names: list[str] | tuple[str, ...]) -> list[str]:
    """The ``names`` (relative to ``image_dir``, subfolders allowed) with no file: one
    ``os.scandir`` per distinct folder, no per-file ``stat``."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for name in names:
        folder, _, base = name.replace("\\", "/").rpartition("/")
        by_folder[folder].append(base)
    missing = []
    for folder, bases in by_folder.items():
        try:
            with os.scandir(image_dir / folder) as it:
                present = {e.name for e in it if not e.is_dir()}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing += [f"{folder}/{b}" if folder else b for b in bases if b not in present]
    return missing


@dataclass
class SplitCheck:
    """What the quick check found in one split.

    Attributes:
        split: ``"train"`` or ``"val"``.
        ann_file: the annotation file.
        image_dir: the folder ``file_name`` is relative to.
        images: images the split uses (with at least one box); ``unused``: without a box.
        boxes: boxes kept.
        missing: ``file_name``s with no file (images without boxes included).
        clipped: annotation ids of boxes clipped to their image.
        dropped: annotation ids of degenerate boxes dropped (zero or negative size, or outside).
    """

    split: str
    ann_file: Path
    image_dir: Path
    images: int
    unused: int
    boxes: int
    missing: list[str] = field(default_factory=list)
    clipped: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    def problems(self) -> list[str]:
        """The lines that refuse the dataset."""
        if not self.missing:
            return []
        return [f"{self.ann_file}: {len(self.missing)} image file(s) missing under "
                f"{self.image_dir}: {_first(self.missing)}"]

    def warnings(self) -> list[str]:
        out = []
        if self.clipped:
            out.append(f"{self.ann_file}: {len(self.clipped)} box(es) reach outside their image "
                       f"and were clipped (annotation ids {_first(self.clipped)})")
        if self.dropped:
            out.append(f"{self.ann_file}: {len(self.dropped)} box(es) have no area (zero or "
                       f"negative size, or outside the image) and were dropped (annotation ids "
                       f"{_first(self.dropped)})")
        return out

    def summary(self) -> str:
        unused = f" (+{self.unused} without boxes, not used)" if self.unused else ""
        return (f"{self.split}: {self.images} images{unused}, {self.boxes} boxes "
                f"({self.ann_file})")


def check_split(ds: CocoDetection, split: str) -> SplitCheck:
    """The quick check of one built dataset (module docstring)."""
    names = ds.file_names() + list(ds.unused_file_names)
    return SplitCheck(split, ds.ann_file, ds.image_dir, len(ds), len(ds.unused_file_names),
                      len(ds.boxes), missing_files(ds.image_dir, names),
                      ds.clipped_ann_ids.tolist(), ds.dropped_ann_ids.tolist())


def _categories(ds: CocoDetection) -> list[tuple[int, str]]:
    """``(category id, name)`` in label order (the file's category order)."""
    return [(int(ds.label_to_cat[k]), ds.label_names[k]) for k in sorted(ds.label_to_cat)]


def category_difference(train: list[tuple[int, str]], val: list[tuple[int, str]]) -> list[str]:
    """How two splits' ``(id, name)`` category lists differ: lines naming the categories only in
    train, only in val, renamed (same id), and whether the order differs; [] when equal."""
    if train == val:
        return []
    t, v = dict(train), dict(val)
    out = []
    only_train = [f"{i} {t[i]!r}" for i in t if i not in v]
    only_val = [f"{i} {v[i]!r}" for i in v if i not in t]
    renamed = [f"{i}: {t[i]!r} in train, {v[i]!r} in val" for i in t if i in v and t[i] != v[i]]
    if only_train:
        out.append(f"only in train: {_first(only_train)}")
    if only_val:
        out.append(f"only in val: {_first(only_val)}")
    if renamed:
        out.append(f"renamed: {_first(renamed)}")
    if not out:
        out.append(f"same categories in another order: train {[i for i, _ in train]}, val "
                   f"{[i for i, _ in val]} (labels follow the file's order)")
    return out


@dataclass
class DataCheck:
    """The quick check of a dataset: both splits and their category match."""

    train: SplitCheck
    val: SplitCheck
    categories: list[tuple[int, str]]
    category_mismatch: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = self.train.problems() + self.val.problems()
        if self.category_mismatch:
            out.append(f"{self.train.ann_file} and {self.val.ann_file} list different "
                       f"categories (train and val must list the same ids and names in the same "
                       f"order): " + "; ".join(self.category_mismatch))
        return out

    def warnings(self) -> list[str]:
        return self.train.warnings() + self.val.warnings()

    def report(self) -> list[str]:
        """Lines for a log or the terminal: the splits, the classes, then warnings."""
        return ([self.train.summary(), self.val.summary(),
                 f"{len(self.categories)} categories: "
                 + _first([f"{i} {n}" for i, n in self.categories], 20)]
                + [f"warning: {w}" for w in self.warnings()])

    def raise_if_refused(self) -> None:
        """``DatasetRefused`` listing every problem, if there is one."""
        problems = self.problems()
        if problems:
            raise DatasetRefused("dataset refused:\n  " + "\n  ".join(problems))


def check_dataset(train_ds: CocoDetection, val_ds: CocoDetection) -> DataCheck:
    """The quick check (module docstring) of a dataset's built train and val splits."""
    train, val = _categories(train_ds), _categories(val_ds)
    return DataCheck(check_split(train_ds, "train"), check_split(val_ds, "val"), train,
                     category_difference(train, val))
