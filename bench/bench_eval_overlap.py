"""Evaluation off the critical path: how long the training loop is blocked at each evaluation,
and the run's wall time, with inline scoring (``async_eval=off``) against the scorer process
(``async_eval=on``), side by side in one run on the synthetic set.

    .venv/bin/python bench/bench_eval_overlap.py                        # the demo model
    .venv/bin/python bench/bench_eval_overlap.py --width 1.0 --val 300  # the full-width model

Blocked: the seconds each evaluation keeps the loop from its next step (inference, then scoring
when inline; inference and handing the detections over when async). The async run's scoring
competes with training for the CPU cores, so its wall time tells whether that pays off here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ssdwb.config import preset
from ssdwb.data.synthetic import DEMO_SHAPES, make_shapes_coco
from ssdwb.engine import loop


def timed_run(data: Path, runs: Path, mode: str, args) -> tuple[list[float], float, list[float]]:
    """(seconds blocked per evaluation, wall seconds, mAP per evaluation) of one run."""
    blocked: list[float] = []
    evaluate = loop.Training.evaluate

    def timed(self, state, ep):
        t = time.perf_counter()
        try:
            return evaluate(self, state, ep)
        finally:
            blocked.append(time.perf_counter() - t)

    loop.Training.evaluate = timed
    try:
        config = preset("demo", data_dir=str(data), run_dir=str(runs), run_id=mode,
                        async_eval=mode, model_width=args.width, epochs=args.epochs,
                        eval_at=list(range(1, args.epochs + 1)), batch_size=args.batch,
                        eval_batch_size=args.batch, num_workers=0, amp="off",
                        channels_last=False, tensorboard=False, log_interval=5)
        t = time.perf_counter()
        summary = loop.train(config)
        wall = time.perf_counter() - t
    finally:
        loop.Training.evaluate = evaluate
    return blocked, wall, [e["mAP"] for e in summary["evals"]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=float, default=0.25, help="model width (demo: 0.25)")
    ap.add_argument("--train", type=int, default=160, help="train images")
    ap.add_argument("--val", type=int, default=64, help="val images")
    ap.add_argument("--epochs", type=int, default=3, help="epochs, each evaluated")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_coco(Path(tmp) / "data", args.train, args.val, seed=0, **DEMO_SHAPES)
        rows = {mode: timed_run(data, Path(tmp) / "runs", mode, args) for mode in ("off", "on")}
    print(f"bench_eval_overlap {time.strftime('%Y-%m-%d %H:%M')}: width {args.width}, "
          f"{args.train} train / {args.val} val images, {args.epochs} epochs, batch {args.batch}")
    print(f"{'async_eval':<11}{'blocked per evaluation (s)':<40}{'wall (s)':>9}  mAP per eval")
    for mode, (blocked, wall, maps) in rows.items():
        print(f"{mode:<11}{' '.join(f'{b:.2f}' for b in blocked):<40}{wall:>9.1f}  "
              f"{' '.join(f'{m:.4f}' for m in maps)}")
    (b_off, w_off, m_off), (b_on, w_on, m_on) = rows["off"], rows["on"]
    print(f"blocked at the evaluations before the last: inline {sum(b_off[:-1]):.2f} s, async "
          f"{sum(b_on[:-1]):.2f} s; wall async / inline {w_on / w_off:.2f}x; same mAPs: "
          f"{m_on == m_off}")


if __name__ == "__main__":
    sys.exit(main())
