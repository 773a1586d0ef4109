"""One config object for a training run, with the reference values as defaults, and presets.

The notebook's parameters cell, ``ssdwb train --set key=value`` and the Slurm configs all end
up here; every run writes it to ``runs/<run_id>/config.json``. Whatever the way in, each field is
converted to its declared type in ``__post_init__`` (``"False"`` -> False, ``"5"`` or 5.0 -> 5,
``"1,5"`` -> [1.0, 5.0], ``"none"`` -> None where None is allowed) or refused with a ValueError
naming the key and the value (``epochs: expected an integer, got 5.5 (float)``).

Schedule points (LR decay, evaluation) are given in the reference's iterations at global batch 32
(``schedule_unit="ref_iters"``) or directly in epochs (``"epochs"``). Reference iterations become
iterations ``i * 32 / global_batch`` for the LR decay and epochs ``ceil(i * 32 / train_images)``
for evaluation: 120k..240k -> epochs 33, 44, 50, 55, 61, 66 on COCO's 117,266 train images.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import math
import os
import textwrap
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

from ssdwb.files import atomic_json
from ssdwb.runtime import cpu_class

__all__ = ["TrainConfig", "PRESETS", "DEMO_PRESETS", "preset", "demo_preset", "field_reasons",
           "describe_fields"]

REF_BATCH = 32


@dataclass
class TrainConfig:
    # data
    data_dir: str = "data/coco"  # dataset folder (COCO 2017 or synthetic layout) or file (.yaml)
    image_size: int = 300  # input side in pixels: SSD300 (the only size implemented)
    num_workers: int = 4  # loader processes per rank
    resize: str = "pil"  # pil: the reference's pixels | tensor: torch's kernel, faster
    skip_bad_images: bool = True  # training: an unreadable image is counted and replaced, not fatal
    max_bad_image_share: float = 0.01  # stop when more of an epoch's images than this were unreadable
    # model
    model_width: float = 1.0  # channel multiplier: 1.0 is the reference model, 0.25 the CPU demo's
    backbone_weights: str | None = "imagenet"  # "imagenet" (TORCH_HOME), a state-dict path, or None
    anchors: str = "reference"  # default boxes: SPEC.md's 8732, or a design file (`ssdwb anchors fit`)
    amp: str = "off"  # off | fp16 (GradScaler) | bf16 | auto (bf16 on a bf16 CPU, fp16 on CUDA)
    channels_last: bool = False  # NHWC convolutions: faster on tensor cores
    cudnn_benchmark: bool = True  # cuDNN picks the fastest convolution algorithms (CUDA only)
    compile: str = "off"  # off | a torch.compile backend (inductor): model.compile(), same keys
    # optimisation (SPEC.md)
    batch_size: int = 32  # images per micro-batch and rank (BatchNorm's span)
    grad_accum: int = 1  # micro-batches per step: global batch = batch_size x ranks x grad_accum
    lr: float = 2.5e-3  # base LR for a global batch of 32, scaled by lr_scaling
    lr_scaling: str = "linear"  # linear: lr*gbs/32 | dell: 2.5e-3*max(1, round(lr/2.5e-3*gbs/32))
    warmup: int = 300  # linear warmup iterations from 0 (NVIDIA 300, Dell 650)
    momentum: float = 0.9  # SGD momentum (SPEC.md)
    weight_decay: float = 5e-4  # reference; Dell's configs use 1.3e-4 to 1.6e-4
    schedule_unit: str = "ref_iters"  # unit of lr_decay_at and eval_at: ref_iters | epochs
    lr_decay_at: list[float] = field(  # LR x lr_decay_factor at each point, in schedule_unit
        default_factory=lambda: [160_000, 200_000])
    lr_decay_factor: float = 0.1  # LR multiplier at each lr_decay_at point
    grad_clip_norm: float = 0.0  # >0: clip the global gradient norm to this; 0 = off (reference)
    eval_at: list[float] = field(  # evaluations (ref_iters: COCO epochs 33, 44, 50, 55, 61, 66)
        default_factory=lambda: [120_000, 160_000, 180_000, 200_000, 220_000, 240_000])
    epochs: int = 70  # the most epochs to train (reference 70; 80 for 1xC4140)
    target_map: float = 0.23  # stop when COCO mAP@[.5:.95] reaches it
    seed: int = 1  # initial weights, data order and augmentations: same seed, same run
    # evaluation
    eval_batch_size: int = 160  # images per process per evaluation step (Dell: 160)
    eval_backend: str = "faster-coco-eval"  # COCO scorer, or pycocotools (the same numbers)
    async_eval: str = "auto"  # on: rank 0 scores in a process while training goes on; auto: CUDA
    # run bookkeeping
    run_dir: str = "runs"  # parent of run folders
    run_id: str = ""  # empty: a timestamp
    log_interval: int = 20  # iterations between metrics.jsonl lines
    tensorboard: bool = True  # rank 0 also writes TensorBoard event files into the run folder
    max_iters: int = 0  # stop after this many iterations (0: no limit); for smoke tests
    device: str = "auto"  # auto | cpu | cuda
    # Multi-rank runs (ssdwb/engine/watchdog.py): a stalled rank ends the run with a verdict
    dist_timeout_s: int = 300  # collectives' limit: far above a healthy step, far below torch's
    dist_long_timeout_s: int = 1800  # waits for rank 0 alone (scoring, checkpoint) or start-up
    encode_on: str = "auto"  # worker | device | auto (worker on CPU, device on CUDA)
    # MLPerf submission metadata
    submission_org: str = "ssdwb"  # the MLPerf log's submission_org
    submission_platform: str = "unknown"  # the MLPerf log's platform (Slurm: the system name)

    def __post_init__(self) -> None:
        # Every way in (TrainConfig(...), presets, from_dict/load, with_overrides, the training
        # notebook's papermill parameters and so the Slurm configs) passes here: each field is
        # converted to its declared type or refused, so "False" cannot arrive as a truthy string.
        for f in dataclasses.fields(self):
            setattr(self, f.name, _CONVERTERS[f.type](f.name, getattr(self, f.name)))
        choices = {"amp": ("off", "fp16", "bf16", "auto"), "lr_scaling": ("linear", "dell"),
                   "schedule_unit": ("ref_iters", "epochs"),
                   "eval_backend": ("faster-coco-eval", "pycocotools"),
                   "device": ("auto", "cpu", "cuda"), "encode_on": ("auto", "worker", "device"),
                   "async_eval": ("auto", "on", "off"),
                   "resize": ("pil", "tensor")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, not {getattr(self, key)!r}")
        if self.batch_size < 1 or self.epochs < 1 or self.grad_accum < 1:
            raise ValueError("batch_size, grad_accum and epochs must be positive")
        if not 0 < self.dist_timeout_s <= self.dist_long_timeout_s:
            raise ValueError(f"dist_timeout_s ({self.dist_timeout_s}) must be positive and at "
                             f"most dist_long_timeout_s ({self.dist_long_timeout_s})")
        if not 0.0 <= self.max_bad_image_share <= 1.0:
            raise ValueError(f"max_bad_image_share: expected a share from 0 to 1, got "
                             f"{self.max_bad_image_share!r}")

    # --- derived values -------------------------------------------------------------------
    def global_batch(self, world_size: int) -> int:
        return self.batch_size * world_size * self.grad_accum

    def virtual_ranks(self, world_size: int) -> int:
        """The ranks of the run this one computes like: ``world_size x grad_accum``."""
        return world_size * self.grad_accum

    def base_lr(self, world_size: int) -> float:
        """The learning rate after warmup for this global batch (SPEC.md's two rules)."""
        gbs = self.global_batch(world_size)
        if self.lr_scaling == "dell":
            return 2.5e-3 * max(1, round(self.lr / 2.5e-3 * gbs / REF_BATCH))
        return self.lr * gbs / REF_BATCH

    def decay_iterations(self, world_size: int, iters_per_epoch: int) -> list[int]:
        if self.schedule_unit == "epochs":
            return [int(round(e * iters_per_epoch)) for e in self.lr_decay_at]
        return [int(round(i * REF_BATCH / self.global_batch(world_size))) for i in self.lr_decay_at]

    def eval_epochs(self, train_images: int) -> list[int]:
        if self.schedule_unit == "epochs":
            return sorted({int(math.ceil(e)) for e in self.eval_at})
        return sorted({int(math.ceil(i * REF_BATCH / train_images)) for i in self.eval_at})

    def lr_at(self, iteration: int, world_size: int, iters_per_epoch: int) -> float:
        """LR of (0-based) iteration: linear warmup from 0, then x decay_factor at each point."""
        lr = self.base_lr(world_size)
        if self.warmup > 0 and iteration < self.warmup:
            lr *= iteration / self.warmup
        for point in self.decay_iterations(world_size, iters_per_epoch):
            if iteration >= point:
                lr *= self.lr_decay_factor
        return lr

    # --- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        atomic_json(self.to_dict(), path, indent=2)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        """A config from a mapping (config.json, a checkpoint's copy); errors name ``source``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{source}: unknown config key(s) {unknown}")
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of config keys")
        return cls.from_dict(values, str(path))

    def replace(self, **changes) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}")
        return type(self)(**{**self.to_dict(), **changes})

    def with_overrides(self, pairs: list[str]) -> TrainConfig:
        """Applies ``key=value`` strings (``ssdwb train --set``, the notebook's ``extra``). The
        value stays a string here and is converted by the field's type like any other input:
        ``true``/``no``, ``5``, ``2.5e-3``, ``[1, 5]`` or ``1,5``, ``null`` where None is allowed."""
        changes = {}
        names = {f.name for f in dataclasses.fields(self)}
        for pair in pairs:
            if not isinstance(pair, str):
                raise ValueError(f"--set takes key=value strings, got {pair!r}")
            key, sep, raw = pair.partition("=")
            key = key.strip()
            if not sep:
                raise ValueError(f"--set takes key=value, got {pair!r}")
            if key not in names:
                raise ValueError(f"unknown config key {key!r}")
            changes[key] = raw
        return self.replace(**changes)


