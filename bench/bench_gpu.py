"""The one prepared GPU check: CUDA tests, training throughput against torchvision's SSD path,
host syncs per step, and evaluation throughput. One table, ratios measured in this one run.

    PYTHONPATH=. python3 bench/bench_gpu.py                # on a lent GPU (about 5 minutes)
    .venv/bin/python bench/bench_gpu.py --smoke            # the same code, tiny, on the CPU

On a lent machine torch, torchvision, numpy, pillow and tqdm are installed; the COCO evaluators
may not be: ``bench/gpu_wheels.sh`` downloads them here as wheels to carry (without them the
coco_eval column says so and the rest runs). Nothing is downloaded there.

What it measures:

* CUDA tests: ``pytest -k cuda`` over the test files that hold the CUDA-only tests.
* Training: the full SSD300 (width 1, random init) at ``--batch`` 120 per GPU, on synthetic
  640x480 JPEGs through the real loader (``build_loader``, the reference augmentation, worker
  processes, pinned memory, encoding on the GPU), each step ``ssdwb.engine.loop.train_step`` itself.
  Modes: fp32 NCHW (TF32 convolutions, PyTorch's default on Ampere+), fp16 (GradScaler) +
  channels_last, and the peer: torchvision's ``SSD`` training path (its transform, anchors,
  per-image matching and loss) around the same network, same loader, same optimiser, fp16
  autocast + GradScaler + channels_last, fed the loader's raw boxes. Images/s over ``--steps``
  steps after ``--warmup`` (cuDNN benchmark picks algorithms then).
* Host syncs per step of ``train_step`` under ``torch.cuda.set_sync_debug_mode("warn")``: 0 is
  the target, fp16 included (``ssdwb.engine.optim.SGD`` takes GradScaler's inf flag on the device; the
  peer's stock SGD reads it once per step). The training loop adds one read per log interval.
* Evaluation on ``--eval-images`` val images (640x480, 80 classes): inference + postprocess
  (fp16, channels_last) and coco_eval, seconds and images/s. The model is barely trained, so
  every class fills its 200 candidates: postprocess at its heaviest.

Targets (issue 16): fp16 + NHWC at least 1.2x the peer at the same precision; at most one sync
per log interval. fp16 + NHWC against fp32 NCHW is printed without a target (TF32 on Hopper).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
CUDA_TEST_FILES = ["tests/test_box_coder.py", "tests/test_postprocess.py"]


def cuda_tests(timeout: int) -> str:
    """`pytest -k cuda` over the files holding the CUDA tests: 'N passed, M skipped' or why not."""
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "-k", "cuda", *CUDA_TEST_FILES], cwd=ROOT, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    last = (out.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    if out.returncode not in (0, 5):
        print(out.stdout[-3000:], out.stderr[-2000:], sep="\n")
    return last


def make_data(root: Path, train_images: int, val_images: int):
    from ssdwb.data import CocoDetection, train_transform, val_transform
    from ssdwb.data.synthetic import make_shapes_coco

    data = make_shapes_coco(root, num_train=train_images, num_val=val_images, seed=0,
                            size=(640, 480))
    ann = data / "annotations"
    train = CocoDetection(data / "train", ann / "instances_train.json",
                          transform=train_transform(300))
    val = CocoDetection(data / "val", ann / "instances_val.json", transform=val_transform(300))
    return train, val


class SyncCounter:
    """Counts the host syncs PyTorch reports under ``set_sync_debug_mode("warn")`` (CUDA)."""

    def __init__(self, device: torch.device):
        self.on, self.n = device.type == "cuda", 0

    def __enter__(self):
        if self.on:
            self._catch = warnings.catch_warnings(record=True)
            self._seen = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.on:
            torch.cuda.set_sync_debug_mode(0)
            self.n = sum("synchroniz" in str(w.message) for w in self._seen)
            self._catch.__exit__(*exc)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, loader, args, device) -> tuple[float, float, float]:
    """(images/s, host syncs per step, last loss) of ``step(batch)`` over the loader."""
    it = iter(loader)
    for _ in range(args.warmup):
        step(next(it))
    _sync(device)
    syncs, t, n, loss = 0, time.perf_counter(), 0, None
    for _ in range(args.steps):
        batch = next(it)
        with SyncCounter(device) as c:
            loss = step(batch)
        syncs += c.n
        n += batch["images"].shape[0]
    _sync(device)
    return n / (time.perf_counter() - t), syncs / args.steps, float(loss.detach())


def _training_side(model, ds, args, device, amp: str, channels_last: bool, coder,
                   sgd=torch.optim.SGD):
    """What both sides share: the model on the device (NHWC if asked), SGD (``sgd``: ours takes
    fp16's overflow skip on the device), GradScaler, the autocast dtype and the real loader (raw
    boxes for the device; encoded by ``coder`` there)."""
    from ssdwb.data import build_loader

    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = sgd(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    loader = build_loader(ds, args.batch, train=True, distributed=False,
                          num_workers=args.workers, seed=0, coder=coder, encode_on="device",
                          device=device, persistent_workers=args.workers > 0)
    return model, opt, scaler, dtype, loader


def train_ssdwb(ds, args, device, amp: str, channels_last: bool, compile_backend: str = "off"):
    from ssdwb.engine.optim import SGD
    from ssdwb.engine.step import train_step
    from ssdwb.ssd.anchors import dboxes300_coco
    from ssdwb.ssd.box_coder import BoxCoder
    from ssdwb.ssd.loss import MultiBoxLoss
    from ssdwb.ssd.model import SSD300

    torch.manual_seed(0)
    dboxes = dboxes300_coco()
    coder, criterion = BoxCoder(dboxes), MultiBoxLoss(dboxes).to(device)
    model = SSD300(num_classes=81, backbone_weights=None, width=args.width)
    model, opt, scaler, dtype, loader = _training_side(model, ds, args, device, amp,
                                                       channels_last, coder, SGD)
    if compile_backend != "off":  # as TrainConfig.compile: in place; the warmup steps compile
        model.compile(backend=compile_backend)
    rate = time_steps(lambda b: train_step(model, criterion, opt, scaler, coder, b, device,
                                           dtype, channels_last, "device")[0],
                      loader, args, device)
    return rate, model, coder


def train_torchvision(ds, args, device, amp: str, channels_last: bool):
    """torchvision's SSD training path around our network (bench_train.py builds it)."""
    from bench_train import torchvision_ssd


    torch.manual_seed(0)
    model, opt, scaler, dtype, loader = _training_side(torchvision_ssd(args.width), ds, args,
                                                       device, amp, channels_last, None)

    def step(batch):
        images = batch["images"].to(device, non_blocking=True).float().div_(255)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{"boxes": b.to(device, non_blocking=True) * 300.0,
                    "labels": lb.to(device, non_blocking=True)}
                   for b, lb in zip(batch["boxes"], batch["labels"])]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = model(list(images), targets)
        loss = losses["bbox_regression"].float() + losses["classification"].float()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss.detach()

    return time_steps(step, loader, args, device)


