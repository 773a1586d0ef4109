"""How long a 2 x 2 sweep of tiny CPU runs takes: one after another here (the peer), two at a
time here, and as one Slurm job array on the tests' local two-node cluster, measured in this run.

    .venv/bin/python bench/bench_sweep.py                  # the three, 3 epochs per run
    .venv/bin/python bench/bench_sweep.py --no-slurm       # without the local cluster
    .venv/bin/python bench/bench_sweep.py --grid lr=0.1 --epochs 1 --no-slurm   # a quick look

Each run: the synthetic set's 24 train (``--train-images``) / 8 val images, the demo model,
batch 2, an eval after every epoch, fp32, one thread (``OMP_NUM_THREADS=1``). The Slurm array
runs every task at once (``--max-parallel 4``, 2 nodes x 2 CPUs) and its time goes from
``ssdwb sweep`` to the end of the report job (``afterany``); the local times include the sweep's
report too. The cluster needs root and Debian's slurm-wlm and munge (tests/slurm_cluster.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from slurm_cluster import LocalCluster, missing_requirements  # noqa: E402

from ssdwb.data.synthetic import make_shapes_coco  # noqa: E402

SSDWB = str(Path(sys.prefix) / "bin" / "ssdwb")


def sweep_command(name: str, runs: Path, data: Path, grid: list[str], epochs: int) -> list[str]:
    evals = "[" + ",".join(str(e) for e in range(1, epochs + 1)) + "]"
    return [SSDWB, "sweep", name, "--preset", "demo", "--grid", *grid, "--set",
            f"data_dir={data}", f"epochs={epochs}", f"eval_at={evals}", "batch_size=2",
            "eval_batch_size=4", "warmup=4", "device=cpu", "amp=off", "channels_last=false",
            "num_workers=0", "--run-dir", str(runs)]


def finished(folder: Path) -> int:
    spec = json.loads((folder / "sweep.json").read_text())
    done = 0
    for run in spec["runs"]:
        path = folder / run["run_id"] / "summary.json"
        done += path.exists() and json.loads(path.read_text())["status"] == "success"
    return done


def time_local(tmp: Path, data: Path, args, jobs: int) -> tuple[float, int, int]:
    runs = tmp / f"local{jobs}"
    t0 = time.perf_counter()
    r = subprocess.run(sweep_command("grid", runs, data, args.grid, args.epochs)
                       + ["--local", "--jobs", str(jobs)], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=3600)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"local sweep failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    spec = json.loads((runs / "grid" / "sweep.json").read_text())
    return seconds, finished(runs / "grid"), len(spec["runs"])


def time_slurm(tmp: Path, data: Path, args) -> tuple[float, int, int]:
    with LocalCluster(tmp / "cluster") as cluster:
        runs = tmp / "slurm"
        t0 = time.perf_counter()
        r = subprocess.run(sweep_command("grid", runs, data, args.grid, args.epochs)
                           + ["--slurm", "--max-parallel", "4"], capture_output=True, text=True,
                           env={**os.environ, **cluster.env, "OMP_NUM_THREADS": "1"},
                           cwd=ROOT, timeout=600)
        if r.returncode != 0:
            sys.exit(f"sbatch failed:\n{r.stdout}\n{r.stderr}")
        spec = json.loads((runs / "grid" / "sweep.json").read_text())
        cluster.wait_job(spec["jobs"][0]["report_job"], timeout=3600)
        return time.perf_counter() - t0, finished(runs / "grid"), len(spec["runs"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", nargs="+", default=["lr=0.05,0.1", "seed=1,2"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--no-slurm", action="store_true", help="skip the local Slurm cluster")
    ap.add_argument("--train-images", type=int, default=24, help="synthetic training images")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as d:
        tmp = Path(d)
        data = make_shapes_coco(tmp / "tiny", num_train=args.train_images, num_val=8, seed=0)
        rows = [("local, one after another", *time_local(tmp, data, args, 1)),
                ("local, --jobs 2", *time_local(tmp, data, args, 2))]
        why = missing_requirements()
        if not args.no_slurm and why is None:
            rows.append(("Slurm array, 2 nodes x 2 CPUs", *time_slurm(tmp, data, args)))
        elif not args.no_slurm:
            print(f"no Slurm row: {why}")
    base = rows[0][1]
    print(f"{'sweep of ' + ' x '.join(g.split('=')[0] for g in args.grid):<32}{'seconds':>9}"
          f"{'runs done':>11}{'vs one after another':>22}")
    for name, seconds, done, total in rows:
        print(f"{name:<32}{seconds:>9.1f}{f'{done}/{total}':>11}{base / seconds:>21.2f}x")


if __name__ == "__main__":
    main()
