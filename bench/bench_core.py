"""Core maths throughput on one CPU thread: ssdwb against torchvision's own SSD machinery.

    .venv/bin/python bench/bench_core.py [--batch 32] [--repeats 10]

encode: batch 32, 1 to 30 GT boxes per image. ssdwb ``BoxCoder.encode_batch`` (whole batch at
once) against what torchvision's SSD does per image in ``SSD.compute_loss``: ``box_iou`` +
``SSDMatcher(0.5)`` + ``BoxCoder((10, 10, 5, 5)).encode_single`` + label gather.

postprocess: batch 32, two inputs: random logits (every class fills its 200 candidates), and
trained-like logits (background dominant, a few confident priors).
ssdwb ``detect.postprocess`` against ``SSD.postprocess_detections`` (same thresholds: score 0.05,
NMS 0.5, 200 candidates per class, 200 detections). Prints images/s and the ratio.
Both sides run in this one process, after ``ssdwb.runtime.tune_cpu_allocator`` (as ``ssdwb train``
does on CPU) unless ``--default-malloc``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection import ssd300_vgg16
from torchvision.ops import box_iou

from ssdwb.runtime import tune_cpu_allocator
from ssdwb.ssd.anchors import dboxes300_coco
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.postprocess import postprocess


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each function, measured in alternation (this machine is a VM: its speed
    drifts, and alternating exposes both sides to the same drift)."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def make_gt(batch: int, gen: torch.Generator):
    boxes, labels = [], []
    for _ in range(batch):
        n = int(torch.randint(1, 31, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * 0.7
        wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.02
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(1, 81, (n,), generator=gen))
    return boxes, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--default-malloc", action="store_true",
                    help="keep glibc's default mmap threshold (both sides pay the page faults)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.default_malloc:
        print("allocator tuned for both sides:", tune_cpu_allocator())
    gen = torch.Generator().manual_seed(0)
    dboxes = dboxes300_coco()
    coder = BoxCoder(dboxes)
    boxes, labels = make_gt(args.batch, gen)

    # torchvision: per image, what SSD.compute_loss does to build its targets.
    matcher = det_utils.SSDMatcher(0.5)
    tv_coder = det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    anchors = dboxes.ltrb

    def tv_encode():
        out = []
        for gt, lab in zip(boxes, labels):
            matched = matcher(box_iou(gt, anchors))
            fg = matched >= 0
            target = tv_coder.encode_single(gt[matched.clamp(min=0)], anchors)
            cls = torch.zeros(anchors.shape[0], dtype=torch.int64)
            cls[fg] = lab[matched[fg]]
            out.append((target, cls))
        return out

    def ours_encode():
        enc, lab = coder.encode_batch(boxes, labels)
        return coder.offsets(enc), lab

    t_tv, t_ours = best_times([tv_encode, ours_encode], args.repeats)
    print(f"encode      batch {args.batch}: ssdwb {args.batch / t_ours:9.1f} img/s   "
          f"torchvision {args.batch / t_tv:9.1f} img/s   ratio {t_tv / t_ours:5.2f}x")

    tv_model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=81,
                            score_thresh=0.05, nms_thresh=0.5, detections_per_img=200,
                            topk_candidates=200)
    pix_anchors = [dboxes.ltrb * 300] * args.batch
    shapes = [(300, 300)] * args.batch
    ploc = torch.randn(args.batch, 4, 8732, generator=gen) * 0.5
    cases = {
        # every class fills its 200 candidates: NMS (the same torchvision kernel on both sides)
        # dominates
        "random logits x2.5": torch.randn(args.batch, 81, 8732, generator=gen) * 2.5,
        # like a trained model: background dominant, a few confident priors per image
        "trained-like": torch.randn(args.batch, 81, 8732, generator=gen)
        + torch.nn.functional.one_hot(torch.zeros(8732, dtype=torch.int64), 81).t() * 7.0,
    }
    for name, plabel in cases.items():
        head = {"bbox_regression": ploc.transpose(1, 2).contiguous(),
                "cls_logits": plabel.transpose(1, 2).contiguous()}

        def tv_post(head=head):
            return tv_model.postprocess_detections(head, pix_anchors, shapes)

        def ours_post(plabel=plabel):
            return postprocess(ploc, plabel, coder)

        n_ours = sum(len(d[0]) for d in ours_post())
        n_tv = sum(len(d["boxes"]) for d in tv_post())
        t_tv, t_ours = best_times([tv_post, ours_post], args.repeats)
        print(f"postprocess batch {args.batch} {name:>18}: ssdwb {args.batch / t_ours:8.1f} img/s"
              f"   torchvision {args.batch / t_tv:8.1f} img/s   ratio {t_tv / t_ours:5.2f}x   "
              f"(detections: ssdwb {n_ours}, torchvision {n_tv})")

if __name__ == "__main__":
    main()
