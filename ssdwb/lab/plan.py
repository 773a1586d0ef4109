"""Minutes to 0.23 mAP on 1-16 Dell C4140 nodes: ``ssdwb plan`` and ``notebooks/plan.ipynb``.

    ssdwb plan                                    # the table for 1, 2, 4, 8 and 16 C4140
    ssdwb plan --system 4xC4140 --img-per-s-per-gpu 610 [--bench-batch 120]

The model, per system (nodes x 4 V100, the per-GPU batch of ``slurm/config_<system>.sh``):
    step_s      = step_overhead_s + batch_per_gpu / compute_img_per_s + (1 - overlap) * ring_s
    ring_s      = 2 (N - 1) / N * parameters * grad_bytes / bandwidth + 2 (N - 1) * latency_s
    throughput  = N * batch_per_gpu / step_s                              (N GPUs in the ring)
    epochs      = the first eval point at or after epochs_needed(global batch)
    minutes     = (epochs * train_images / throughput + evals * eval_s) / 60
    eval_s      = eval_gpu_s / N + eval_fixed_s                           (per eval point)

``bandwidth`` is NVLink's inside one node and the node's interconnect once the ring leaves it
(a flat NCCL ring: every inter-node hop carries the whole ring's traffic).

Where the numbers come from:

* ``epochs_needed``: 50 epochs up to a global batch of 1024, then linear in log2(batch) through
  60 at 1536 (extrapolated with that slope beyond). Dell EMC's three MLPerf v0.7 C4140 results
  (below: global batches 512, 1024 and 896, one, two and four nodes) each trained 51.4-51.6
  epochs' worth of images at their published throughput in their published time, so all three
  stopped at the epoch-50 eval: the epochs depend on the global batch, not on the node count.
  (Read as "multi-node runs need 61-71 epochs", 2xC4140 would take 61 * 117,266 / 4436 s =
  26.9 min before any evaluation, 19 % over its 22.67.) NVIDIA's v0.7 8xDGX-A100 run (global
  batch 1536, mlcommons/training_results_v0.7 NVIDIA/results/dgxa100_n8_ngc20.06_mxnet) had
  0.2278 at epoch 55 and 0.2327 at 60; its 64-node run (2048) had 0.192 at epoch 60. Those are
  the MLPerf multi-node runs that took 60-71 epochs: large global batches.
* Eval points: the published runs used NVIDIA's v0.7 schedule (epochs 40, 50, 55, then every
  5th); ssdwb evaluates at ``TrainConfig().eval_epochs`` (33, 44, 50, 55, 61, 66) and at its
  last epoch (70).
* ``compute_img_per_s``, ``step_overhead_s``, ``eval_gpu_s``: fitted to Dell's three published
  results by :func:`fit_dell` (least squares on relative error; the constants below are its
  result, a test keeps them equal). The throughput fit: per-GPU step time minus the ring time
  = overhead + batch / rate, over Dell's per-GPU batches 128, 128 and 56 (fp16 gradients, as
  NVIDIA's MXNet code all-reduced them). The eval fit: published minutes minus training time
  at the published throughput, per eval point, as GPU-seconds spread over the GPUs (it holds
  evaluation and whatever else the published throughput leaves out; it scales with 1/GPUs in
  the data: 39.8 s per eval on 4 GPUs, 19.2 on 8, 10.0 on 16).
* Network (assumptions, not measured): NVLink between the 4 V100 SXM2 of a node at 100 GB/s
  of all-reduce bandwidth; one EDR InfiniBand HCA (100 Gb/s) per node, 11 GB/s as NCCL gets
  it; 5 us per ring step; no overlap of the all-reduce with the backward pass.
* ssdwb itself (predictions, not the fit): gradients all-reduced in fp32 (DDP reduces in the
  parameters' dtype, also under AMP), 19,972,534 of them; COCO scoring on rank 0 after each
  evaluation, 8.3 s (faster-coco-eval on 5000 images, docs/performance.md), on top of
  ``eval_gpu_s``.
* Per-GPU throughput: the default is the fit's, i.e. what a V100 did with NVIDIA's MXNet code.
  ``--img-per-s-per-gpu X`` (what ``bench/bench_gpu.py`` measures for ssdwb on one GPU, at
  ``--bench-batch`` images per step) replaces it: the rate becomes ``b / (b / X -
  step_overhead_s)``, the fixed per-step cost kept.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from importlib import resources

import numpy as np

from ssdwb.config import TrainConfig

__all__ = ["TRAIN_IMAGES", "PARAMETERS", "System", "SYSTEM_TABLE", "read_system_table", "SYSTEMS",
           "Published", "DELL_V07", "V07_EVAL_EPOCHS", "Assumptions", "SSDWB", "DELL_FIT_PROFILE",
           "epochs_needed", "epochs_to_target", "ring_allreduce_s", "step_time", "predict_system",
           "fit_dell", "plan_table", "dell_table", "format_plan"]

TRAIN_IMAGES = 117_266  # COCO 2017 train images with annotations (the reference drops the rest)
PARAMETERS = 19_972_534  # SSD300-ResNet34 trainable parameters (SPEC.md)
V07_EVAL_EPOCHS = (40, 50, 55, 60, 65, 70, 75, 80)  # NVIDIA's v0.7 SSD (MXNet), Dell ran it


@dataclass(frozen=True)
class System:
    """A cluster shape: ``nodes`` x ``gpus_per_node``, ``batch_per_gpu`` images per GPU."""

    name: str
    nodes: int
    gpus_per_node: int
    batch_per_gpu: int

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def global_batch(self) -> int:
        return self.gpus * self.batch_per_gpu


SYSTEM_TABLE = "c4140_systems.csv"  # in this package: the one table of the C4140 systems


def read_system_table() -> list[dict[str, str]]:
    """The rows of ``ssdwb/lab/c4140_systems.csv`` (the C4140 systems that the Slurm configs
    ``slurm/config_<system>.sh`` also read), as ``{column: text}``; ``#`` lines are comments."""
    text = resources.files("ssdwb.lab").joinpath(SYSTEM_TABLE).read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines()
                               if line.strip() and not line.startswith("#")))


