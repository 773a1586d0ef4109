"""Rank 0's serial work at an evaluation, beyond inference: the detections file and coco_eval.

    .venv/bin/python bench/bench_detections.py [--rows 1000000] [--images 5000]

COCO val2017 gives ~1M detections at the end of a run (5000 images x up to 200). The rows here
are random boxes on ``--images`` synthetic GT images (one GT box each), so coco_eval does real
matching work. Prints seconds per stage, side by side in one process:

* detections file: ``json.dumps`` of per-row dicts (``evaluate.array_to_results``, what ssdwb
  wrote before, ``indent=None``) against ``evaluate.results_json`` (the same bytes); and how long
  ``RunFolder.eval_end`` holds the training loop now that a thread writes the file;
* coco_eval (faster-coco-eval): fed per-row dicts (the old path converted the array first)
  against the [N, 7] array itself.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic(rows: int, images: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt_boxes = np.column_stack([rng.random((images, 2)) * 400, rng.random((images, 2)) * 200 + 8])
    cats = rng.integers(1, 11, images)
    dataset = {"images": [{"id": i + 1, "width": 640, "height": 480} for i in range(images)],
               "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 11)],
               "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": int(cats[i]),
                                "bbox": gt_boxes[i].tolist(), "iscrowd": 0,
                                "area": float(gt_boxes[i, 2] * gt_boxes[i, 3])}
                               for i in range(images)]}
    img = rng.integers(0, images, rows)
    boxes = gt_boxes[img] + rng.normal(0, 6, (rows, 4))
    boxes[:, 2:] = np.abs(boxes[:, 2:]) + 1
    arr = np.column_stack([img + 1, boxes, rng.random(rows),
                           np.where(rng.random(rows) < 0.5, cats[img], rng.integers(1, 11, rows))])
    return dataset, arr.astype(np.float64)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=5000)
    args = ap.parse_args(argv)

    from ssdwb.evaluation.coco_eval import array_to_results, coco_eval, results_json
    from ssdwb.runs.folder import RunFolder

    dataset, arr = synthetic(args.rows, args.images)
    print(f"{args.rows} detections on {args.images} images")
    t_old, old = timed(lambda: json.dumps(array_to_results(arr)))
    t_new, new = timed(lambda: results_json(arr))
    if old != new:
        raise SystemExit("results_json differs from json.dumps(array_to_results(...))")
    print(f"{'detections file':32s} {'seconds':>8s}")
    print(f"{'  dicts + json.dumps (before)':32s} {t_old:8.2f}")
    print(f"{'  results_json':32s} {t_new:8.2f}   {t_old / t_new:.1f}x, "
          f"{len(new) / 2**20:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        folder = RunFolder(Path(tmp) / "run")
        folder.path.mkdir()
        t_hold, _ = timed(lambda: folder.eval_end(1, 0, {"mAP": 0.0}, 0.0, arr, [1]))
        t_wait, _ = timed(folder.wait)
        written = (folder.path / "detections_epoch1.json").read_text()
        if written != new + "\n":
            raise SystemExit("the detections file differs from results_json")
    print(f"{'  eval_end holds the loop':32s} {t_hold:8.2f}   (the thread then took "
          f"{t_wait:.2f} s more)")
    t_dicts, a = timed(lambda: coco_eval(dataset, array_to_results(arr)))
    t_array, b = timed(lambda: coco_eval(dataset, arr))
    if a != b:
        raise SystemExit(f"coco_eval differs: dicts {a['mAP']} array {b['mAP']}")
    print(f"{'coco_eval (faster-coco-eval)':32s}")
    print(f"{'  array -> dicts -> loadRes':32s} {t_dicts:8.2f}")
    print(f"{'  array -> loadRes':32s} {t_array:8.2f}   {t_dicts / t_array:.1f}x, "
          f"mAP {b['mAP']:.4f} both")
    print(f"serial on rank 0: before {t_old + t_dicts:.2f} s, now {t_hold + t_array:.2f} s")


if __name__ == "__main__":
    main()
