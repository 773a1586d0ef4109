"""How long ``ssdwb anchors fit`` takes on 100k GT boxes, and what the fit's exact coverage shortcut
saves against ``box_iou`` with every prior. One table per box mix, measured in this run.

    .venv/bin/python bench/bench_anchor_fit.py                 # 100k boxes, three mixes
    .venv/bin/python bench/bench_anchor_fit.py --boxes 2000    # a quick look

Mixes (random boxes on a 300x300 image, not images: the fit only sees boxes):
* ``square``: near-square boxes, sides 3 % to 70 % of the image (what the reference serves);
* ``thin``: bars 3:1 to 8:1 lying or standing (``--profile thin``'s shapes);
* ``small``: 70 % of the boxes under 32x32 px.

Columns: the fit's seconds (search on ``--sample`` boxes, coverage on all), and the coverage of
the reference and of the fitted design (share of GT boxes with best IoU > 0.5: all, and the worst
COCO size bin). Last: best IoU with all 8732 reference priors through the fit's per-type
nearest-centre IoU against ``anchors.coverage`` (``box_iou`` in blocks), seconds and ratio, and
the largest difference between the two (float rounding only). Target (issue 18): seconds on
100k boxes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssdwb.lab.anchor_fit import _type_matrix, fit_design
from ssdwb.ssd.anchors import coverage, dboxes300_coco


def boxes(mix: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(Tensor[n, 4] x1 y1 x2 y2 fractions, Tensor[n] areas in pixels of a 300x300 image)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = (0.01, 0.12) if mix == "small" else (0.03, 0.7)
    side = torch.exp(torch.empty(n).uniform_(math.log(lo), math.log(hi), generator=g))
    if mix == "small":
        big = torch.rand(n, generator=g) < 0.3
        side = torch.where(big, side * 5, side)
    ratio = (torch.exp(torch.empty(n).uniform_(math.log(3), math.log(8), generator=g))
             if mix == "thin" else torch.empty(n).uniform_(0.7, 1.4, generator=g))
    lying = torch.rand(n, generator=g) < 0.5
    w = torch.where(lying, side * ratio.sqrt(), side / ratio.sqrt()).clamp(0.005, 0.98)
    h = torch.where(lying, side / ratio.sqrt(), side * ratio.sqrt()).clamp(0.005, 0.98)
    x1, y1 = torch.rand(n, generator=g) * (1 - w), torch.rand(n, generator=g) * (1 - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], 1), (w * h * 300.0 * 300.0).double()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boxes", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=20_000, help="fit_design's search sample")
    ap.add_argument("--mixes", nargs="+", default=["square", "thin", "small"])
    ap.add_argument("--iou-boxes", type=int, default=20_000,
                    help="boxes of the last line's comparison (box_iou is the slow side)")
    args = ap.parse_args(argv)

    print(f"{args.boxes} GT boxes per mix, search on {min(args.sample, args.boxes)}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'mix':<8}{'fit s':>7}{'ref all':>9}{'ref worst':>10}{'fit all':>9}{'fit worst':>10}"
          f"{'boxes':>7}  types per level")
    for mix in args.mixes:
        gt, areas = boxes(mix, args.boxes)
        t = time.perf_counter()
        design, report = fit_design(gt, areas, sample=args.sample)
        secs = time.perf_counter() - t
        ref, fit = report["coverage"]["reference"], report["coverage"]["fitted"]

        def worst(c):
            return min(v for k, v in c.items() if k in ("small", "medium", "large")
                       and not math.isnan(v))

        print(f"{mix:<8}{secs:>7.1f}{ref['all']:>9.3f}{worst(ref):>10.3f}{fit['all']:>9.3f}"
              f"{worst(fit):>10.3f}{design.num_priors:>7}  {design.num_defaults_per_cell}")

    dboxes = dboxes300_coco()
    gt, _ = boxes("square", min(args.boxes, args.iou_boxes))
    t = time.perf_counter()
    fast = _type_matrix(dboxes, gt)[0].max(1).values
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = coverage(dboxes, gt)["best_iou"]
    t_slow = time.perf_counter() - t
    print(f"best IoU with the 8732 priors, {len(gt)} boxes: per-type nearest centre "
          f"{t_fast:.2f} s, box_iou {t_slow:.2f} s ({t_slow / max(t_fast, 1e-9):.1f}x); largest "
          f"difference {float((fast - slow).abs().max()):.1e}")


if __name__ == "__main__":
    main()
