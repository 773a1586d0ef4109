"""Sweeps: a grid of training runs in one folder, run under Slurm as one job array or here.

    ssdwb sweep lr-seed --preset demo --grid lr=0.05,0.1 seed=1,2 --slurm --max-parallel 4
    ssdwb sweep lr-seed --preset demo --grid lr=0.05,0.1 seed=1,2 --local --jobs 2
    ssdwb sweep status lr-seed
    ssdwb report runs/lr-seed

The grid's cartesian product becomes runs ``runs/<name>/<run>``, each named after its values
(``lr=0.05,seed=1``). ``runs/<name>/sweep.json`` holds the preset, the ``--set`` changes, the
grid, each run's id, values and seed, and the Slurm jobs submitted. Every run executes
``notebooks/train.ipynb`` with the same parameters whichever way it runs: ``--local`` through
``ssdwb sweep-task`` (one subprocess per run), ``--slurm`` through ``slurm/sweep.slurm`` (one
array task per run, which reads its parameters with ``ssdwb sweep-task --env``).

The same command again runs only what is left: finished runs are skipped, checkpointed ones
resume, and a run that is queued or running (``squeue``, or the lock a local run holds) is never
started twice. A run's state comes from its folder and ``squeue``, never ``sacct`` (many
clusters keep no accounting). The sweep's report, ``runs/<name>/report.html``, is
``notebooks/compare_runs.ipynb`` executed on the sweep: under Slurm by a job that waits for the
array (``afterany``), locally after the last run.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ssdwb.apps.notebooks import execute
from ssdwb.apps.report import render_report
from ssdwb.config import preset
from ssdwb.files import atomic_json, project_root, resolve_path
from ssdwb.runs.reader import load_run, time_to_target

__all__ = ["Sweep", "parse_grid", "plan_sweep", "open_sweep", "sweep_states", "run_local",
           "submit_slurm", "run_task", "task_environment", "render_sweep_report", "format_status",
           "SweepError"]

SWEEP_FILE = "sweep.json"
# Keys a grid may not sweep: they name the run itself.
RESERVED = ("run_id", "run_dir", "resume")
# squeue states (long form) of a job that is waiting, and of one that holds resources.
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
FINAL = ("done",)


class SweepError(RuntimeError):
    """A sweep that cannot be planned, submitted or run; the message says why."""


@dataclass
class Sweep:
    """A sweep folder and its ``sweep.json``.

    Attributes:
        folder: ``runs/<name>``.
        spec: the JSON: ``name``, ``preset``, ``set`` (list of ``key=value``), ``grid``
            (key -> list of value strings), ``runs`` (``index``, ``run_id``, ``params``,
            ``seed``), ``jobs`` (``job_id``, ``indices``, ``report_job``, ``submitted``).
    """

    folder: Path
    spec: dict

    @property
    def runs(self) -> list[dict]:
        return self.spec["runs"]

    def run_folder(self, index: int) -> Path:
        return self.folder / self.runs[index]["run_id"]

    def save(self) -> None:
        atomic_json(self.spec, self.folder / SWEEP_FILE)


# --- planning --------------------------------------------------------------------------------
def split_values(raw: str) -> list[str]:
    """``"0.05,0.1"`` -> ``["0.05", "0.1"]``; commas inside brackets stay (``[1,2],[3]``)."""
    values, depth, start = [], 0, 0
    for i, ch in enumerate(raw):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            values.append(raw[start:i])
            start = i + 1
    values.append(raw[start:])
    return [v.strip() for v in values]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["lr=0.05,0.1", "seed=1,2"]`` -> ``{"lr": ["0.05", "0.1"], "seed": ["1", "2"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = split_values(raw) if sep else []
        if not key or not values or "" in values:
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,... (values separated by "
                             f"commas, none empty)")
        if key in RESERVED:
            raise SweepError(f"--grid {item!r}: {key} is set by the sweep for each run")
        if key in grid:
            raise SweepError(f"--grid names {key} twice")
        if len(set(values)) != len(values):
            raise SweepError(f"--grid {item!r}: a value is listed twice")
        grid[key] = values
    if not grid:
        raise SweepError("a sweep needs at least one --grid KEY=V1,V2,...")
    return grid


def _slug(value: str) -> str:
    """A run-id fragment of a value: a path's file stem, then only [A-Za-z0-9.+-]."""
    text = Path(value).stem if "/" in value else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "+", text).strip("+") or "x"


