"""One training step, and the two DDP chores around it (a blank step that fixes the bucket layout,
rank 0's BN statistics before an evaluation).

``bench/bench_gpu.py`` times :func:`train_step` itself, so the benchmark and the loop run the
same code.
"""

from __future__ import annotations

import contextlib

import torch

from ssdwb.data.transforms import normalize

__all__ = ["train_step", "rebuild_ddp_buckets", "broadcast_buffers"]


def train_step(model, criterion, optimizer, scaler, coder, batch: dict | list[dict],
               device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool,
               encode_on: str, grad_clip_norm: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimiser step on one batch of ``build_loader`` (or on the k micro-batches of a
    step with gradient accumulation): to the device, normalise, (encode), forward under
    autocast, the float32 loss, backward through the scaler, (gradient clipping), SGD step.

    With k micro-batches each loss is divided by k and DDP all-reduces on the last one only
    (``no_sync`` on the others). BatchNorm's running statistics keep micro-batch 0's update
    alone, as virtual rank 0 of a run with k times the ranks keeps its own (that run's DDP
    broadcasts rank 0's buffers at every forward): the buffers are saved after micro-batch 0
    and put back after each other one.

    ``grad_clip_norm`` > 0 scales the gradients down to that global L2 norm when it is above it
    (not in the reference, which does not clip; the CPU demo's guard against loss spikes). Under
    fp16 the scaler unscales first, so the norm is the true one; a step with an overflow is
    still skipped. Under DDP the gradients are all-reduced by then: every rank clips alike.

    Nothing in it reads the device back, with fp16 too when ``optimizer`` is
    ``ssdwb.engine.optim.SGD`` (stock SGD makes ``scaler.step`` read the inf flag on the host);
    the clipping does not either.

    Args:
        model: the model, or its DDP wrapper.
        batch: ``{"images": uint8 Tensor[B, 3, S, S], "boxes": list of Tensor[N_b, 4] (x1, y1,
            x2, y2) fractions, "labels": list of Tensor[N_b]}``, plus ``"gloc"`` (Tensor[B, P,
            4] xywh offsets) and ``"glabel"`` (Tensor[B, P]) when the loader encoded them; or a
            list of k such micro-batches.
        encode_on: ``"device"`` encodes the boxes here; ``"worker"`` uses ``gloc``/``glabel``.

    Returns:
        (loss, grad_norm): scalar Tensors on ``device``, not read; ``loss`` is the mean of the
        micro-batches' losses; ``grad_norm`` is the norm before clipping, None without clipping
        (it is not computed then).
    """
    batches = batch if isinstance(batch, list) else [batch]
    k = len(batches)
    module = getattr(model, "module", model)
    optimizer.zero_grad(set_to_none=True)
    total, saved = None, None
    for j, micro in enumerate(batches):
        sync = j == k - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            loss = _micro_batch_loss(model, criterion, coder, micro, device, amp_dtype,
                                     channels_last, encode_on)
            scaler.scale(loss / k if k > 1 else loss).backward()
        if k > 1 and j == 0:
            saved = [b.detach().clone() for b in module.buffers()]
        elif k > 1:
            with torch.no_grad():
                for b, s in zip(module.buffers(), saved):
                    b.copy_(s)
        total = loss.detach() if total is None else total + loss.detach()
    grad_norm = None
    if grad_clip_norm > 0:
        scaler.unscale_(optimizer)  # a no-op when the scaler is disabled (fp32, bf16)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    return (total / k if k > 1 else total), grad_norm


def _micro_batch_loss(model, criterion, coder, batch: dict, device: torch.device,
                      amp_dtype: torch.dtype | None, channels_last: bool,
                      encode_on: str) -> torch.Tensor:
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
    return criterion(ploc, plabel, gloc.transpose(1, 2), glabel)  # float32 inside


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
