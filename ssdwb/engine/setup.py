"""The set-up stages of a training run, each returning plain objects: the config (fresh or from a
checkpoint), the devices and precision, the run folder, the data, and the model with its loss and
optimiser. ``ssdwb.engine.loop.train`` calls them in this order.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ssdwb.config import TrainConfig
from ssdwb.data import CocoDetection, build_loader, resolve_data, train_transform, val_transform
from ssdwb.data.check import check_dataset
from ssdwb.data.loader import steps_per_epoch
from ssdwb.engine.distributed import DistInfo, init_distributed, side_group
from ssdwb.engine.optim import SGD
from ssdwb.runs.checkpoint import load_checkpoint
from ssdwb.runs.folder import RunFolder
from ssdwb.runtime import resolve_amp, tune_cpu_allocator
from ssdwb.ssd.anchors import DefaultBoxes, default_boxes, save_design
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.loss import MultiBoxLoss
from ssdwb.ssd.model import build_model, check_design

log = logging.getLogger(__name__)

__all__ = ["Devices", "Data", "Parts", "load_config", "anchor_design", "setup_devices",
           "fit_to_ranks", "open_run_folder", "build_data", "build_parts"]


@dataclass(frozen=True)
class Devices:
    """Where and how this rank computes."""

    dist: DistInfo
    amp: str  # "off", "fp16" or "bf16" (``auto`` resolved)
    amp_dtype: torch.dtype | None
    encode_on: str  # "device" or "worker" (``auto`` resolved)
    side_group: object = None  # gloo group for the long waits on rank 0 (None on one rank)

    @property
    def device(self) -> torch.device:
        return self.dist.device


@dataclass(frozen=True)
class Data:
    """The datasets, their loaders and the box coder the train loader encodes with."""

    train_ds: CocoDetection
    val_ds: CocoDetection
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    coder: BoxCoder

    @property
    def iters_per_epoch(self) -> int:
        """Optimiser steps per epoch (each on ``grad_accum`` micro-batches)."""
        return steps_per_epoch(self.train_loader)


@dataclass(frozen=True)
class Parts:
    """What a step updates: the model (and its DDP wrapper, the model itself on one rank), the
    loss, the optimiser and fp16's scaler."""

    model: torch.nn.Module
    ddp: torch.nn.Module
    criterion: MultiBoxLoss
    optimizer: SGD
    scaler: torch.amp.GradScaler


def load_config(config: TrainConfig | None, resume: str | os.PathLike | None,
                overrides: list[str] | None) -> tuple[dict | None, TrainConfig]:
    """``(checkpoint or None, config)``: the checkpoint's config when resuming, else ``config``;
    ``overrides`` (``key=value``) applied on top."""
    checkpoint = None
    if resume is not None:
        path = Path(resume) / "checkpoint.pt"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        checkpoint = load_checkpoint(path)
        config = TrainConfig.from_dict(checkpoint["config"], str(path))
    elif config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    config = config.with_overrides(overrides or [])
    if config.image_size != 300:
        raise ValueError("image_size: only 300 is implemented (SSD300's default boxes and heads)")
    return checkpoint, config


def anchor_design(config: TrainConfig, checkpoint: dict | None, resume) -> DefaultBoxes:
    """The run's default boxes. A resumed run keeps the design its checkpoint holds (the file
    may have changed since); a bad design file fails here, before a run folder is made."""
    if checkpoint is not None:
        trained_with = checkpoint["config"].get("anchors", "reference")
        if config.anchors != trained_with:
            raise ValueError(f"anchors: a run keeps its anchor design; {resume} was trained with "
                             f"{trained_with!r}, not {config.anchors!r} (start a new run for "
                             f"another design)")
    dboxes = default_boxes(checkpoint["anchors"] if checkpoint is not None
                           and "anchors" in checkpoint else config.anchors)
    check_design(dboxes, f"anchors={config.anchors}")
    return dboxes


def setup_devices(config: TrainConfig) -> Devices:
    """The process group (NCCL on CUDA, gloo on CPU), per-device flags and the precision."""
    dist = init_distributed(config.device, timeout_s=config.dist_timeout_s)
    device = dist.device
    if device.type == "cpu":
        tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    amp = resolve_amp(config.amp, device)
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    encode_on = config.encode_on if config.encode_on != "auto" else (
        "device" if device.type == "cuda" else "worker")
    return Devices(dist, amp, amp_dtype, encode_on, side_group(config.dist_long_timeout_s))


