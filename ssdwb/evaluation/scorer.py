"""Scoring off the critical path: a process on rank 0 that runs ``coco_eval`` and the error
analysis on gathered detections while every rank goes on training (``async_eval``).

A process, not a thread: the GIL would slow the training loop. Spawned, not forked: CUDA is
initialised by then. It ignores SIGUSR1/SIGTERM, like the loader workers, so that Slurm's warning
before a time limit stops the training process cleanly and is not a "scorer crash". It returns
data (the stats); the run folder's files are written by rank 0. At most one scoring is in flight.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np

from ssdwb.data.coco import load_coco_json
from ssdwb.evaluation.coco_eval import coco_eval
from ssdwb.evaluation.error_analysis import error_analysis, errors_summary

__all__ = ["Scorer", "score"]

_gt = {}  # the scorer process's ground truth, by annotation file: loaded once


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def score(ann_file: str, results: np.ndarray, backend: str, errors: bool = True) -> dict:
    """The stats of ``results`` (array [N, 7]) against ``ann_file``: ``coco_eval``'s 12 numbers
    and, with ``errors``, the error analysis summary (what ``evaluation.inference.evaluate``
    returns)."""
    if ann_file not in _gt:
        _gt[ann_file] = load_coco_json(ann_file)
    coco = _gt[ann_file]
    stats = coco_eval(coco, results, backend)
    if errors:
        stats["errors"] = errors_summary(error_analysis(coco, results))
    return stats


class Scorer:
    """One scoring at a time in a spawned process.

    Args:
        ann_file: the val annotations (the process loads them on its first scoring).
        backend: ``coco_eval``'s backend.
    """

    def __init__(self, ann_file: str | os.PathLike, backend: str):
        self.ann_file, self.backend = str(ann_file), backend
        self.pool = ProcessPoolExecutor(max_workers=1,
                                        mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_ignore_stop_signals)
        self.future: Future | None = None
        self.epoch: int | None = None
        self.iteration: int | None = None

    @property
    def busy(self) -> bool:
        return self.future is not None

    def submit(self, epoch: int, iteration: int, results: np.ndarray) -> None:
        """Scores the detections of ``epoch`` (the model after ``iteration``)."""
        if self.busy:
            raise RuntimeError(f"scoring of epoch {self.epoch} still in flight")
        self.future = self.pool.submit(score, self.ann_file, results, self.backend)
        self.epoch, self.iteration = epoch, iteration

    def ready(self) -> bool:
        """A result (or the scorer's error) is waiting; does not block."""
        return self.future is not None and self.future.done()

    def result(self) -> tuple[int, int, dict]:
        """``(epoch, iteration, stats)`` of the scoring in flight, waiting for it. A crash of the
        scorer raises here, with its traceback."""
        try:
            stats = self.future.result()
        except Exception as e:
            raise RuntimeError(f"the scorer failed on epoch {self.epoch}'s detections: "
                               f"{type(e).__name__}: {e}") from e
        finally:
            self.future = None
        return self.epoch, self.iteration, stats

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
