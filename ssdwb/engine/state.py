"""What changes as a run goes, in one place: the checkpoint is built from it and restores it.

Also :class:`StopSignal`, which records Slurm's SIGTERM/SIGUSR1 for the loop to act on at its
next log point.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

__all__ = ["RunState", "StopSignal"]

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """The run's counters.

    Attributes:
        iteration: optimiser steps done, over the whole run.
        epoch: epochs finished (0-based index of the epoch in progress).
        position: batches of ``epoch`` already done (non-zero only when resuming mid-epoch).
        history: one dict per evaluation (epoch, iteration and the COCO stats).
        train_time: seconds trained by earlier processes of this run (resumes).
        bad_images: unreadable training images skipped so far.
        pending_eval: ``{"epoch", "iteration"}`` of a scoring in flight (``async_eval``), else
            None; a resumed run scores that epoch's detections file again.
        clock: when this process started training (``time.time()``).
    """

    iteration: int = 0
    epoch: int = 0
    position: int = 0
    history: list[dict] = field(default_factory=list)
    train_time: float = 0.0
    bad_images: int = 0
    pending_eval: dict | None = None
    clock: float = field(default_factory=time.time)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> RunState:
        return cls(iteration=checkpoint["iteration"], epoch=checkpoint["epoch"],
                   position=checkpoint["position"], history=checkpoint["history"],
                   train_time=checkpoint["train_time"],
                   bad_images=checkpoint.get("bad_images", 0),
                   pending_eval=checkpoint.get("pending_eval"))

    def elapsed(self) -> float:
        """Seconds of training of the whole run so far."""
        return self.train_time + time.time() - self.clock

    def to_checkpoint(self) -> dict:
        """The checkpoint's counters (``position``: batches of ``epoch`` done; 0 at its start)."""
        return {"iteration": self.iteration, "epoch": self.epoch, "position": self.position,
                "history": self.history, "train_time": self.elapsed(),
                "bad_images": self.bad_images, "pending_eval": self.pending_eval}

    @property
    def best_map(self) -> float:
        return max((h["mAP"] for h in self.history), default=0.0)


class StopSignal:
    """Records SIGTERM/SIGUSR1 so the loop can checkpoint at the next check."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        log.warning("received %s: checkpointing at the end of this log interval",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
