"""COCO-format detection dataset (real COCO 2017 or the synthetic shapes set), on pycocotools.

As the MLPerf reference reads it: labels 1..C follow the annotation file's category order
(0 is background); crowd boxes are kept; images without annotations are dropped (117,266 of
COCO 2017's 118,287 train images remain). Boxes become (x1, y1, x2, y2) fractions of the image.

Bad input never crashes an epoch half-way: the annotation file is checked when the dataset is
built (errors name the file and the problem), degenerate boxes are dropped then with a logged
count, and an unreadable image raises an error naming it, or with ``skip_bad_images=True`` is
replaced by the next readable image and counted in ``bad_images``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["CocoDetection", "load_coco_json"]


def load_coco_json(ann_file: str | os.PathLike):
    """Reads and checks a COCO annotation file; returns a ``pycocotools.coco.COCO``."""
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images', 'annotations' and "
                         f"'categories', found {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ValueError(f"{path}: not a COCO detection file, missing key(s) {missing}")
    cat_ids = {c["id"] for c in data["categories"]}
    unknown = sorted({a["category_id"] for a in data["annotations"]} - cat_ids)
    if unknown:
        n = sum(a["category_id"] in unknown for a in data["annotations"])
        raise ValueError(f"{path}: {n} annotation(s) use category id(s) {unknown[:10]} that are "
                         f"not in the file's 'categories'")
    image_ids = {im["id"] for im in data["images"]}
    orphans = sum(a["image_id"] not in image_ids for a in data["annotations"])
    if orphans:
        raise ValueError(f"{path}: {orphans} annotation(s) refer to image ids not in 'images'")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset.

    Args:
        image_dir: folder holding the images named by ``file_name``.
        ann_file: COCO instances JSON.
        transform: callable ``(PIL image, target) -> (image, target)``.
        drop_empty: drop images left with no box (the reference does, for train and val).
        skip_bad_images: on an unreadable image, log it, count it in ``bad_images`` and return
            the next readable one instead of raising.

    ``dataset[i]`` returns ``(image, target)``: a PIL RGB image (before ``transform``) and
    ``{"boxes": Tensor[N, 4] (x1, y1, x2, y2) fractions of the image, "labels": Tensor[N] int64
    in 1..num_classes-1, "image_id": int, "orig_size": (h, w)}``.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike,
                 transform=None, drop_empty: bool = True, skip_bad_images: bool = False):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.bad_images = 0
        self.coco = load_coco_json(ann_file)
        cats = self.coco.dataset["categories"]
        # Labels in the file's category order, 1-based: 0 is background.
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.label_to_cat = {v: k for k, v in self.cat_to_label.items()}
        self.label_names = {self.cat_to_label[c["id"]]: c["name"] for c in cats}
        self.num_classes = len(cats) + 1

        self.ids: list[int] = []
        self.targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        dropped = 0
        for img in self.coco.dataset["images"]:
            w, h = img["width"], img["height"]
            anns = self.coco.imgToAnns.get(img["id"], [])
            boxes, labels = [], []
            for a in anns:
                x, y, bw, bh = a["bbox"]
                x1, y1 = max(x, 0.0), max(y, 0.0)
                x2, y2 = min(x + bw, w), min(y + bh, h)
                if x2 <= x1 or y2 <= y1:  # zero/negative size, or outside the image
                    dropped += 1
                    continue
                boxes.append((x1 / w, y1 / h, x2 / w, y2 / h))
                labels.append(self.cat_to_label[a["category_id"]])
            if drop_empty and not boxes:
                continue
            self.ids.append(img["id"])
            self.targets[img["id"]] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                       torch.tensor(labels, dtype=torch.int64))
        if dropped:
            log.warning("%s: dropped %d degenerate box(es) (zero or negative size, or outside the "
                        "image)", self.ann_file, dropped)
        self.dropped_boxes = dropped

    def __len__(self) -> int:
        return len(self.ids)

    def all_boxes(self) -> dict[str, torch.Tensor]:
        """Every kept ground-truth box of the dataset, for statistics.

        Returns:
            dict with ``boxes`` (Tensor[N, 4] (x1, y1, x2, y2) fractions), ``labels``
            (Tensor[N]), ``areas`` (Tensor[N] float64: box area in pixels of the original image,
            for COCO's small/medium/large bins) and ``index`` (Tensor[N]: dataset index).
        """
        boxes = [self.targets[i][0] for i in self.ids]
        counts = torch.tensor([len(b) for b in boxes])
        if not boxes or int(counts.sum()) == 0:
            z = torch.zeros(0)
            return {"boxes": z.reshape(0, 4), "labels": z.long(), "areas": z.double(),
                    "index": z.long()}
        index = torch.repeat_interleave(torch.arange(len(boxes)), counts)
        hw = torch.tensor([[self.coco.imgs[i]["height"], self.coco.imgs[i]["width"]]
                           for i in self.ids], dtype=torch.float64)[index]
        b = torch.cat(boxes)
        wh = (b[:, 2:] - b[:, :2]).double()
        return {"boxes": b, "labels": torch.cat([self.targets[i][1] for i in self.ids]),
                "areas": wh[:, 0] * hw[:, 1] * wh[:, 1] * hw[:, 0], "index": index}

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def load_image(self, index: int) -> Image.Image:
        path = self.image_path(index)
        try:
            with Image.open(path) as im:
                im.load()  # decoded now; leaving `with` only closes the file
                return im if im.mode == "RGB" else im.convert("RGB")  # no copy for RGB JPEGs
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image {path} (id {self.ids[index]}) does not exist") from e
        except OSError as e:  # PIL.UnidentifiedImageError and truncated files are OSErrors
            raise OSError(f"image {path} (id {self.ids[index]}) cannot be decoded: {e}") from e

    def raw(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        """The untransformed sample (raises on an unreadable image)."""
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        image = self.load_image(index)
        boxes, labels = self.targets[img_id]
        target = {"boxes": boxes.clone(), "labels": labels.clone(), "image_id": img_id,
                  "orig_size": (info["height"], info["width"])}
        return image, target

    def __getitem__(self, index: int):
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                image, target = self.raw(i)
            except OSError as e:
                if not self.skip_bad_images:
                    raise
                self.bad_images += 1
                log.warning("skipping unreadable image (%d so far in this process): %s",
                            self.bad_images, e)
                continue
            if self.transform is not None:
                image, target = self.transform(image, target)
            return image, target
        raise RuntimeError(f"no readable image in {self.image_dir}")