SYSTEMS = {r["system"]: System(r["system"], int(r["nodes"]), int(r["gpus_per_node"]),
                               int(r["batch_per_gpu"])) for r in read_system_table()}


@dataclass(frozen=True)
class Published:
    """A published MLPerf result: the system (per-GPU batch = global batch / GPUs), its
    training throughput and its time to the target."""

    system: System
    img_per_s: float
    minutes: float


# Dell EMC's MLPerf v0.7 SSD results on C4140 (4 x V100 SXM2 per node), global batch in the name.
DELL_V07 = (Published(System("C4140 (512)", 1, 4, 128), 2297.0, 43.87),
            Published(System("2xC4140 (1024)", 2, 4, 128), 4436.0, 22.67),
            Published(System("4xC4140 (896)", 4, 4, 56), 8072.0, 12.44))


def _ssdwb_eval_epochs() -> tuple[int, ...]:
    config = TrainConfig()
    return tuple(sorted({*config.eval_epochs(TRAIN_IMAGES), config.epochs}))


@dataclass(frozen=True)
class Assumptions:
    """Every number of the model (module docstring); the defaults are ssdwb's on C4140 with
    the throughput and eval cost fitted to Dell's results."""

    compute_img_per_s: float = 603.6  # per GPU, marginal: fitted (fit_dell)
    step_overhead_s: float = 0.01126  # per step, whatever the batch: fitted (fit_dell)
    eval_gpu_s: float = 157.6  # per eval point, GPU-seconds spread over the GPUs: fitted
    eval_fixed_s: float = 8.3  # per eval point on rank 0 alone: ssdwb's COCO scoring
    grad_bytes: int = 4  # fp32 gradients (DDP); 2 for fp16
    parameters: int = PARAMETERS
    intra_node_GBps: float = 100.0  # NVLink, 4 V100 SXM2
    inter_node_GBps: float = 11.0  # EDR InfiniBand, one HCA per node, as NCCL gets it
    latency_s: float = 5e-6  # per ring step
    overlap: float = 0.0  # share of the all-reduce hidden behind the backward pass
    eval_epochs: tuple[int, ...] = dataclasses.field(default_factory=_ssdwb_eval_epochs)
    train_images: int = TRAIN_IMAGES

    def replace(self, **changes) -> Assumptions:
        return dataclasses.replace(self, **changes)

    def measured(self, img_per_s_per_gpu: float, batch: int) -> Assumptions:
        """These assumptions with a measured per-GPU throughput (``bench/bench_gpu.py``: one
        GPU, ``batch`` images per step): its step time less ``step_overhead_s`` is compute."""
        compute_s = batch / img_per_s_per_gpu - self.step_overhead_s
        if img_per_s_per_gpu <= 0 or compute_s <= 0:
            raise ValueError(f"img_per_s_per_gpu={img_per_s_per_gpu} at batch {batch} is a step "
                             f"of {batch / max(img_per_s_per_gpu, 1e-9) * 1e3:.1f} ms, not more "
                             f"than the fixed {self.step_overhead_s * 1e3:.1f} ms per step")
        return self.replace(compute_img_per_s=batch / compute_s)


