"""Default boxes (anchors) of SSD300, exactly as the MLPerf v0.6 reference builds them.

Box order: level, then box type, then row ``i``, then column ``j``. Per level ``k`` the box types
are: square ``s_k``, square ``sqrt(s_k * s_{k+1})``, then for each aspect ratio ``a`` the pair
``(s_k*sqrt(a), s_k/sqrt(a))`` followed by its swap, where ``s_k = scales[k] / fig_size``.
Centres are ``((j + .5) / f_k, (i + .5) / f_k)`` with ``f_k = fig_size / steps[k]`` (37.5 for the
first level: centres past 1 are possible and get clamped).

The reference clamps all four ``xywh`` components to [0, 1] and derives ``ltrb`` from the clamped
``xywh`` without clamping again; IoU matching uses ``ltrb``. Everything here is float32: the
reference computed in Python doubles and stored float32, which is what we do too (computing in
float64, rounding once).

A design other than the reference's (``ssdwb anchors fit``, ``ssdwb.lab.anchor_fit``) keeps the
grids (feature sizes, steps) and lists its box types per level explicitly as (w, h) in pixels
(``box_types``) instead of deriving them from scales and aspect ratios. Designs travel as plain
dicts (:meth:`DefaultBoxes.to_dict`, a design JSON file, a checkpoint's ``"anchors"``);
:func:`default_boxes` builds one from ``"reference"``, a file or such a dict.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.ops import box_iou

from ssdwb.files import atomic_json, resolve_path

__all__ = ["DefaultBoxes", "dboxes300_coco", "default_boxes", "load_design", "save_design",
           "coverage", "coverage_summary", "SIZE_BINS", "DESIGN_FORMAT"]

DESIGN_FORMAT = "ssdwb-anchors/1"


@dataclass(frozen=True)
class LevelInfo:
    """One feature level: its boxes are ``xywh[start:stop]``, laid out as [types, rows, cols]."""

    index: int
    feature_size: int
    step: float
    num_types: int
    start: int
    stop: int
    sizes: tuple[tuple[float, float], ...]  # (w, h) per box type, fractions of the image

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass
class DefaultBoxes:
    """Default boxes for one input size and anchor design.

    Args:
        fig_size: input image side in pixels (300 for SSD300).
        feature_sizes: side of each feature map, e.g. ``[38, 19, 10, 5, 3, 1]``.
        steps: pixel stride of each level, e.g. ``[8, 16, 32, 64, 100, 300]``.
        scales: ``len(feature_sizes) + 1`` box scales in pixels.
        aspect_ratios: per level, the ratios ``a`` besides 1 (each adds two box types).
        box_types: instead of ``scales`` and ``aspect_ratios``: per level, the (w, h) of each box
            type in pixels (a fitted design). Same layout, centres and clamping.
        scale_xy, scale_wh: variances used by the box coder (0.1 and 0.2 in the reference).

    Attributes:
        xywh (Tensor[P, 4]): (cx, cy, w, h), fractions of the image, clamped to [0, 1], float32.
        ltrb (Tensor[P, 4]): (x1, y1, x2, y2) computed from the clamped ``xywh``, not clamped.
        levels (list[LevelInfo]): per-level slices and box sizes.
    """

    fig_size: int
    feature_sizes: list[int]
    steps: list[float]
    scales: list[float] | None = None
    aspect_ratios: list[list[float]] | None = None
    box_types: list[list[tuple[float, float]]] | None = None
    scale_xy: float = 0.1
    scale_wh: float = 0.2
    xywh: torch.Tensor = field(init=False, repr=False)
    ltrb: torch.Tensor = field(init=False, repr=False)
    levels: list[LevelInfo] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.feature_sizes)
        if len(self.steps) != n:
            raise ValueError(f"need {n} steps for {n} feature sizes; got {len(self.steps)}")
        if self.box_types is not None:
            if self.scales is not None or self.aspect_ratios is not None:
                raise ValueError("give box_types or scales and aspect_ratios, not both")
            if len(self.box_types) != n or any(len(t) == 0 for t in self.box_types):
                raise ValueError(f"box_types: need a non-empty list of (w, h) for each of the {n} "
                                 f"levels; got {[len(t) for t in self.box_types]}")
            bad = [wh for t in self.box_types for wh in t
                   if len(wh) != 2 or not all(math.isfinite(v) and v > 0 for v in wh)]
            if bad:
                raise ValueError(f"box_types: (w, h) must be two positive pixel sizes; got {bad[:3]}")
        elif self.scales is None or self.aspect_ratios is None or not (
                len(self.aspect_ratios) == n and len(self.scales) == n + 1):
            raise ValueError(
                f"need {n} aspect-ratio lists and {n + 1} scales for {n} feature sizes; got "
                f"{None if self.aspect_ratios is None else len(self.aspect_ratios)} and "
                f"{None if self.scales is None else len(self.scales)}")
        chunks, levels, start = [], [], 0
        for k, fsize in enumerate(self.feature_sizes):
            fk = self.fig_size / self.steps[k]
            if self.box_types is not None:
                sizes = [(float(w) / self.fig_size, float(h) / self.fig_size)
                         for w, h in self.box_types[k]]
            else:
                sk1 = self.scales[k] / self.fig_size
                sk2 = self.scales[k + 1] / self.fig_size
                sk3 = math.sqrt(sk1 * sk2)
                sizes = [(sk1, sk1), (sk3, sk3)]
                for a in self.aspect_ratios[k]:
                    w, h = sk1 * math.sqrt(a), sk1 / math.sqrt(a)
                    sizes += [(w, h), (h, w)]
            # float64 maths then one rounding to float32, as the reference's Python floats did.
            centres = (torch.arange(fsize, dtype=torch.float64) + 0.5) / fk
            cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # row i, column j
            wh = torch.tensor(sizes, dtype=torch.float64)  # [T, 2]
            t = len(sizes)
            boxes = torch.stack(
                [
                    cx.reshape(1, -1).expand(t, -1),
                    cy.reshape(1, -1).expand(t, -1),
                    wh[:, 0:1].expand(-1, fsize * fsize),
                    wh[:, 1:2].expand(-1, fsize * fsize),
                ],
                dim=-1,
            ).reshape(-1, 4)
            chunks.append(boxes)
            levels.append(LevelInfo(k, fsize, self.steps[k], t, start, start + t * fsize * fsize,
                                    tuple(sizes)))
            start += t * fsize * fsize
        xywh = torch.cat(chunks).to(torch.float32).clamp_(0.0, 1.0)
        ltrb = torch.empty_like(xywh)
        ltrb[:, :2] = xywh[:, :2] - 0.5 * xywh[:, 2:]
        ltrb[:, 2:] = xywh[:, :2] + 0.5 * xywh[:, 2:]
        self.xywh, self.ltrb, self.levels = xywh, ltrb, levels

    @property
    def num_priors(self) -> int:
        return self.xywh.shape[0]

    @property
    def num_defaults_per_cell(self) -> list[int]:
        """Box types per feature-map cell of each level (the heads' ``nd``): [4,6,6,6,4,4]."""
        return [lv.num_types for lv in self.levels]

    def level_of(self) -> torch.Tensor:
        """Tensor[P] int64: the level index of each default box."""
        return torch.repeat_interleave(
            torch.arange(len(self.levels)), torch.tensor([lv.stop - lv.start for lv in self.levels])
        )

    def view(self, level: int, box_type: int | None = None, order: str = "xywh") -> torch.Tensor:
        """Boxes of one level as Tensor[T, F, F, 4] (or [F, F, 4] for one ``box_type``)."""
        lv = self.levels[level]
        boxes = (self.xywh if order == "xywh" else self.ltrb)[lv.slice]
        boxes = boxes.reshape(lv.num_types, lv.feature_size, lv.feature_size, 4)
        return boxes if box_type is None else boxes[box_type]

    def to(self, device: torch.device | str) -> DefaultBoxes:
        """Moves the box tensors in place (float32 kept) and returns self."""
        self.xywh, self.ltrb = self.xywh.to(device), self.ltrb.to(device)
        return self

    def __call__(self, order: str = "ltrb") -> torch.Tensor:
        """The reference's call style: ``dboxes(order="xywh")``."""
        if order not in ("ltrb", "xywh"):
            raise ValueError(f"order must be 'ltrb' or 'xywh', not {order!r}")
        return self.ltrb if order == "ltrb" else self.xywh

    def to_dict(self) -> dict:
        """The design as plain data (JSON, a checkpoint's ``"anchors"``); :func:`default_boxes`
        rebuilds the same boxes from it, bit for bit."""
        d = {"format": DESIGN_FORMAT, "fig_size": self.fig_size,
             "feature_sizes": list(self.feature_sizes), "steps": list(self.steps)}
        if self.box_types is not None:
            d["box_types"] = [[[float(w), float(h)] for w, h in t] for t in self.box_types]
        else:
            d["scales"] = list(self.scales)
            d["aspect_ratios"] = [list(a) for a in self.aspect_ratios]
        d.update(scale_xy=self.scale_xy, scale_wh=self.scale_wh)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "design") -> DefaultBoxes:
        """Inverse of :meth:`to_dict`; extra keys (a fit's ``"fit"`` report) are ignored.
        Raises ValueError naming ``source`` for anything malformed."""
        if not isinstance(d, dict) or d.get("format") != DESIGN_FORMAT:
            raise ValueError(f"{source}: not an anchor design (expected \"format\": "
                             f"\"{DESIGN_FORMAT}\")")
        try:
            kw = {k: d[k] for k in ("fig_size", "feature_sizes", "steps")}
            for k in ("scales", "aspect_ratios", "box_types", "scale_xy", "scale_wh"):
                if k in d:
                    kw[k] = d[k]
            if "box_types" in kw:
                kw["box_types"] = [[(float(w), float(h)) for w, h in t] for t in kw["box_types"]]
            return cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: not a valid anchor design ({type(e).__name__}: {e})"
                             ) from e


