"""Checkpoint files: the safe format (tensors and plain containers), RNG states, conversion of
the first format.

``torch.load(weights_only=True)`` cannot run code from a crafted file; RNG states are therefore
stored as tensors and plain lists, not as numpy objects.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from ssdwb.files import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "convert_checkpoint",
           "rng_state", "set_rng_state"]


CHECKPOINT_FORMAT = 2  # 2: tensors and plain containers only (loads with weights_only=True)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not fit the run."""


def rng_state() -> dict:
    """This process's RNG states as tensors and plain containers (safe to load)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": list(mt), "gauss": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "cached_gaussian": cached}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:


    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Reads a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers
    only, so a crafted file cannot run code. Raises ``CheckpointError`` (naming the file) for a
    file that holds anything else, such as a checkpoint of ssdwb's first format (numpy RNG
    states), which ``ssdwb checkpoint convert`` rewrites once the user says they trust it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"({first}). Nothing in it was run. If it is a checkpoint written by an older ssdwb "
            f"(RNG states as numpy objects) and you trust its source, convert it once with "
            f"`ssdwb checkpoint convert {path}`; a file of unknown origin should be deleted."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not an ssdwb checkpoint (no 'model' and 'config')")
    return ckpt


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Rewrites an older ssdwb checkpoint in the safe format. This unpickles ``src`` fully
    (``weights_only=False``): only for a file whose source the user trusts."""

    src = Path(src)
    dst = Path(dst) if dst else src
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{src}: not an ssdwb checkpoint (no 'model')")

    def safe(state):
        if "numpy" in state and isinstance(state["numpy"], tuple):
            name, keys, pos, has_gauss, cached = state["numpy"]
            version, mt, gauss = state["python"]
            state = {**state, "numpy": {"name": name, "keys": torch.from_numpy(
                np.asarray(keys).astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached)},
                "python": {"version": version, "state": list(mt), "gauss": gauss}}
        return state

    ckpt["rng"] = [safe(s) for s in ckpt.get("rng", [])]
    ckpt.setdefault("format", CHECKPOINT_FORMAT)
    atomic_write(dst, lambda f: torch.save(ckpt, f))
    load_checkpoint(dst)  # proves the result loads safely
    return dst
