"""Where a dataset's files are: a dataset file, the COCO 2017 layout or the synthetic set's.

A dataset file (``.yaml``/``.yml`` or ``.json``) names each split's image folder and COCO
annotation file, relative to the file's folder (absolute paths allowed)::

    name: my-parts                      # optional (default: the file's stem)
    train: {images: photos, annotations: labels/train.json}
    val:   {images: photos, annotations: labels/val.json}

A ``.json`` dataset file is told from a COCO annotation file by its ``train``/``val`` keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["resolve_data", "read_dataset_file", "DATASET_SUFFIXES"]

DATASET_SUFFIXES = (".yaml", ".yml", ".json")
_FOLDER_LAYOUTS = (("coco2017", "train2017", "val2017", "instances_train2017.json",
                    "instances_val2017.json"),
                   ("synthetic", "train", "val", "instances_train.json", "instances_val.json"))


def _load_mapping(path: Path) -> Any:
    """The parsed YAML or JSON of a dataset file (``ValueError`` naming it when it does not
    parse)."""
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"dataset file {path}: not valid JSON ({e})") from e
    # lazy: PyYAML is only needed by datasets given as a YAML file
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"dataset file {path}: not valid YAML ({e})") from e


def _split_paths(path: Path, spec: Any, split: str) -> tuple[Path, Path]:
    """``(image folder, annotation file)`` of one split of a dataset file, checked to exist."""
    if not isinstance(spec, dict):
        raise ValueError(f"dataset file {path}: '{split}' must be a mapping with 'images' and "
                         f"'annotations', found {type(spec).__name__}")
    missing = [k for k in ("images", "annotations") if k not in spec]
    if missing:
        raise ValueError(f"dataset file {path}: '{split}' has no {' or '.join(map(repr, missing))}"
                         f" (expected {split}: {{images: FOLDER, annotations: FILE.json}})")
    out = []
    for key in ("images", "annotations"):
        if not isinstance(spec[key], str) or not spec[key]:
            raise ValueError(f"dataset file {path}: '{split}.{key}' must be a path, found "
                             f"{spec[key]!r}")
        p = path.parent / os.path.expanduser(spec[key])  # an absolute path replaces the folder
        ok = p.is_dir() if key == "images" else p.is_file()
        if not ok:
            raise FileNotFoundError(f"dataset file {path}: '{split}.{key}' is {spec[key]!r}, "
                                    f"but {p} is not {'a folder' if key == 'images' else 'a file'}")
        out.append(p)
    return out[0], out[1]


def read_dataset_file(path: str | os.PathLike) -> dict[str, Any]:
    """The paths a dataset file names (module docstring), as :func:`resolve_data` returns them.

    Raises ``FileNotFoundError`` (the file, or a path it names, is missing) or ``ValueError``
    (not YAML/JSON, not a mapping, a COCO annotation file, a missing key), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    if path.suffix.lower() not in DATASET_SUFFIXES:
        raise ValueError(f"{path}: a dataset file ends in {', '.join(DATASET_SUFFIXES)}")
    spec = _load_mapping(path)
    if isinstance(spec, dict) and "images" in spec and "annotations" in spec and not (
            "train" in spec or "val" in spec):
        raise ValueError(f"{path} is a COCO annotation file, not a dataset file: split it into "
                         f"train and val with `ssdwb data split {path} --val 0.1 --out DIR`, then "
                         f"use DIR/dataset.yaml")
    if not isinstance(spec, dict):
        raise ValueError(f"dataset file {path}: expected a mapping with 'train' and 'val', found "
                         f"{type(spec).__name__}")
    missing = [k for k in ("train", "val") if k not in spec]
    if missing:
        raise ValueError(f"dataset file {path}: missing key(s) {missing} (expected train: "
                         f"{{images: ..., annotations: ...}} and val: {{...}})")
    name = spec.get("name") or path.stem
    if not isinstance(name, str):
        raise ValueError(f"dataset file {path}: 'name' must be a string, found {name!r}")
    train_images, train_ann = _split_paths(path, spec["train"], "train")
    val_images, val_ann = _split_paths(path, spec["val"], "val")
    return {"train_images": train_images, "val_images": val_images, "train_ann": train_ann,
            "val_ann": val_ann, "name": name, "kind": "file", "source": path}


def resolve_data(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Image folders and annotation files of a dataset: a dataset file, or a folder with the
    COCO 2017 or the synthetic layout.

    Returns:
        ``train_images``, ``val_images`` (folders), ``train_ann``, ``val_ann`` (COCO JSON files)
        as ``Path``s; ``name`` (str: the file's ``name`` or stem, or the folder's name, e.g. for
        ``anchors/<name>.json``), ``kind`` (``"file"``, ``"coco2017"`` or ``"synthetic"``) and
        ``source`` (the ``Path`` given).

    Raises ``FileNotFoundError`` or ``ValueError`` naming the file or folder and the problem.
    """
    root = Path(data_dir)
    if root.is_file() or root.suffix.lower() in DATASET_SUFFIXES:
        return read_dataset_file(root)
    for kind, tr, va, tra, vaa in _FOLDER_LAYOUTS:
        paths = {"train_images": root / tr, "val_images": root / va,
                 "train_ann": root / "annotations" / tra, "val_ann": root / "annotations" / vaa}
        if paths["train_ann"].exists() or paths["val_ann"].exists():
            return {**paths, "name": root.resolve().name, "kind": kind, "source": root}
    raise FileNotFoundError(
        f"{root}: no dataset file, COCO 2017 (annotations/instances_train2017.json) or synthetic "
        f"(annotations/instances_train.json) dataset here. Make one with `ssdwb data synth {root}`"
        f", fetch COCO with `ssdwb data download {root}`, or write a dataset file (docs/data.md).")
