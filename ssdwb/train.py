"""The training loop: one function, one config, for the notebook, the CLI and Slurm.

    ssdwb train --preset demo                      # or --config FILE, plus --set key=value ...
    ssdwb train --resume runs/<run_id>             # continue a checkpointed run exactly
    torchrun --nproc-per-node=2 -m ssdwb.train --set device=cpu ...
    srun ... python -m ssdwb.train ...             # Slurm: see ssdwb/distributed.py

What it does (SPEC.md): SGD (momentum 0.9), LR = base * global_batch / 32 with linear warmup
from 0 and x0.1 decays, the reference loss, optional AMP (fp16 with a GradScaler, or bf16) and
channels_last, DDP over every rank (NCCL on CUDA, gloo on CPU); evaluation at the eval epochs;
stop at the target mAP or the last epoch.

The run folder ``runs/<run_id>/`` (rank 0 writes it): ``config.json``, ``metrics.jsonl`` (one
line per log interval and per eval), ``mlperf.log`` (``:::MLL`` v0.6 lines),
``detections_epochN.json``, ``checkpoint.pt`` (atomic, complete: model, optimizer, scaler,
iteration, epoch, position in the epoch, RNG states, config, log offsets) and ``summary.json``.

SIGTERM or SIGUSR1 (Slurm's warning before a time limit or preemption) makes every rank stop at
the next iteration: rank 0 checkpoints, logs ``run_stop`` with status aborted and the function
returns; ``--resume`` then continues. Resuming at an epoch boundary is exact (same metrics);
mid-epoch it is exact with ``num_workers=0`` (the workers' RNG streams are not checkpointed).
A non-finite loss stops the run, names the iteration and keeps the last good checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ssdwb.config import PRESETS, TrainConfig, preset
from ssdwb.mlperf import truncate_file

log = logging.getLogger(__name__)

__all__ = ["train", "resolve_data", "add_subcommands", "main"]


# --- data ---------------------------------------------------------------------------------
def resolve_data(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Image folders and annotation files of a COCO 2017 or synthetic-layout dataset."""
    root = Path(data_dir)
    for tr, va, tra, vaa in (("train2017", "val2017", "instances_train2017.json",
                              "instances_val2017.json"),
                             ("train", "val", "instances_train.json", "instances_val.json")):
        paths = {"train_images": root / tr, "val_images": root / va,
                 "train_ann": root / "annotations" / tra, "val_ann": root / "annotations" / vaa}
        if paths["train_ann"].exists() or paths["val_ann"].exists():
            return paths
    raise FileNotFoundError(
        f"{root}: no COCO 2017 (annotations/instances_train2017.json) or synthetic "
        f"(annotations/instances_train.json) dataset here. Make one with `ssdwb data synth {root}`"
        f" or fetch COCO with `ssdwb data download {root}`.")


