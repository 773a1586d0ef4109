"""The training loop: one function, one config, for the notebook, the CLI and Slurm.

    ssdwb train --preset demo                      # or --config FILE, plus --set key=value ...
    ssdwb train --resume runs/<run_id>             # continue a checkpointed run exactly
    torchrun --nproc-per-node=2 -m ssdwb train --set device=cpu ...
    srun ... python -m ssdwb train ...              # Slurm: see ssdwb/engine/distributed.py

What it does (SPEC.md): SGD (momentum 0.9), LR = base * global_batch / 32 with linear warmup
from 0 and x0.1 decays, the reference loss, optional AMP (fp16 with a GradScaler, bf16, or
``auto``) and channels_last, DDP over every rank (NCCL on CUDA, gloo on CPU); evaluation at the
eval epochs; stop at the target mAP or the last epoch.

Bookkeeping is not in this file: ``ssdwb.runs.folder.RunFolder`` writes the run folder
(config.json, metrics.jsonl, mlperf.log, the epochs' detections, checkpoint.pt, summary.json);
the loop calls it at named points (start, step window, epoch start/end, eval, stop). Rank 0
writes.

SIGTERM or SIGUSR1 (Slurm's warning before a time limit or preemption) makes every rank stop at
the end of the current log interval: rank 0 checkpoints, logs ``run_stop`` with status aborted
and the function returns; ``--resume`` then continues, bit-exact, at an epoch boundary or
mid-epoch, with or without loader workers (augmentations are seeded per sample). A non-finite
loss stops the run, names the iteration window and keeps the last good checkpoint.

Host syncs: on the steady path the loop reads the device once per ``log_interval``
(``ssdwb.engine.log_window``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ssdwb.config import TrainConfig
from ssdwb.data.loader import iter_steps, set_epoch, skip_steps
from ssdwb.engine.distributed import long_wait
from ssdwb.engine.eval_in_flight import EvalInFlight
from ssdwb.engine.log_window import LogWindow, WindowReading
from ssdwb.engine.setup import (
    Data,
    Devices,
    Parts,
    anchor_design,
    build_data,
    build_parts,
    fit_to_ranks,
    load_config,
    open_run_folder,
    save_run_design,
    setup_devices,
)
from ssdwb.engine.state import RunState, StopSignal
from ssdwb.engine.step import broadcast_buffers, rebuild_ddp_buckets, train_step
from ssdwb.engine.watchdog import Heartbeat, Watchdog
from ssdwb.evaluation.inference import evaluate, gather_results, infer
from ssdwb.runs.checkpoint import rng_state, set_rng_state
from ssdwb.runs.folder import RunFolder
from ssdwb.runtime import PROGRESS_BARS_ENV
from ssdwb.ssd.anchors import DefaultBoxes

log = logging.getLogger(__name__)

__all__ = ["train", "Training"]

Outcome = tuple[str, str]  # (status, reason) of a run that ends


def train(config: TrainConfig | None = None, resume: str | os.PathLike | None = None,
          overrides: list[str] | None = None) -> dict:
    """Trains (or resumes) a run; returns its summary (also written to summary.json).

    Args:
        config: the run's config (ignored when resuming: the checkpoint's is used).
        resume: a run folder with a ``checkpoint.pt`` to continue.
        overrides: ``key=value`` changes, applied on top of the checkpoint's config on resume
            (e.g. ``["epochs=80"]``) or of ``config`` otherwise.
    """
    checkpoint, config = load_config(config, resume, overrides)
    dboxes = anchor_design(config, checkpoint, resume)
    devices = setup_devices(config)
    config = fit_to_ranks(config, checkpoint, resume, devices.dist.world_size)
    config, folder = open_run_folder(config, resume, checkpoint, devices.dist)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    data = build_data(config, devices, dboxes)
    parts = build_parts(config, devices, data.train_ds.num_classes, dboxes)
    t = Training(config, devices, data, parts, folder, dboxes)
    if checkpoint is None:
        save_run_design(dboxes, folder)
        state = RunState()
        folder.start(config, devices.dist.world_size)
    else:
        state = t.restore(checkpoint)
        t.score_again(state)
    if devices.dist.distributed:
        rebuild_ddp_buckets(parts.ddp, parts.model, parts.criterion, data.coder,
                            config.batch_size, config.image_size, devices.device,
                            devices.amp_dtype, config.channels_last)
    t.announce()
    state.clock = time.time()
    with t.watchdog(state), StopSignal() as stop:
        for epoch in range(state.epoch, config.epochs):
            outcome = t.train_one_epoch(state, epoch, stop) or t.end_of_epoch(state, epoch)
            if outcome is not None:
                return t.finish(state, *outcome)
        return t.finish(state, "success", "last epoch done")


@dataclass
class Training:
    """A set-up run: what the epoch loop works with. It holds no counters (``RunState`` does)."""

    config: TrainConfig
    devices: Devices
    data: Data
    parts: Parts
    folder: RunFolder
    dboxes: DefaultBoxes

    def __post_init__(self):
        config, n = self.config, len(self.data.train_ds)
        self.eval_epochs = [e for e in config.eval_epochs(n) if e <= config.epochs]
        if config.epochs not in self.eval_epochs:
            self.eval_epochs.append(config.epochs)  # always score the final model
        self.world_size = self.devices.dist.world_size
        self.global_batch = config.global_batch(self.world_size)
        self.main = self.devices.dist.is_main
        # Progress bars on rank 0, except in a notebook run by papermill (ssdwb.apps.notebooks
        # says so): its saved widget would show "0%" in the report; the per-epoch lines remain.
        self.bars = self.main and os.environ.get(PROGRESS_BARS_ENV, "1") != "0"
        # evaluation off the critical path: default with CUDA; on 2 CPU cores the scorer
        # would compete with training (docs/performance.md)
        self.async_eval = config.async_eval == "on" or (
            config.async_eval == "auto" and self.devices.device.type == "cuda")
        self.in_flight = EvalInFlight(self.data.val_ds.ann_file, config.eval_backend, self.main)
        self.landed: tuple[dict | None, object] = (None, None)  # rank 0: stats, detections
        # every rank's liveness; written to ranks/ by a thread only when several ranks run
        self.beat = Heartbeat(self.folder.path, self.devices.dist.rank,
                              period=min(10.0, config.dist_timeout_s / 8))

    @contextlib.contextmanager
    def watchdog(self, state: RunState):
        """Heartbeat and watchdog threads while the loop runs on several ranks (no silent
        hangs: ssdwb/engine/watchdog.py); nothing on one rank."""
        if not self.devices.dist.distributed:
            try:
                yield
            finally:
                self.in_flight.close()
            return
        c = self.config
        # the long limit until the first step is done: its forward may compile, its first
        # all-reduce waits for the slowest rank's start
        self.beat.at("setup", state.iteration)
        guard = Watchdog(self.beat.start(), self.world_size, c.dist_timeout_s * 0.9,
                         c.dist_long_timeout_s * 0.9,
                         summary=lambda status, reason: self.summary(state, status, reason),
                         write_summary=self.folder.write_summary)
        guard.start()
        try:
            yield
        finally:
            guard.stop()
            self.beat.stop()
            self.in_flight.close()

    def restore(self, checkpoint: dict) -> RunState:
        """Weights, optimiser, scaler and this rank's RNG states from a checkpoint."""
        self.parts.model.load_state_dict(checkpoint["model"])
        self.parts.optimizer.load_state_dict(checkpoint["optimizer"])
        self.parts.scaler.load_state_dict(checkpoint["scaler"])
        rngs, rank = checkpoint["rng"], self.devices.dist.rank
        set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])
        return RunState.from_checkpoint(checkpoint)

    def announce(self) -> None:
        if self.main:
            c, d = self.config, self.devices
            print(f"[ssdwb] run {c.run_id}: {self.world_size} rank(s) on {d.device.type}, amp "
                  f"{d.amp}, channels_last {c.channels_last}, anchors {c.anchors} "
                  f"({self.dboxes.num_priors} boxes), {self.data.iters_per_epoch} "
                  f"iterations/epoch, global batch {self.global_batch} ({self.world_size} x "
                  f"{c.grad_accum} x {c.batch_size})", flush=True)

    # --- the epoch -----------------------------------------------------------------------------
    def train_one_epoch(self, state: RunState, epoch: int, stop: StopSignal) -> Outcome | None:
        """Steps through one epoch (from ``state.position`` when resuming mid-epoch); returns
        an outcome when the run must end inside it (non-finite loss, signal, ``max_iters``)."""
        config, loader, n = self.config, self.data.train_loader, self.data.iters_per_epoch
        ep, skip = epoch + 1, state.position  # MLPerf epochs are 1-based
        if skip == 0:
            self.folder.epoch_start(ep, self.eval_epochs)
        set_epoch(loader, epoch)
        self.parts.ddp.train()
        # Resuming mid-epoch: the sampler starts at batch `skip`; samples carry their own
        # augmentation seeds, so the batches after it are the ones the first run saw.
        if skip:
            skip_steps(loader, skip, config.batch_size)
        window = LogWindow(self.devices.device, state.iteration)
        epoch_t, bad_files, reading = time.time(), [], None
        with tqdm(total=n, initial=skip, desc=f"epoch {ep}", disable=not self.bars,
                  mininterval=5, leave=False) as bar:
            for i, batch in enumerate(iter_steps(loader), start=skip):
                lr = self.step(state, batch, window)
                bad_files += [f for micro in batch for f in micro.get("bad_images") or []]
                state.position = i + 1
                bar.update(1)
                limit = bool(config.max_iters) and state.iteration >= config.max_iters
                if state.iteration % config.log_interval and i + 1 < n and not limit:
                    continue
                reading = window.read(stop.received is not None, self.world_size,
                                      self.poll_scorer())
                outcome = self.log_point(state, window, reading, lr, ep, limit)
                if outcome is not None:
                    return outcome
        # The epoch's last step is always a log point: `reading` is its read. None: the pass had
        # no step left (a signal stopped the run at the epoch's last step; this is its resume).
        if reading is not None:
            self.epoch_line(ep, state.iteration - epoch * n - skip, reading.at - epoch_t, reading)
        return self.end_of_training_epoch(state, ep, bad_files)

    def step(self, state: RunState, batch: list[dict], window: LogWindow) -> float:
        """One optimiser step (on ``grad_accum`` micro-batches) at the schedule's LR; its sums
        go into ``window``."""
        config, p = self.config, self.parts
        lr = config.lr_at(state.iteration, self.world_size, self.data.iters_per_epoch)
        for group in p.optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm = train_step(p.ddp, p.criterion, p.optimizer, p.scaler, self.data.coder,
                                     batch, self.devices.device, self.devices.amp_dtype,
                                     config.channels_last, self.devices.encode_on,
                                     config.grad_clip_norm)
        state.iteration += 1
        self.beat.at("train", state.iteration)
        window.add(loss, grad_norm, sum(len(m["images"]) for m in batch) * self.world_size)
        return lr

    def log_point(self, state: RunState, window: LogWindow, reading: WindowReading, lr: float,
                  ep: int, limit: bool) -> Outcome | None:
        """At a log interval (or the epoch's last step): the metrics line, and the end of the
        run on a non-finite loss, a signal or ``max_iters`` mid-epoch."""
        config, n = self.config, self.data.iters_per_epoch
        if reading.nonfinite:
            reason = (f"non-finite loss in iterations {window.start}-{state.iteration - 1} "
                      f"(epoch {ep}); the last good checkpoint is kept")
            log.error(reason)
            return "aborted", reason
        if state.iteration % config.log_interval == 0:
            self.folder.step_window(**window.record(reading, state.iteration,
                                                    ep - 1 + state.position / n, lr,
                                                    config.grad_clip_norm > 0))
            window.reset(state.iteration, reading.at)
        if reading.landed:
            stats, results = self.landed
            self.landed = (None, None)
            if self.apply_result(state, reading.landed_map, stats, results):
                return "success", f"target mAP {config.target_map} reached"
        if reading.stop or (limit and state.position < n):
            self.save_checkpoint(state)
            return "aborted", ("stopped by signal; resume with --resume" if reading.stop
                               else f"max_iters={config.max_iters} reached")
        return None

    def epoch_line(self, ep: int, done: int, seconds: float, reading: WindowReading) -> None:
        """Rank 0's line per epoch: images/s, the epoch's mean loss (over every rank, not the
        last window's: that window has just been reset when the epoch ends on a log interval)
        and the ETA (training only)."""
        if not self.main:
            return
        rate = done * self.global_batch / max(seconds, 1e-9)
        eta = (self.config.epochs - ep) * self.global_batch * self.data.iters_per_epoch
        print(f"[ssdwb] epoch {ep}/{self.config.epochs}: {rate:.1f} images/s, loss "
              f"{reading.epoch_loss_sum / max(done, 1):.3f}, ETA {eta / max(rate, 1e-9) / 60:.1f}"
              f" min (training only)", flush=True)

    # --- the epoch's end -----------------------------------------------------------------------
    def end_of_training_epoch(self, state: RunState, ep: int, bad_files: list[str]
                              ) -> Outcome | None:
        """Unreadable images summed over ranks, logged, and the run stopped when too many."""
        state.epoch, state.position = ep, 0
        bad = len(bad_files)
        if self.devices.dist.distributed:
            t = torch.tensor([bad], dtype=torch.int64, device=self.devices.device)
            torch.distributed.all_reduce(t)
            bad = int(t.item())
        state.bad_images += bad
        self.folder.epoch_end(ep, bad, bad_files)
        if bad:
            log.warning("epoch %d: %d unreadable image(s) skipped (first: %s)", ep, bad,
                        bad_files[:3])
        images = self.global_batch * self.data.iters_per_epoch
        if bad > self.config.max_bad_image_share * images:
            reason = (f"{bad} of {images} training images of epoch {ep} were unreadable, more "
                      f"than max_bad_image_share={self.config.max_bad_image_share} (first: "
                      f"{bad_files[:3]}); check them with `ssdwb data verify "
                      f"{self.config.data_dir} --decode`")
            log.error(reason)
            return "aborted", reason
        return None

    def end_of_epoch(self, state: RunState, epoch: int) -> Outcome | None:
        """Evaluation at the eval epochs, the checkpoint, and the end at the target mAP or at
        ``max_iters``."""
        ep, config = epoch + 1, self.config
        reached = ep in self.eval_epochs and self.evaluate(state, ep) >= config.target_map
        self.save_checkpoint(state)
        if reached:
            return "success", f"target mAP {config.target_map} reached"
        if config.max_iters and state.iteration >= config.max_iters:
            return "aborted", f"max_iters={config.max_iters} reached"
        return None

    def evaluate(self, state: RunState, ep: int) -> float:
        """Every rank infers its shard with rank 0's BN statistics; rank 0 scores; every rank
        learns the mAP. With ``async_eval`` (except at the last epoch) the scoring goes on in
        rank 0's scorer process and this returns -inf: its result lands later."""
        p, d, config = self.parts, self.data, self.config
        if state.pending_eval is not None:  # at most one in flight: wait for it first
            landed = self.wait_for_result(state)
            if landed >= config.target_map:
                return landed
        if self.async_eval and ep != config.epochs:
            return self.submit_evaluation(state, ep)
        self.beat.at("eval")
        self.folder.eval_start(ep)
        broadcast_buffers(p.model, self.devices.dist.distributed)
        stats, results = evaluate(p.model, d.val_loader, d.coder, d.val_ds, self.devices.device,
                                  self.world_size, self.devices.amp, config.channels_last,
                                  config.eval_backend, self.bars)
        box = [stats["mAP"] if self.main else 0.0]
        if self.devices.dist.distributed:
            long_wait(self.devices.side_group, config.dist_long_timeout_s)  # rank 0 scores
            torch.distributed.broadcast_object_list(box, src=0)
        state.history.append({"epoch": ep, "iteration": state.iteration,
                              **(stats or {"mAP": box[0]})})
        self.folder.eval_end(ep, state.iteration, stats, box[0], results, self.eval_epochs)
        if self.main:
            print(f"[ssdwb] epoch {ep}: mAP {stats['mAP']:.4f} AP50 {stats['AP50']:.4f} "
                  f"AP75 {stats['AP75']:.4f} (target {config.target_map})", flush=True)
        return box[0]

    # --- evaluation off the critical path (async_eval) -----------------------------------------
    def submit_evaluation(self, state: RunState, ep: int) -> float:
        """Inference on every rank, then rank 0's scorer takes the detections."""
        p, d = self.parts, self.data
        self.beat.at("eval")
        broadcast_buffers(p.model, self.devices.dist.distributed)
        results, seen = infer(p.model, d.val_loader, d.coder, d.val_ds.label_to_cat,
                              self.devices.device, self.devices.amp, self.config.channels_last,
                              self.bars)
        results = gather_results(results, seen, self.world_size)
        self.folder.eval_submitted(ep, results, p.model.state_dict(), self.eval_epochs)
        self.in_flight.submit(ep, state.iteration, results)
        state.pending_eval = {"epoch": ep, "iteration": state.iteration}
        self.beat.at("train", state.iteration)
        return float("-inf")

    def poll_scorer(self) -> float | None:
        """Rank 0, before a log point's read: the mAP of a result that has landed (kept for
        :meth:`apply_result`), else None."""
        if not self.in_flight.ready():
            return None
        self.landed = self.in_flight.take()
        return self.landed[0]["mAP"]

    def wait_for_result(self, state: RunState) -> float:
        """Waits for the scoring in flight and applies it on every rank; returns its mAP."""
        self.beat.at("eval")
        mAP, stats, results = self.in_flight.take_shared(self.devices.side_group,
                                                         self.config.dist_long_timeout_s)
        self.apply_result(state, mAP, stats, results)
        return mAP

    def apply_result(self, state: RunState, mAP: float, stats: dict | None, results) -> bool:
        """The landed result of ``state.pending_eval``: history, MLPerf eval events and the
        stats line; True when it reaches the target."""
        pending, state.pending_eval = state.pending_eval, None
        ep, at = pending["epoch"], pending["iteration"]
        state.history.append({"epoch": ep, "iteration": at, "arrived_iteration": state.iteration,
                              **(stats or {"mAP": mAP})})
        self.folder.eval_result(ep, at, state.iteration, stats, mAP, results)
        if self.main:
            print(f"[ssdwb] epoch {ep}: mAP {stats['mAP']:.4f} AP50 {stats['AP50']:.4f} AP75 "
                  f"{stats['AP75']:.4f} (target {self.config.target_map}; scored while "
                  f"training, landed at iteration {state.iteration})", flush=True)
        return mAP >= self.config.target_map

    def score_again(self, state: RunState) -> None:
        """A resumed run whose checkpoint had a scoring in flight scores that epoch's
        detections file again."""
        if state.pending_eval is not None:
            self.in_flight.score_again(self.folder.path, **state.pending_eval)

    # --- checkpoint and summary ----------------------------------------------------------------
    def save_checkpoint(self, state: RunState) -> None:
        """``checkpoint.pt`` (rank 0) from the parts and the run state; every rank's RNG states
        go in. No rank goes on (returns, or resumes) before rank 0's checkpoint is on disk: a
        rank that resumed at once read the previous checkpoint and skipped other batches."""
        dist, p, ds = self.devices.dist, self.parts, self.data.train_ds
        self.beat.at("checkpoint")
        if state.pending_eval is not None:
            self.folder.wait()  # the detections in flight are on disk before the checkpoint
        rng = [rng_state()]
        if dist.distributed:
            rng = [None] * dist.world_size
            torch.distributed.all_gather_object(rng, rng_state())
        counters = state.to_checkpoint()
        self.folder.save_checkpoint({
            "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
            "scaler": p.scaler.state_dict(), "iteration": counters["iteration"],
            "epoch": counters["epoch"], "position": counters["position"], "rng": rng,
            "config": self.config.to_dict(), "history": counters["history"],
            "train_time": counters["train_time"], "bad_images": counters["bad_images"],
            "world_size": dist.world_size, "global_batch": self.global_batch,
            "anchors": self.dboxes.to_dict(),  # eval / predict rebuild the same heads and boxes
            # plain data, so weights_only loading keeps working; `ssdwb predict` names classes
            "classes": [{"id": int(c), "name": ds.label_names[label]}
                        for label, c in sorted(ds.label_to_cat.items())],
            # a scoring in flight (async_eval): a resumed run scores its detections again
            **({"pending_eval": state.pending_eval} if state.pending_eval else {})})
        long_wait(self.devices.side_group, self.config.dist_long_timeout_s)
        self.beat.at("train", state.iteration)

    def summary(self, state: RunState, status: str, reason: str) -> dict:
        """The run's summary.json, from Python data only (the watchdog builds it too)."""
        config, history = self.config, state.history
        return {"run_id": config.run_id, "run_dir": str(self.folder.path), "status": status,
                "reason": reason, "iterations": state.iteration, "epochs": state.epoch,
                "world_size": self.world_size, "global_batch": self.global_batch,
                "amp": self.devices.amp, "channels_last": config.channels_last,
                "bad_images": state.bad_images,
                "final_map": history[-1]["mAP"] if history else None,
                "best_map": state.best_map, "target_map": config.target_map,
                "target_reached": state.best_map >= config.target_map,
                "time_to_train_s": state.elapsed(), "evals": history}

    def finish(self, state: RunState, status: str, reason: str = "") -> dict:
        """summary.json and ``run_stop``; rank 0's closing line. Returns the summary."""
        self.beat.at("checkpoint")  # the last writes: the long limit
        summary = self.summary(state, status, reason)
        self.folder.stop(status, summary)
        if self.main:
            last = f"mAP {summary['final_map']:.4f}" if state.history else "no eval"
            print(f"[ssdwb] run {self.config.run_id} {status}{': ' + reason if reason else ''} "
                  f"after {state.iteration} iterations; {last}; folder {self.folder.path}",
                  flush=True)
        return summary