def plan_sweep(name: str, preset_name: str, grid: dict[str, list[str]],
               sets: list[str]) -> dict:
    """The ``sweep.json`` of a new sweep: one run per point of the grid (cartesian product, the
    last key varying fastest), each with its id, its values and its seed.

    Raises ``SweepError`` for an unknown preset or key, or a value its field refuses."""
    try:
        base = preset(preset_name).with_overrides(list(sets))
    except ValueError as e:
        raise SweepError(f"--preset/--set: {e}") from e
    runs, seen = [], set()
    for index, values in enumerate(itertools.product(*grid.values())):
        params = dict(zip(grid, values))
        try:
            config = base.with_overrides([f"{k}={v}" for k, v in params.items()])
        except ValueError as e:
            raise SweepError(f"--grid {params}: {e}") from e
        run_id = ",".join(f"{k}={_slug(v)}" for k, v in params.items())
        if run_id in seen:  # two values with the same slug, e.g. anchors=a/x.json,b/x.json
            run_id = f"{run_id},{index}"
        seen.add(run_id)
        runs.append({"index": index, "run_id": run_id, "params": params, "seed": config.seed})
    return {"name": name, "preset": preset_name, "set": list(sets), "grid": grid,
            "runs": runs, "jobs": []}


def open_sweep(folder: Path, spec: dict) -> Sweep:
    """The sweep in ``folder``: created from ``spec``, or the one already there if it is the
    same sweep (same preset, ``--set`` and grid). Raises ``SweepError`` if it is another one."""
    path = folder / SWEEP_FILE
    if not path.exists():
        sweep = Sweep(folder, spec)
        sweep.save()
        return sweep
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not valid JSON ({e})") from e
    differ = [k for k in ("preset", "set", "grid") if old.get(k) != spec[k]]
    if differ:
        raise SweepError(f"{folder} holds another sweep ({', '.join(differ)} differ: "
                         + "; ".join(f"{k} was {old.get(k)!r}, now {spec[k]!r}" for k in differ)
                         + "). Choose another name, or remove the folder.")
    return Sweep(folder, old)


