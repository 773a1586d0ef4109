"""A synthetic COCO-format detection dataset: coloured shapes on textured, noisy backgrounds.

Layout mirrors COCO's, so the same code reads both::
    OUT_DIR/train/000000000001.jpg ...   OUT_DIR/val/...
    OUT_DIR/annotations/instances_train.json, instances_val.json

Categories are shape x colour (4 x 3 = 12 by default) with COCO-like, non-contiguous ids, so the
label <-> category-id mapping is exercised. A category's ``supercategory`` is its shape (the
family: "red square", "green square" and "blue square" are "square"s), so in COCO's error
analysis (``ssdwb.evaluation.error_analysis``) a shape in the wrong colour is a ``Sim`` error and a wrong
shape an ``Oth`` error. Images are 320 to 640 px a side with 1 to 12 objects
from ~12 px to ~60 % of the image, overlapping now and then. Same arguments, same bytes.

``elongation=(lo, hi)`` makes objects bars instead: each box's long side over its short side
is log-uniform in [lo, hi], lying or standing at random, its area that of a square of the drawn
side (``ssdwb data synth --profile thin``, ``runs.THIN_SHAPES``: where default boxes fitted to
the data should beat the reference's ratios of at most 3).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ssdwb.data.layout import DATASET_SUFFIXES
from ssdwb.files import resolve_path

__all__ = ["make_shapes_coco", "ensure_shapes", "SHAPES", "COLOURS", "DEMO_DATA", "DEMO_SHAPES",
           "THIN_SHAPES"]

SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230)}


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Low-frequency colour blobs + stripes + pixel noise: the shapes are not alone on a plain field."""
    small = rng.integers(60, 200, size=(rng.integers(3, 7), rng.integers(3, 7), 3), dtype=np.uint8)
    base = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.int16)
    if rng.random() < 0.5:  # stripes
        period = rng.integers(8, 40)
        phase = (np.arange(w if rng.random() < 0.5 else h) // period) % 2
        stripe = (phase * rng.integers(10, 35)).astype(np.int16)
        arr = arr + (stripe[None, :, None] if stripe.shape[0] == w else stripe[:, None, None])
    arr = arr + rng.normal(0, 14, size=arr.shape).astype(np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _draw(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    x1, y1, x2, y2 = box
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=fill)
    else:  # cross: two bars
        tw, th = (x2 - x1) / 3, (y2 - y1) / 3
        draw.rectangle((x1 + tw, y1, x2 - tw, y2), fill=fill)
        draw.rectangle((x1, y1 + th, x2, y2 - th), fill=fill)


def _overlap(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _image(rng: np.random.Generator, categories: list[dict], size=None, max_objects: int = 12,
           min_side: float = 12, max_side: float = 0.5, elongation=None):
    w, h = (int(v) for v in rng.integers(320, 641, size=2)) if size is None else size
    img = _background(rng, w, h)
    draw = ImageDraw.Draw(img)
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cat = categories[int(rng.integers(len(categories)))]
        for _attempt in range(10):  # some overlap, but no object buried under another
            side = float(np.exp(rng.uniform(np.log(min_side), np.log(max_side * min(w, h)))))
            if elongation is None:
                bw = max(8.0, side * rng.uniform(0.7, 1.3))
                bh = max(8.0, side * rng.uniform(0.7, 1.3))
            else:  # a bar: long/short log-uniform in `elongation`, lying or standing
                r = float(np.exp(rng.uniform(np.log(elongation[0]), np.log(elongation[1]))))
                long, short = side * np.sqrt(r), max(4.0, side / np.sqrt(r))
                bw, bh = (long, short) if rng.random() < 0.5 else (short, long)
                bw, bh = min(bw, w - 2.0), min(bh, h - 2.0)
            x1, y1 = round(rng.uniform(0, w - bw)), round(rng.uniform(0, h - bh))
            box = (x1, y1, round(x1 + bw), round(y1 + bh))
            if elongation is not None:  # a bar as long as the image: keep its end pixel inside
                box = (x1, y1, min(box[2], w - 1), min(box[3], h - 1))
            if all(_overlap(box, o[1]) < 0.25 for o in objects):
                objects.append((cat, box))
                break
    anns = []
    # Largest first, so small objects are drawn on top and stay visible.
    def area(o):
        return (o[1][2] - o[1][0]) * (o[1][3] - o[1][1])

    for cat, (x1, y1, x2, y2) in sorted(objects, key=lambda o: -area(o)):
        jitter = rng.integers(-25, 26, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(cat["rgb"], jitter))
        _draw(draw, cat["shape"], (x1, y1, x2, y2), fill)
        # PIL fills the end pixel too: the object covers [x1, x2 + 1) in COCO's pixel boxes.
        anns.append({"category_id": cat["id"], "bbox": [x1, y1, x2 - x1 + 1, y2 - y1 + 1],
                     "area": float((x2 - x1 + 1) * (y2 - y1 + 1)), "iscrowd": 0})
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5))))
    return img, anns