def dboxes300_coco() -> DefaultBoxes:
    """The reference's 8732 default boxes for a 300x300 input."""
    return DefaultBoxes(
        fig_size=300,
        feature_sizes=[38, 19, 10, 5, 3, 1],
        steps=[8, 16, 32, 64, 100, 300],
        scales=[21, 45, 99, 153, 207, 261, 315],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
    )


def load_design(path: str | os.PathLike) -> DefaultBoxes:
    """A design JSON file (``ssdwb anchors fit`` writes them) -> :class:`DefaultBoxes`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no anchor design file there")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    return DefaultBoxes.from_dict(data, str(path))


def save_design(dboxes: DefaultBoxes, path: str | os.PathLike, **extra) -> Path:
    """Writes ``dboxes.to_dict()`` (plus ``extra`` keys, e.g. a fit report) atomically."""

    atomic_json({**dboxes.to_dict(), **extra}, path, indent=1)
    return Path(path)


def default_boxes(spec: str | os.PathLike | dict | None = "reference",
                  source: str = "design") -> DefaultBoxes:
    """The default boxes of a run: ``"reference"`` (or None: :func:`dboxes300_coco`, SPEC.md's
    8732), a design dict (a checkpoint's ``"anchors"``; ``source`` names it in errors) or a
    design file's path (relative paths from the project root, as ``data_dir``)."""
    if spec is None or spec == "reference":
        return dboxes300_coco()
    if isinstance(spec, dict):
        return DefaultBoxes.from_dict(spec, source)

    return load_design(resolve_path(spec))


# COCO's object-size bins, in pixel area of the original image.
SIZE_BINS = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, math.inf)}


