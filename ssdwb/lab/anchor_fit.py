"""Fitting default boxes to a dataset's objects: ``ssdwb anchors fit --data DIR [--budget N]``.

A design keeps SSD300's six grids (38x38 ... 1x1 cells, the feature maps the network makes) and
chooses the box types of each level: a (w, h) per type, repeated at every cell. A type at level
``k`` costs ``f_k**2`` boxes (1444 at 38x38, 1 at 1x1); the budget bounds the total, by default
the reference's 8732.

What is maximised: the share of GT boxes that some default box covers with IoU > 0.5 (the
positives-before-forced-match criterion of the encoder), per COCO size bin (small, medium,
large, on the original image's pixel area; empty bins left out), as
``0.5 * worst bin + 0.5 * mean of the bins``: half the score is the worst-served bin's (with
three bins it weighs 4x each other bin). A small term,
``1e-3 * mean best IoU``, breaks ties once coverage saturates, so left-over budget still goes
where boxes fit better.

How (vectorised; its time on 100k GT boxes: docs/anchors.md):

1. Candidates per level: scales (geometric, 8 to 320 px, within 0.75 to 12 times the level's
   step) x aspect ratios (w:h from 1:8 to 8:1), plus the reference's own box types.
2. The best IoU of every GT box with every candidate type: a type's boxes on one level form a
   grid of equal boxes, and the overlap along x only shrinks as the centres move apart (and
   likewise along y), so the best box of the grid is the one at the nearest centre column and
   nearest centre row. One [N, candidates] matrix, no [N, P] IoU with every prior
   (:func:`best_iou_per_type`; equal to ``anchors.coverage``'s ``box_iou`` within float
   rounding, a test checks it).
3. Greedy: one type per level first (the best for that level), then the type with the largest
   gain per box cost, while the budget allows (at most ``max_types`` per level).
4. Local search: swap each chosen type for a better one of the same level (same cost), twice.
   The same swaps are tried from the reference design, and the better of the two results is
   kept, so the fit does not score below the reference on the fit sample when the budget and
   ``max_types`` hold it (up to the 0.01 px rounding of the candidates and the tie-break
   term's subset of rows).

The search runs on a random sample of ``sample`` GT boxes (seeded); the report's coverage is
computed on all of them.
"""

from __future__ import annotations

import math
import time

import torch

from ssdwb.ssd.anchors import SIZE_BINS, DefaultBoxes, dboxes300_coco

__all__ = ["fit_design", "best_iou_per_type", "design_coverage", "objective", "SCALES", "RATIOS"]

SCALES = [8.0 * (320.0 / 8.0) ** (i / 19) for i in range(20)]  # px at 300: 8 ... 320, x1.21
# A level's scales, as multiples of its step (the distance between centres): smaller boxes never
# reach IoU 0.5 away from a centre, much larger ones belong to a coarser, cheaper level.
STEP_WINDOW = (0.75, 12.0)
RATIOS = [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]  # w:h and their inverses (h:w)
THRESHOLD = 0.5
TIE_WEIGHT = 1e-3
TIE_ROWS = 4096  # GT boxes the tie-break term is computed on during the search


def _level_centres(dboxes: DefaultBoxes) -> list[torch.Tensor]:
    """Per level, the sorted centre coordinates (float32, clamped) the design's grid uses, in
    ``DefaultBoxes``' arithmetic."""
    out = []
    for lv in dboxes.levels:
        fk = dboxes.fig_size / lv.step
        c = ((torch.arange(lv.feature_size, dtype=torch.float64) + 0.5) / fk).to(torch.float32)
        out.append(c.clamp_(0.0, 1.0))
    return out


