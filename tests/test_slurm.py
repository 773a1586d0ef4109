"""Slurm: the C4140 system table (ssdwb/lab/c4140_systems.csv) against SPEC.md's published
values, the config files against the table, and real jobs on a two-node local cluster
(tests/slurm_cluster.py): ``SYSTEM=CPU2x2 sbatch -N 2 -n 4 slurm/run.slurm`` trains in one
4-rank process group, and a job sent USR1 mid-run requeues itself and resumes to the same final
metrics as the uninterrupted job."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import SSDWB, check_finished_sweep, one_thread_env, sweep_args

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "slurm"
TABLE = ROOT / "ssdwb" / "lab" / "c4140_systems.csv"

# SPEC.md, written out: GPUs, batch/GPU, global batch, base-LR flag, weight decay, warmup
# iterations; epochs (at most: 80 for 1x, 70 for the others); Dell's effective base LR after its
# rounding 2.5e-3 * max(1, round(flag / 2.5e-3 * gbs / 32)) (tests/test_config.py shows the
# sums; 16x: 1.28 * 48 = 61.44 -> 61 steps of 2.5e-3 = 0.1525).
C4140 = {
    "1xC4140": (4, 120, 480, 2.92e-3, 1.6e-4, 650, 80, 0.045),
    "2xC4140": (8, 120, 960, 2.92e-3, 1.6e-4, 650, 70, 0.0875),
    "4xC4140": (16, 56, 896, 3.2e-3, 1.3e-4, 650, 70, 0.09),
    "8xC4140": (32, 32, 1024, 3.2e-3, 1.3e-4, 650, 70, 0.1025),
    "16xC4140": (64, 24, 1536, 3.2e-3, 1.3e-4, 650, 70, 0.1525),
}


def table_rows(path: Path = TABLE) -> dict[str, dict[str, str]]:
    """The system table's rows by system name, read here with the csv module (``#`` lines are
    comments), independently of ssdwb.lab.plan and of slurm/system_table.sh."""
    lines = [x for x in path.read_text().splitlines() if x.strip() and not x.startswith("#")]
    return {r["system"]: r for r in csv.DictReader(lines)}


def read_config(system: str, env: dict | None = None, slurm: Path = SLURM) -> dict[str, str]:
    """The variables a config file exports, as bash sees them (sourced from another directory:
    the configs find the table from where they are, not from the working directory)."""
    script = f'source "{slurm}/config_{system}.sh" && env -0'
    out = subprocess.run(["bash", "-c", script], capture_output=True, env=env or {"PATH":
                         os.environ["PATH"]}, check=True, cwd="/").stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def test_the_table_holds_spec_values():
    rows = table_rows()
    assert list(rows) == list(C4140)
    for system, (gpus, per_gpu, gbs, lr, wd, warmup, epochs, _) in C4140.items():
        r = rows[system]
        assert int(r["gpus_per_node"]) == 4, system  # a C4140 has 4 V100s
        assert int(r["nodes"]) * int(r["gpus_per_node"]) == gpus, system
        assert int(r["batch_per_gpu"]) == per_gpu and per_gpu * gpus == gbs, system
        assert (float(r["lr_flag"]), float(r["weight_decay"])) == (lr, wd), system
        assert (int(r["warmup"]), int(r["epochs"])) == (warmup, epochs), system
        assert re.fullmatch(r"\d\d:\d\d:\d\d", r["walltime"]), system


def test_every_c4140_config_is_a_table_row():
    configs = {p.name[len("config_"):-len(".sh")] for p in SLURM.glob("config_*xC4140.sh")}
    assert configs == set(table_rows())


@pytest.mark.parametrize("system", list(C4140))
def test_c4140_configs_are_the_table_rows(system):
    r, c = table_rows()[system], read_config(system)
    assert (c["DGXNNODES"], c["DGXNGPU"], c["BATCHSIZE"]) == (
        r["nodes"], r["gpus_per_node"], r["batch_per_gpu"])
    assert (c["LR"], c["WD"], c["WARMUP"]) == (r["lr_flag"], r["weight_decay"], r["warmup"])
    assert (c["NUMEPOCHS"], c["WALLTIME"]) == (r["epochs"], r["walltime"])


@pytest.mark.parametrize("system", list(C4140))
def test_c4140_configs_match_spec(system):
    gpus, per_gpu, gbs, lr, wd, warmup, epochs, _ = C4140[system]
    c = read_config(system)
    assert int(c["DGXNNODES"]) * int(c["DGXNGPU"]) == gpus
    assert int(c["DGXNGPU"]) == 4  # a C4140 has 4 V100s
    assert int(c["BATCHSIZE"]) == per_gpu and per_gpu * gpus == gbs
    assert float(c["LR"]) == lr and float(c["WD"]) == wd and int(c["WARMUP"]) == warmup
    assert int(c["NUMEPOCHS"]) == epochs
    assert c["LR_SCALING"] == "dell" and int(c["EVAL_BATCHSIZE"]) == 160
    assert c["PRESET"] == "reference" and c["DEVICE"] == "cuda"
    assert c["AMP"] == "fp16" and c["CHANNELS_LAST"] == "true"  # tensor-core speed by default


def test_configs_read_the_table_they_sit_next_to(tmp_path):
    """A copy of slurm/ next to an edited table follows the edit (the configs hold no numbers of
    their own); a system missing from the table is an error, not empty values."""
    (tmp_path / "slurm").mkdir()
    for name in ("system_table.sh", "config_4xC4140.sh"):
        shutil.copy(SLURM / name, tmp_path / "slurm" / name)
    (tmp_path / "ssdwb" / "lab").mkdir(parents=True)
    text = TABLE.read_text().replace("\n4xC4140,4,4,56,3.2e-3,", "\n4xC4140,4,4,57,3.3e-3,")
    (tmp_path / "ssdwb" / "lab" / "c4140_systems.csv").write_text(text)
    c = read_config("4xC4140", slurm=tmp_path / "slurm")
    assert (c["BATCHSIZE"], c["LR"]) == ("57", "3.3e-3")
    (tmp_path / "ssdwb" / "lab" / "c4140_systems.csv").write_text(text.replace("\n4xC4140,", "\n4x,"))
    r = subprocess.run(["bash", "-c", f'source "{tmp_path}/slurm/config_4xC4140.sh" && env'],
                       capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert r.returncode != 0 and "no row for system 4xC4140" in r.stderr
    assert "BATCHSIZE=" not in r.stdout


def test_cpu2x2_config_stays_fp32_nchw():
    c = read_config("CPU2x2")
    assert c["AMP"] == "off" and c["CHANNELS_LAST"] == "false" and c["DEVICE"] == "cpu"


def cpu_binding(env: dict, call: str) -> subprocess.CompletedProcess:
    """`call` run in bash after sourcing slurm/cpu_binding.sh, with only `env` (and PATH)."""
    return subprocess.run(["bash", "-c", f'source "{SLURM}/cpu_binding.sh" && {call}'],
                          capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env})


@pytest.mark.parametrize("env, want", [
    ({"SLURM_CPUS_ON_NODE": "40", "DGXNGPU": "4"}, 10),  # a C4140: 2 x 20 cores
    ({"SLURM_CPUS_ON_NODE": "80", "DGXNGPU": "4"}, 20),  # hyperthreads counted as CPUs
    ({"SLURM_CPUS_ON_NODE": "42", "DGXNGPU": "4"}, 10),  # rounded down
    ({"SLURM_CPUS_ON_NODE": "2", "DGXNGPU": "2"}, 1),  # the tests' local cluster (CPU2x2)
    ({"SLURM_CPUS_ON_NODE": "2", "DGXNGPU": "4"}, 1),  # fewer CPUs than ranks: at least 1
    ({"SLURM_JOB_CPUS_PER_NODE": "40(x2),20", "DGXNGPU": "4"}, 10),  # the batch node's count
    ({"SLURM_CPUS_ON_NODE": "40", "SLURM_JOB_CPUS_PER_NODE": "8", "DGXNGPU": "4"}, 10),
    ({"DGXNGPU": "4"}, 1),  # outside Slurm
    ({"SLURM_CPUS_ON_NODE": "40"}, 40),  # no DGXNGPU: one rank
    ({"SLURM_CPUS_ON_NODE": "40", "DGXNGPU": "4", "CPUS_PER_TASK": "6"}, 6),  # override
])
def test_cpu_binding_config_splits_the_node_between_its_ranks(env, want):
    r = cpu_binding(env, "cpus_per_task")
    assert r.returncode == 0 and r.stdout == f"{want}\n", (r.stdout, r.stderr)


@pytest.mark.parametrize("system, node_cpus", [(s, 40) for s in sorted(C4140)] + [("CPU2x2", 2)])
def test_config_loader_workers_leave_a_cpu_to_the_rank(system, node_cpus):
    """NUM_WORKERS <= CPUs per rank - 1 on the nodes the configs are for (a C4140: 40 cores;
    the local CPU cluster: 2 CPUs), with the CPUs per rank run.slurm gives srun."""
    c = read_config(system)
    r = cpu_binding({"SLURM_CPUS_ON_NODE": str(node_cpus), "DGXNGPU": c["DGXNGPU"]},
                    "cpus_per_task")
    cpus = int(r.stdout)
    assert int(c["NUM_WORKERS"]) <= cpus - 1
    assert cpu_binding({}, f'loader_fits {c["NUM_WORKERS"]} {cpus}').returncode == 0
    assert cpu_binding({}, f"loader_fits {cpus} {cpus}").returncode != 0  # one too many
    assert cpu_binding({}, "loader_fits 0 1").returncode == 0


@pytest.mark.parametrize("system, node_cpus, workers, want", [
    ("CPU2x2", "2", None, 1), ("2xC4140", "40", None, 10), ("2xC4140", "40", "12", 10)])
def test_run_slurm_gives_srun_the_config_cpus_per_rank(tmp_path, system, node_cpus, workers,
                                                       want):
    """run.slurm up to its srun, with stand-ins for srun and scontrol: srun gets
    --cpus-per-task (node CPUs / ranks per node) and --cpu-bind=cores; too many loader workers
    for that many CPUs get a warning."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "srun").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > "{tmp_path}/srun.args"\n')
    (bin_ / "scontrol").write_text("#!/bin/bash\necho node1\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SYSTEM": system,
           "SLURM_SUBMIT_DIR": str(ROOT), "DATADIR": str(tmp_path), "LOGDIR": str(tmp_path),
           "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS": "4",
           "SLURM_CPUS_ON_NODE": node_cpus, **({"NUM_WORKERS": workers} if workers else {})}
    r = subprocess.run(["bash", str(SLURM / "run.slurm")], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "srun.args").read_text().splitlines()
    ranks = read_config(system)["DGXNGPU"]
    assert args[:3] == [f"--ntasks-per-node={ranks}", f"--cpus-per-task={want}",
                        "--cpu-bind=cores"], args
    assert ("NUM_WORKERS=12 loader processes per rank" in r.stderr) == (workers == "12")
    assert f"cpus/task={want} " in r.stdout


