"""The training loop: one function, one config, for the notebook, the CLI and Slurm.

    ssdwb train --preset demo                      # or --config FILE, plus --set key=value ...
    ssdwb train --resume runs/<run_id>             # continue a checkpointed run exactly
    torchrun --nproc-per-node=2 -m ssdwb.train --set device=cpu ...
    srun ... python -m ssdwb.train ...             # Slurm: see ssdwb/distributed.py

What it does (SPEC.md): SGD (momentum 0.9), LR = base * global_batch / 32 with linear warmup
from 0 and x0.1 decays, the reference loss, optional AMP (fp16 with a GradScaler, bf16, or
``auto``) and channels_last, DDP over every rank (NCCL on CUDA, gloo on CPU); evaluation at the
eval epochs; stop at the target mAP or the last epoch.

Bookkeeping is not in this file: ``ssdwb.runs.RunFolder`` writes the run folder (config.json,
metrics.jsonl, mlperf.log, the epochs' detections, checkpoint.pt, summary.json); the loop calls
it at named points (start, step window, epoch start/end, eval, stop). Rank 0 writes.

SIGTERM or SIGUSR1 (Slurm's warning before a time limit or preemption) makes every rank stop at
the end of the current log interval: rank 0 checkpoints, logs ``run_stop`` with status aborted
and the function returns; ``--resume`` then continues, bit-exact, at an epoch boundary or
mid-epoch, with or without loader workers (augmentations are seeded per sample). A non-finite
loss stops the run, names the iteration window and keeps the last good checkpoint.

Host syncs: on the steady path the loop reads the device once per ``log_interval``: the window's
summed loss, its non-finite flag and every rank's stop flag travel in one tensor (one
all_reduce under DDP).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from ssdwb.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["train", "train_step", "PROGRESS_BARS_ENV"]

PROGRESS_BARS_ENV = "SSDWB_PROGRESS_BARS"  # "0": no tqdm bars (set for papermill's kernels)


class _StopSignal:
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


def _rebuild_ddp_buckets(ddp, model, criterion, coder, batch_size: int, image_size: int,
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

    ``bench/bench_gpu.py`` times this very function. Nothing in it reads the device back, with
    fp16 too when ``optimizer`` is ``ssdwb.optim.SGD`` (stock SGD makes ``scaler.step`` read the
    inf flag on the host); the clipping does not either.

    Returns:
        (loss, grad_norm): scalar Tensors on ``device``, not read; ``grad_norm`` is the norm
        before clipping, None without clipping (it is not computed then).
    """
    from ssdwb.data import normalize

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


def _broadcast_buffers(model, dist) -> None:
    """Rank 0's BN running statistics to every rank: each rank updated its own in its last
    steps, and evaluation must score every shard with the model that is checkpointed."""
    if dist.distributed:
        for b in model.buffers():
            torch.distributed.broadcast(b, src=0)


def _load_resume(resume: str | os.PathLike) -> tuple[dict, TrainConfig]:
    from ssdwb.runs import load_checkpoint

    path = Path(resume) / "checkpoint.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from")
    checkpoint = load_checkpoint(path)
    return checkpoint, TrainConfig.from_dict(checkpoint["config"], str(path))


