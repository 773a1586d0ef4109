"""Where the project's relative paths point, and the one durable atomic write every writer uses.

Notebooks run with their own folder as the working directory and papermill with the caller's, so
relative paths (``data/shapes``, ``runs``) are taken from the project root, not the working
directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["project_root", "resolve_path", "atomic_write", "atomic_json"]


def project_root() -> Path:
    """``$SSDWB_ROOT`` if set (Slurm jobs, the container), else the checkout holding
    ``pyproject.toml`` (editable install), else the working directory."""
    if os.environ.get("SSDWB_ROOT"):
        return Path(os.environ["SSDWB_ROOT"])
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute paths stay; relative ones are taken from the project root, so ``data/shapes``
    means the same folder from a notebook, papermill, the CLI and Slurm."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else project_root() / p


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Writes ``path`` through ``write(binary file)`` into a temporary file beside it, fsyncs it,
    renames it over ``path`` and fsyncs the folder: a reader (or a crash, or a kill -9 at any
    moment) sees the old complete file or the new complete file, never a torn one; once this
    returns the new file survives a power loss too (the rename alone would not be durable).
    Missing parent folders are created (``anchors/`` in a fresh clone), durably too."""
    path = Path(path)
    created, folder = [], path.parent
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    for folder in created:  # each new folder's entry in its parent
        _fsync_dir(folder.parent)


def atomic_json(obj, path: str | os.PathLike, indent: int | None = 1) -> None:
    text = json.dumps(obj, indent=indent) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
