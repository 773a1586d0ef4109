"""One training step, and the two DDP chores around it (a blank step that fixes the bucket layout,
rank 0's BN statistics before an evaluation).

``bench/bench_gpu.py`` times :func:`train_step` itself, so the benchmark and the loop run the
same code.
"""

from __future__ import annotations

import torch

from ssdwb.data.transforms import normalize

__all__ = ["train_step", "rebuild_ddp_buckets", "broadcast_buffers"]


def train_step(model, criterion, optimizer, scaler, coder, batch: dict, device: torch.device,
               amp_dtype: torch.dtype | None, channels_last: bool, encode_on: str,
               grad_clip_norm: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One training step on one batch of ``build_loader``: to the device, normalise, (encode),
    forward under autocast, the float32 loss, backward through the scaler, (gradient clipping),
    SGD step.

    ``grad_clip_norm`` > 0 scales the gradients down to that global L2 norm when it is above it
    (not in the reference, which does not clip; the CPU demo's guard against loss spikes). Under
    fp16 the scaler unscales first, so the norm is the true one; a step with an overflow is
    still skipped. Under DDP the gradients are all-reduced by then: every rank clips alike.

    Nothing in it reads the device back, with fp16 too when ``optimizer`` is
    ``ssdwb.engine.optim.SGD`` (stock SGD makes ``scaler.step`` read the inf flag on the host);
    the clipping does not either.

    Args:
        batch: ``{"images": uint8 Tensor[B, 3, S, S], "boxes": list of Tensor[N_b, 4] (x1, y1,
            x2, y2) fractions, "labels": list of Tensor[N_b]}``, plus ``"gloc"`` (Tensor[B, P,
            4] xywh offsets) and ``"glabel"`` (Tensor[B, P]) when the loader encoded them.
        encode_on: ``"device"`` encodes the boxes here; ``"worker"`` uses ``gloc``/``glabel``.

    Returns:
        (loss, grad_norm): scalar Tensors on ``device``, not read; ``grad_norm`` is the norm
        before clipping, None without clipping (it is not computed then).
    """
    images = normalize(batch["images"].to(device, non_blocking=True))
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if encode_on == "device":  # boxes cross as one packed tensor, encoded without a sync
        counts = [len(b) for b in batch["boxes"]]
        boxes = torch.cat(batch["boxes"]).to(device, non_blocking=True).split(counts)
        labels = torch.cat(batch["labels"]).to(device, non_blocking=True).split(counts)
        gloc, glabel = coder.encode_batch(boxes, labels, dense=True)
    else:
        gloc = batch["gloc"].to(device, non_blocking=True)
        glabel = batch["glabel"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        ploc, plabel = model(images)
    loss = criterion(ploc, plabel, gloc.transpose(1, 2), glabel)  # float32 inside
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    grad_norm = None
    if grad_clip_norm > 0:
        scaler.unscale_(optimizer)  # a no-op when the scaler is disabled (fp32, bf16)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return loss, grad_norm


def rebuild_ddp_buckets(ddp, model, criterion, coder, batch_size: int, image_size: int,
                        device: torch.device, amp_dtype, channels_last: bool) -> None:
    """One forward/backward of a blank batch that changes nothing, so that every real step of
    every run (fresh or resumed) sums gradients in the same bucket layout.

    DDP starts with all gradients in one bucket and rebuilds its buckets in the order gradients
    became ready in the first backward, at the next forward. Without this, a resumed run's first
    step used the initial layout where the uninterrupted run used the rebuilt one: other float
    summation orders in the all-reduce (ring chunks depend on a gradient's offset in its bucket),
    so the requeued job's losses drifted from the straight job's in the 4th digit. The blank step
    all-reduces zero-ish gradients that are then dropped; the BN running statistics it touched
    are put back, and it draws no random numbers. Works the same with gloo and NCCL."""
    buffers = [b.detach().clone() for b in model.buffers()]
    images = torch.zeros(batch_size, 3, image_size, image_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    box = torch.tensor([[0.25, 0.25, 0.75, 0.75]], device=device)
    gloc, glabel = coder.encode_batch([box] * batch_size,
                                      [torch.ones(1, dtype=torch.int64, device=device)] * batch_size)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        ploc, plabel = ddp(images)
    criterion(ploc, plabel, gloc.transpose(1, 2), glabel).backward()
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers):
            b.copy_(saved)


def broadcast_buffers(model, distributed: bool) -> None:
    """Rank 0's BN running statistics to every rank: each rank updated its own in its last
    steps, and evaluation must score every shard with the model that is checkpointed."""
    if distributed:
        for b in model.buffers():
            torch.distributed.broadcast(b, src=0)