def fit_to_ranks(config: TrainConfig, checkpoint: dict | None, resume,
                 world_size: int) -> TrainConfig:
    """Elastic resume: a checkpoint written by W ranks x k micro-batches goes on with
    ``world_size`` ranks x ``W * k / world_size`` micro-batches (the same virtual ranks, so the
    same data, global batch and schedule); refused, naming the rank counts that work, when
    ``world_size`` does not divide ``W * k``."""
    if checkpoint is None:
        return config
    saved_world = checkpoint.get("world_size", world_size)
    saved_k = int(checkpoint["config"].get("grad_accum", 1))
    virtual = saved_world * saved_k
    if config.grad_accum * world_size == virtual:
        return config
    if virtual % world_size or config.grad_accum != saved_k:
        fits = [w for w in range(1, virtual + 1) if virtual % w == 0]
        raise ValueError(
            f"{Path(resume) / 'checkpoint.pt'}: written by {saved_world} rank(s) x grad_accum "
            f"{saved_k} = {virtual} virtual ranks (global batch {checkpoint.get('global_batch')})"
            f"; {world_size} rank(s) x grad_accum {config.grad_accum} do not make {virtual}. "
            f"Resume with one of {fits} ranks (grad_accum follows), or leave grad_accum unset.")
    return config.replace(grad_accum=virtual // world_size)


def open_run_folder(config: TrainConfig, resume, checkpoint: dict | None,
                    dist: DistInfo) -> tuple[TrainConfig, RunFolder]:
    """Rank 0 decides the run id and opens the folder (refusing one that holds another run);
    every rank learns both. Returns the config with its ``run_id`` set."""
    run_id = config.run_id or time.strftime("%Y%m%d-%H%M%S")
    run = Path(resume) if resume is not None else Path(config.run_dir) / run_id
    error = ""
    if dist.is_main and checkpoint is None and RunFolder.existing_run(run):
        try:
            RunFolder.create(run, config.replace(run_id=run_id))
        except FileExistsError as e:
            error = str(e)
    if dist.distributed:
        box = [run_id, error]
        torch.distributed.broadcast_object_list(box, src=0)
        run_id, error = box
        run = Path(resume) if resume is not None else Path(config.run_dir) / run_id
    if error:
        raise FileExistsError(error)
    config = config.replace(run_id=run_id)
    folder = (RunFolder.resume(run, checkpoint, config, enabled=dist.is_main)
              if checkpoint is not None else RunFolder.create(run, config, enabled=dist.is_main))
    return config, folder


def build_data(config: TrainConfig, devices: Devices, dboxes: DefaultBoxes) -> Data:
    """The train and val datasets and their loaders. Persistent workers: no restart at every
    epoch and eval (augmentations are seeded per sample, so that does not change what they
    draw).

    ``data_dir`` is a dataset folder or file (:func:`ssdwb.data.resolve_data`). Every rank runs
    the quick check (:mod:`ssdwb.data.check`: no image opened, one listing per image folder), so
    every rank refuses a dataset with missing images or train/val categories that differ,
    before the first step; rank 0 logs its report."""
    paths = resolve_data(config.data_dir)
    train_ds = CocoDetection(paths["train_images"], paths["train_ann"],
                             transform=train_transform(config.image_size, config.resize),
                             skip_bad_images=config.skip_bad_images)
    val_ds = CocoDetection(paths["val_images"], paths["val_ann"],
                           transform=val_transform(config.image_size, config.resize))
    check = check_dataset(train_ds, val_ds)
    if devices.dist.is_main:
        log.info("dataset %s (%s):\n  %s", paths["name"], paths["source"],
                 "\n  ".join(check.report()))
    check.raise_if_refused()
    coder = BoxCoder(dboxes)
    train_loader = build_loader(train_ds, config.batch_size, train=True,
                                num_workers=config.num_workers, seed=config.seed, coder=coder,
                                encode_on=devices.encode_on, device=devices.device,
                                persistent_workers=True, micro_batches=config.grad_accum)
    val_loader = build_loader(val_ds, config.eval_batch_size, train=False,
                              num_workers=config.num_workers, seed=config.seed,
                              device=devices.device, persistent_workers=True)
    if steps_per_epoch(train_loader) == 0:
        raise ValueError(f"{paths['train_ann']}: {len(train_ds)} images is less than one global "
                         f"batch of {config.global_batch(devices.dist.world_size)}")
    return Data(train_ds, val_ds, train_loader, val_loader, coder)


def build_parts(config: TrainConfig, devices: Devices, num_classes: int,
                dboxes: DefaultBoxes) -> Parts:
    """SSD300 for ``dboxes`` on the device (NHWC with ``channels_last``), wrapped in DDP over
    several ranks, the reference loss, SGD and fp16's GradScaler (disabled otherwise)."""
    device = devices.device
    model = build_model(num_classes, dboxes, config.model_width, config.backbone_weights,
                        source=f"anchors={config.anchors}").to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile != "off":
        # in place: the module keeps its state-dict keys (no `_orig_mod.`), so checkpoints of
        # compiled and eager runs are interchangeable; DDP then wraps the compiled module
        model.compile(backend=config.compile)
    ddp = (torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
        if devices.dist.distributed else model)
    # ssdwb.engine.optim.SGD: stock SGD (the same numbers, tests/test_optim.py), except that
    # under fp16's GradScaler it skips overflowing steps on the device instead of reading the
    # inf flag on the host at every step (the fused SGD would too, but corrupts its momentum).
    optimizer = SGD(model.parameters(), lr=0.0, momentum=config.momentum,
                    weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=devices.amp == "fp16")
    return Parts(model, ddp, MultiBoxLoss(dboxes).to(device), optimizer, scaler)


def save_run_design(dboxes: DefaultBoxes, folder: RunFolder) -> None:
    """The design as trained, in the run folder to look into (rank 0, fresh runs)."""
    if folder.enabled:
        save_design(dboxes, folder.path / "anchors.json")