# --- run folder -----------------------------------------------------------------------------
def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_json(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


class _Metrics:
    """Appends JSON lines to metrics.jsonl (rank 0 only)."""

    def __init__(self, path: Path | None):
        self.path = path

    def write(self, **record) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def offset(self) -> int:
        return self.path.stat().st_size if self.path is not None and self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        if self.path is not None and self.path.exists():
            truncate_file(self.path, offset)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopSignal:
    """Records SIGTERM/SIGUSR1 so the loop can checkpoint at the next iteration."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self.previous = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        log.warning("received %s: checkpointing at the next iteration",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)


def _any_rank(flag: bool, dist) -> bool:
    if not dist.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


# --- the loop ---------------------------------------------------------------------------------
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

    from ssdwb.anchors import dboxes300_coco
    from ssdwb.box_coder import BoxCoder
    from ssdwb.data import (
        CocoDetection,
        build_loader,
        normalize,
        set_epoch,
        train_transform,
        val_transform,
    )
    from ssdwb.distributed import init_distributed
    from ssdwb.evaluate import array_to_results, evaluate
    from ssdwb.loss import MultiBoxLoss
    from ssdwb.mlperf import MLPerfLogger
    from ssdwb.model import SSD300
    from ssdwb.runtime import tune_cpu_allocator

    checkpoint = None
    if resume is not None:
        ckpt_path = Path(resume) / "checkpoint.pt"
        if not ckpt_path.exists():
            raise FileNotFoundError(f"{ckpt_path}: no checkpoint to resume from")
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        config = TrainConfig.from_dict(checkpoint["config"], str(ckpt_path))
    elif config is None:
        raise ValueError("train() needs a config or a run folder to resume")
    config = config.with_overrides(overrides or [])
    if config.image_size != 300:
        raise ValueError("image_size: only 300 is implemented (SSD300's default boxes and heads)")

    dist = init_distributed(config.device)
    device = dist.device
    if device.type == "cpu":
        tune_cpu_allocator()
    encode_on = config.encode_on if config.encode_on != "auto" else (
        "device" if device.type == "cuda" else "worker")

    # Run folder: rank 0 decides the id, everyone learns it.
    run_id = config.run_id or time.strftime("%Y%m%d-%H%M%S")
    if dist.distributed:
        box = [run_id]
        torch.distributed.broadcast_object_list(box, src=0)
        run_id = box[0]
    config = config.replace(run_id=run_id)
    run = Path(resume) if resume is not None else Path(config.run_dir) / run_id
    main = dist.is_main
    if main:
        run.mkdir(parents=True, exist_ok=True)
        config.save(run / "config.json")
    metrics = _Metrics(run / "metrics.jsonl" if main else None)
    mll = MLPerfLogger(run / "mlperf.log", enabled=main)

    if checkpoint is None:
        mll.event("submission_benchmark", "ssd")
        mll.event("submission_org", config.submission_org)
        mll.event("submission_platform", config.submission_platform)
        mll.event("submission_division", "open")
        mll.event("submission_status", "research")
        mll.event("submission_poc_name", "ssdwb")
        mll.event("submission_entry", "ssdwb")
        mll.event("cache_clear", True)
        mll.event("init_start")
    else:
        metrics.truncate(checkpoint["metrics_offset"])
        mll.truncate(checkpoint["mlperf_offset"])

    torch.manual_seed(config.seed)  # same initial weights on every rank
    random.seed(config.seed)
    np.random.seed(config.seed)
    paths = resolve_data(config.data_dir)
    train_ds = CocoDetection(paths["train_images"], paths["train_ann"],
                             transform=train_transform(config.image_size, config.resize))
    val_ds = CocoDetection(paths["val_images"], paths["val_ann"],
                           transform=val_transform(config.image_size, config.resize))
    dboxes = dboxes300_coco()
    coder = BoxCoder(dboxes)
    train_loader = build_loader(train_ds, config.batch_size, train=True,
                                num_workers=config.num_workers, seed=config.seed, coder=coder,
                                encode_on=encode_on, device=device)
    val_loader = build_loader(val_ds, config.eval_batch_size, train=False,
                              num_workers=config.num_workers, seed=config.seed, device=device)
    iters_per_epoch = len(train_loader)
    if iters_per_epoch == 0:
        raise ValueError(f"{paths['train_ann']}: {len(train_ds)} images is less than one global "
                         f"batch of {config.global_batch(dist.world_size)}")

    model = SSD300(num_classes=train_ds.num_classes, backbone_weights=config.backbone_weights,
                   width=config.model_width)
    model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp = (torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
        if dist.distributed else model)
    criterion = MultiBoxLoss(dboxes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.amp)

    eval_epochs = [e for e in config.eval_epochs(len(train_ds)) if e <= config.epochs]
    if config.epochs not in eval_epochs:
        eval_epochs.append(config.epochs)  # always score the final model
    iteration, start_epoch, skip, history, train_time = 0, 0, 0, [], 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        iteration, start_epoch = checkpoint["iteration"], checkpoint["epoch"]
        skip, history = checkpoint["position"], checkpoint["history"]
        train_time = checkpoint["train_time"]
        _set_rng_state(checkpoint["rng"][dist.rank] if dist.rank < len(checkpoint["rng"])
                       else checkpoint["rng"][0])
    else:
        mll.event("global_batch_size", config.global_batch(dist.world_size))
        mll.event("opt_base_learning_rate", config.base_lr(dist.world_size))
        mll.event("opt_weight_decay", config.weight_decay)
        mll.event("opt_learning_rate_warmup_steps", max(config.warmup, 1))
        mll.event("opt_learning_rate_warmup_factor", 0)
        mll.event("max_samples", 1)
        mll.event("model_bn_span", config.batch_size)
        mll.event("init_stop")
        mll.event("run_start")

    def save_checkpoint(epoch: int, position: int) -> None:
        rng = [_rng_state()]
        if dist.distributed:
            rng = [None] * dist.world_size
            torch.distributed.all_gather_object(rng, _rng_state())
        if main:
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scaler": scaler.state_dict(), "iteration": iteration, "epoch": epoch,
                          "position": position, "rng": rng, "config": config.to_dict(),
                          "history": history, "train_time": train_time + time.time() - t0,
                          "metrics_offset": metrics.offset(), "mlperf_offset": mll.offset()},
                         run / "checkpoint.pt")

    def finish(status: str, reason: str = "") -> dict:
        mll.event("run_stop", metadata={"status": status})
        best = max((h["mAP"] for h in history), default=0.0)
        summary = {"run_id": run_id, "run_dir": str(run), "status": status, "reason": reason,
                   "iterations": iteration, "epochs": epoch_done, "world_size": dist.world_size,
                   "global_batch": config.global_batch(dist.world_size),
                   "final_map": history[-1]["mAP"] if history else None, "best_map": best,
                   "target_map": config.target_map, "target_reached": best >= config.target_map,
                   "time_to_train_s": train_time + time.time() - t0, "evals": history}
        if main:
            _atomic_json(summary, run / "summary.json")
            last = f"mAP {summary['final_map']:.4f}" if history else "no eval"
            print(f"[ssdwb] run {run_id} {status}{': ' + reason if reason else ''} after "
                  f"{iteration} iterations; {last}; folder {run}", flush=True)
        return summary

    t0 = time.time()
    epoch_done = start_epoch
    window_loss, window_n, window_t, window_imgs = 0.0, 0, time.time(), 0
    with _StopSignal() as stop:
        for epoch in range(start_epoch, config.epochs):
            ep = epoch + 1  # MLPerf epochs are 1-based
            prev_eval = max([0] + [e for e in eval_epochs if e < ep])
            if skip == 0 and ep == prev_eval + 1:
                nxt = min(e for e in eval_epochs if e >= ep)
                mll.event("block_start", metadata={"first_epoch_num": ep,
                                                   "epoch_count": nxt - ep + 1})
            if skip == 0:
                mll.event("epoch_start", metadata={"epoch_num": ep})
            set_epoch(train_loader, epoch)
            ddp.train()
            bar = tqdm(total=iters_per_epoch, initial=skip, desc=f"epoch {ep}", disable=not main,
                       mininterval=5, leave=False)
            # Resuming mid-epoch: in-process loading starts at batch `skip` (the restored RNG
            # state is the one batch `skip` saw); worker processes are re-seeded per epoch, so
            # they replay the skipped batches to reach the same RNG streams.
            first = 0
            if skip and train_loader.num_workers == 0:
                train_loader.sampler.skip_batches(skip, train_loader.batch_size)
                first = skip
            for i, batch in enumerate(train_loader, start=first):
                if i < skip:
                    continue
                lr = config.lr_at(iteration, dist.world_size, iters_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images = normalize(batch["images"].to(device, non_blocking=True))
                if config.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                if encode_on == "device":
                    gloc, glabel = coder.encode_batch([b.to(device) for b in batch["boxes"]],
                                                      [lb.to(device) for lb in batch["labels"]])
                else:
                    gloc = batch["gloc"].to(device, non_blocking=True)
                    glabel = batch["glabel"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    ploc, plabel = ddp(images)
                loss = criterion(ploc, plabel, gloc.transpose(1, 2), glabel)
                if _any_rank(not bool(torch.isfinite(loss)), dist):
                    reason = (f"non-finite loss ({loss.item()}) at iteration {iteration} "
                              f"(epoch {ep}); the last good checkpoint is kept")
                    log.error(reason)
                    bar.close()
                    return finish("aborted", reason)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                iteration += 1
                window_loss += loss.item()
                window_n += 1
                window_imgs += images.shape[0] * dist.world_size
                bar.update(1)
                if iteration % config.log_interval == 0:
                    now = time.time()
                    metrics.write(iteration=iteration, epoch=epoch + (i + 1) / iters_per_epoch,
                                  loss=window_loss / window_n, lr=lr,
                                  images_per_s=window_imgs / max(now - window_t, 1e-9))
                    window_loss, window_n, window_t, window_imgs = 0.0, 0, now, 0
                stop_now = _any_rank(stop.received is not None, dist)
                limit = config.max_iters and iteration >= config.max_iters
                if stop_now or (limit and i + 1 < iters_per_epoch):
                    bar.close()
                    save_checkpoint(epoch, i + 1)
                    reason = ("stopped by signal; resume with --resume" if stop_now
                              else f"max_iters={config.max_iters} reached")
                    return finish("aborted", reason)
            bar.close()
            skip = 0
            mll.event("epoch_stop", metadata={"epoch_num": ep})
            epoch_done = ep
            reached = False
            if ep in eval_epochs:
                mll.event("eval_start", metadata={"epoch_num": ep})
                stats, results = evaluate(ddp.module if dist.distributed else model, val_loader,
                                          coder, val_ds, device, dist.world_size, config.amp,
                                          config.channels_last, config.eval_backend, main)
                box = [stats["mAP"] if main else 0.0]
                if dist.distributed:
                    torch.distributed.broadcast_object_list(box, src=0)
                mll.event("eval_stop", metadata={"epoch_num": ep})
                mll.event("eval_accuracy", box[0], metadata={"epoch_num": ep})
                if main:
                    record = {"epoch": ep, "iteration": iteration, **stats}
                    history.append(record)
                    metrics.write(eval=True, **record)
                    _atomic_json(array_to_results(results), run / f"detections_epoch{ep}.json")
                    print(f"[ssdwb] epoch {ep}: mAP {stats['mAP']:.4f} AP50 {stats['AP50']:.4f} "
                          f"AP75 {stats['AP75']:.4f} (target {config.target_map})", flush=True)
                else:
                    history.append({"epoch": ep, "iteration": iteration, "mAP": box[0]})
                first = max([0] + [e for e in eval_epochs if e < ep]) + 1
                mll.event("block_stop", metadata={"first_epoch_num": first})
                reached = box[0] >= config.target_map
            save_checkpoint(epoch + 1, 0)
            if reached:
                return finish("success", f"target mAP {config.target_map} reached")
            if config.max_iters and iteration >= config.max_iters:
                return finish("aborted", f"max_iters={config.max_iters} reached")
    return finish("success", "last epoch done")


# --- command line -----------------------------------------------------------------------------
def _config_from_args(args) -> TrainConfig:
    config = preset(args.preset) if args.preset else TrainConfig()
    if args.config:
        config = TrainConfig.load(args.config)
    return config.with_overrides(args.set or [])


def _train_cmd(args) -> int:
    if args.resume:
        summary = train(resume=args.resume, overrides=args.set)
    else:
        summary = train(_config_from_args(args))
    return 0 if summary["status"] == "success" or "signal" in summary["reason"] else 1


def _eval_cmd(args) -> int:
    from ssdwb.anchors import dboxes300_coco
    from ssdwb.box_coder import BoxCoder
    from ssdwb.data import CocoDetection, build_loader, val_transform
    from ssdwb.evaluate import evaluate
    from ssdwb.model import SSD300

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(ckpt["config"], args.checkpoint)
    paths = resolve_data(args.data or config.data_dir)
    ds = CocoDetection(paths["val_images"], paths["val_ann"],
                       transform=val_transform(config.image_size, config.resize))
    model = SSD300(num_classes=ds.num_classes, width=config.model_width)
    model.load_state_dict(ckpt["model"])
    loader = build_loader(ds, args.batch_size, train=False, num_workers=args.workers)
    stats, _ = evaluate(model, loader, BoxCoder(dboxes300_coco()), ds, torch.device("cpu"),
                        backend=args.backend, progress=True)
    print(json.dumps(stats, indent=1))
    return 0


def _demo_cmd(args) -> int:
    """The README's demo: the training notebook on the synthetic set, then the run's report."""
    from ssdwb.notebooks import execute
    from ssdwb.report import render_report
    from ssdwb.runs import ensure_shapes, resolve_path

    data = ensure_shapes(args.data)
    run_id = args.run_id or time.strftime("demo-%Y%m%d-%H%M%S")
    run = resolve_path(args.run_dir) / run_id
    params = {"preset": "demo", "data_dir": str(data), "run_dir": str(run.parent),
              "run_id": run_id, "extra": list(args.set or [])}
    print(f"[ssdwb] training notebook -> {run / 'train.ipynb'}", flush=True)
    execute("train", run / "train.ipynb", params, progress=False, log_output=True)
    report = render_report(run)
    summary = json.loads((run / "summary.json").read_text())
    print(f"[ssdwb] demo run folder: {run}")
    print(f"[ssdwb] final mAP@[.5:.95] on the synthetic val split: {summary['final_map']:.4f}")
    print(f"[ssdwb] report: {report}")
    return 0 if summary["status"] == "success" else 1


def _report_cmd(args) -> int:
    from ssdwb.report import render_report

    try:
        out = render_report(args.run_dir, args.out, show_code=args.show_code)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


def add_subcommands(sub) -> None:
    tr = sub.add_parser("train", help="train (or resume) a run")
    tr.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset")
    tr.add_argument("--config", help="a config.json to start from")
    tr.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields")
    tr.add_argument("--resume", metavar="RUN_DIR",
                    help="continue the run in RUN_DIR (--set then changes its config)")
    tr.set_defaults(func=_train_cmd)
    ev = sub.add_parser("eval", help="evaluate a checkpoint on a val split")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", help="dataset folder (default: the run's data_dir)")
    ev.add_argument("--backend", default="faster-coco-eval",
                    choices=["faster-coco-eval", "pycocotools"])
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--workers", type=int, default=0)
    ev.set_defaults(func=_eval_cmd)
    demo = sub.add_parser("demo", help="the training notebook with the demo preset on the "
                          "synthetic dataset, then the run's HTML report")
    demo.add_argument("--data", default="data/shapes", help="generated there on first use")
    demo.add_argument("--run-dir", default="runs")
    demo.add_argument("--run-id", default="", help="default: demo-<timestamp>")
    demo.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="change preset fields")
    demo.set_defaults(func=_demo_cmd)
    rep = sub.add_parser("report", help="a run's executed notebooks -> runs/<id>/report.html")
    rep.add_argument("run_dir")
    rep.add_argument("--out", help="default: RUN_DIR/report.html")
    rep.add_argument("--show-code", action="store_true", help="keep the code of every cell")
    rep.set_defaults(func=_report_cmd)
    from ssdwb.notebooks import add_subcommand

    add_subcommand(sub)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m ssdwb.train")
    sub = ap.add_subparsers(dest="cmd")
    add_subcommands(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "eval", "demo", "report", "notebook"):
        argv = ["train", *argv]
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())