# --- field conversion: one function per declared type ---------------------------------------
def _got(value) -> str:
    return f"got {value!r} ({type(value).__name__})"


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _to_bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # JSON 0/1
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{key}: expected a boolean (true/false, 1/0, yes/no), {_got(value)}")


def _to_int(key: str, value) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value.strip())
            except ValueError:
                number = None
    if isinstance(number, float) and not isinstance(value, bool) and number.is_integer():
        return int(number)  # 5.0 (a float from JSON or a YAML parameter) is the integer 5
    raise ValueError(f"{key}: expected an integer, {_got(value)}")


def _to_float(key: str, value) -> float:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise ValueError(f"{key}: expected a finite number, {_got(value)}")
    return number


def _to_float_list(key: str, value) -> list[float]:
    items = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"{key}: expected a list of numbers, {_got(value)}") from None
        else:  # "1,5" or "1, 5"; "" is the empty list
            items = [part for part in text.split(",") if part.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]  # papermill -p eval_at 5
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{key}: expected a list of numbers, {_got(value)}")
    return [_to_float(f"{key}[{i}]", item) for i, item in enumerate(items)]


def _to_str(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # run_id=123 given as a number
    raise ValueError(f"{key}: expected a string, {_got(value)}")


def _to_optional_str(key: str, value) -> str | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")):
        return None
    return _to_str(key, value)


_CONVERTERS = {"bool": _to_bool, "int": _to_int, "float": _to_float, "str": _to_str,
               "str | None": _to_optional_str, "list[float]": _to_float_list}
_untyped = [f.name for f in dataclasses.fields(TrainConfig) if f.type not in _CONVERTERS]
if _untyped:  # a new field with a type this module cannot convert yet
    raise TypeError(f"TrainConfig fields without a converter: {_untyped}")


# Named presets. "demo": the synthetic shapes set (ssdwb.data.synthetic.DEMO_DATA, 960 images of
# 300x300) on a 2-core CPU, where the full SSD300 trains far too slowly for a demo of minutes, so
# the demo trains the same design at a quarter of the channels (model_width 0.25) from random
# init, on the production code path: amp "auto" (bf16 on a CPU with native bf16) and
# channels_last. The recipe was chosen on a held-out set made with another seed, never on the val
# split:
#   batch 8 with LR flag 0.05 (linear scaling: the same LR per image as batch 16 at 0.025) and a
#   240-iteration warmup (the same images as batch 16's 120): batch 16 left the model
#   undertrained and its result seed-dependent;
#   grad_clip_norm 10 (not in the reference): after the warmup the gradient norm sits well below
#   10, with single steps far above it where the loss jumps; unclipped, one val run in six had
#   such a spike after the warmup and ended far below the others;
#   a larger LR flag (0.2) diverged in a trial of an older recipe.
# The demo is sized to fit 15 minutes of `make demo` on 2 cores, and CPUs differ in how fast they
# train it, so `ssdwb demo` picks one preset per CPU class (demo_preset, runtime.cpu_class), each
# the same recipe at the epochs that class trains in that time, decays and evaluations at the
# same fractions of the run:
#   "demo"       AMX-BF16: 32 epochs.
#   "demo-bf16"  bf16 in the vector units (AVX512-BF16, no AMX): 20 epochs.
#   "demo-fp32"  no native bf16 (AVX2 only): fp32 NCHW, 12 epochs.
# Every measurement behind these choices (mAP matrices, speeds per CPU class, the recipe's
# history), with its command, date and CPU: docs/demo.md.
_DEMO = {
    "data_dir": "data/shapes", "backbone_weights": None, "model_width": 0.25, "image_size": 300,
    "batch_size": 8, "lr": 0.05, "warmup": 240, "grad_clip_norm": 10.0, "weight_decay": 5e-4,
    "schedule_unit": "epochs",
    "amp": "auto", "channels_last": True, "num_workers": 1, "eval_batch_size": 16,
    "log_interval": 5, "target_map": 1.0, "device": "cpu",
}
PRESETS: dict[str, dict] = {
    "reference": {},
    "demo": {**_DEMO, "epochs": 32, "lr_decay_at": [24, 29], "eval_at": [8, 16, 24, 28, 32]},
    "demo-bf16": {**_DEMO, "amp": "bf16", "epochs": 20, "lr_decay_at": [15, 18],
                  "eval_at": [5, 10, 15, 18, 20]},
    "demo-fp32": {**_DEMO, "amp": "off", "channels_last": False, "epochs": 12,
                  "lr_decay_at": [9, 11], "eval_at": [4, 8, 9, 11, 12]},
}
DEMO_PRESETS = {"amx": "demo", "bf16": "demo-bf16", "fp32": "demo-fp32"}


def demo_preset() -> str:
    """The demo preset for this CPU's class (see PRESETS): "demo" with AMX-BF16, "demo-bf16" with
    bf16 in the vector units only, "demo-fp32" without native bf16."""

    return DEMO_PRESETS[cpu_class()]


def preset(name: str, **changes) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return TrainConfig(**PRESETS[name]).replace(**changes)


def field_reasons() -> dict[str, str]:
    """Each TrainConfig field's one-line reason: the comment on its lines in the class's source,
    so the dataclass stays the one place to keep them (``ssdwb config`` and ``ssdwb train
    --help`` print them)."""
    source = textwrap.dedent(inspect.getsource(TrainConfig))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    reasons = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign):
            lines = range(node.lineno, node.end_lineno + 1)
            reasons[node.target.id] = " ".join(comments[n] for n in lines if n in comments)
    return reasons


def describe_fields(config: TrainConfig | None = None) -> str:
    """A table of every field: name, type, value in ``config`` (default: the defaults), reason."""
    config = config or TrainConfig()
    reasons = field_reasons()
    rows = [(f.name, str(f.type), json.dumps(getattr(config, f.name)), reasons[f.name])
            for f in dataclasses.fields(config)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {n:<{widths[0]}}  {t:<{widths[1]}}  {v:<{widths[2]}}  {why}"
                     for n, t, v, why in rows)
