"""A trained checkpoint on your own images: ``ssdwb predict``.

    ssdwb predict --checkpoint runs/<id>/checkpoint.pt photos/ street.jpg --out predictions/
    ssdwb predict --checkpoint C IMG... --score 0.5 --device cuda --batch-size 32

The model, its default boxes and its class names come from ``ssdwb.runs.trained.load_trained``
(as for ``ssdwb eval``, ``ssdwb export`` and the attribution). Images go through the evaluation
path: the image as RGB (any PIL mode, alpha dropped, no EXIF rotation, as training reads
it), ``val_transform`` (PIL bilinear resize to 300x300),
``normalize`` on the model's device, the model, then ``postprocess`` with ``--score`` as its
score threshold (greedy NMS keeps a box because of higher-scoring boxes only, so filtering at
0.3 before NMS keeps exactly the detections above 0.3 that filtering at 0.05 and dropping the
rest after would keep).

What lands in ``--out``:

* ``detections.json``: COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h] in
  pixels of the original image, ``score``) with ``file_name`` and ``category`` (the class name)
  added to every row; ``image_id`` is the image's position in the input list, from 1.
* ``<name>.png`` per image: the image with labelled boxes (``ssdwb.plots.draw_boxes``), its
  longer side at most 1280 pixels.

An unreadable or missing image is reported by name and skipped; the others still run, and the
command then exits with status 1.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ssdwb.data.coco import to_rgb
from ssdwb.data.transforms import normalize, val_transform
from ssdwb.evaluation.coco_eval import detections_to_coco
from ssdwb.files import atomic_write
from ssdwb.runs.tensorboard import render_detections
from ssdwb.runs.trained import load_trained
from ssdwb.ssd.postprocess import postprocess

log = logging.getLogger(__name__)

__all__ = ["find_images", "predict", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def find_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files given, and the image files (by suffix, sorted) of folders given, in order; a path
    that does not exist stays in the list (it is reported as unreadable)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file()
                          and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


class _Images(torch.utils.data.Dataset):
    """Image files through ``val_transform``: ``(uint8 Tensor[3, S, S] or None, index, (h, w),
    error message or None)``."""

    def __init__(self, files: list[Path], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            with Image.open(self.files[i]) as im:
                im.load()
                image = to_rgb(im)  # L, P, RGBA ... as training reads them (alpha dropped)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            # PIL.UnidentifiedImageError and truncated files are OSErrors
            return None, i, (0, 0), f"{type(e).__name__}: {e}"
        w, h = image.size
        tensor, _ = self.transform(image, {})
        return tensor, i, (h, w), None


def _collate(items):
    ok = [x for x in items if x[0] is not None]
    bad = [(x[1], x[3]) for x in items if x[0] is None]
    if not ok:
        return None, None, None, bad
    return (torch.stack([x[0] for x in ok]), torch.tensor([x[1] for x in ok]),
            torch.tensor([x[2] for x in ok]), bad)


def _png_names(files: list[Path]) -> list[str]:
    """``<stem>.png`` per input, ``<stem>_2.png`` ... where two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        n = seen[f.stem] = seen.get(f.stem, 0) + 1
        names.append(f"{f.stem}.png" if n == 1 else f"{f.stem}_{n}.png")
    return names


def _save_png(path: Path, file: Path, rows: np.ndarray, names: dict[int, str]) -> None:


    with Image.open(file) as im:
        pixels = render_detections(to_rgb(im), rows, names, max_side=1280)
    atomic_write(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def predict(checkpoint: str | os.PathLike, inputs: list[str | os.PathLike],
            out: str | os.PathLike, score: float = 0.3, device: str = "auto",
            batch_size: int = 8, workers: int = 0, progress: bool = True,
            draw: bool = True) -> dict:
    """Runs a checkpoint on images and writes ``detections.json`` and one PNG per image.

    Args:
        checkpoint: an ssdwb ``checkpoint.pt``.
        inputs: image files and folders (see :func:`find_images`).
        out: output folder (made if missing).
        score: keep detections scoring above this.
        device: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda``.
        batch_size, workers: images per forward pass; loader processes decoding them.
        draw: write the PNGs.

    Returns:
        ``{"images": decoded count, "detections": rows written, "skipped": [(file, reason)],
        "out": out folder, "classes_from": where the class names came from}``.
    """
    files = find_images(inputs)
    if not files:
        raise FileNotFoundError(f"no images in {[str(p) for p in inputs]} (looked for "
                                f"{', '.join(IMAGE_SUFFIXES)} in folders)")
    trained = load_trained(checkpoint, device)
    cfg = trained.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(
        _Images(files, val_transform(cfg.image_size, cfg.resize)), batch_size=batch_size,
        num_workers=workers, collate_fn=_collate)
    pngs = _png_names(files)
    cat_name = {trained.label_to_cat[k]: v for k, v in trained.label_names.items()}
    parts, skipped, done = [], [], 0
    with torch.no_grad(), tqdm(total=len(files), desc="predict", unit="img",
                               disable=not progress) as bar:
        for images, index, sizes, bad in loader:
            for i, reason in bad:
                log.warning("skipped %s: cannot be read (%s)", files[i], reason)
                skipped.append((str(files[i]), reason))
            if images is not None:
                ploc, plabel = trained.model(normalize(images.to(trained.device)))
                dets = postprocess(ploc.float(), plabel.float(), trained.coder,
                                   score_threshold=score)
                rows = detections_to_coco(dets, index + 1, sizes, trained.label_to_cat)
                parts.append(rows)
                done += len(index)
                if draw:
                    for i in index.tolist():
                        _save_png(out / pngs[i], files[i], rows[rows[:, 0] == i + 1], cat_name)
            bar.update(len(bad) + (0 if images is None else len(images)))
    rows = np.concatenate(parts) if parts else np.zeros((0, 7))
    results = [{"image_id": int(r[0]), "file_name": str(files[int(r[0]) - 1]),
                "category_id": int(r[6]), "category": cat_name.get(int(r[6]), str(int(r[6]))),
                "bbox": [float(r[1]), float(r[2]), float(r[3]), float(r[4])],
                "score": float(r[5])} for r in rows]
    text = json.dumps(results) + "\n"
    atomic_write(out / "detections.json", lambda f: f.write(text.encode()))
    return {"images": done, "detections": len(results), "skipped": skipped, "out": str(out),
            "classes_from": trained.classes_from}
