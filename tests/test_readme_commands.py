"""Every command the README shows, run as a new user types it, in a fresh working folder.

The commands come from README.md's fenced code blocks (``bash`` blocks line by line, ``python``
blocks whole), so a change to the README is checked here. They run in README order in one
folder that looks like a fresh clone: the checkout's source folders linked in, no ``data/``,
``runs/`` or ``anchors/`` yet, ``SSDWB_ROOT`` pointing at it (relative paths resolve there, see
ssdwb/files.py) and the venv's ``bin`` first on PATH. Only the sizes shrink (``shrink``): 16
train and 8 val images, one epoch of a model of an eighth of the channels. A command that cannot
run in a test is listed in ``EXEMPT`` with the reason; any other command runs, so a README command
that is neither run nor exempt fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# command (as shlex splits it, comments dropped, joined by single spaces) -> why no test runs it
EXEMPT = {
    "make demo": "CI runs the demo's path: tests/test_demo_report.py runs `ssdwb demo` (what "
                 "`make demo` calls once .venv is set up) on a short schedule; the full demo "
                 "takes 10-15 minutes",
    "make test": "CI runs it itself (.ci/run calls `make test`); from inside the suite it would "
                 "run the suite again",
    "ssdwb data download /data/coco": "downloads COCO 2017 (about 19 GB) from the network; "
                                      "tests/test_download.py runs the download against a "
                                      "local server",
    "ssdwb data verify /data/coco": "needs COCO 2017 at /data/coco; tests/test_download.py "
                                    "runs the same check (verify_coco) on small fake zips",
    "torchrun --nproc-per-node=4 -m ssdwb train --config my.json": "needs 4 GPUs (one process "
        "per GPU) and the user's my.json; two-process DDP training on the CPU is "
        "tests/test_ddp.py",
    "tensorboard --logdir runs": "a server that runs until stopped; the event files it reads "
                                 "are checked by tests/test_tensorboard.py",
    "DATADIR=/data/coco LOGDIR=$PWD/runs SYSTEM=2xC4140 sbatch -N 2 -n 8 slurm/run.slurm":
        "needs 2 Slurm nodes with 4 GPUs each and COCO 2017; the CPU2x2 line below runs on the "
        "tests' local cluster",
    "GLOBAL_BATCH=896 DATADIR=/data/coco SYSTEM=4xC4140 sbatch -N 1 -n 4 slurm/run.slurm":
        "needs a Slurm node with 4 GPUs and COCO 2017; tests/test_slurm.py checks the "
        "micro-batches GLOBAL_BATCH gives (grad_accum_for) and run.slurm's refusal of one that "
        "does not divide, tests/test_grad_accum.py that 2 x 2 computes what 1 x 4 does",
    "ssdwb sweep lr-4x --preset reference --grid lr=2.5e-3,3.2e-3 --set data_dir=/data/coco "
    "--slurm --system 4xC4140 --max-parallel 2": "needs a Slurm cluster with 4-GPU nodes and "
        "COCO 2017; tests/test_slurm.py runs a 2 x 2 sweep as a job array on the tests' local "
        "cluster (one requeued task included), tests/test_sweep.py checks what --system submits",
    "containers/build_container.sh ssdwb.sif": "needs Apptainer and the network (the NGC base "
                                               "image); tests/test_container.py checks the "
                                               "definition file",
}

# What some commands must leave in the fresh folder (not in the checkout: relative paths resolve
# against SSDWB_ROOT, see ssdwb/files.py).
WRITES = {
    "ssdwb data synth data/shapes --train 960 --val 64 --profile demo":
        ["data/shapes/annotations/instances_val.json"],
    "ssdwb train --preset demo --set data_dir=data/shapes run_id=first epochs=4":
        ["runs/first/checkpoint.pt", "runs/first/summary.json"],
    "ssdwb anchors fit --data data/thin": ["anchors/thin.json"],
    "ssdwb data split data/shapes/annotations/instances_train.json --val 0.2 --images "
    "data/shapes/train --out data/mine": ["data/mine/dataset.yaml", "data/mine/val.json"],
    "ssdwb data stats data/mine/dataset.yaml --plot data/mine/stats.png":
        ["data/mine/stats.png"],
    "ssdwb report runs/nb": ["runs/nb/report.html"],
    "ssdwb sweep lr-seed --preset demo --grid lr=0.05,0.1 seed=1,2 --set epochs=8 eval_at=[4,8] "
    "--local --jobs 2": ["runs/lr-seed/sweep.json", "runs/lr-seed/lr=0.1,seed=2/report.html",
                         "runs/lr-seed/report.html"],
    "ssdwb predict --checkpoint runs/first/checkpoint.pt data/shapes/val --out preds":
        ["preds/detections.json"],
    "ssdwb export --checkpoint runs/first/checkpoint.pt --onnx model.onnx --decoded":
        ["model.onnx"],
}

# The sizes a test can afford. Fresh training runs get SMALL_RUN (replacing the README's values
# of the same keys); a resumed run only its epochs.
SMALL_DATA = {"--train": "16", "--val": "8"}
SMALL_RUN = {"epochs": "1", "model_width": "0.125", "batch_size": "8", "eval_batch_size": "8",
             "num_workers": "0", "warmup": "2", "eval_at": "[1]", "lr_decay_at": "[]",
             "amp": "off", "channels_last": "false"}
SMALL_RESUME = {"epochs": "2"}
# CPU2x2 reads these from the environment (slurm/config_CPU2x2.sh): one epoch, one evaluation.
SMALL_SLURM_ENV = {"NUMEPOCHS": "1", "EVAL_AT": "[1]", "EXTRA": "model_width=0.125"}
# top-level entries of the checkout a fresh clone has and the commands use
LINKED = ("notebooks", "slurm", "containers", "scripts", "bench")


def readme_commands(text: str | None = None) -> list[tuple[str, str]]:
    """``(kind, command)`` in README order: kind ``"python"`` for each python block, ``"bash"``
    for each command line of every other block but ``text`` ones (comments dropped, whitespace
    normalised)."""
    text = README.read_text() if text is None else text
    out = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
        if lang == "python":
            out.append(("python", body))
            continue
        if lang != "text":  # bash, sh, or none: commands (a block of plain text says text)
            for line in body.replace("\\\n", " ").splitlines():
                tokens = shlex.split(line, comments=True)
                if tokens:
                    out.append(("bash", " ".join(tokens)))
    return out


COMMANDS = readme_commands()


def _split_env(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        k, v = tokens[0].split("=", 1)
        env[k] = v
        tokens = tokens[1:]
    return env, tokens


def _subcommand(tokens: list[str]) -> list[str]:
    """The arguments after ``ssdwb`` (or ``python -m ssdwb``), or []."""
    if tokens[:1] == ["ssdwb"]:
        return tokens[1:]
    if tokens[:3] == ["python", "-m", "ssdwb"]:
        return tokens[3:]
    return []


def _merge_set(tokens: list[str], small: dict[str, str]) -> list[str]:
    """``--set`` values with ``small``'s keys replaced (argparse keeps only the last --set)."""
    if "--set" not in tokens:
        return tokens + ["--set", *(f"{k}={v}" for k, v in small.items())]
    i = tokens.index("--set") + 1
    j = i
    while j < len(tokens) and not tokens[j].startswith("--"):
        j += 1
    kept = [x for x in tokens[i:j] if x.split("=", 1)[0] not in small]
    return tokens[:i] + kept + [f"{k}={v}" for k, v in small.items()] + tokens[j:]