def coverage(dboxes: DefaultBoxes, gt_boxes: torch.Tensor, iou_threshold: float = 0.5,
             chunk: int = 4096) -> dict[str, torch.Tensor]:
    """How well the default boxes cover a set of ground-truth boxes.

    Args:
        dboxes: the anchor design.
        gt_boxes (Tensor[N, 4]): (x1, y1, x2, y2) as fractions of the (resized) image.
        iou_threshold: a GT counts as covered when its best prior's IoU is above this.
        chunk: GT boxes per IoU block, to bound memory (N x 8732 floats per block).

    Returns:
        dict with ``best_iou`` (Tensor[N]), ``best_prior`` (Tensor[N] int64), ``best_level``
        (Tensor[N] int64), ``covered`` (Tensor[N] bool) and ``num_above`` (Tensor[N] int64, priors
        with IoU above the threshold, i.e. positives before the forced match).
    """

    gt = gt_boxes.to(torch.float32).reshape(-1, 4)
    level_of = dboxes.level_of()
    best_iou, best_prior, num_above = [], [], []
    for part in gt.split(chunk):
        iou = box_iou(part, dboxes.ltrb)
        v, i = iou.max(dim=1)
        best_iou.append(v)
        best_prior.append(i)
        num_above.append((iou > iou_threshold).sum(dim=1))
    if gt.shape[0] == 0:
        empty = torch.zeros(0)
        return {"best_iou": empty, "best_prior": empty.long(), "best_level": empty.long(),
                "covered": empty.bool(), "num_above": empty.long()}
    best_iou_t, best_prior_t = torch.cat(best_iou), torch.cat(best_prior)
    return {
        "best_iou": best_iou_t,
        "best_prior": best_prior_t,
        "best_level": level_of[best_prior_t],
        "covered": best_iou_t > iou_threshold,
        "num_above": torch.cat(num_above),
    }


def coverage_summary(dboxes: DefaultBoxes, gt_boxes: torch.Tensor, areas: torch.Tensor,
                     iou_threshold: float = 0.5) -> dict:
    """:func:`coverage` broken down the way the anchors notebook shows it.

    Args:
        gt_boxes (Tensor[N, 4]): (x1, y1, x2, y2) fractions of the image.
        areas (Tensor[N]): each box's area in pixels of the original image (COCO's size bins).

    Returns:
        the :func:`coverage` tensors plus ``share`` and ``count`` dicts keyed ``all``, ``small``,
        ``medium``, ``large`` (share of GT boxes covered; NaN for an empty bin), and
        ``by_level`` (Tensor[L] int64: GT boxes whose best prior is on each level).
    """
    res = coverage(dboxes, gt_boxes, iou_threshold)
    areas = torch.as_tensor(areas, dtype=torch.float64).reshape(-1)
    masks = {"all": torch.ones_like(areas, dtype=torch.bool)}
    masks.update({k: (areas >= lo) & (areas < hi) for k, (lo, hi) in SIZE_BINS.items()})
    res["count"] = {k: int(m.sum()) for k, m in masks.items()}
    res["share"] = {k: (float(res["covered"][m].float().mean()) if int(m.sum()) else math.nan)
                    for k, m in masks.items()}
    res["by_level"] = torch.bincount(res["best_level"], minlength=len(dboxes.levels))
    return res