def _nearest(centres: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """For each value, the nearest of the sorted ``centres`` (Tensor[N])."""
    if centres.numel() == 1:
        return centres.expand_as(values)
    i = torch.searchsorted(centres.contiguous(), values).clamp_(1, centres.numel() - 1)
    lo, hi = centres[i - 1], centres[i]
    return torch.where((values - lo).abs() <= (hi - values).abs(), lo, hi)


def best_iou_per_type(gt: torch.Tensor, centres: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
    """Best IoU of each GT box with each box type of one level's grid.

    Args:
        gt (Tensor[N, 4]): (x1, y1, x2, y2), fractions of the image.
        centres (Tensor[F]): the level's centre coordinates (same along x and y), sorted.
        wh (Tensor[T, 2]): box sizes (w, h), fractions of the image (clamped to 1 as
            ``DefaultBoxes`` does).

    Returns:
        Tensor[N, T] float32.
    """
    gt = gt.to(torch.float32)
    wh = wh.to(torch.float32).clamp(0.0, 1.0)
    cx = _nearest(centres, 0.5 * (gt[:, 0] + gt[:, 2]))[:, None]
    cy = _nearest(centres, 0.5 * (gt[:, 1] + gt[:, 3]))[:, None]
    w, h = wh[None, :, 0], wh[None, :, 1]
    x1, x2, y1, y2 = cx - 0.5 * w, cx + 0.5 * w, cy - 0.5 * h, cy + 0.5 * h
    iw = (torch.minimum(gt[:, 2:3], x2) - torch.maximum(gt[:, 0:1], x1)).clamp_(min=0)
    ih = (torch.minimum(gt[:, 3:4], y2) - torch.maximum(gt[:, 1:2], y1)).clamp_(min=0)
    inter = iw * ih
    area_gt = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[:, None]
    return inter / (area_gt + (x2 - x1) * (y2 - y1) - inter)


def _type_matrix(dboxes: DefaultBoxes, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best IoU of each GT box with each (level, type) of a design: Tensor[N, sum T], and the
    level of each column (Tensor[sum T])."""
    cols, levels = [], []
    for lv, c in zip(dboxes.levels, _level_centres(dboxes)):
        cols.append(best_iou_per_type(gt, c, torch.tensor(lv.sizes, dtype=torch.float64)))
        levels += [lv.index] * lv.num_types
    return torch.cat(cols, 1), torch.tensor(levels)


def _bins(areas: torch.Tensor) -> torch.Tensor:
    """One-hot [N, B] float32 of the non-empty COCO size bins."""
    areas = torch.as_tensor(areas, dtype=torch.float64).reshape(-1)
    cols = [((areas >= lo) & (areas < hi)) for lo, hi in SIZE_BINS.values()]
    cols = [c for c in cols if bool(c.any())]
    if not cols:
        raise ValueError("no GT boxes to fit the default boxes to")
    return torch.stack(cols, 1).to(torch.float32)


def objective(best: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """The fit's score of best IoUs ``best`` (Tensor[N] or [N, C]: one design per column):
    ``0.5 * worst bin's coverage + 0.5 * mean coverage + 1e-3 * mean best IoU`` (module
    docstring). Returns Tensor[] or Tensor[C]."""
    flat = best.dim() == 1
    b = best[:, None] if flat else best
    share = onehot.t() @ (b > THRESHOLD).to(torch.float32) / onehot.sum(0)[:, None]  # [B, C]
    score = 0.5 * share.min(0).values + 0.5 * share.mean(0) + TIE_WEIGHT * b.mean(0)
    return score[0] if flat else score


def design_coverage(dboxes: DefaultBoxes, gt: torch.Tensor, areas: torch.Tensor) -> dict:
    """Share of GT boxes with best IoU > 0.5 per size bin (``all``, ``small``, ...; NaN when a
    bin is empty), the mean best IoU and the objective, through :func:`best_iou_per_type`."""
    best = _type_matrix(dboxes, gt)[0].max(1).values if len(gt) else torch.zeros(0)
    areas = torch.as_tensor(areas, dtype=torch.float64).reshape(-1)
    out = {}
    for name, (lo, hi) in {"all": (-math.inf, math.inf), **SIZE_BINS}.items():
        m = (areas >= lo) & (areas < hi)
        out[name] = float((best[m] > THRESHOLD).float().mean()) if bool(m.any()) else math.nan
    out["mean_best_iou"] = float(best.mean()) if len(best) else math.nan
    out["objective"] = float(objective(best, _bins(areas))) if len(best) else math.nan
    return out


def _candidates(reference: DefaultBoxes) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate (w, h) in pixels (Tensor[C, 2] float64, rounded to 0.01 px) and their levels
    (Tensor[C]): every scale x ratio at every level, plus the reference's own types."""
    wh = set()
    for s in SCALES:
        for r in RATIOS:
            for a in {r, 1.0 / r}:
                wh.add((round(s * math.sqrt(a), 2), round(s / math.sqrt(a), 2)))
    sizes, levels = [], []
    for lv in reference.levels:
        own = {(round(w * reference.fig_size, 2), round(h * reference.fig_size, 2))
               for w, h in lv.sizes}
        lo, hi = (m * lv.step for m in STEP_WINDOW)
        # wider or taller than the image: the same prior as the clamped size, so left out
        here = {(w, h) for w, h in wh if lo <= math.sqrt(w * h) <= hi
                and max(w, h) <= reference.fig_size}
        for w, h in sorted(here | own):
            sizes.append((w, h))
            levels.append(lv.index)
    return torch.tensor(sizes, dtype=torch.float64), torch.tensor(levels)


class _Search:
    """The greedy search over candidate box types (module docstring), on the fit sample.

    Scoring a column added to the current best IoUs needs no [N, C] temporary per try: coverage
    gains are one masked matmul with the precomputed hits; the tie-break term is taken on a
    fixed subset of rows (it only orders designs of equal coverage).
    """

    def __init__(self, fit_gt: torch.Tensor, fit_areas: torch.Tensor, reference: DefaultBoxes,
                 budget: int, max_types: int, seed: int):
        self.sizes, self.level_of = _candidates(reference)
        self.fs = [lv.feature_size for lv in reference.levels]
        self.budget, self.max_types = budget, max_types
        self.onehot = _bins(fit_areas)
        iou = torch.empty(fit_gt.shape[0], self.sizes.shape[0])
        for k, c in enumerate(_level_centres(reference)):
            m = self.level_of == k
            iou[:, m] = best_iou_per_type(fit_gt, c, self.sizes[m] / reference.fig_size)
        self.iou = iou
        self.cost = torch.tensor([self.fs[k] ** 2 for k in self.level_of.tolist()],
                                 dtype=torch.float32)
        self.hit = (iou > THRESHOLD).to(torch.float32)
        self.per_bin = self.onehot.sum(0)
        tie_rows = torch.randperm(iou.shape[0], generator=torch.Generator().manual_seed(seed + 1))
        self.iou_tie = iou[tie_rows[:TIE_ROWS]]
        self.tie_rows = tie_rows[:TIE_ROWS]
        self.by_type = iou.t().contiguous()  # [C, N]: a design's columns are rows, cheap to gather

    def score_of(self, best: torch.Tensor) -> float:
        """The objective of best IoUs (Tensor[N]) on the fit sample."""
        share = self.onehot.t() @ (best > THRESHOLD).to(torch.float32) / self.per_bin
        return float(0.5 * share.min() + 0.5 * share.mean()
                     + TIE_WEIGHT * best[self.tie_rows].mean())

    def score_with(self, best: torch.Tensor, cols=None) -> torch.Tensor:
        """The objective with each column (all, or ``cols``) added: Tensor[C]."""
        cov = best > THRESHOLD
        h, ht = ((self.hit, self.iou_tie) if cols is None
                 else (self.hit[:, cols], self.iou_tie[:, cols]))
        share = ((self.onehot.t() @ cov.to(torch.float32))[:, None]
                 + (self.onehot * (~cov)[:, None]).t() @ h)
        share = share / self.per_bin[:, None]
        tie = torch.maximum(best[self.tie_rows, None], ht).mean(0)
        return 0.5 * share.min(0).values + 0.5 * share.mean(0) + TIE_WEIGHT * tie

    def best_of(self, chosen: list[int]) -> torch.Tensor:
        return self.by_type[chosen].max(0).values if chosen else torch.zeros(self.iou.shape[0])

    def local_search(self, chosen: list[int]) -> list[int]:
        """Swaps each chosen type for the best other type of its level, twice at most."""
        for _ in range(2):
            improved = False
            for p in range(len(chosen)):
                others = chosen[:p] + chosen[p + 1:]
                base = self.best_of(others)
                same = (self.level_of == self.level_of[chosen[p]])
                same[others] = False
                same = same.nonzero().flatten()
                scores = self.score_with(base, same)
                j = int(scores.argmax())
                if float(scores[j]) > self.score_of(torch.maximum(base, self.iou[:, chosen[p]])) + 1e-9:
                    chosen[p] = int(same[j])
                    improved = True
            if not improved:
                break
        return chosen

    def grow(self, chosen: list[int]) -> list[int]:
        """Adds the type of best gain per box while the budget and ``max_types`` allow."""
        chosen = list(chosen)
        while True:
            best = self.best_of(chosen)
            used = float(self.cost[chosen].sum())
            counts = torch.bincount(self.level_of[chosen], minlength=len(self.fs))
            ok = (self.cost <= self.budget - used) & (counts[self.level_of] < self.max_types)
            ok[chosen] = False
            if not bool(ok.any()):
                return chosen
            gain = self.score_with(best) - self.score_of(best)
            gain = torch.where(ok, gain / self.cost, -math.inf)
            c = int(gain.argmax())
            if float(gain[c]) * float(self.cost[c]) <= 1e-9:
                return chosen
            chosen.append(c)

    def starts(self, reference: DefaultBoxes) -> list[list[int]]:
        """One type per level (finest level first, each the best given those before it), and
        the reference's own types when the budget and ``max_types`` hold them."""
        seed_types: list[int] = []
        for k in range(len(self.fs)):
            cols = (self.level_of == k).nonzero().flatten()
            seed_types.append(int(cols[int(self.score_with(self.best_of(seed_types),
                                                           cols).argmax())]))
        starts = [seed_types]
        if (reference.num_priors <= self.budget
                and max(reference.num_defaults_per_cell) <= self.max_types):
            own = []
            for lv in reference.levels:
                for w, h in lv.sizes:
                    match = ((self.level_of == lv.index)
                             & (self.sizes[:, 0] == round(w * reference.fig_size, 2))
                             & (self.sizes[:, 1] == round(h * reference.fig_size, 2)))
                    own.append(int(match.nonzero().flatten()[0]))
            starts.append(own)
        return starts

    def design(self, chosen: list[int], reference: DefaultBoxes) -> DefaultBoxes:
        box_types = []
        for k in range(len(self.fs)):
            mine = sorted({(float(self.sizes[c, 0]), float(self.sizes[c, 1])) for c in chosen
                           if int(self.level_of[c]) == k},
                          key=lambda wh: (wh[0] * wh[1], wh[0] / wh[1]))
            box_types.append(mine)
        return DefaultBoxes(reference.fig_size, list(reference.feature_sizes),
                            list(reference.steps), box_types=box_types,
                            scale_xy=reference.scale_xy, scale_wh=reference.scale_wh)


def fit_design(gt_boxes: torch.Tensor, areas: torch.Tensor, budget: int = 8732,
               max_types: int = 8, sample: int = 20000, seed: int = 0,
               reference: DefaultBoxes | None = None) -> tuple[DefaultBoxes, dict]:
    """Searches box types per level for a set of GT boxes (module docstring).

    Args:
        gt_boxes (Tensor[N, 4]): (x1, y1, x2, y2), fractions of the image (``all_boxes()``).
        areas (Tensor[N]): their areas in pixels of the original images (COCO's size bins).
        budget: most default boxes in all (the reference has 8732).
        max_types: most box types per level (each adds 4 + C head channels per cell).
        sample: GT boxes the search looks at (a seeded random subset when there are more).
        reference: the design whose grids are kept and which the search also starts from
            (default ``dboxes300_coco()``).

    Returns:
        ``(design, report)``: the fitted ``DefaultBoxes`` (``box_types``) and a dict with the
        budget, boxes used, seconds, and ``coverage`` of ``reference`` and ``fitted`` on all the
        GT boxes (:func:`design_coverage`).
    """
    t0 = time.perf_counter()
    reference = reference or dboxes300_coco()
    gt = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
    areas = torch.as_tensor(areas, dtype=torch.float64).reshape(-1)
    if gt.shape[0] != areas.shape[0]:
        raise ValueError(f"{gt.shape[0]} boxes but {areas.shape[0]} areas")
    fs = [lv.feature_size for lv in reference.levels]
    if max_types < 1:
        raise ValueError(f"max_types must be at least 1, not {max_types}")
    if budget < sum(f * f for f in fs):
        raise ValueError(f"budget {budget}: one box type per level already needs "
                         f"{sum(f * f for f in fs)} boxes")
    if gt.shape[0] > sample:
        keep = torch.randperm(gt.shape[0], generator=torch.Generator().manual_seed(seed))[:sample]
        fit_gt, fit_areas = gt[keep], areas[keep]
    else:
        fit_gt, fit_areas = gt, areas
    search = _Search(fit_gt, fit_areas, reference, budget, max_types, seed)
    results = []
    for start in search.starts(reference):
        chosen = search.grow(search.local_search(search.grow(start)))
        results.append((search.score_of(search.best_of(chosen)), chosen))
    _, chosen = max(results, key=lambda r: r[0])
    design = search.design(chosen, reference)
    report = {
        "budget": int(budget), "boxes": design.num_priors,
        "types_per_level": design.num_defaults_per_cell, "gt_boxes": int(gt.shape[0]),
        "fit_sample": int(fit_gt.shape[0]), "seed": int(seed), "max_types": int(max_types),
        "coverage": {"reference": design_coverage(reference, gt, areas),
                     "fitted": design_coverage(design, gt, areas)},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return design, report