def shrink(command: str) -> tuple[dict[str, str], list[str]]:
    """The README command at test size: ``(extra environment, argv)``."""
    env, tokens = _split_env(shlex.split(command))
    args = _subcommand(tokens)
    if args[:2] == ["data", "synth"]:
        tokens = [SMALL_DATA.get(a, b)
                  for a, b in zip([""] + tokens[:-1], tokens)]
    elif args[:1] == ["train"]:
        tokens = _merge_set(tokens, SMALL_RESUME if "--resume" in args else SMALL_RUN)
    elif args[:1] == ["sweep"] and "--local" in args:
        tokens = _merge_set(tokens, SMALL_RUN)
    elif args[:2] == ["notebook", "train"]:
        kept, i = [], 0
        while i < len(tokens):
            if tokens[i] in ("-p", "-r") and i + 1 < len(tokens) and tokens[i + 1] in SMALL_RUN:
                i += 3  # -p NAME VALUE
                continue
            kept.append(tokens[i])
            i += 1
        tokens = kept + [x for k, v in SMALL_RUN.items() for x in ("-p", k, v)]
    elif "sbatch" in tokens:
        env = {**env, **SMALL_SLURM_ENV}
    return env, tokens


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A fresh working folder: what a clone holds before anything ran in it."""
    ws = tmp_path_factory.mktemp("fresh-clone")
    for name in LINKED:
        (ws / name).symlink_to(ROOT / name)
    (ws / ".venv").symlink_to(Path(sys.prefix))  # slurm/run.slurm's default SSDWB_VENV
    return ws


def _env(ws: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, SSDWB_ROOT=str(ws), PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("SLURM_CONF", None)
    return {**env, **(extra or {})}


def _run(argv: list[str], ws: Path, env: dict[str, str], timeout: float = 600):
    out = subprocess.run(argv, cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"exit {out.returncode}: {shlex.join(argv)}\n" \
                                f"{(out.stdout + out.stderr)[-4000:]}"
    return out


# --- the local Slurm cluster for the CPU2x2 line ----------------------------------------------
def _other_slurmctlds(mine: set[int]) -> list[int]:
    """Live slurmctld processes of other test clusters (tests/test_slurm.py's, under pytest -n):
    started with a slurm.conf under pytest's temporary folders."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine:
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if (os.path.basename(argv[0]) == b"slurmctld" and state not in ("Z", "X")
                and any(b"/pytest-" in a for a in argv)):
            pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    from slurm_cluster import LocalCluster, missing_requirements

    why = missing_requirements()
    if why:
        pytest.skip(why)
    # Every local test cluster uses the host's one munged, and the cluster that started it stops
    # it: wait until tests/test_slurm.py's cluster (pytest -n 2 may run it beside this module) is
    # gone, and leave munged running if that cluster started again meanwhile.
    t0 = time.time()
    while _other_slurmctlds(set()):
        if time.time() - t0 > 1800:
            pytest.skip("another local Slurm cluster has been running for 30 minutes")
        time.sleep(5)
    cluster = LocalCluster(tmp_path_factory.mktemp("slurm"))
    with cluster:
        yield cluster
        if cluster.started_munged and _other_slurmctlds(set(cluster.pids)):
            cluster.pids.pop(0)  # munged, started first (LocalCluster.start)


def _sbatch(command: str, ws: Path, request) -> None:
    """Submits the line on the local cluster and waits for the job: it must train, evaluate and
    write its report in ``runs/slurm-<job id>``, as the README's user would find it."""
    cluster = request.getfixturevalue("slurm")
    env, argv = shrink(command)
    out = _run(argv, ws, _env(ws, {"SLURM_CONF": cluster.env["SLURM_CONF"], **env}))
    job = int(re.search(r"Submitted batch job (\d+)", out.stdout).group(1))
    state = cluster.wait_job(job, timeout=1200)
    log = ws / f"slurm-{job}.out"
    text = log.read_text() if log.exists() else "(no job output)"
    assert state == "COMPLETED", text[-4000:]
    run = ws / "runs" / f"slurm-{job}"
    assert '"status": "success"' in (run / "summary.json").read_text(), text[-4000:]
    assert (run / "report.html").exists() and "RESULT,OBJECT_DETECTION," in text


# --- the tests -----------------------------------------------------------------------------------
def test_every_exempt_command_is_in_the_readme():
    shown = {c for kind, c in COMMANDS if kind == "bash"}
    for table in (EXEMPT, WRITES):
        assert not set(table) - shown, f"commands the README no longer shows: " \
                                       f"{sorted(set(table) - shown)}"
    assert all(reason.strip() for reason in EXEMPT.values())


def test_shrink_keeps_the_command_and_changes_only_sizes():
    env, argv = shrink("ssdwb train --preset demo --set data_dir=data/shapes run_id=a epochs=4 "
                       "--resume x")
    assert argv[:4] == ["ssdwb", "train", "--preset", "demo"] and argv[-2:] == ["--resume", "x"]
    assert "epochs=2" in argv and "epochs=4" not in argv and "run_id=a" in argv
    _, argv = shrink("python -m ssdwb train --config c.json")
    assert argv[:7] == ["python", "-m", "ssdwb", "train", "--config", "c.json", "--set"]
    assert "epochs=1" in argv
    _, argv = shrink("ssdwb data synth data/x --train 960 --val 64 --profile thin")
    assert argv == ["ssdwb", "data", "synth", "data/x", "--train", "16", "--val", "8",
                    "--profile", "thin"]
    _, argv = shrink("ssdwb notebook train o.ipynb -p run_id nb -p epochs 3")
    assert argv[:6] == ["ssdwb", "notebook", "train", "o.ipynb", "-p", "run_id"]
    assert "3" not in argv and argv.count("epochs") == 1
    env, argv = shrink("DATADIR=d SYSTEM=CPU2x2 sbatch -N 2 slurm/run.slurm")
    assert env["DATADIR"] == "d" and env["NUMEPOCHS"] == "1" and argv[0] == "sbatch"


@pytest.mark.parametrize("kind,command", COMMANDS,
                         ids=[f"{i:02d} {c.splitlines()[0][:60]}" for i, (_, c) in
                              enumerate(COMMANDS)])
def test_readme_command(kind, command, workspace, request):
    if kind == "python":
        script = workspace / "readme_snippet.py"
        script.write_text(command)
        _run([sys.executable, str(script)], workspace, _env(workspace))
        return
    if command in EXEMPT:
        pytest.skip(f"exempt: {EXEMPT[command]}")
    env, argv = shrink(command)
    if argv[:1] == ["sbatch"]:
        _sbatch(command, workspace, request)
    else:
        _run(argv, workspace, _env(workspace, env))
    missing = [f for f in WRITES.get(command, []) if not (workspace / f).exists()]
    assert not missing, f"not written in the working folder: {missing}"