SSDWB = Assumptions()
# What the published runs did (the fit): fp16 gradients, v0.7 eval points, COCO scoring
# overlapped with training (NVIDIA's --async-val), so no rank-0 time of its own.
DELL_FIT_PROFILE = Assumptions(grad_bytes=2, eval_fixed_s=0.0, eval_epochs=V07_EVAL_EPOCHS)


def epochs_needed(global_batch: int) -> float:
    """Epochs of training to 0.23 mAP at this global batch (module docstring)."""
    if global_batch <= 1024:
        return 50.0
    return 50.0 + 10.0 * math.log2(global_batch / 1024) / math.log2(1536 / 1024)


def epochs_to_target(a: Assumptions, global_batch: int) -> tuple[int, int]:
    """``(epoch of the eval that first reaches 0.23, evals run up to it)``; the last eval
    point when none reaches it first."""
    need = epochs_needed(global_batch)
    points = sorted(a.eval_epochs)
    hit = next((e for e in points if e >= need - 1e-9), points[-1])
    return hit, sum(e <= hit for e in points)


def ring_allreduce_s(a: Assumptions, gpus: int, nodes: int) -> float:
    """Seconds for one ring all-reduce of every gradient over ``gpus`` GPUs on ``nodes``."""
    if gpus <= 1:
        return 0.0
    size = a.parameters * a.grad_bytes
    bandwidth = (a.inter_node_GBps if nodes > 1 else a.intra_node_GBps) * 1e9
    return 2 * (gpus - 1) / gpus * size / bandwidth + 2 * (gpus - 1) * a.latency_s


def step_time(a: Assumptions, system: System) -> dict[str, float]:
    """One training step's seconds: ``overhead``, ``compute``, exposed ``allreduce``, ``total``."""
    parts = {"overhead": a.step_overhead_s,
             "compute": system.batch_per_gpu / a.compute_img_per_s,
             "allreduce": (1 - a.overlap) * ring_allreduce_s(a, system.gpus, system.nodes)}
    parts["total"] = sum(parts.values())
    return parts


def predict_system(a: Assumptions, system: System, img_per_s: float | None = None) -> dict:
    """Time to target of ``system``; ``img_per_s`` (a published throughput) replaces the
    throughput model when given.

    Returns:
        dict with ``system``, ``nodes``, ``gpus``, ``batch_per_gpu``, ``global_batch``,
        ``step_ms``, ``allreduce_ms``, ``img_per_s``, ``epochs``, ``evals``, ``train_min``,
        ``eval_min``, ``minutes``.
    """
    step = step_time(a, system)
    rate = img_per_s if img_per_s is not None else system.gpus * system.batch_per_gpu / step[
        "total"]
    epochs, evals = epochs_to_target(a, system.global_batch)
    train_s = epochs * a.train_images / rate
    eval_s = evals * (a.eval_gpu_s / system.gpus + a.eval_fixed_s)
    return {"system": system.name, "nodes": system.nodes, "gpus": system.gpus,
            "batch_per_gpu": system.batch_per_gpu, "global_batch": system.global_batch,
            "step_ms": step["total"] * 1e3, "allreduce_ms": step["allreduce"] * 1e3,
            "img_per_s": rate, "epochs": epochs, "evals": evals, "train_min": train_s / 60,
            "eval_min": eval_s / 60, "minutes": (train_s + eval_s) / 60}


