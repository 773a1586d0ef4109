"""Memory of the loader's worker processes: the dataset on pycocotools' index (the design before
``CocoDetection`` kept numpy arrays) against ``CocoDetection``, in one run.

    .venv/bin/python bench/bench_memory.py [--images 118287] [--workers 8] [--batch 64]
                                           [--dir DIR]

The annotation file is COCO 2017 train's size and shape: ``--images`` image entries (with COCO's
URL and date fields), 7.3 boxes per image on average, each with a segmentation polygon of 8 to
52 vertices (two decimals, as COCO's), 80 categories with COCO's ids; about 4 KB of JSON per
image (COCO's instances_train2017.json: 448 MB for 118,287 images). The images all point to four
tiny JPEGs, so a pass over 118k samples takes seconds. Each design runs in a process of its own
(a fresh heap): it builds its dataset, makes ``build_loader(..., num_workers=--workers,
persistent_workers=True)``, reads one pass, and then, with the workers still there, reads
``/proc/PID/smaps_rollup`` of itself and of every worker:

* RSS: resident pages, shared ones included (a forked worker maps its parent's pages: the sum
  over workers counts them once per worker);
* PSS: each shared page divided among the processes that map it: parent + workers PSS is the
  memory the loader really takes;
* USS: the pages private to the process (``Private_Clean + Private_Dirty``): what each worker
  copied (copy-on-write) from its parent, or allocated.

``--dir``: where the annotation file is written (and reused by a later run with the same
``--images``); default a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COCO_CAT_IDS = [i for i in range(1, 91) if i not in
                (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80 ids
TINY = [f"tiny_{k}.jpg" for k in range(4)]


def write_annotations(path: Path, n_images: int, seed: int = 0) -> None:
    """COCO-train-like JSON with ``n_images`` images (polygons, bboxes, URLs), written as text
    from pools of pre-formatted pieces: the parser still makes one object per number."""
    rng = np.random.default_rng(seed)
    w, h = 640, 480

    def poly() -> str:
        k = int(rng.integers(8, 53))
        xy = np.round(rng.uniform(0, [w, h], size=(k, 2)), 2).ravel()
        return "[[" + ",".join(f"{v:.2f}" for v in xy) + "]]"

    polys = [poly() for _ in range(2048)]
    x = rng.uniform(0, w - 20, 4096)
    y = rng.uniform(0, h - 20, 4096)
    bw = rng.uniform(2, w - x)
    bh = rng.uniform(2, h - y)
    bboxes = [f"[{a:.2f},{b:.2f},{c:.2f},{d:.2f}]" for a, b, c, d in zip(x, y, bw, bh)]
    areas = [f"{c * d * 0.6:.4f}" for c, d in zip(bw, bh)]
    counts = 1 + rng.poisson(6.3, n_images)
    image_of = np.repeat(np.arange(1, n_images + 1), counts)
    n = len(image_of)
    pick_poly = rng.integers(0, len(polys), n).tolist()
    pick_box = rng.integers(0, len(bboxes), n).tolist()
    cats = np.array(COCO_CAT_IDS)[rng.integers(0, 80, n)].tolist()
    images = ",".join(
        f'{{"license":{i % 8 + 1},"file_name":"{TINY[i % 4]}",'
        f'"coco_url":"http://images.cocodataset.org/train2017/{i:012d}.jpg","height":{h},'
        f'"width":{w},"date_captured":"2013-11-14 11:18:45",'
        f'"flickr_url":"http://farm4.staticflickr.com/3153/{i:011d}_6b1a9b2c4e_z.jpg","id":{i}}}'
        for i in range(1, n_images + 1))
    anns = ",".join(
        f'{{"segmentation":{polys[p]},"area":{areas[b]},"iscrowd":0,"image_id":{im},'
        f'"bbox":{bboxes[b]},"category_id":{c},"id":{j + 1}}}'
        for j, (p, b, im, c) in enumerate(zip(pick_poly, pick_box, image_of.tolist(), cats)))
    categories = json.dumps([{"supercategory": "thing", "id": c, "name": f"class {c}"}
                             for c in COCO_CAT_IDS])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write('{"info":{"description":"bench_memory"},"licenses":[],"images":[')
        f.write(images)
        f.write('],"annotations":[')
        f.write(anns)
        f.write('],"categories":' + categories + "}")
    tmp.replace(path)


class PycocotoolsDataset:
    """The design before: the pycocotools index kept by the dataset, per-image target tensors in
    a dict, the image record looked up in ``coco.imgs`` per sample (ssdwb's CocoDetection up to
    2026-12, its sampling path)."""

    def __init__(self, image_dir, ann_file, transform=None):
        import torch

        from ssdwb.data.coco import load_coco_json

        self.image_dir = Path(image_dir)
        self.transform = transform
        self.coco = load_coco_json(ann_file)
        cats = self.coco.dataset["categories"]
        self.cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.ids, self.targets = [], {}
        for img in self.coco.dataset["images"]:
            w, h = img["width"], img["height"]
            boxes, labels = [], []
            for a in self.coco.imgToAnns.get(img["id"], []):
                x, y, bw, bh = a["bbox"]
                x1, y1 = max(x, 0.0), max(y, 0.0)
                x2, y2 = min(x + bw, w), min(y + bh, h)
                if x2 <= x1 or y2 <= y1:
                    continue
                boxes.append((x1 / w, y1 / h, x2 / w, y2 / h))
                labels.append(self.cat_to_label[a["category_id"]])
            if not boxes:
                continue
            self.ids.append(img["id"])
            self.targets[img["id"]] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                       torch.tensor(labels, dtype=torch.int64))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        from PIL import Image

        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        with Image.open(self.image_dir / info["file_name"]) as im:
            im.load()
            image = im if im.mode == "RGB" else im.convert("RGB")
        boxes, labels = self.targets[img_id]
        target = {"boxes": boxes.clone(), "labels": labels.clone(), "image_id": img_id,
                  "orig_size": (info["height"], info["width"])}
        return self.transform(image, target)


_PIXELS = None


def to_tensor_only(image, target):
    """The stand-in transform: the image was decoded (the dataset's work, measured); the batch
    gets one constant 3x24x32 uint8 tensor per sample (the tiny JPEGs' size), not a conversion
    (it halves the pass on this machine and changes no memory figure)."""
    global _PIXELS
    if _PIXELS is None:
        import torch

        _PIXELS = torch.zeros(3, 24, 32, dtype=torch.uint8)
    return _PIXELS, target


def smaps(pid: int) -> dict[str, int]:
    """kB figures of /proc/PID/smaps_rollup: rss, pss, uss (private clean + dirty)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return {"rss": fields["Rss"], "pss": fields["Pss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def child(design: str, root: Path, workers: int, batch: int) -> dict:
    """One design in this process: build, one pass with persistent workers, measure."""
    from ssdwb.data import CocoDetection, build_loader

    ann = root / "instances.json"
    t0 = time.perf_counter()
    if design == "pycocotools":
        ds = PycocotoolsDataset(root, ann, transform=to_tensor_only)
    else:
        ds = CocoDetection(root, ann, transform=to_tensor_only)
    build_s = time.perf_counter() - t0
    parent_before = smaps(os.getpid())
    loader = build_loader(ds, batch, train=False, num_workers=workers, persistent_workers=True)
    t0 = time.perf_counter()
    seen = sum(len(b["image_ids"]) for b in loader)
    pass_s = time.perf_counter() - t0
    procs = multiprocessing.active_children()
    assert len(procs) == workers, procs
    per_worker = [smaps(p.pid) for p in procs]
    return {"images": len(ds), "seen": seen, "build_s": build_s, "pass_s": pass_s,
            "parent_before": parent_before, "parent": smaps(os.getpid()),
            "workers": {k: sum(w[k] for w in per_worker) for k in ("rss", "pss", "uss")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=118_287)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dir", help="where the annotation file goes (reused if there)")
    ap.add_argument("--child", choices=("pycocotools", "arrays"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.dir), args.workers, args.batch)))
        return

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="bench_memory_")
    root = Path(args.dir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    ann = root / "instances.json"
    stamp = root / "instances.images"
    t0 = time.perf_counter()
    if not (ann.exists() and stamp.exists() and stamp.read_text() == str(args.images)):
        write_annotations(ann, args.images)
        stamp.write_text(str(args.images))
        made = f"written in {time.perf_counter() - t0:.0f} s"
    else:
        made = "reused"
    from PIL import Image

    rng = np.random.default_rng(1)
    for name in TINY:
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / name)
    print(f"annotation file: {args.images} images, {ann.stat().st_size / 2**20:.0f} MiB "
          f"({made}); {args.workers} workers, batches of {args.batch}; one pass each")
    results = {}
    for design in ("pycocotools", "arrays"):
        out = subprocess.run([sys.executable, __file__, "--child", design, "--dir", str(root),
                              "--workers", str(args.workers), "--batch", str(args.batch)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{design} run failed:\n{out.stderr}")
        results[design] = json.loads(out.stdout.strip().splitlines()[-1])
    if tmp is not None:
        tmp.cleanup()

    def mib(kb: int) -> str:
        return f"{kb / 1024:9.0f}"

    names = {"pycocotools": "pycocotools index (before)", "arrays": "CocoDetection (arrays)"}
    print(f"{'MiB':28s} {'parent':>9s} {'workers':>9s} {'workers':>9s} {'workers':>9s} "
          f"{'parent+':>9s} {'build':>7s} {'pass':>7s}")
    print(f"{'':28s} {'RSS':>9s} {'RSS sum':>9s} {'PSS sum':>9s} {'USS sum':>9s} "
          f"{'workers':>9s} {'s':>7s} {'s':>7s}")
    print(f"{'':28s} {'':>9s} {'':>9s} {'':>9s} {'':>9s} {'PSS':>9s}")
    for design, r in results.items():
        w, p = r["workers"], r["parent"]
        print(f"{names[design]:28s} {mib(p['rss'])} {mib(w['rss'])} {mib(w['pss'])} "
              f"{mib(w['uss'])} {mib(p['pss'] + w['pss'])} {r['build_s']:7.1f} "
              f"{r['pass_s']:7.1f}")
    old, new = results["pycocotools"], results["arrays"]
    assert old["images"] == new["images"] and old["seen"] == new["seen"] == new["images"]

    def ratio(key: str, total: bool = False) -> float:
        a = old["workers"][key] + (old["parent"][key] if total else 0)
        b = new["workers"][key] + (new["parent"][key] if total else 0)
        return a / b

    print(f"ratio before/after: workers' PSS {ratio('pss'):.1f}x, workers' USS "
          f"{ratio('uss'):.1f}x, workers' RSS {ratio('rss'):.1f}x, parent+workers PSS "
          f"{ratio('pss', total=True):.1f}x ({old['images']} images with boxes read per pass)")


if __name__ == "__main__":
    main()