def load_sweep(folder: str | os.PathLike) -> Sweep:
    folder = resolve_path(folder)
    path = folder / SWEEP_FILE
    if not path.exists():
        raise SweepError(f"{path} does not exist: {folder} is not a sweep folder")
    try:
        return Sweep(folder, json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not valid JSON ({e})") from e


# --- what each run is doing ------------------------------------------------------------------
@contextlib.contextmanager
def run_lock(sweep: Sweep, index: int, take: bool = True):
    """Yields True while this process holds run ``index``'s lock (False: another process runs
    it). ``take=False`` only tests it. The lock (``.locks/<run>``) is released on exit, and by
    the kernel if the process dies."""
    path = sweep.folder / ".locks" / sweep.runs[index]["run_id"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            if not take:
                fcntl.flock(f, fcntl.LOCK_UN)
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def queued_tasks(sweep: Sweep, timeout_s: float = 60,
                 require: bool = True) -> dict[int, str] | None:
    """``{run index: squeue state}`` for the sweep's array tasks still in the queue; None when
    squeue is not there and not ``require``-d (a report rendered away from the cluster)."""
    jobs = {str(j["job_id"]) for j in sweep.spec["jobs"]}
    if not jobs:
        return {}
    if shutil.which("squeue") is None:
        if not require:
            return None
        raise SweepError(f"{sweep.folder}: the sweep has Slurm jobs ({', '.join(sorted(jobs))}) "
                         f"but squeue is not on PATH: cannot tell which runs are queued")
    try:
        out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i %T"],
                             capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise SweepError(f"squeue did not answer in {timeout_s:.0f} s") from e
    if out.returncode != 0:
        raise SweepError(f"squeue failed: {out.stderr.strip()}")
    found = {}
    for line in out.stdout.splitlines():
        task, _, state = line.strip().partition(" ")
        job, _, index = task.partition("_")
        if job in jobs and index.isdigit():
            found[int(index)] = state.strip()
    return found


def run_state(sweep: Sweep, index: int, queue: dict[int, str] | None) -> str:
    """queued, running, done, stopped (checkpointed after a signal), failed or not started;
    "not finished" for a run with no summary when the queue is unknown (``queue`` None)."""
    if queue and index in queue:
        return "queued" if queue[index] in QUEUED else "running"
    with run_lock(sweep, index, take=False) as free:
        if not free:
            return "running"
    path = sweep.run_folder(index) / "summary.json"
    if path.exists():
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError:
            return "failed"
        reason = summary.get("reason", "")
        if summary.get("status") == "success" or reason.startswith("max_iters"):
            return "done"
        return "stopped" if reason.startswith("stopped by signal") else "failed"
    if queue is None:
        return "not finished"
    submitted = any(index in j["indices"] for j in sweep.spec["jobs"])
    return "failed" if sweep.run_folder(index).exists() or submitted else "not started"


def sweep_states(sweep: Sweep, require_queue: bool = True) -> list[dict]:
    """One row per run: ``run``, its grid values, ``state``, ``epoch``, ``best_map``,
    ``final_map``, ``time_to_target_s``. ``require_queue``: fail if the sweep has Slurm jobs
    and squeue is not there (what deciding to submit needs; a report does without)."""
    queue = queued_tasks(sweep, require=require_queue)
    rows = []
    for run in sweep.runs:
        row = {"run": run["run_id"], **run["params"], "state": run_state(sweep, run["index"], queue),
               "epoch": None, "best_map": None, "final_map": None, "time_to_target_s": None}
        folder = sweep.run_folder(run["index"])
        if (folder / "config.json").exists():
            r = load_run(folder)
            maps = [e["mAP"] for e in r.evals]
            row.update(epoch=(r.evals[-1]["epoch"] if r.evals else None),
                       best_map=max(maps, default=None), final_map=maps[-1] if maps else None,
                       time_to_target_s=time_to_target(r))
            if r.steps:
                row["epoch"] = max(row["epoch"] or 0, r.steps[-1].get("epoch", 0))
        rows.append(row)
    return rows


def format_status(sweep: Sweep, rows: list[dict]) -> str:
    """The table ``ssdwb sweep status`` prints."""
    keys = list(sweep.spec["grid"])
    head = ["run", *keys, "state", "epoch", "best mAP", "to target"]
    def cell(row, k):
        v = {"best mAP": row["best_map"], "to target": row["time_to_target_s"]}.get(k, row.get(k))
        if v is None:
            return "-"
        if k == "best mAP":
            return f"{v:.4f}"
        return f"{v:.0f} s" if k == "to target" else str(v)
    table = [head] + [[cell(r, k) for k in head] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    counts = {s: sum(r["state"] == s for r in rows) for s in dict.fromkeys(r["state"]
                                                                         for r in rows)}
    lines.append(f"{sweep.spec['name']}: {len(rows)} runs, "
                 + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


# --- one run ---------------------------------------------------------------------------------
def task_parameters(sweep: Sweep, index: int) -> dict:
    """The training notebook's parameters for run ``index``: the same locally and under Slurm."""
    run = sweep.runs[index]
    config = preset(sweep.spec["preset"]).with_overrides(sweep.spec["set"])
    return {"preset": sweep.spec["preset"], "data_dir": str(resolve_path(config.data_dir)),
            "run_dir": str(sweep.folder), "run_id": run["run_id"],
            "resume": (sweep.run_folder(index) / "checkpoint.pt").exists(), "seed": run["seed"],
            "extra": list(sweep.spec["set"]) + [f"{k}={v}" for k, v in run["params"].items()]}


def task_environment(sweep: Sweep, index: int) -> str:
    """Shell ``export`` lines that ``slurm/sweep.slurm`` evaluates: what run ``index`` needs
    from ``sweep.json`` (``run_and_time.sh`` turns them into the same notebook parameters)."""
    p = task_parameters(sweep, index)
    env = {"RUN_ID": p["run_id"], "SEED": str(p["seed"]), "PRESET": p["preset"],
           "DATADIR": p["data_dir"], "LOGDIR": p["run_dir"], "EXTRA_JSON": json.dumps(p["extra"])}
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def run_task(sweep: Sweep, index: int) -> int:
    """Runs sweep run ``index`` here (``--local``): the training notebook, resumed if it has a
    checkpoint, then the run's report. Returns 0, or 3 if another process is running it."""
    run_id = sweep.runs[index]["run_id"]
    with run_lock(sweep, index) as mine:
        if not mine:
            print(f"[ssdwb] {run_id}: another process is running it; not starting a second copy")
            return 3
        params = task_parameters(sweep, index)
        print(f"[ssdwb] {run_id}: {'resuming' if params['resume'] else 'starting'}", flush=True)
        execute("train", sweep.run_folder(index) / "train.ipynb", params, progress=False)
        render_report(sweep.run_folder(index))
    return 0


def run_local(sweep: Sweep, indices: list[int], jobs: int = 1,
              timeout_s: float | None = None) -> dict[int, int]:
    """Runs the given runs here, ``jobs`` at a time, each in its own ``ssdwb sweep-task``
    process (its output in ``runs/<name>/logs/<run>.log``). Returns ``{index: exit code}``;
    a run past ``timeout_s`` is killed and gets 124."""
    logs = sweep.folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def one(index: int) -> int:
        run_id = sweep.runs[index]["run_id"]
        with open(logs / f"{run_id}.log", "a") as log:
            cmd = [sys.executable, "-m", "ssdwb", "sweep-task", str(sweep.folder), str(index)]
            try:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      timeout=timeout_s, cwd=project_root()).returncode
            except subprocess.TimeoutExpired:
                print(f"[ssdwb] {run_id}: killed after the sweep's --timeout of {timeout_s} s",
                      file=log)
                code = 124
        print(f"[ssdwb] {run_id}: {'done' if code == 0 else f'failed (exit {code})'}; log "
              f"{logs / (run_id + '.log')}", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip(indices, pool.map(one, indices)))


# --- Slurm -----------------------------------------------------------------------------------
def _system_shape(system: str) -> tuple[int, int]:
    """(nodes, ranks per node) of ``slurm/config_<system>.sh``."""
    config = project_root() / "slurm" / f"config_{system}.sh"
    if not config.exists():
        choices = sorted(p.stem.removeprefix("config_") for p in config.parent.glob("config_*.sh"))
        raise SweepError(f"--system {system}: {config} does not exist (systems: {choices})")
    out = subprocess.run(["bash", "-c", 'source "$1" >/dev/null && echo "$DGXNNODES $DGXNGPU"',
                          "bash", str(config)], capture_output=True, text=True, timeout=60)
    try:
        nodes, ranks = (int(x) for x in out.stdout.split())
    except ValueError as e:
        raise SweepError(f"{config}: does not set DGXNNODES and DGXNGPU ({out.stderr})") from e
    return nodes, ranks


def _sbatch(cmd: list[str], env: dict) -> int:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    except subprocess.TimeoutExpired as e:
        raise SweepError(f"sbatch did not answer in 120 s: {shlex.join(cmd)}") from e
    if out.returncode != 0:
        raise SweepError(f"sbatch refused the job ({out.stderr.strip()}): {shlex.join(cmd)}")
    return int(out.stdout.strip().split(";")[0])


def ssdwb_command(*binds: Path) -> list[str]:
    """How a batch job calls ssdwb: inside ``$CONTAINER`` (with the checkout and ``binds``
    mounted) if set, else this environment's (as slurm/launch.sh's ``ssdwb_command``)."""
    if os.environ.get("CONTAINER"):
        mounts = ",".join(dict.fromkeys(map(str, (project_root(), *binds))))
        return ["apptainer", "exec", "--nv", "--bind", mounts, os.environ["CONTAINER"], "ssdwb"]
    return [str(Path(sys.prefix) / "bin" / "ssdwb")]


def submit_slurm(sweep: Sweep, indices: list[int], system: str | None = None,
                 max_parallel: int | None = None, gpus_per_task: int = 0,
                 sbatch_args: list[str] | None = None) -> dict:
    """Submits the runs ``indices`` as ONE array job of ``slurm/sweep.slurm`` (the original
    indices: ``--array=3,7``), and a report job that starts when the array has ended
    (``afterany``). Records both in ``sweep.json`` and returns that record."""
    if shutil.which("sbatch") is None:
        raise SweepError("sbatch is not on PATH: --slurm needs a Slurm submit host (or use "
                         "--local)")
    out_dir = sweep.folder / "slurm"
    out_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not create the output's folder
    array = ",".join(map(str, indices)) + (f"%{max_parallel}" if max_parallel else "")
    name = f"ssdwb-{sweep.spec['name']}"
    cmd = ["sbatch", "--parsable", f"--array={array}", f"--job-name={name}",
           f"--output={out_dir}/%A_%a.out", "--open-mode=append"]
    env = dict(os.environ, SWEEP_DIR=str(sweep.folder), SSDWB_ROOT=str(project_root()),
               SSDWB_VENV=sys.prefix)
    if system:
        nodes, ranks = _system_shape(system)
        cmd += [f"--nodes={nodes}", f"--ntasks={nodes * ranks}", "--exclusive"]
        env["SYSTEM"] = system
    else:
        cmd += ["--nodes=1", "--ntasks=1"] + ([f"--gres=gpu:{gpus_per_task}"]
                                              if gpus_per_task else [])
        env.pop("SYSTEM", None)
    cmd += list(sbatch_args or []) + [str(project_root() / "slurm" / "sweep.slurm")]
    job = _sbatch(cmd, env)
    report = shlex.join([*ssdwb_command(sweep.folder), "report", str(sweep.folder)])
    report_job = _sbatch(["sbatch", "--parsable", f"--dependency=afterany:{job}",
                          f"--job-name={name}-report", "--nodes=1", "--ntasks=1",
                          f"--output={out_dir}/report-%j.out", *(sbatch_args or []),
                          f"--wrap=cd {shlex.quote(str(project_root()))} && {report}"], env)
    record = {"job_id": job, "indices": list(indices), "report_job": report_job,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    sweep.spec["jobs"].append(record)
    sweep.save()
    return record


# --- the sweep's report ----------------------------------------------------------------------
def render_sweep_report(folder: str | os.PathLike) -> Path:
    """``runs/<name>/report.html``: ``compare_runs.ipynb`` executed on the sweep's runs."""
    sweep = load_sweep(folder)
    executed = sweep.folder / "compare_runs.ipynb"
    execute("compare_runs", executed, {"sweep": str(sweep.folder)}, progress=False)
    return render_report(sweep.folder, notebooks=[executed])