def test_config_values_become_the_spec_learning_rates():
    from ssdwb.config import TrainConfig

    for system, (gpus, _per_gpu, gbs, _lr, _wd, _warmup, _, base) in C4140.items():
        c = read_config(system)
        cfg = TrainConfig(batch_size=int(c["BATCHSIZE"]), lr=float(c["LR"]),
                          lr_scaling=c["LR_SCALING"], warmup=int(c["WARMUP"]))
        assert cfg.global_batch(gpus) == gbs, system
        assert cfg.base_lr(gpus) == pytest.approx(base, rel=1e-12), system


def test_configs_can_be_overridden_from_the_environment():
    over = {"BATCHSIZE": "64", "NUMEPOCHS": "3", "LR": "1e-3", "WD": "2e-4", "WARMUP": "10",
            "WALLTIME": "00:05:00", "AMP": "off", "NUM_WORKERS": "2"}
    c = read_config("2xC4140", {"PATH": os.environ["PATH"], **over})
    assert {k: c[k] for k in over} == over and c["LR_SCALING"] == "dell"
    assert c["DGXNNODES"] == "2"  # the system's shape is the table's


def test_shell_scripts_are_shellcheck_clean():
    import shutil

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (`make system-deps` installs it, as root)")
    files = [*SLURM.glob("*.sh"), *SLURM.glob("*.slurm"), ROOT / "containers" / "build_container.sh",
             ROOT / "scripts" / "download_dataset.sh"]
    r = subprocess.run(["shellcheck", "-x", *map(str, files)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_run_slurm_refuses_bad_input(tmp_path):
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(ROOT)}
    r = subprocess.run(["bash", str(SLURM / "run.slurm")], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "SYSTEM" in r.stderr
    r = subprocess.run(["bash", str(SLURM / "run.slurm")], capture_output=True, text=True,
                       env={**env, "SYSTEM": "9xC4140", "DATADIR": str(tmp_path)})
    assert r.returncode == 2 and "config_9xC4140.sh does not exist" in r.stderr


# --- a real cluster ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from slurm_cluster import LocalCluster, missing_requirements

    why = missing_requirements()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm")
    with LocalCluster(root) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    return make_shapes_coco(tmp_path_factory.mktemp("tiny"), num_train=24, num_val=8, seed=0)


def _job_env(logdir: Path, data: Path, **extra) -> dict:
    return {"SYSTEM": "CPU2x2", "DATADIR": str(data), "LOGDIR": str(logdir),
            "SSDWB_ROOT": str(ROOT), "SSDWB_VENV": sys.prefix, "NUMEPOCHS": "3",
            "EVAL_AT": "[1,2,3]", "SEED": "5",
            "EXTRA": "log_interval=1", **extra}  # a loss per iteration: resume must match each


def _check_run(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 4 and summary["global_batch"] == 8
    log = (run / "mlperf.log").read_text()
    assert re.search(r'"key": "global_batch_size", "value": 8\b|global_batch_size: \{"value": 8',
                     log), log[:2000]
    r = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                        "training", "--ruleset", "0.6.0", str(run / "mlperf.log")],
                       capture_output=True, text=True, cwd=run)  # it writes a log to cwd
    assert r.returncode == 0, r.stdout + r.stderr
    assert (run / "train.ipynb").exists() and (run / "report.html").exists()
    for k in (1, 2, 3):  # every other rank ran the notebook too, in the same group of 4
        text = (run / "ranks" / f"train_rank{k}.ipynb").read_text()
        assert f"rank {k} of 4" in text
    return summary


@pytest.fixture(scope="module")
def uninterrupted(cluster, tiny_data, tmp_path_factory):
    logdir = tmp_path_factory.mktemp("runs")
    job = cluster.sbatch(["-N", "2", "-n", "4", "-o", str(logdir / "slurm-%j.out"),
                          str(SLURM / "run.slurm")],
                         env=_job_env(logdir, tiny_data, RUN_ID="straight"), cwd=str(ROOT))
    try:
        state = cluster.wait_job(job, timeout=900)
    except TimeoutError as e:  # report it with the job's output, in the test that needs it
        state = str(e)
    out = (logdir / f"slurm-{job}.out").read_text()
    return state, out, logdir / "straight"


def test_two_node_job_runs_one_process_group(uninterrupted):
    state, out, run = uninterrupted
    assert state == "COMPLETED", out[-4000:]
    summary = _check_run(run)
    assert summary["status"] == "success" and len(summary["evals"]) == 3
    m = re.search(r"^RESULT,OBJECT_DETECTION,5,(\d+),", out, re.M)
    assert m, out[-3000:]
    assert 0 < int(m.group(1)) <= summary["time_to_train_s"] + 1


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_metrics(cluster, tiny_data,
                                                                    uninterrupted, tmp_path):
    state, _, straight = uninterrupted
    assert state == "COMPLETED"
    job = cluster.sbatch(["-N", "2", "-n", "4", "-o", str(tmp_path / "slurm-%j.out"),
                          str(SLURM / "run.slurm")],
                         env=_job_env(tmp_path, tiny_data, RUN_ID="requeued"), cwd=str(ROOT))
    run = tmp_path / "requeued"
    t0 = time.time()  # the first checkpoint is written after epoch 1: signal during epoch 2
    while not (run / "checkpoint.pt").exists():
        assert time.time() - t0 < 900, "no checkpoint after 15 min"
        assert cluster.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.2)
    cluster.run(["scancel", "--signal=USR1", str(job)])
    t0 = time.time()
    while int(cluster.job_field(job, "Restarts") or 0) < 1:
        assert time.time() - t0 < 600, "the job was not requeued"
        time.sleep(1)
    # the requeued job starts again cred_expire (10 s on the test cluster) later: forcing an
    # earlier start makes slurmd refuse it ("Job credential revoked")
    final = cluster.wait_job(job, timeout=1200)
    out = (tmp_path / f"slurm-{job}.out").read_text()
    assert final == "COMPLETED", out[-4000:]
    assert "requeueing job" in out and "resuming" in out
    summary = _check_run(run)
    assert summary["status"] == "success"
    log = (run / "mlperf.log").read_text()
    assert '"status": "aborted"' not in log  # the resume truncated the aborted tail away
    ref = json.loads((straight / "summary.json").read_text())
    assert [e["epoch"] for e in summary["evals"]] == [1, 2, 3]
    assert summary["evals"] == ref["evals"]  # all 12 stats, bit-exact
    def losses(path):
        lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        return [(x["iteration"], x["loss"]) for x in lines if "loss" in x]

    got, want = losses(run), losses(straight)
    assert [i for i, _ in got] == [i for i, _ in want]
    # Bit-exact: every run's steps use DDP's rebuilt bucket layout from its first iteration
    # (ssdwb.engine.loop._rebuild_ddp_buckets), so the requeued job sums gradients in the same order.
    assert [v for _, v in got] == [v for _, v in want]