def evaluation(model, coder, val_ds, args, device) -> tuple[float, float, str]:
    """(inference + postprocess s, coco_eval s or nan, backend or why none)."""
    from ssdwb.data import build_loader
    from ssdwb.evaluation.coco_eval import coco_eval
    from ssdwb.evaluation.inference import infer

    loader = build_loader(val_ds, args.eval_batch, train=False, distributed=False,
                          num_workers=args.workers, device=device)
    amp = "fp16" if device.type == "cuda" else "off"
    infer(model, loader, coder, val_ds.label_to_cat, device, amp, True)  # warm-up pass
    _sync(device)
    t = time.perf_counter()
    results, _ = infer(model, loader, coder, val_ds.label_to_cat, device, amp, True)
    t_infer = time.perf_counter() - t
    backend = next((name for name, module in (("faster-coco-eval", "faster_coco_eval"),
                                              ("pycocotools", "pycocotools"))
                    if _importable(module)), None)
    if backend is None:
        return t_infer, float("nan"), "no COCO evaluator installed (bench/gpu_wheels.sh)"
    gt = json.loads(Path(val_ds.ann_file).read_text())
    t = time.perf_counter()
    coco_eval(gt, results, backend)
    return t_infer, time.perf_counter() - t, f"{backend}, {len(results)} detections"


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=120, help="images per step (Dell's 1-2 nodes)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=12, help="loader processes")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--eval-batch", type=int, default=250)
    ap.add_argument("--compile", default="inductor", metavar="BACKEND",
                    help="torch.compile backend of the compiled row (off: no such row)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes on any device: checks the script, measures nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.warmup, args.width, args.workers = 2, 2, 1, 0.25, 1
        args.eval_images, args.eval_batch = 4, 4
        args.compile = "aot_eager" if args.compile != "off" else "off"  # no C++ build here
    device = torch.device(args.device)
    start = time.time()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"bench_gpu {time.strftime('%Y-%m-%d %H:%M')}: {name}, torch {torch.__version__}, "
          f"batch {args.batch}, width {args.width}, {args.steps} steps after {args.warmup}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as ssdwb.engine.loop does (cudnn_benchmark)
    rows = []
    if not args.skip_tests:
        rows.append(("CUDA tests", cuda_tests(timeout=180), ""))
    half = "fp16" if device.type == "cuda" else "bf16"  # fp16 autocast on a CPU is emulated
    with tempfile.TemporaryDirectory() as tmp:
        images = args.batch * (args.warmup + args.steps)
        train_ds, val_ds = make_data(Path(tmp) / "shapes", images, args.eval_images)
        print(f"data: {images} train + {args.eval_images} val JPEGs (640x480) in "
              f"{time.time() - start:.0f} s")
        (fp32, syncs32, _), _, _ = train_ssdwb(train_ds, args, device, "off", False)
        (ours, syncs, _), model, coder = train_ssdwb(train_ds, args, device, half, True)
        peer, peer_syncs, _ = train_torchvision(train_ds, args, device, half, True)
        rows += [("train fp32 NCHW (ssdwb)", f"{fp32:.1f} img/s", f"{syncs32:.1f} syncs/step"),
                 (f"train {half} + NHWC (ssdwb)", f"{ours:.1f} img/s",
                  f"{syncs:.1f} syncs/step"),
                 (f"train {half} + NHWC (torchvision SSD)", f"{peer:.1f} img/s",
                  f"{peer_syncs:.1f} syncs/step"),
                 (f"ratio ssdwb / torchvision ({half})", f"{ours / peer:.2f}x",
                  "target >= 1.2x: " + ("met" if ours / peer >= 1.2 else "NOT met")),
                 (f"ratio {half}+NHWC / fp32 NCHW", f"{ours / fp32:.2f}x", "no target")]
        if args.compile != "off":  # eager and compiled, fp16 + NHWC, side by side
            (compiled, csyncs, _), _, _ = train_ssdwb(train_ds, args, device, half, True,
                                                      args.compile)
            rows += [(f"train {half} + NHWC compiled ({args.compile})", f"{compiled:.1f} img/s",
                      f"{csyncs:.1f} syncs/step"),
                     (f"ratio compiled / eager ({half}+NHWC)", f"{compiled / ours:.2f}x",
                      f"compiling is in the {args.warmup} warmup steps")]
        t_infer, t_eval, what = evaluation(model, coder, val_ds, args, device)
        n = args.eval_images
        rows += [(f"eval inference+postprocess ({n} img)", f"{n / t_infer:.1f} img/s",
                  f"{t_infer:.2f} s"),
                 ("eval coco_eval", f"{t_eval:.2f} s", what)]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}}  {'figure':>14}  note")
    for label, figure, note in rows:
        print(f"{label:<{width}}  {figure:>14}  {note}")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
