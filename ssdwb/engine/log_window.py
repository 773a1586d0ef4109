"""The log window: what the loop sums on the device between two host reads.

The steady path reads the device once per ``log_interval``: the window's summed loss, the epoch's
summed loss, the gradient-norm statistics, the non-finite flag and the stop flag travel in one
tensor, read with one ``tolist()`` (and, under DDP, one all_reduce of the losses and flags).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

__all__ = ["LogWindow", "WindowReading"]


@dataclass(frozen=True)
class WindowReading:
    """One host read of a :class:`LogWindow`.

    Attributes:
        loss_sum: the window's summed step losses (mean over ranks).
        epoch_loss_sum: the epoch's summed step losses so far (mean over ranks).
        grad_sum, grad_max, grad_steps: sum and largest of the gradient norms before clipping,
            and how many steps had one (an fp16 step skipped for overflow has none).
        nonfinite: a step of the window had a non-finite loss (on any rank).
        stop: a rank received SIGTERM/SIGUSR1.
        landed, landed_map: rank 0's scorer result arrived (``async_eval``), and its mAP.
        at: when it was read (``time.time()``).
    """

    loss_sum: float
    epoch_loss_sum: float
    grad_sum: float
    grad_max: float
    grad_steps: float
    nonfinite: bool
    stop: bool
    at: float
    landed: bool = False
    landed_map: float = 0.0


class LogWindow:
    """Device-side sums of one epoch's current log window.

    ``add`` after every step (no host sync); ``read`` at a log point (one host sync);
    ``reset`` once the window is logged. The epoch's loss sum is kept across windows, for the
    epoch line.
    """

    def __init__(self, device: torch.device, iteration: int):
        self.device = device
        self.loss = torch.zeros((), device=device)
        self.epoch_loss = torch.zeros((), device=device)
        self.grad = torch.zeros(3, device=device)  # sum, max, steps with a finite norm
        self.reset(iteration)

    def reset(self, iteration: int, now: float | None = None) -> None:
        """Starts a new window at ``iteration`` (the epoch's loss sum goes on)."""
        self.loss.zero_()
        self.grad.zero_()
        self.start, self.steps, self.images = iteration, 0, 0
        self.started = time.time() if now is None else now

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor | None, images: int) -> None:
        """One step: its loss, its gradient norm (None without clipping), the global images."""
        self.loss += loss.detach()
        self.epoch_loss += loss.detach()
        if grad_norm is not None:
            finite = torch.isfinite(grad_norm)
            norm = torch.where(finite, grad_norm, 0.0)
            self.grad += torch.stack([norm, (norm - self.grad[1]).clamp(min=0), finite.float()])
        self.steps += 1
        self.images += images

    def read(self, stop_requested: bool, world_size: int, landed_map: float | None = None
             ) -> WindowReading:
        """The window's sums and flags (and rank 0's ``landed_map``, a scorer result to share)
        in one host read. Over several ranks the losses become
        the mean over ranks (each rank's is already the mean of its micro-batches: the mean over
        every virtual rank) and the flags any rank's, in the one all_reduce of the interval;
        the gradient norms are alike on every rank already."""
        def fill(value: float) -> torch.Tensor:  # a fill, not a host-to-device copy
            return torch.full((), float(value), device=self.device)

        shared = torch.stack([self.loss.float(), self.epoch_loss.float(),
                              (~torch.isfinite(self.loss)).float(), fill(stop_requested),
                              fill(landed_map is not None), fill(landed_map or 0.0)])
        if world_size > 1:  # rank 0 alone has a result to share: the sum is its own
            torch.distributed.all_reduce(shared)
        loss, epoch_loss, nonfinite, stop, landed, mAP, grad_sum, grad_max, grad_steps = (
            torch.cat([shared, self.grad]).tolist())
        if world_size > 1:
            loss, epoch_loss = loss / world_size, epoch_loss / world_size
        return WindowReading(loss, epoch_loss, grad_sum, grad_max, grad_steps, bool(nonfinite),
                             bool(stop), time.time(), bool(landed), mAP)

    def record(self, reading: WindowReading, iteration: int, epoch: float, lr: float,
               clipping: bool) -> dict:
        """This window's metrics.jsonl line: iteration, fractional epoch, mean loss, LR, images/s
        and, with clipping, the window's mean and largest gradient norm before it (null when every
        step of the window was skipped for fp16 overflow)."""
        out = {"iteration": iteration, "epoch": epoch, "loss": reading.loss_sum / self.steps,
               "lr": lr, "images_per_s": self.images / max(reading.at - self.started, 1e-9)}
        if clipping:
            n = reading.grad_steps
            out.update(grad_norm=reading.grad_sum / n if n else None,
                       grad_norm_max=reading.grad_max if n else None)
        return out
