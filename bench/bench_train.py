"""Training step and COCO evaluation on CPU: where the time goes, against peers in the same run.

    .venv/bin/python bench/bench_train.py [--batch 8] [--steps 5] [--width 1.0] [--workers 0]
                                          [--eval-images 5000] [--skip-train] [--skip-eval]

Training step (batch 8, 300x300, the reference SSD300-ResNet34 unless --width): images from the
synthetic set through the reference augmentation and ``build_loader``, then forward, loss,
backward, SGD step and a metrics line, exactly the calls ``ssdwb.engine.loop`` makes. Each phase is
timed after a ``loss.item()`` sync (CPU: ops are synchronous anyway). The figure to watch is the
share of the step spent outside the model's forward and backward (target: under 3 %).

Peer: torchvision's SSD training path (``torchvision.models.detection.SSD``: its transform, its
``DefaultBoxGenerator`` anchors, per-image ``SSDMatcher`` + ``BoxCoder`` and its hard-negative
loss) around the same backbone, extra layers and head shapes, fed by the same loader without the
encode. Its network time is taken between a pre-hook on the backbone and a hook on the head.

Evaluation: ``coco_eval`` on ``--eval-images`` synthetic images (80 classes, 1 to 15 objects
each) with 100 detections per image (jittered true boxes plus false positives), with
faster-coco-eval and pycocotools side by side, and a check that the 12 numbers agree to 1e-4.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssdwb.data import CocoDetection, build_loader, normalize, train_transform
from ssdwb.data.synthetic import make_shapes_coco
from ssdwb.evaluation.coco_eval import STAT_KEYS, coco_eval
from ssdwb.runtime import tune_cpu_allocator
from ssdwb.ssd.anchors import dboxes300_coco
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.loss import MultiBoxLoss
from ssdwb.ssd.model import NUM_DEFAULTS, SSD300


def _dataset(root: Path, n: int, num_classes: int) -> CocoDetection:
    data = make_shapes_coco(root, num_train=n, num_val=1, seed=0)
    ds = CocoDetection(data / "train", data / "annotations" / "instances_train.json",
                       transform=train_transform(300))
    assert ds.num_classes <= num_classes
    return ds


class _Phases:
    def __init__(self):
        self.t: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.t.setdefault(name, []).append(seconds)

    def report(self, title: str, net: tuple[str, ...], batch: int) -> float:
        mean = {k: float(np.mean(v[1:] if len(v) > 1 else v)) for k, v in self.t.items()}
        total = sum(mean.values())
        outside = total - sum(mean[k] for k in net)
        print(f"\n{title}: {total * 1e3:.0f} ms/step, {batch / total:.2f} images/s")
        for k, v in mean.items():
            tag = " (model)" if k in net else ""
            print(f"  {k:<22}{v * 1e3:9.1f} ms  {100 * v / total:5.1f} %{tag}")
        print(f"  outside forward/backward: {100 * outside / total:.1f} % of the step")
        return outside / total


def bench_ssdwb(ds, args, metrics_path: Path) -> tuple[float, float]:
    torch.manual_seed(0)
    model = SSD300(num_classes=81, width=args.width).train()
    dboxes = dboxes300_coco()
    coder, criterion = BoxCoder(dboxes), MultiBoxLoss(dboxes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loader = build_loader(ds, args.batch, train=True, distributed=False,
                          num_workers=args.workers, seed=0, coder=coder)
    ph, it = _Phases(), iter(loader)
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        batch = next(it)
        images, gloc, glabel = normalize(batch["images"]), batch["gloc"], batch["glabel"]
        t1 = time.perf_counter()
        ploc, plabel = model(images)
        t2 = time.perf_counter()
        loss = criterion(ploc, plabel, gloc.transpose(1, 2), glabel)
        t3 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        with open(metrics_path, "a") as f:  # what the loop does every log interval
            f.write(json.dumps({"loss": loss.item(), "lr": 1e-3}) + "\n")
        t6 = time.perf_counter()
        for name, a, b in (("data + encode", t, t1), ("model forward", t1, t2), ("loss", t2, t3),
                           ("backward", t3, t4), ("optimizer", t4, t5), ("logging", t5, t6)):
            ph.add(name, b - a)
    share = ph.report(f"ssdwb step (batch {args.batch}, width {args.width}, "
                      f"{args.workers} workers)", ("model forward", "backward"), args.batch)
    return share, sum(float(np.mean(v[1:])) for v in ph.t.values())


class _Features(nn.Module):
    """Our backbone + extra layers with the dict output torchvision's SSD expects."""

    def __init__(self, ssd: SSD300):
        super().__init__()
        self.backbone, self.extra = ssd.backbone, ssd.extra

    def forward(self, x):
        x = self.backbone(x)
        out = [x]
        for block in self.extra:
            x = block(x)
            out.append(x)
        return OrderedDict((str(i), f) for i, f in enumerate(out))


def torchvision_ssd(width: float = 1.0, num_classes: int = 81):
    """torchvision's ``SSD`` (transform, anchors, matching, loss) around our backbone, extra
    layers and head shapes: the peer of bench_train.py and bench_gpu.py."""
    from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
    from torchvision.models.detection.ssd import SSD, SSDHead

    ours = SSD300(num_classes=num_classes, width=width, backbone_weights=None)
    channels = [m.in_channels for m in ours.loc]
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                  steps=[8, 16, 32, 64, 100, 300])
    assert anchors.num_anchors_per_location() == list(NUM_DEFAULTS)
    return SSD(_Features(ours), anchors, (300, 300), num_classes,
               head=SSDHead(channels, list(NUM_DEFAULTS), num_classes))


