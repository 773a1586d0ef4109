"""COCO-format detection dataset (real COCO 2017 or the synthetic shapes set).

As the MLPerf reference reads it: labels 1..C follow the annotation file's category order
(0 is background); crowd boxes are kept; images without annotations are dropped (117,266 of
COCO 2017's 118,287 train images remain). Boxes become (x1, y1, x2, y2) fractions of the image.

What a loader needs is kept in a few numpy arrays, built vectorized from the JSON, which is read
once and dropped: the boxes of all images in one float32 [N, 4] array with per-image offsets,
the labels (int64), the file names as one UTF-8 buffer with offsets, the image sizes and ids.
pycocotools' index of COCO 2017 train (segmentation polygons included) is about 2 GB of Python
objects: the 2019 reference kept it in every rank, and every forked loader worker copied the
pages it touched (refcounts, the garbage collector), so memory grew with the worker count
(``bench/bench_memory.py`` measures both designs). The index is still there for evaluation, the
notebooks and the tests: :attr:`CocoDetection.coco` loads it on first access, in the process
that asks (evaluation asks on the rank that scores, never in a loader worker).

Bad input never crashes an epoch half-way: the annotation file is checked when the dataset is
built (errors name the file and the problem), degenerate boxes are dropped then with a logged
count, and an unreadable image raises an error naming it, or with ``skip_bad_images=True`` is
replaced by the next readable image; the sample then lists the skipped files in
``target["skipped"]`` and :class:`ssdwb.data.Collate` gathers them into ``batch["bad_images"]``.

Augmentation seeds: ``dataset[SampleKey(index, seed)]`` (what the training sampler yields, see
:mod:`ssdwb.data.loader`) draws the transform's random numbers from ``seed`` and leaves the
caller's torch CPU generator as it was; ``dataset[index]`` draws from torch's global generator,
as the transforms do when called directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import os
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["CocoDetection", "SampleKey", "load_coco_json", "read_coco_json", "to_rgb"]


def to_rgb(image: Image.Image) -> Image.Image:
    """An image of any PIL mode (L, P, RGB, RGBA, LA, ...) as RGB, alpha dropped; RGB images are
    returned as they are (no copy). No EXIF rotation: boxes refer to the stored pixels.

    A palette image with transparency goes through RGBA: PIL warns on P -> RGB when the
    transparency is a byte string, and dropping the alpha channel is all we want of it."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def _annotation_ids(anns: list, index: np.ndarray) -> np.ndarray:
    """The ``id`` of the annotations at ``index`` (-1 where one has none): int64 [len(index)]."""
    return np.fromiter((anns[i].get("id", -1) if isinstance(anns[i], dict) else -1
                        for i in index.tolist()), dtype=np.int64, count=len(index))


def _first_ids(ids: np.ndarray) -> str:
    """``"3, 8, 12"`` or ``"3, 8, ... (25 in all)"``: up to 10 ids for a message."""
    shown = ", ".join(str(i) for i in ids[:10].tolist())
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")


class SampleKey(NamedTuple):
    """A dataset index with the seed of its augmentation's random draws."""

    index: int
    seed: int


def _ints(path: Path, items: list, key: str, what: str) -> np.ndarray:
    try:
        return np.fromiter((x[key] for x in items), dtype=np.int64, count=len(items))
    except KeyError as e:
        raise ValueError(f"{path}: an entry of '{what}' has no {e}") from e
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{path}: '{what}' {key!r} values must be integers ({e})") from e