def train(config: TrainConfig | None = None, resume: str | os.PathLike | None = None,
          overrides: list[str] | None = None) -> dict:
    """Trains (or resumes) a run; returns its summary (also written to summary.json).

    Args:
        config: the run's config (ignored when resuming: the checkpoint's is used).
        resume: a run folder with a ``checkpoint.pt`` to continue.
        overrides: ``key=value`` changes, applied on top of the checkpoint's config on resume
            (e.g. ``["epochs=80"]``) or of ``config`` otherwise.
    """
    from tqdm.auto import tqdm

    from ssdwb.anchors import default_boxes, save_design
    from ssdwb.box_coder import BoxCoder
    from ssdwb.data import (
        CocoDetection,
        build_loader,
        resolve_data,
        set_epoch,
        train_transform,
        val_transform,
    )
    from ssdwb.distributed import init_distributed
    from ssdwb.evaluate import evaluate
    from ssdwb.loss import MultiBoxLoss
    from ssdwb.model import build_model, check_design
    from ssdwb.optim import SGD
    from ssdwb.runs import RunFolder, rng_state, set_rng_state
    from ssdwb.runtime import resolve_amp, tune_cpu_allocator

    # --- config, devices --------------------------------------------------------------------
    checkpoint = None
    if resume is not None:
        checkpoint, config = _load_resume(resume)
    elif config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    config = config.with_overrides(overrides or [])
    if config.image_size != 300:
        raise ValueError("image_size: only 300 is implemented (SSD300's default boxes and heads)")
    # The anchor design: a resumed run keeps the one its checkpoint holds (the file may have
    # changed since); a bad design file fails here, before a run folder is made.
    if checkpoint is not None and config.anchors != checkpoint["config"].get("anchors",
                                                                           "reference"):
        raise ValueError(f"anchors: a run keeps its anchor design; {resume} was trained with "
                         f"{checkpoint['config'].get('anchors', 'reference')!r}, not "
                         f"{config.anchors!r} (start a new run for another design)")
    dboxes = default_boxes(checkpoint["anchors"] if checkpoint is not None
                           and "anchors" in checkpoint else config.anchors)
    check_design(dboxes, f"anchors={config.anchors}")

    dist = init_distributed(config.device)
    device, main = dist.device, dist.is_main
    if device.type == "cpu":
        tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    amp = resolve_amp(config.amp, device)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    encode_on = config.encode_on if config.encode_on != "auto" else (
        "device" if device.type == "cuda" else "worker")
    if checkpoint is not None:
        saved = checkpoint.get("world_size", dist.world_size)
        if saved != dist.world_size:
            raise ValueError(
                f"{Path(resume) / 'checkpoint.pt'}: written by {saved} ranks (global batch "
                f"{checkpoint.get('global_batch')}), resumed with {dist.world_size}: the position "
                f"in the epoch and the LR schedule depend on the global batch. Resume with "
                f"{saved} ranks.")

    # --- run folder: rank 0 decides the id and opens the folder; everyone learns both ------
    run_id = config.run_id or time.strftime("%Y%m%d-%H%M%S")
    config = config.replace(run_id=run_id)
    run = Path(resume) if resume is not None else Path(config.run_dir) / run_id
    error = ""
    if main and checkpoint is None and RunFolder.existing_run(run):
        try:
            RunFolder.create(run, config)
        except FileExistsError as e:
            error = str(e)
    if dist.distributed:
        box = [run_id, error]
        torch.distributed.broadcast_object_list(box, src=0)
        run_id, error = box
        config = config.replace(run_id=run_id)
        run = Path(resume) if resume is not None else Path(config.run_dir) / run_id
    if error:
        raise FileExistsError(error)
    folder = (RunFolder.resume(run, checkpoint, config, enabled=main) if checkpoint is not None
              else RunFolder.create(run, config, enabled=main))

    # --- data, model, optimiser ---------------------------------------------------------------
    torch.manual_seed(config.seed)  # same initial weights on every rank
    paths = resolve_data(config.data_dir)
    train_ds = CocoDetection(paths["train_images"], paths["train_ann"],
                             transform=train_transform(config.image_size, config.resize),
                             skip_bad_images=config.skip_bad_images)
    val_ds = CocoDetection(paths["val_images"], paths["val_ann"],
                           transform=val_transform(config.image_size, config.resize))
    if main and checkpoint is None:
        save_design(dboxes, run / "anchors.json")  # the design as trained, to look into
    coder = BoxCoder(dboxes)
    # Persistent workers: no restart at every epoch and eval (augmentations are seeded per
    # sample, so that does not change what they draw).
    train_loader = build_loader(train_ds, config.batch_size, train=True,
                                num_workers=config.num_workers, seed=config.seed, coder=coder,
                                encode_on=encode_on, device=device, persistent_workers=True)
    val_loader = build_loader(val_ds, config.eval_batch_size, train=False,
                              num_workers=config.num_workers, seed=config.seed, device=device,
                              persistent_workers=True)
    iters_per_epoch = len(train_loader)
    if iters_per_epoch == 0:
        raise ValueError(f"{paths['train_ann']}: {len(train_ds)} images is less than one global "
                         f"batch of {config.global_batch(dist.world_size)}")

    model = build_model(train_ds.num_classes, dboxes, config.model_width,
                        config.backbone_weights, source=f"anchors={config.anchors}").to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp = (torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
        if dist.distributed else model)
    criterion = MultiBoxLoss(dboxes).to(device)
    # ssdwb.optim.SGD: stock SGD (the same numbers, tests/test_optim.py), except that under
    # fp16's GradScaler it skips overflowing steps on the device instead of reading the inf
    # flag on the host at every step (the fused SGD would too, but corrupts its momentum then).
    optimizer = SGD(model.parameters(), lr=0.0, momentum=config.momentum,
                    weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    eval_epochs = [e for e in config.eval_epochs(len(train_ds)) if e <= config.epochs]
    if config.epochs not in eval_epochs:
        eval_epochs.append(config.epochs)  # always score the final model
    iteration, start_epoch, skip, history, train_time, bad_total = 0, 0, 0, [], 0.0, 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        iteration, start_epoch = checkpoint["iteration"], checkpoint["epoch"]
        skip, history = checkpoint["position"], checkpoint["history"]
        train_time, bad_total = checkpoint["train_time"], checkpoint.get("bad_images", 0)
        rngs = checkpoint["rng"]
        set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    else:
        folder.start(config, dist.world_size)
    if dist.distributed:
        _rebuild_ddp_buckets(ddp, model, criterion, coder, config.batch_size, config.image_size,
                             device, amp_dtype, config.channels_last)
    # Progress bars on rank 0, except in a notebook run by papermill (ssdwb.notebooks.execute
    # says so): its saved widget would show "0%" in the report; the per-epoch lines remain.
    bars = main and os.environ.get(PROGRESS_BARS_ENV, "1") != "0"
    if main:
        print(f"[ssdwb] run {run_id}: {dist.world_size} rank(s) on {device.type}, amp {amp}, "
              f"channels_last {config.channels_last}, anchors {config.anchors} "
              f"({dboxes.num_priors} boxes), {iters_per_epoch} iterations/epoch, "
              f"global batch {config.global_batch(dist.world_size)}", flush=True)

    t0 = time.time()

    def save_checkpoint(epoch: int, position: int) -> None:
        rng = [rng_state()]
        if dist.distributed:
            rng = [None] * dist.world_size
            torch.distributed.all_gather_object(rng, rng_state())
        folder.save_checkpoint({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "iteration": iteration, "epoch": epoch,
            "position": position, "rng": rng, "config": config.to_dict(), "history": history,
            "train_time": train_time + time.time() - t0, "bad_images": bad_total,
            "world_size": dist.world_size, "global_batch": config.global_batch(dist.world_size),
            "anchors": dboxes.to_dict(),  # `ssdwb eval` / predict rebuild the same heads and boxes
            # plain data, so weights_only loading keeps working; `ssdwb predict` names classes
            "classes": [{"id": int(c), "name": train_ds.label_names[lab]}
                        for lab, c in sorted(train_ds.label_to_cat.items())]})
        if dist.distributed:
            # No rank goes on (returns, or resumes) before rank 0's checkpoint is on disk: a
            # rank that resumed at once read the previous checkpoint and skipped other batches.
            torch.distributed.barrier()

    def finish(status: str, reason: str = "") -> dict:
        best = max((h["mAP"] for h in history), default=0.0)
        summary = {"run_id": run_id, "run_dir": str(run), "status": status, "reason": reason,
                   "iterations": iteration, "epochs": epoch_done, "world_size": dist.world_size,
                   "global_batch": config.global_batch(dist.world_size), "amp": amp,
                   "channels_last": config.channels_last, "bad_images": bad_total,
                   "final_map": history[-1]["mAP"] if history else None, "best_map": best,
                   "target_map": config.target_map, "target_reached": best >= config.target_map,
                   "time_to_train_s": train_time + time.time() - t0, "evals": history}
        folder.stop(status, summary)
        if main:
            last = f"mAP {summary['final_map']:.4f}" if history else "no eval"
            print(f"[ssdwb] run {run_id} {status}{': ' + reason if reason else ''} after "
                  f"{iteration} iterations; {last}; folder {run}", flush=True)
        return summary

    # --- the loop -------------------------------------------------------------------------------
    epoch_done = start_epoch
    epoch_images = config.global_batch(dist.world_size) * iters_per_epoch
    with _StopSignal() as stop:
        for epoch in range(start_epoch, config.epochs):
            ep = epoch + 1  # MLPerf epochs are 1-based
            if skip == 0:
                folder.epoch_start(ep, eval_epochs)
            set_epoch(train_loader, epoch)
            ddp.train()
            bar = tqdm(total=iters_per_epoch, initial=skip, desc=f"epoch {ep}", disable=not bars,
                       mininterval=5, leave=False)
            # Resuming mid-epoch: the sampler starts at batch `skip`; samples carry their own
            # augmentation seeds, so the batches after it are the ones the first run saw.
            if skip:
                train_loader.sampler.skip_batches(skip, train_loader.batch_size)
            window_loss = torch.zeros((), device=device)
            epoch_loss = torch.zeros((), device=device)  # the epoch line's mean, on the device
            # clipping: sum and largest of the gradient norms, and how many steps had one (an
            # fp16 step skipped for overflow has none: its norm is inf or nan)
            window_grad = torch.zeros(3, device=device)
            window_start, window_n, window_t, window_imgs = iteration, 0, time.time(), 0
            epoch_t, epoch_bad, bad_files = time.time(), 0, []
            for i, batch in enumerate(train_loader, start=skip):
                lr = config.lr_at(iteration, dist.world_size, iters_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss, grad_norm = train_step(ddp, criterion, optimizer, scaler, coder, batch,
                                             device, amp_dtype, config.channels_last, encode_on,
                                             config.grad_clip_norm)
                if batch.get("bad_images"):
                    epoch_bad += len(batch["bad_images"])
                    bad_files += batch["bad_images"]
                iteration += 1
                window_loss += loss.detach()
                epoch_loss += loss.detach()
                if grad_norm is not None:
                    finite = torch.isfinite(grad_norm)
                    norm = torch.where(finite, grad_norm, 0.0)
                    window_grad += torch.stack([norm, (norm - window_grad[1]).clamp(min=0),
                                                finite.float()])
                window_n += 1
                window_imgs += batch["images"].shape[0] * dist.world_size
                bar.update(1)
                # log: one read of the device per interval (and at the end of the epoch)
                limit = bool(config.max_iters) and iteration >= config.max_iters
                if iteration % config.log_interval and i + 1 < iters_per_epoch and not limit:
                    continue
                flags = torch.stack([window_loss.float(), epoch_loss.float(), *window_grad,
                                     (~torch.isfinite(window_loss)).float(),
                                     torch.full((), float(stop.received is not None),
                                                device=device)])  # a fill, not a copy
                if dist.distributed:
                    # the gradient norms are the same on every rank (all-reduced gradients)
                    shared = flags[5:].clone()
                    torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
                    flags = torch.cat([flags[:5], shared])
                total, epoch_total, grad_sum, grad_max, grad_n, nonfinite, stop_now = flags.tolist()
                if nonfinite:
                    reason = (f"non-finite loss in iterations {window_start}-{iteration - 1} "
                              f"(epoch {ep}); the last good checkpoint is kept")
                    log.error(reason)
                    bar.close()
                    return finish("aborted", reason)
                now = time.time()
                if iteration % config.log_interval == 0:
                    # with clipping, the window's mean and largest gradient norm before it (null
                    # when every step of the window was skipped for fp16 overflow)
                    grads = ({"grad_norm": grad_sum / grad_n if grad_n else None,
                              "grad_norm_max": grad_max if grad_n else None}
                             if config.grad_clip_norm > 0 else {})
                    folder.step_window(iteration=iteration,
                                       epoch=epoch + (i + 1) / iters_per_epoch,
                                       loss=total / window_n, lr=lr,
                                       images_per_s=window_imgs / max(now - window_t, 1e-9),
                                       **grads)
                    window_loss.zero_()
                    window_grad.zero_()
                    window_start, window_n, window_t, window_imgs = iteration, 0, now, 0
                if stop_now or (limit and i + 1 < iters_per_epoch):
                    bar.close()
                    save_checkpoint(epoch, i + 1)
                    reason = ("stopped by signal; resume with --resume" if stop_now
                              else f"max_iters={config.max_iters} reached")
                    return finish("aborted", reason)
                if i + 1 == iters_per_epoch and main:
                    done = iteration - epoch * iters_per_epoch - skip
                    rate = done * config.global_batch(dist.world_size) / max(now - epoch_t, 1e-9)
                    eta = (config.epochs - ep) * epoch_images / max(rate, 1e-9)
                    # the epoch's mean loss (rank 0's batches), not the last window's: that
                    # window has just been reset when the epoch ends on a log interval
                    print(f"[ssdwb] epoch {ep}/{config.epochs}: {rate:.1f} images/s, loss "
                          f"{epoch_total / max(done, 1):.3f}, ETA {eta / 60:.1f} min (training "
                          f"only)", flush=True)
            bar.close()
            skip = 0
            # epoch end: unreadable images summed over ranks
            if dist.distributed:
                t = torch.tensor([epoch_bad], dtype=torch.int64, device=device)
                torch.distributed.all_reduce(t)
                epoch_bad = int(t.item())
            bad_total += epoch_bad
            folder.epoch_end(ep, epoch_bad, bad_files)
            epoch_done = ep
            if epoch_bad:
                log.warning("epoch %d: %d unreadable image(s) skipped (first: %s)", ep,
                            epoch_bad, bad_files[:3])
            if epoch_bad > config.max_bad_image_share * epoch_images:
                reason = (f"{epoch_bad} of {epoch_images} training images of epoch {ep} were "
                          f"unreadable, more than max_bad_image_share={config.max_bad_image_share}"
                          f" (first: {bad_files[:3]}); check them with `ssdwb data verify "
                          f"{config.data_dir} --decode`")
                log.error(reason)
                return finish("aborted", reason)
            reached = False
            if ep in eval_epochs:
                folder.eval_start(ep)
                _broadcast_buffers(model, dist)
                stats, results = evaluate(model, val_loader, coder, val_ds, device,
                                          dist.world_size, amp, config.channels_last,
                                          config.eval_backend, bars)
                box = [stats["mAP"] if main else 0.0]
                if dist.distributed:
                    torch.distributed.broadcast_object_list(box, src=0)
                history.append({"epoch": ep, "iteration": iteration, **(stats or {"mAP": box[0]})})
                folder.eval_end(ep, iteration, stats, box[0], results, eval_epochs)
                if main:
                    print(f"[ssdwb] epoch {ep}: mAP {stats['mAP']:.4f} AP50 {stats['AP50']:.4f} "
                          f"AP75 {stats['AP75']:.4f} (target {config.target_map})", flush=True)
                reached = box[0] >= config.target_map
            save_checkpoint(epoch + 1, 0)
            if reached:
                return finish("success", f"target mAP {config.target_map} reached")
            if config.max_iters and iteration >= config.max_iters:
                return finish("aborted", f"max_iters={config.max_iters} reached")
    return finish("success", "last epoch done")


if __name__ == "__main__":
    from ssdwb.cli import main as _cli_main

    sys.exit(_cli_main(sys.argv[1:], default="train"))
