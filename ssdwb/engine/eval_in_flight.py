"""Evaluation off the critical path (``async_eval``): every rank infers, rank 0's scorer process
scores while all ranks go on training, and the result is applied at the next log interval after
it lands (or at the next evaluation, or at the end, whichever comes first).

Nothing is lost to a kill: the raw detections are on disk (``detections_epochN.json``) before the
next checkpoint, which records the scoring in flight; ``--resume`` scores them again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ssdwb.engine.distributed import long_wait
from ssdwb.evaluation.scorer import Scorer

__all__ = ["EvalInFlight", "read_detections"]


def read_detections(path: Path) -> np.ndarray:
    """A ``detections_epochN.json`` back as the array [N, 7] it was written from."""
    rows = json.loads(Path(path).read_text())
    return np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in rows],
                    dtype=np.float64).reshape(-1, 7)


class EvalInFlight:
    """At most one scoring in flight: rank 0 holds the scorer and the detections; every rank
    knows which epoch is pending (``RunState.pending_eval``).

    Args:
        ann_file: the val annotations.
        backend: ``coco_eval``'s backend.
        main: this is rank 0.
    """

    def __init__(self, ann_file: str | Path, backend: str, main: bool):
        self.ann_file, self.backend, self.main = str(ann_file), backend, main
        self.scorer: Scorer | None = None
        self.results: np.ndarray | None = None  # rank 0: the pending epoch's detections

    def submit(self, epoch: int, iteration: int, results: np.ndarray | None) -> None:
        """Rank 0 starts scoring ``results`` (the other ranks pass None)."""
        if self.main:
            if self.scorer is None:
                self.scorer = Scorer(self.ann_file, self.backend)
            self.scorer.submit(epoch, iteration, results)
            self.results = results

    def ready(self) -> bool:
        """Rank 0: a result is waiting (other ranks: False; the log window shares it)."""
        return self.main and self.scorer is not None and self.scorer.ready()

    def take(self) -> tuple[dict | None, np.ndarray | None]:
        """Rank 0: the pending result, waiting for it; ``(None, None)`` elsewhere."""
        if not self.main:
            return None, None
        _, _, stats = self.scorer.result()
        results, self.results = self.results, None
        return stats, results

    def take_shared(self, side_group, long_timeout_s: int
                    ) -> tuple[float, dict | None, np.ndarray | None]:
        """Waits for the pending result; every rank learns its mAP (rank 0 also its stats and
        detections). ``side_group``: the gloo group of the long waits (None on one rank)."""
        stats, results = self.take()
        box = [stats["mAP"] if self.main else 0.0]
        if side_group is not None:
            long_wait(side_group, long_timeout_s)  # rank 0 waits for its scorer
            torch.distributed.broadcast_object_list(box, src=0)
        return box[0], stats, results

    def score_again(self, run_dir: Path, epoch: int, iteration: int) -> None:
        """After a resume: rank 0 scores the pending epoch's detections file again."""
        if self.main:
            self.submit(epoch, iteration, read_detections(run_dir / f"detections_epoch{epoch}.json"))

    def close(self) -> None:
        if self.scorer is not None:
            self.scorer.close()
            self.scorer = None