@pytest.mark.parametrize("global_batch, batch, ranks, expected", [
    (896, 56, 4, "4"),     # Dell's 4-node recipe on one node: 4 micro-batches per step
    (896, 56, 16, "1"),    # on its own 4 nodes
    (1536, 24, 32, "2"),   # the 16-node batch on 8 nodes
])
def test_global_batch_gives_the_micro_batches_per_step(global_batch, batch, ranks, expected):
    r = subprocess.run(["bash", "-c", f'source "{SLURM / "grad_accum.sh"}"; '
                                      f"grad_accum_for {global_batch} {batch} {ranks}"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == expected, r.stderr


def test_a_global_batch_that_does_not_divide_is_refused_before_training(tmp_path):
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_JOB_NUM_NODES": "1", "SYSTEM": "4xC4140", "DATADIR": str(tmp_path),
           "GLOBAL_BATCH": "900"}
    r = subprocess.run(["bash", str(SLURM / "run.slurm")], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2, r.stderr
    assert "GLOBAL_BATCH=900 is not a multiple of BATCHSIZE (56) x ranks (4) = 224" in r.stderr


# --- a sweep as one job array ----------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_sweep(cluster, tiny_data, tmp_path_factory):
    """``ssdwb sweep grid ... --slurm``: a 2 x 2 array on the local cluster, one rank per task;
    task 3 gets USR1 once it has checkpointed. Returns the submission, the sweep folder and the
    array job id, once the report job (afterany) has ended."""
    runs = tmp_path_factory.mktemp("sweeps")
    env = one_thread_env(**cluster.env)
    r = subprocess.run([SSDWB, *sweep_args("grid", runs, tiny_data), "--slurm",
                        "--max-parallel", "4"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    folder = runs / "grid"
    jobs = json.loads((folder / "sweep.json").read_text())["jobs"]
    array, report = jobs[0]["job_id"], jobs[0]["report_job"]
    t0 = time.time()  # the first checkpoint is written after epoch 1: signal during epoch 2
    while not (folder / "lr=0.1,seed=2" / "checkpoint.pt").exists():
        assert time.time() - t0 < 900, "task 3 wrote no checkpoint in 15 min"
        time.sleep(0.2)
    cluster.run(["scancel", "--signal=USR1", f"{array}_3"])
    state = cluster.wait_job(report, timeout=1500)
    return r, folder, array, state


def test_sweep_array_runs_every_task_and_reports(slurm_sweep, cluster):
    r, folder, array, state = slurm_sweep
    assert "4 runs, 0 done, 0 queued or running, 4 to submit" in r.stdout
    assert f"submitted array job {array} (runs [0, 1, 2, 3])" in r.stdout
    logs = {i: (folder / "slurm" / f"{array}_{i}.out").read_text() for i in range(4)}
    assert state == "COMPLETED", (folder / "slurm").iterdir()
    for i in range(4):
        assert cluster.job_state(f"{array}_{i}") == "COMPLETED", logs[i][-3000:]
    check_finished_sweep(folder, {**os.environ, **cluster.env})


def test_a_signalled_task_is_requeued_alone_and_resumes_to_the_same_result(
        slurm_sweep, cluster, tiny_data, tmp_path):
    _, folder, array, _ = slurm_sweep
    logs = {i: (folder / "slurm" / f"{array}_{i}.out").read_text() for i in range(4)}
    # one output file per task across the requeue (%A_%a, appended to)
    assert f"requeueing job {array}_3" in logs[3] and "resuming" in logs[3], logs[3][-3000:]
    assert logs[3].count("ssdwb sweep task") == 2
    assert cluster.job_field(f"{array}_3", "Restarts") == "1"
    for i in range(3):
        assert "requeueing" not in logs[i] and "resuming" not in logs[i]
        assert cluster.job_field(f"{array}_{i}", "Restarts") == "0"
    # the same run, uninterrupted: a one-run sweep with the same values, here
    ref = subprocess.run([SSDWB, *sweep_args("ref", tmp_path, tiny_data,
                                             grid=["lr=0.1", "seed=2"]), "--local"],
                         capture_output=True, text=True, env=one_thread_env(), timeout=900)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    got = json.loads((folder / "lr=0.1,seed=2" / "summary.json").read_text())
    want = json.loads((tmp_path / "ref" / "lr=0.1,seed=2" / "summary.json").read_text())
    assert [e["epoch"] for e in got["evals"]] == [1, 2, 3]
    assert got["evals"] == want["evals"]  # every COCO stat, bit for bit
    assert got["final_map"] == want["final_map"]


def test_the_same_sweep_again_submits_nothing(slurm_sweep, cluster, tiny_data):
    _, folder, _, _ = slurm_sweep
    before = json.loads((folder / "sweep.json").read_text())["jobs"]
    r = subprocess.run([SSDWB, *sweep_args("grid", folder.parent, tiny_data), "--slurm"],
                       capture_output=True, text=True, env=one_thread_env(**cluster.env),
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "4 runs, 4 done, 0 queued or running, 0 to submit" in r.stdout
    assert json.loads((folder / "sweep.json").read_text())["jobs"] == before
