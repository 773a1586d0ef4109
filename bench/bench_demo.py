"""The demo recipe's robustness matrix: seeds x thread counts, plus the run a CPU without bf16
gets, each a full ``ssdwb train`` of a demo preset on the synthetic set. Prints one table.

    .venv/bin/python bench/bench_demo.py                       # the full matrix (about 1.5 h)
    .venv/bin/python bench/bench_demo.py --epochs 4 --seeds 1  # a quick look at reduced epochs
    .venv/bin/python bench/bench_demo.py --jobs 2              # OMP_NUM_THREADS=1 runs in pairs
    .venv/bin/python bench/bench_demo.py --dir runs/matrix     # kept; rerun to carry it on
    .venv/bin/python bench/bench_demo.py --preset demo         # another CPU class's preset

Rows: for each seed (``--seeds``, default 1 2 3) the preset (``--preset``, default the one
``ssdwb demo`` picks on this CPU: ``config.demo_preset``) with ``OMP_NUM_THREADS=1`` and with
the variable unset (torch then uses every core), then the ``demo-fp32`` preset (what ``ssdwb
demo`` picks on a CPU without native bf16: fewer epochs for the same wall time; ``amp=off``)
unless the matrix is of that preset already. ``--jobs 2`` runs the single-thread runs two at a
time: their mAP does not depend on it (same kernels, same thread count), their wall time does.
A run read back from ``--dir`` without its recorded wall time shows its training time
(summary.json's time_to_train_s).

Targets (issue 17): every run of the preset has a final mAP >= 0.30 and all are within 0.03
of each other; the fp32 runs >= 0.25; the preset's own run (seed 1, threads unset) >= 0.35.
``time make demo`` (the 15-minute limit) is timed separately: it includes data generation, the
notebook and the report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, preset: str, seed: int, threads: str | None, args, root: Path) -> dict:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    sets = [f"data_dir={args.data}", f"run_dir={root}", f"run_id={name}", f"seed={seed}"]
    if args.epochs:
        sets += [f"epochs={args.epochs}", f"eval_at=[{args.epochs}]"]
    summary_path = root / name / "summary.json"
    if summary_path.exists():  # --dir: a matrix carried on; this run finished before
        s = json.loads(summary_path.read_text())
        if s["status"] == "success":
            wall = root / name / "bench_wall_s"
            return {"name": name, "preset": preset, "seed": seed, "threads": threads or "unset",
                    "amp": s["amp"], "epochs": s["epochs"], "mAP": s["final_map"],
                    "wall_s": float(wall.read_text()) if wall.exists() else s["time_to_train_s"]}
        raise SystemExit(f"{summary_path}: status {s['status']} ({s['reason']}); remove the "
                         f"folder to run it again")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ssdwb", "train", "--preset", preset, "--set",
                          *sets], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0 or not summary_path.exists():
        raise SystemExit(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    s = json.loads(summary_path.read_text())
    (root / name / "bench_wall_s").write_text(f"{wall}\n")
    return {"name": name, "preset": preset, "seed": seed, "threads": threads or "unset",
            "amp": s["amp"], "epochs": s["epochs"], "mAP": s["final_map"], "wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "shapes"),
                    help="the demo set (generated there on first use)")
    ap.add_argument("--preset", default="", help="the preset of the matrix (default: what "
                    "`ssdwb demo` picks on this CPU)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=0, help="reduced epochs (0: the preset's)")
    ap.add_argument("--jobs", type=int, default=1, help="single-thread runs at a time")
    ap.add_argument("--skip-fp32", action="store_true")
    ap.add_argument("--threads", choices=("both", "1", "unset"), default="both",
                    help="only the OMP_NUM_THREADS=1 runs, or only the unset ones (with fp32)")
    ap.add_argument("--out", default="", help="also write the rows as JSON here")
    ap.add_argument("--dir", default="", help="keep the runs here (default: a temporary "
                    "folder); runs already finished there are read, not run again")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from ssdwb.config import PRESETS, demo_preset
    from ssdwb.data.synthetic import ensure_shapes

    name = args.preset or demo_preset()
    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    ensure_shapes(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        single = [(f"s{s}-t1", name, s, "1") for s in args.seeds if args.threads != "unset"]
        default = [(f"s{s}-tall", name, s, None) for s in args.seeds if args.threads != "1"]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda r: run(*r, args, root), single))
        rows += [run(*r, args, root) for r in default]
        if not args.skip_fp32 and args.threads != "1" and name != "demo-fp32":
            rows.append(run(f"s{args.seeds[0]}-fp32", "demo-fp32", args.seeds[0], None, args,
                            root))
    print(f"\n{'run':<10} {'preset':<10} {'seed':>4} {'threads':>7} {'amp':>5} {'epochs':>6} "
          f"{'mAP':>7} {'wall':>8}")
    for r in rows:
        print(f"{r['name']:<10} {r['preset']:<10} {r['seed']:>4} {r['threads']:>7} {r['amp']:>5} "
              f"{r['epochs']:>6} {r['mAP']:>7.4f} {r['wall_s'] / 60:>6.1f} m")
    maps = [r["mAP"] for r in rows if r["preset"] == name] or [float("nan")]
    lo, hi = min(maps), max(maps)
    print(f"{name} preset: min {lo:.4f}, max {hi:.4f}, spread {hi - lo:.4f} "
          f"(targets: min >= 0.30 {'met' if lo >= 0.30 else 'NOT met'}, spread <= 0.03 "
          f"{'met' if hi - lo <= 0.03 else 'NOT met'})")
    fp32 = [r["mAP"] for r in rows if r["preset"] == "demo-fp32"]
    if fp32:
        print(f"demo-fp32 (amp=off): min {min(fp32):.4f} (target >= 0.25 "
              f"{'met' if min(fp32) >= 0.25 else 'NOT met'})")
    if args.epochs:
        print(f"reduced to {args.epochs} epochs: the targets are for the presets' own epochs")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