def bench_torchvision(ds, args) -> tuple[float, float]:
    torch.manual_seed(0)
    model = torchvision_ssd(args.width).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    loader = build_loader(ds, args.batch, train=True, distributed=False,
                          num_workers=args.workers, seed=0, coder=None)
    marks: dict[str, float] = {}
    model.backbone.register_forward_pre_hook(lambda *_: marks.__setitem__("a", time.perf_counter()))
    model.head.register_forward_hook(lambda *_: marks.__setitem__("b", time.perf_counter()))
    ph, it = _Phases(), iter(loader)
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        batch = next(it)
        images = list(batch["images"].float().div_(255))  # torchvision's SSD normalises itself
        targets = [{"boxes": b * 300.0, "labels": lb} for b, lb in zip(batch["boxes"],
                                                                         batch["labels"])]
        t1 = time.perf_counter()
        losses = model(images, targets)
        loss = losses["bbox_regression"] + losses["classification"]
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        loss.item()
        t4 = time.perf_counter()
        net = marks["b"] - marks["a"]
        ph.add("data", t1 - t)
        ph.add("transform+anchors+loss", (t2 - t1) - net)
        ph.add("model forward", net)
        ph.add("backward", t3 - t2)
        ph.add("optimizer", t4 - t3)
    share = ph.report(f"torchvision SSD step (same network, batch {args.batch})",
                      ("model forward", "backward"), args.batch)
    return share, sum(float(np.mean(v[1:])) for v in ph.t.values())


def synthetic_eval_set(n_images: int, dets: int = 100, seed: int = 0) -> tuple[dict, np.ndarray]:
    """A COCO ground-truth dict and a [n_images * dets, 7] results array."""
    rng = np.random.default_rng(seed)
    cats = [{"id": i, "name": f"c{i}"} for i in range(1, 91) if i % 9]  # 80 non-contiguous ids
    cat_ids = np.array([c["id"] for c in cats])
    images, anns, rows = [], [], []
    for img in range(1, n_images + 1):
        w, h = int(rng.integers(320, 641)), int(rng.integers(320, 641))
        images.append({"id": img, "width": w, "height": h, "file_name": f"{img}.jpg"})
        k = int(rng.integers(1, 16))
        wh = np.exp(rng.uniform(np.log(8), np.log(300), size=(k, 2)))
        xy = rng.uniform(0, 1, size=(k, 2)) * (np.array([w, h]) - wh).clip(1)
        cls = rng.choice(cat_ids, size=k)
        for j in range(k):
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": int(cls[j]),
                         "bbox": [*map(float, xy[j]), *map(float, wh[j])],
                         "area": float(wh[j, 0] * wh[j, 1]), "iscrowd": 0})
        src = rng.integers(0, k, size=dets)  # detections near true boxes, some with wrong classes
        box = np.concatenate([xy[src], wh[src]], 1) + rng.normal(0, 4, size=(dets, 4))
        box[:, 2:] = box[:, 2:].clip(1)
        fp = rng.random(dets) < 0.4
        box[fp] = np.concatenate([rng.uniform(0, 300, (fp.sum(), 2)),
                                  rng.uniform(5, 200, (fp.sum(), 2))], 1)
        lab = np.where(rng.random(dets) < 0.8, cls[src], rng.choice(cat_ids, size=dets))
        rows.append(np.column_stack([np.full(dets, img), box, rng.random(dets), lab]))
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, np.concatenate(rows).astype(np.float64)


def bench_eval(n_images: int) -> None:
    from ssdwb.data.coco import load_coco_json

    t = time.perf_counter()
    gt, results = synthetic_eval_set(n_images)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(gt))
        coco_gt = load_coco_json(path)
    print(f"\nCOCO eval: {n_images} images, {len(gt['annotations'])} GT boxes, "
          f"{len(results)} detections (built in {time.perf_counter() - t:.1f} s)")
    stats, times = {}, {}
    for backend in ("faster-coco-eval", "pycocotools"):
        t = time.perf_counter()
        stats[backend] = coco_eval(coco_gt, results, backend)
        times[backend] = time.perf_counter() - t
        print(f"  {backend:<18}{times[backend]:7.1f} s   mAP {stats[backend]['mAP']:.4f}")
    diff = max(abs(stats["faster-coco-eval"][k] - stats["pycocotools"][k]) for k in STAT_KEYS)
    print(f"  pycocotools / faster-coco-eval time: "
          f"{times['pycocotools'] / times['faster-coco-eval']:.1f}x; largest difference over the "
          f"12 stats: {diff:.1e} ({'OK' if diff <= 1e-4 else 'MISMATCH'} at 1e-4)")
    if diff > 1e-4:
        raise SystemExit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--width", type=float, default=1.0, help="model_width (1.0: the reference)")
    p.add_argument("--workers", type=int, default=0, help="loader processes (0: in-process)")
    p.add_argument("--eval-images", type=int, default=5000)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    args = p.parse_args()
    tune_cpu_allocator()  # as ssdwb.engine.loop does on CPU; for both sides
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_train:
        with tempfile.TemporaryDirectory() as tmp:
            ds = _dataset(Path(tmp) / "shapes", args.batch * (args.steps + 1), 81)
            ours, t_ours = bench_ssdwb(ds, args, Path(tmp) / "metrics.jsonl")
            peer, t_peer = bench_torchvision(ds, args)
        print(f"\nstep time torchvision / ssdwb: {t_peer / t_ours:.2f}x; outside forward/backward: "
              f"ssdwb {100 * ours:.1f} %, torchvision {100 * peer:.1f} % (target < 3 %)")
    if not args.skip_eval:
        bench_eval(args.eval_images)


if __name__ == "__main__":
    main()
