"""COCO 2017 download (resumable, md5-verified), extraction and verification.

``ssdwb data download DATADIR`` leaves::
    DATADIR/train2017/*.jpg (118,287)  DATADIR/val2017/*.jpg (5,000)
    DATADIR/annotations/instances_train2017.json, instances_val2017.json, ...

A partial download is kept as ``NAME.part`` and resumed with an HTTP Range request, by a later
call or by the retry loop after a dropped connection. A zip is only renamed into place once its
md5 matches. Offline, the error says which file to pre-stage where.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ssdwb.data.coco import load_coco_json

log = logging.getLogger(__name__)

__all__ = ["COCO2017", "EXPECTED_IMAGES", "fetch", "md5sum", "extract", "download_coco",
           "verify_coco", "DatasetError"]

# name -> (url, md5), from SPEC.md
COCO2017 = {
    "train2017.zip": ("http://images.cocodataset.org/zips/train2017.zip",
                      "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val2017.zip": ("http://images.cocodataset.org/zips/val2017.zip",
                    "442b8da7639aecaf257c1dceb8ba8c80"),
    "annotations_trainval2017.zip": (
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
        "f4bbac642086de4f52a3fdda2de5fa2c"),
}
EXPECTED_IMAGES = {"train2017": 118_287, "val2017": 5_000}
ANNOTATIONS = {"train2017": "annotations/instances_train2017.json",
               "val2017": "annotations/instances_val2017.json"}


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupt or incomplete (the message names it)."""


def md5sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: str | os.PathLike, md5: str | None = None, retries: int = 5,
          timeout: float = 60.0, backoff: float = 1.0) -> Path:
    """Downloads ``url`` to ``dest``, resuming ``dest.part``; verifies ``md5`` before renaming."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                if have and resp.status != 206:  # server ignored the Range: start over
                    have = 0
                # expected final size: Content-Range's total, or what we had + Content-Length
                total = resp.headers.get("Content-Range", "").rpartition("/")[2]
                length = resp.headers.get("Content-Length", "")
                expected = (int(total) if total.isdigit()
                            else have + int(length) if length.isdigit() else None)
                with open(part, "ab" if have else "wb") as out:
                    while block := resp.read(1 << 20):
                        out.write(block)
            if expected is not None and part.stat().st_size < expected:
                raise ConnectionError(f"connection closed after {part.stat().st_size} of "
                                      f"{expected} bytes")
            break
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to fetch: the part is complete
                break
            raise DatasetError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            if attempt == retries:
                raise DatasetError(
                    f"could not download {url} ({e}); {part.stat().st_size if part.exists() else 0}"
                    f" bytes kept in {part}. Run the command again to resume, or put the file at "
                    f"{dest} yourself.") from e
            log.warning("download of %s interrupted (%s); resuming", url, e)
            time.sleep(backoff * (attempt + 1))
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            bad = part.with_name(part.name + ".bad")
            part.replace(bad)
            raise DatasetError(f"{dest}: md5 {got} does not match the expected {md5}; the "
                               f"download was moved to {bad}")
    part.replace(dest)
    return dest


def extract(zip_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Unzips into ``out_dir``, refusing members that would land outside it."""
    zip_path, out_dir = Path(zip_path), Path(out_dir).resolve()
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for name in zf.namelist():
                if not (out_dir / name).resolve().is_relative_to(out_dir):
                    raise DatasetError(f"{zip_path}: member {name!r} points outside {out_dir}")
            zf.extractall(out_dir)
    except zipfile.BadZipFile as e:
        raise DatasetError(f"{zip_path}: not a valid zip file ({e})") from e
    (out_dir / f".{zip_path.name}.extracted").touch()


def download_coco(datadir: str | os.PathLike, files: dict[str, tuple[str, str]] | None = None,
                  expected_images: dict[str, int] | None = None, keep_zips: bool = True,
                  retries: int = 5) -> list[str]:
    """Fetches, verifies, extracts and checks COCO 2017 under ``datadir``; returns the report."""
    datadir = Path(datadir)
    files = COCO2017 if files is None else files
    for name, (url, md5) in files.items():
        zip_path = datadir / name
        if (datadir / f".{name}.extracted").exists():
            log.info("%s already extracted", name)
            continue
        if zip_path.exists():
            if md5sum(zip_path) != md5:
                raise DatasetError(f"{zip_path}: exists but its md5 is not {md5}; delete it to "
                                   f"download again")
        else:
            fetch(url, zip_path, md5, retries=retries)
        extract(zip_path, datadir)
        if not keep_zips:
            zip_path.unlink()
    return verify_coco(datadir, files, expected_images)


def verify_coco(datadir: str | os.PathLike, files: dict[str, tuple[str, str]] | None = None,
                expected_images: dict[str, int] | None = None, check_zips: bool = True
                ) -> list[str]:
    """Checks a COCO copy (zips and/or extracted): md5s, image counts, annotation files.

    Returns the lines of a report; raises ``DatasetError`` listing every problem found.
    """

    datadir = Path(datadir)
    files = COCO2017 if files is None else files
    expected = EXPECTED_IMAGES if expected_images is None else expected_images
    report, problems = [], []
    if not datadir.is_dir():
        raise DatasetError(f"{datadir}: no such directory")
    for name, (_, md5) in files.items():
        p = datadir / name
        if p.exists() and check_zips:
            got = md5sum(p)
            (report if got == md5 else problems).append(
                f"{p}: md5 {'ok' if got == md5 else f'{got}, expected {md5}'}")
    for split, count in expected.items():
        folder = datadir / split
        if not folder.is_dir():
            problems.append(f"{folder}: missing (extract {split}.zip there)")
            continue
        n = sum(1 for f in os.scandir(folder) if f.name.endswith(".jpg"))
        (report if n == count else problems).append(f"{folder}: {n} images, expected {count}")
        ann = datadir / ANNOTATIONS[split]
        try:
            coco = load_coco_json(ann)
            report.append(f"{ann}: {len(coco.imgs)} images, {len(coco.anns)} annotations, "
                          f"{len(coco.cats)} categories")
            if len(coco.imgs) != count:
                problems.append(f"{ann}: lists {len(coco.imgs)} images, expected {count}")
        except (OSError, ValueError) as e:
            problems.append(str(e))
    if problems:
        raise DatasetError("dataset check failed:\n  " + "\n  ".join(problems))
    return report