def _lstsq_relative(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares of ``design @ x = target`` on relative errors (each row over its target)."""
    return np.linalg.lstsq(design / target[:, None], np.ones(len(target)), rcond=None)[0]


def fit_dell(a: Assumptions = DELL_FIT_PROFILE,
             published: tuple[Published, ...] = DELL_V07) -> dict[str, float]:
    """Fits ``compute_img_per_s`` and ``step_overhead_s`` to the published throughputs and
    ``eval_gpu_s`` to the published times (given everything else in ``a``).

    Returns:
        ``{"compute_img_per_s", "step_overhead_s", "eval_gpu_s"}``.
    """
    s = [p.system for p in published]
    # throughput: per-GPU step time - exposed ring time = overhead + batch * (1 / rate)
    step = np.array([x.gpus * x.batch_per_gpu / p.img_per_s for x, p in zip(s, published)])
    ring = np.array([(1 - a.overlap) * ring_allreduce_s(a, x.gpus, x.nodes) for x in s])
    design = np.array([[1.0, x.batch_per_gpu] for x in s])
    overhead, per_image = _lstsq_relative(design, step - ring)
    # evaluation: published seconds - training seconds = evals * (gpu_s / gpus + fixed)
    rest, per_gpu_s = [], []
    for x, p in zip(s, published):
        epochs, evals = epochs_to_target(a, x.global_batch)
        rest.append(p.minutes * 60 - epochs * a.train_images / p.img_per_s
                    - evals * a.eval_fixed_s)
        per_gpu_s.append(evals / x.gpus)
    (eval_gpu_s,) = _lstsq_relative(np.array(per_gpu_s)[:, None], np.array(rest))
    return {"compute_img_per_s": float(1 / per_image), "step_overhead_s": float(overhead),
            "eval_gpu_s": float(eval_gpu_s)}


def dell_table(a: Assumptions | None = None) -> list[dict]:
    """Dell's published results next to the model: minutes from the published throughput,
    and throughput and minutes from the fitted throughput model (``a``: the fitted profile)."""
    a = a or DELL_FIT_PROFILE.replace(**fit_dell())
    rows = []
    for p in DELL_V07:
        given = predict_system(a, p.system, img_per_s=p.img_per_s)
        model = predict_system(a, p.system)
        rows.append({"system": p.system.name, "global_batch": p.system.global_batch,
                     "published_img_per_s": p.img_per_s, "model_img_per_s": model["img_per_s"],
                     "epochs": given["epochs"], "evals": given["evals"],
                     "published_min": p.minutes, "fit_min": given["minutes"],
                     "fit_error": given["minutes"] / p.minutes - 1,
                     "model_min": model["minutes"], "model_error": model["minutes"] / p.minutes - 1})
    return rows


def plan_table(a: Assumptions = SSDWB, systems=None) -> list[dict]:
    """:func:`predict_system` for each system (default: every C4140 config)."""
    return [predict_system(a, s) for s in (systems or SYSTEMS.values())]


def format_plan(rows: list[dict], a: Assumptions) -> str:
    """The CLI's table and the assumptions it rests on."""
    lines = [f"{'system':<9} {'global batch':>12} {'step':>8} {'all-red.':>8} {'img/s':>7} "
             f"{'epochs':>6} {'evals':>5} {'train':>7} {'eval':>6} {'total':>7}"]
    for r in rows:
        batch = f"{r['gpus']}x{r['batch_per_gpu']}={r['global_batch']}"
        lines.append(f"{r['system']:<9} {batch:>12} {r['step_ms']:>5.1f} ms "
                     f"{r['allreduce_ms']:>5.1f} ms {r['img_per_s']:>7.0f} {r['epochs']:>6} "
                     f"{r['evals']:>5} {r['train_min']:>5.1f} m {r['eval_min']:>4.1f} m "
                     f"{r['minutes']:>5.1f} m")
    lines.append("")
    lines.append(f"per GPU: {a.compute_img_per_s:.1f} img/s of compute + "
                 f"{a.step_overhead_s * 1e3:.2f} ms per step; all-reduce of {a.parameters:,} "
                 f"{'fp32' if a.grad_bytes == 4 else 'fp16'} gradients in a ring over "
                 f"{a.inter_node_GBps:g} GB/s between nodes ({a.intra_node_GBps:g} GB/s NVLink "
                 f"inside one), {a.latency_s * 1e6:g} us per step, {a.overlap:.0%} overlapped")
    lines.append(f"epochs to 0.23: 50 up to global batch 1024, 60 at 1536 (MLPerf v0.7), rounded "
                 f"up to the eval points {list(a.eval_epochs)}; per eval "
                 f"{a.eval_gpu_s:.0f} GPU-s + {a.eval_fixed_s:g} s on rank 0")
    return "\n".join(lines)


def plot_plan(dell_rows: list[dict], plan_rows: list[dict], ax=None):
    """Minutes to target against nodes: Dell's published results, the fit from their
    throughputs, and the model's predictions for ssdwb's C4140 configs (log-log axes)."""
    # lazy: only the figure helpers need matplotlib's pyplot or canvas
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    nodes = [int(r["system"].split("x")[0]) if "x" in r["system"].split()[0] else 1
             for r in dell_rows]
    ax.plot(nodes, [r["published_min"] for r in dell_rows], "ko", ms=8, label="Dell EMC v0.7")
    ax.plot(nodes, [r["fit_min"] for r in dell_rows], "C1x", ms=9, mew=2,
            label="fit, from published img/s")
    ax.plot([r["nodes"] for r in plan_rows], [r["minutes"] for r in plan_rows], "C0.-",
            label="ssdwb configs, predicted")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks([r["nodes"] for r in plan_rows], [str(r["nodes"]) for r in plan_rows])
    ax.set_xlabel("C4140 nodes (4 V100 each)")
    ax.set_ylabel("minutes to 0.23 mAP")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return ax
