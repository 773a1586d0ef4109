"""Checks a dataset: ``ssdwb data verify DATA`` (the quick check) and ``--decode`` (every image).

:func:`verify_quick` is the check every training run makes first (:mod:`ssdwb.data.check`: files
exist, boxes inside their image, train and val categories match), for a dataset file or a
folder. :func:`verify_decode` also decodes every image of the train and val splits:

An image that is missing, truncated or undecodable stops a run that does not skip bad images,
or (``skip_bad_images=True``) is replaced by another one in every epoch: better found before
training. Every dataset :func:`ssdwb.data.resolve_data` knows is checked (a dataset file,
COCO 2017's ``train2017``/``val2017``, the synthetic set's ``train``/``val``): the images named by each
split's annotation file (all of them, those without boxes too), or every file of the split's
folder when the annotation file cannot be read (that is a problem of its own). A decoded size
that differs from the annotation file's ``width``/``height`` is reported too: the boxes would
be scaled wrongly. The images are decoded in parallel by a process pool.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from ssdwb.data.check import check_dataset
from ssdwb.data.coco import CocoDetection, read_coco_json
from ssdwb.data.download import DatasetError, verify_coco
from ssdwb.data.layout import resolve_data

__all__ = ["check_image", "decode_split", "verify_decode", "verify_quick"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def check_image(item: tuple[str, int | None, int | None]) -> str | None:
    """``(path, width, height)`` -> None if the file decodes (at that size), else the reason."""
    path, width, height = item
    try:
        with Image.open(path) as im:
            im.load()
            size = im.size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        if "truncated" in str(e):
            return f"truncated ({e})"
        return f"cannot be decoded ({e})"
    except Exception as e:  # noqa: BLE001  (PIL raises SyntaxError, ValueError, ... on junk)
        return f"cannot be decoded ({type(e).__name__}: {e})"
    if width is not None and height is not None and size != (width, height):
        return f"decodes to {size[0]}x{size[1]}, the annotation file says {width}x{height}"
    return None


def _items(folder: Path, ann: Path) -> tuple[list[tuple[str, int | None, int | None]],
                                             list[str]]:
    """The split's images to check, and the problems met listing them."""

    try:
        data, _ = read_coco_json(ann)
        return [(str(folder / im["file_name"]), im.get("width"), im.get("height"))
                for im in data["images"]], []
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"{ann}: {e}" if str(ann) not in str(e) else str(e)
    if not folder.is_dir():
        return [], [problem, f"{folder}: missing"]
    files = sorted(f.path for f in os.scandir(folder) if f.name.lower().endswith(IMAGE_SUFFIXES))
    return [(p, None, None) for p in files], [problem]


def decode_split(pool: ProcessPoolExecutor, items: list, workers: int, desc: str = "",
                 progress: bool = True) -> list[tuple[str, str]]:
    """``(path, reason)`` for each item of ``items`` that :func:`check_image` rejects, checked
    by ``pool`` (of ``workers`` processes) in file order."""
    from tqdm.auto import tqdm

    chunk = max(1, min(64, len(items) // (8 * workers)))
    # submits every chunk now: the workers are forked before tqdm starts its monitor thread
    results = pool.map(check_image, items, chunksize=chunk)
    bad = []
    with tqdm(total=len(items), desc=desc, unit="img", disable=not progress,
              mininterval=1) as bar:
        for item, reason in zip(items, results):
            if reason is not None:
                bad.append((item[0], reason))
            bar.update(1)
    return bad


def verify_quick(data: str | os.PathLike) -> list[str]:
    """The quick check of :mod:`ssdwb.data.check` on a dataset file or folder, without opening
    an image.

    Returns the report's lines (warnings included: clipped and dropped boxes with their
    annotation ids); raises ``DatasetError`` naming the problems (a bad dataset file, an
    unreadable annotation file, missing images, train and val categories that differ).
    """
    try:
        paths = resolve_data(data)
        splits = [CocoDetection(paths[f"{s}_images"], paths[f"{s}_ann"]) for s in ("train", "val")]
    except (OSError, ValueError) as e:
        raise DatasetError(f"dataset check failed:\n  {e}") from e
    check = check_dataset(*splits)
    problems = check.problems()
    if problems:
        raise DatasetError("dataset check failed:\n  " + "\n  ".join(problems + [
            f"warning: {w}" for w in check.warnings()]))
    return check.report()


def verify_decode(datadir: str | os.PathLike, workers: int | None = None,
                  check_zips: bool = True, progress: bool = True) -> list[str]:
    """Decodes every train and val image of ``datadir`` (a dataset file or folder); on the COCO
    2017 layout runs :func:`ssdwb.data.download.verify_coco` first (md5s with ``check_zips``,
    image counts, annotation files), on the others :func:`verify_quick`.

    Returns the lines of a report; raises ``DatasetError`` listing every bad file with the
    reason (missing, truncated, cannot be decoded, wrong size) and every other problem found.
    """
    datadir = Path(datadir)
    try:
        paths = resolve_data(datadir)
    except FileNotFoundError as e:
        raise DatasetError(str(e)) from e
    report, problems = [], []
    try:
        if paths["kind"] == "coco2017":
            report += verify_coco(datadir, check_zips=check_zips)
        else:
            report += verify_quick(datadir)
    except DatasetError as e:
        problems += [line.strip() for line in str(e).splitlines()[1:]]
    workers = workers or len(os.sched_getaffinity(0))
    bad_total = checked = 0
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for split in ("train", "val"):
            folder, ann = paths[f"{split}_images"], paths[f"{split}_ann"]
            items, listing = _items(folder, ann)
            problems += listing
            bad = decode_split(pool, items, workers, desc=f"decode {folder.name}",
                               progress=progress)
            problems += [f"{path}: {reason}" for path, reason in bad]
            report.append(f"{folder}: {len(items) - len(bad)} of {len(items)} images decode")
            bad_total += len(bad)
            checked += len(items)
    if problems:
        raise DatasetError(f"dataset check failed ({bad_total} bad image(s) of {checked}):\n  "
                           + "\n  ".join(problems))
    return report