def make_shapes_coco(out_dir: str | os.PathLike, num_train: int = 1000, num_val: int = 200,
                     seed: int = 0, shapes=SHAPES, colours=None, quality: int = 90,
                     size: tuple[int, int] | None = None, max_objects: int = 12,
                     min_side: float = 12, max_side: float = 0.5,
                     elongation: tuple[float, float] | None = None) -> Path:
    """Writes the synthetic dataset under ``out_dir`` and returns that path.

    Args:
        num_train, num_val: images per split.
        seed: the only source of randomness (numpy PCG64): same seed, same files.
        shapes, colours: the category grid (names from ``SHAPES``; ``{name: (r, g, b)}``).
        quality: JPEG quality.
        size: a fixed (width, height) for every image instead of random 320-640 px sides.
        max_objects: 1 to this many objects per image.
        min_side, max_side: object sides are log-uniform from ``min_side`` pixels to
            ``max_side`` x the image's shorter side.
        elongation: ``(lo, hi)``: bars whose long/short side ratio is log-uniform in it (module
            docstring); None: near-square objects.
    """
    out = Path(out_dir)
    colours = COLOURS if colours is None else colours
    categories, cid = [], 1
    for shape in shapes:
        for name, rgb in colours.items():
            categories.append({"id": cid, "name": f"{name} {shape}", "supercategory": shape,
                               "shape": shape, "rgb": rgb})
            cid += 2 if cid % 5 == 0 else 1  # gaps in the ids, as COCO has
    public_cats = [{k: c[k] for k in ("id", "name", "supercategory")} for c in categories]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1)):
        rng = np.random.default_rng(split_seed)
        (out / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(1, count + 1):
            img, anns = _image(rng, categories, size, max_objects, min_side, max_side,
                               elongation)
            name = f"{i:012d}.jpg"
            img.save(out / split / name, quality=quality)
            images.append({"id": i, "file_name": name, "width": img.width, "height": img.height})
            for a in anns:
                annotations.append(dict(a, id=len(annotations) + 1, image_id=i))
        data = {"info": {"description": f"ssdwb synthetic shapes, seed {seed}"},
                "images": images, "annotations": annotations, "categories": public_cats}
        tmp = out / "annotations" / f".instances_{split}.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(out / "annotations" / f"instances_{split}.json")
    return out


# The demo's synthetic dataset: `make demo` and the notebooks' defaults share it. Its images are
# 300x300 (no resize on the way in) with 1 to 6 objects of 24 px to 60 % of the side: easier
# than the generator's default mix, so a small model learns it in CPU minutes (docs/demo.md).
DEMO_DATA = {"dir": "data/shapes", "num_train": 960, "num_val": 64, "seed": 0}


DEMO_SHAPES = {"size": (300, 300), "max_objects": 6, "min_side": 24, "max_side": 0.6}


# Mostly small or elongated objects: bars 3:1 to 8:1 (sides 12 px to 40 % of the image), where
# the reference's default boxes (ratios up to 3) cover badly and fitted ones should do better.
THIN_SHAPES = {"size": (300, 300), "max_objects": 6, "min_side": 12, "max_side": 0.4,
               "elongation": (3.0, 8.0)}


def ensure_shapes(data_dir: str | os.PathLike = DEMO_DATA["dir"], num_train: int | None = None,
                  num_val: int | None = None, seed: int | None = None) -> Path:
    """The synthetic dataset at ``data_dir``, generated on first use in the demo profile
    (``DEMO_SHAPES``; ``DEMO_DATA``'s image counts and seed unless given). A lock file keeps two
    notebooks or ranks from writing it at the same time; an existing COCO-format dataset there, or
    a dataset file, is used as it is."""

    out = resolve_path(data_dir)
    if out.is_file() or out.suffix.lower() in DATASET_SUFFIXES:
        return out  # a dataset file (ssdwb.data.layout): the user's data, never generated here
    ann = out / "annotations"
    done = [ann / "instances_val.json", ann / "instances_val2017.json"]
    if any(p.exists() for p in done):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not any(p.exists() for p in done):  # val is written last: its file marks completion
            make_shapes_coco(out, num_train or DEMO_DATA["num_train"],
                             num_val or DEMO_DATA["num_val"],
                             seed=DEMO_DATA["seed"] if seed is None else seed, **DEMO_SHAPES)
    return out