def _check(path: Path, data) -> dict[str, np.ndarray]:
    """The checks of :func:`read_coco_json`; returns the id columns it extracted."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations' and "
                         f"'categories', found {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{path}: not a COCO detection file, missing key(s) {missing}")
    cols = {"cat_ids": _ints(path, data["categories"], "id", "categories"),
            "image_ids": _ints(path, data["images"], "id", "images"),
            "ann_cats": _ints(path, data["annotations"], "category_id", "annotations"),
            "ann_images": _ints(path, data["annotations"], "image_id", "annotations")}
    unknown = ~np.isin(cols["ann_cats"], cols["cat_ids"])
    if unknown.any():
        ids = np.unique(cols["ann_cats"][unknown]).tolist()
        raise ValueError(f"{path}: {int(unknown.sum())} annotation(s) use category id(s) "
                         f"{ids[:10]} that are not in the file's 'categories' (annotation ids "
                         f"{_first_ids(_annotation_ids(data['annotations'], np.flatnonzero(unknown)))})")
    orphans = ~np.isin(cols["ann_images"], cols["image_ids"])
    if orphans.any():
        raise ValueError(f"{path}: {int(orphans.sum())} annotation(s) refer to image ids not in "
                         f"'images' (annotation ids "
                         f"{_first_ids(_annotation_ids(data['annotations'], np.flatnonzero(orphans)))})")
    uniq, counts = np.unique(cols["image_ids"], return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1].tolist()
        raise ValueError(f"{path}: {len(dup)} image id(s) listed more than once in 'images' "
                         f"({dup[:10]})")
    return cols


def read_coco_json(ann_file: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Reads and checks a COCO annotation file.

    Returns:
        the parsed JSON and its id columns (numpy int64): ``cat_ids``, ``image_ids`` (file
        order), ``ann_cats``, ``ann_images`` (per annotation).

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file and the problem: not JSON,
    not an object, missing keys, annotations of unknown categories or images, repeated image ids.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from e
    return data, _check(path, data)


def load_coco_json(ann_file: str | os.PathLike):
    """Reads and checks a COCO annotation file; returns a ``pycocotools.coco.COCO``."""
    # lazy: each COCO backend is imported only when it is the one asked for
    from pycocotools.coco import COCO

    data, _ = read_coco_json(ann_file)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _boxes(path: Path, anns: list) -> np.ndarray:
    try:
        return np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(len(anns), 4)
    except KeyError as e:
        raise ValueError(f"{path}: an annotation has no 'bbox'") from e
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: every 'bbox' must be 4 numbers [x, y, w, h] ({e})") from e


def _release_freed_heap() -> None:
    """Hands the parsed JSON's freed heap back to the OS (glibc keeps it otherwise: 440 MB of
    resident, unused pages in every rank with COCO 2017 train, mapped by every forked worker)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset.

    Args:
        image_dir: folder holding the images named by ``file_name``.
        ann_file: COCO instances JSON.
        transform: callable ``(PIL image, target) -> (image, target)``.
        drop_empty: drop images left with no box (the reference does, for train and val).
        skip_bad_images: on an unreadable image, log it and return the next readable one
            instead of raising; the sample's ``target["skipped"]`` lists the files skipped
            (``bad_images`` counts them in this process).

    ``dataset[i]`` (an int or a :class:`SampleKey`) returns ``(image, target)``: a PIL RGB image
    (before ``transform``) and ``{"boxes": Tensor[N, 4] (x1, y1, x2, y2) fractions of the image,
    "labels": Tensor[N] int64 in 1..num_classes-1, "image_id": int, "orig_size": (h, w),
    "skipped": list of str}`` (what ``transform`` makes of it).

    Arrays (read-only numpy): ``image_ids`` [M], ``sizes`` [M, 2] (h, w), ``boxes`` [N, 4]
    float32, ``labels`` [N] int64, ``box_offsets`` [M + 1] (image i's boxes are
    ``boxes[box_offsets[i]:box_offsets[i + 1]]``). What the file's boxes needed, for
    :mod:`ssdwb.data.check`: ``clipped_ann_ids`` (annotation ids of boxes clipped to their image)
    and ``dropped_ann_ids`` (degenerate boxes dropped), int64; ``unused_file_names``: the images
    dropped for having no box (``drop_empty``).
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike,
                 transform=None, drop_empty: bool = True, skip_bad_images: bool = False):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.bad_images = 0
        data, cols = read_coco_json(self.ann_file)
        cats = data["categories"]
        # Labels in the file's category order, 1-based: 0 is background.
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.label_names = {self.cat_to_label[c["id"]]: c["name"] for c in cats}
        self.num_classes = len(cats) + 1
        self._build(data, cols, drop_empty)
        del data, cols, cats
        _release_freed_heap()

    def _build(self, data: dict, cols: dict[str, np.ndarray], drop_empty: bool) -> None:
        images, anns = data["images"], data["annotations"]
        try:
            w = np.fromiter((im["width"] for im in images), np.float64, len(images))
            h = np.fromiter((im["height"] for im in images), np.float64, len(images))
            names = [im["file_name"].encode() for im in images]
        except KeyError as e:
            raise ValueError(f"{self.ann_file}: an entry of 'images' has no {e}") from e
        # annotation -> position of its image in the file's list (ids are unique: checked)
        ids = cols["image_ids"]
        by_id = np.argsort(ids, kind="stable")
        pos = by_id[np.searchsorted(ids, cols["ann_images"], sorter=by_id)]
        xywh = _boxes(self.ann_file, anns)
        x, y, bw, bh = xywh.T
        iw, ih = w[pos], h[pos]
        # the reference's max(x, 0.0) and min(x + w, width), NaN and signed zeros included
        x1, y1 = np.where(0.0 > x, 0.0, x), np.where(0.0 > y, 0.0, y)
        x2 = np.where(iw < x + bw, iw, x + bw)
        y2 = np.where(ih < y + bh, ih, y + bh)
        degenerate = (x2 <= x1) | (y2 <= y1)  # zero/negative size, or outside the image
        keep = ~degenerate
        clipped = keep & ((x1 != x) | (y1 != y) | (x2 != x + bw) | (y2 != y + bh))
        self.clipped_ann_ids = self._frozen(_annotation_ids(anns, np.flatnonzero(clipped)))
        self.dropped_ann_ids = self._frozen(_annotation_ids(anns, np.flatnonzero(degenerate)))
        cat_keys = np.array(list(self.cat_to_label), dtype=np.int64)
        cat_labels = np.array(list(self.cat_to_label.values()), dtype=np.int64)
        order = np.argsort(cat_keys, kind="stable")
        lab = cat_labels[order][np.searchsorted(cat_keys[order], cols["ann_cats"][keep])]
        # boxes grouped by image, in file order within an image (as pycocotools' imgToAnns)
        pos = pos[keep]
        by_image = np.argsort(pos, kind="stable")
        frac = np.stack([x1[keep] / iw[keep], y1[keep] / ih[keep], x2[keep] / iw[keep],
                         y2[keep] / ih[keep]], 1)
        counts = np.bincount(pos, minlength=len(images))
        kept_images = counts > 0 if drop_empty else np.ones(len(images), dtype=bool)
        self.boxes = self._frozen(frac[by_image].astype(np.float32).reshape(-1, 4))
        self.labels = self._frozen(lab[by_image])
        self.box_offsets = self._frozen(np.concatenate([[0], np.cumsum(counts[kept_images])]))
        self.image_ids = self._frozen(ids[kept_images])
        self.sizes = self._frozen(np.stack([h, w], 1)[kept_images].astype(np.int64))
        self.unused_file_names = tuple(names[i].decode() for i in np.flatnonzero(~kept_images))
        names = [names[i] for i in np.flatnonzero(kept_images)]
        lengths = np.fromiter(map(len, names), np.int64, len(names))
        self._names = self._frozen(np.frombuffer(b"".join(names), dtype=np.uint8))
        self._name_offsets = self._frozen(np.concatenate([[0], np.cumsum(lengths)]))
        dropped = int(degenerate.sum())
        if dropped:
            log.warning("%s: dropped %d degenerate box(es) (zero or negative size, or outside the "
                        "image)", self.ann_file, dropped)
        self.dropped_boxes = dropped

    @staticmethod
    def _frozen(a: np.ndarray) -> np.ndarray:
        a.setflags(write=False)
        return a

    @cached_property
    def coco(self):
        """The file's ``pycocotools.coco.COCO`` index (the ground truth for evaluation), loaded
        and checked on first access; not pickled with the dataset."""
        return load_coco_json(self.ann_file)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("coco", None)  # a spawned worker must not receive the index
        return state

    @property
    def ids(self) -> list[int]:
        """The image ids, in dataset order (a new list: ``image_ids`` is the array)."""
        return self.image_ids.tolist()

    def __len__(self) -> int:
        return len(self.image_ids)

    def all_boxes(self) -> dict[str, torch.Tensor]:
        """Every kept ground-truth box of the dataset, for statistics.

        Returns:
            dict with ``boxes`` (Tensor[N, 4] (x1, y1, x2, y2) fractions), ``labels``
            (Tensor[N]), ``areas`` (Tensor[N] float64: box area in pixels of the original image,
            for COCO's small/medium/large bins) and ``index`` (Tensor[N]: dataset index).
        """
        if len(self.boxes) == 0:
            z = torch.zeros(0)
            return {"boxes": z.reshape(0, 4), "labels": z.long(), "areas": z.double(),
                    "index": z.long()}
        counts = torch.from_numpy(np.diff(self.box_offsets))
        index = torch.repeat_interleave(torch.arange(len(self)), counts)
        hw = torch.from_numpy(self.sizes.astype(np.float64))[index]
        b = torch.from_numpy(self.boxes.copy())
        wh = (b[:, 2:] - b[:, :2]).double()
        return {"boxes": b, "labels": torch.from_numpy(self.labels.copy()),
                "areas": wh[:, 0] * hw[:, 1] * wh[:, 1] * hw[:, 0], "index": index}

    def _index(self, index: int) -> int:
        return range(len(self))[index]  # negative indices as a list's; IndexError past the end

    def file_name(self, index: int) -> str:
        index = self._index(index)
        start, end = self._name_offsets[index], self._name_offsets[index + 1]
        return self._names[start:end].tobytes().decode()

    def file_names(self) -> list[str]:
        """Every image's ``file_name`` (relative to ``image_dir``), in dataset order."""
        buf, off = self._names.tobytes(), self._name_offsets.tolist()
        return [buf[a:b].decode() for a, b in zip(off[:-1], off[1:])]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.file_name(index)

    def load_image(self, index: int) -> Image.Image:
        index = self._index(index)
        path = self.image_path(index)
        image_id = int(self.image_ids[index])
        try:
            with Image.open(path) as im:
                im.load()  # decoded now; leaving `with` only closes the file
                return to_rgb(im)  # no copy for RGB JPEGs
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image {path} (id {image_id}) does not exist") from e
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            # PIL.UnidentifiedImageError and truncated files are OSErrors; some decoders raise
            # SyntaxError on corrupt data
            raise OSError(f"image {path} (id {image_id}) cannot be decoded: {e}") from e

    def raw(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        """The untransformed sample (raises on an unreadable image)."""
        index = self._index(index)
        image = self.load_image(index)
        start, end = self.box_offsets[index], self.box_offsets[index + 1]
        h, w = self.sizes[index].tolist()
        target = {"boxes": torch.from_numpy(self.boxes[start:end].copy()),
                  "labels": torch.from_numpy(self.labels[start:end].copy()),
                  "image_id": int(self.image_ids[index]), "orig_size": (h, w)}
        return image, target

    def __getitem__(self, key: int | SampleKey):
        index, seed = (key if isinstance(key, tuple) else (key, None))
        index = int(index)
        skipped: list[str] = []
        for attempt in range(len(self)):
            i = (index + attempt) % len(self) if attempt else index
            try:
                image, target = self.raw(i)
            except OSError as e:
                if not self.skip_bad_images:
                    raise
                self.bad_images += 1
                skipped.append(str(self.image_path(i)))
                log.warning("skipping unreadable image (%d so far in this process): %s",
                            self.bad_images, e)
                continue
            if self.transform is not None:
                if seed is None:
                    image, target = self.transform(image, target)
                else:
                    image, target = self._seeded(seed, image, target)
            target["skipped"] = skipped
            return image, target
        raise RuntimeError(f"no readable image in {self.image_dir}")

    def _seeded(self, seed: int, image, target):
        """The transform with torch's CPU generator seeded by ``seed``, then restored."""
        gen = torch.default_generator
        state = gen.get_state()
        try:
            gen.manual_seed(seed)
            return self.transform(image, target)
        finally:
            gen.set_state(state)
