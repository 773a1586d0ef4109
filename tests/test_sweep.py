"""``ssdwb sweep``: planning a grid, each run's state, the Slurm submission (against stand-in
``sbatch``/``squeue``), and a whole 2 x 2 ``--local`` sweep of tiny runs with its report. The
same sweep on the real local Slurm cluster, with a requeued task, is in tests/test_slurm.py."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssdwb.apps.sweep import (
    Sweep,
    SweepError,
    open_sweep,
    parse_grid,
    plan_sweep,
    run_lock,
    run_state,
    split_values,
    submit_slurm,
    sweep_states,
    task_environment,
)

ROOT = Path(__file__).resolve().parent.parent
SSDWB = str(Path(sys.prefix) / "bin" / "ssdwb")
GRID = ["lr=0.05,0.1", "seed=1,2"]


def tiny_settings(data: Path) -> list[str]:
    """A run of seconds: the synthetic set's 24 train images, 3 epochs, an eval after each."""
    return [f"data_dir={data}", "epochs=3", "eval_at=[1,2,3]", "batch_size=2",
            "eval_batch_size=4", "warmup=4", "device=cpu", "amp=off", "channels_last=false",
            "num_workers=0", "log_interval=1"]


def sweep_args(name: str, run_dir: Path, data: Path, grid=GRID) -> list[str]:
    return ["sweep", name, "--preset", "demo", "--grid", *grid, "--set", *tiny_settings(data),
            "--run-dir", str(run_dir)]


def one_thread_env(**extra) -> dict:
    # the same number of threads wherever a run trains: fp32 results then match bit for bit
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


# --- planning --------------------------------------------------------------------------------
def test_values_split_on_commas_outside_brackets():
    assert split_values("0.05,0.1") == ["0.05", "0.1"]
    assert split_values("[1,2],[3]") == ["[1,2]", "[3]"]


@pytest.mark.parametrize("items, match", [
    ([], "at least one --grid"), (["lr"], "expected KEY=V1,V2"), (["lr=0.1,"], "none empty"),
    (["run_id=a,b"], "set by the sweep"), (["lr=1,2", "lr=3"], "twice"),
    (["lr=1,1"], "listed twice")])
def test_bad_grids_are_refused_with_the_reason(items, match):
    with pytest.raises(SweepError, match=match):
        parse_grid(items)


def test_the_grid_becomes_one_run_per_combination_named_by_its_values():
    spec = plan_sweep("s", "demo", parse_grid(["lr=0.05,0.1", "seed=1,2,3"]), ["epochs=2"])
    assert [r["run_id"] for r in spec["runs"]][:4] == [
        "lr=0.05,seed=1", "lr=0.05,seed=2", "lr=0.05,seed=3", "lr=0.1,seed=1"]
    assert len(spec["runs"]) == 6 and [r["index"] for r in spec["runs"]] == list(range(6))
    assert [r["seed"] for r in spec["runs"]] == [1, 2, 3, 1, 2, 3]
    # a grid without seed: every run takes the preset's (or --set's) seed
    spec = plan_sweep("s", "demo", parse_grid(["lr=0.05,0.1"]), ["seed=7"])
    assert [r["seed"] for r in spec["runs"]] == [7, 7]
    # paths become their stems; ids stay unique
    spec = plan_sweep("s", "demo", parse_grid(["anchors=a/x.json,b/x.json"]), [])
    ids = [r["run_id"] for r in spec["runs"]]
    assert ids[0] == "anchors=x" and len(set(ids)) == 2


def test_unknown_keys_and_bad_values_are_refused_before_anything_runs():
    with pytest.raises(SweepError, match="unknown config key 'lrr'"):
        plan_sweep("s", "demo", parse_grid(["lrr=1,2"]), [])
    with pytest.raises(SweepError, match="epochs"):
        plan_sweep("s", "demo", parse_grid(["epochs=two,3"]), [])
    with pytest.raises(SweepError, match="--preset/--set"):
        plan_sweep("s", "demo", parse_grid(["lr=1,2"]), ["nope=1"])


def test_a_folder_holding_another_sweep_is_refused(tmp_path):
    spec = plan_sweep("s", "demo", parse_grid(["lr=1,2"]), [])
    open_sweep(tmp_path, spec)
    assert open_sweep(tmp_path, plan_sweep("s", "demo", parse_grid(["lr=1,2"]), [])).spec == spec
    with pytest.raises(SweepError, match="holds another sweep.*grid"):
        open_sweep(tmp_path, plan_sweep("s", "demo", parse_grid(["lr=1,3"]), []))


def test_a_task_reads_its_run_from_sweep_json_in_the_shell(tmp_path):
    sweep = open_sweep(tmp_path, plan_sweep("s", "demo", parse_grid(GRID),
                                            ["eval_at=[1, 2]", "data_dir=my data"]))
    script = task_environment(sweep, 3) + 'printf "%s\\n" "$RUN_ID" "$SEED" "$LOGDIR" "$EXTRA_JSON"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[:3] == ["lr=0.1,seed=2", "2", str(tmp_path)]
    assert json.loads(out[3]) == ["eval_at=[1, 2]", "data_dir=my data", "lr=0.1", "seed=2"]


# --- states ----------------------------------------------------------------------------------
def _summary(sweep: Sweep, index: int, status: str, reason: str) -> None:
    folder = sweep.run_folder(index)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"status": status, "reason": reason}))


def test_each_run_state_from_its_folder_the_queue_and_its_lock(tmp_path):
    sweep = open_sweep(tmp_path, plan_sweep("s", "demo", parse_grid(["lr=1,2,3,4,5,6"]), []))
    _summary(sweep, 0, "success", "last epoch done")
    _summary(sweep, 1, "aborted", "stopped by signal; resume with --resume")
    _summary(sweep, 2, "aborted", "non-finite loss in iterations 3-4")
    queue = {3: "PENDING", 4: "RUNNING"}
    states = [run_state(sweep, i, queue) for i in range(6)]
    assert states == ["done", "stopped", "failed", "queued", "running", "not started"]
    with run_lock(sweep, 5) as mine:
        assert mine
        assert run_state(sweep, 5, {}) == "running"  # a local run holds the lock
        with run_lock(sweep, 5) as second:
            assert not second
    assert run_state(sweep, 5, {}) == "not started"
    sweep.spec["jobs"].append({"job_id": 9, "indices": [5]})
    assert run_state(sweep, 5, {}) == "failed"  # submitted, gone from the queue, no folder
    assert run_state(sweep, 5, None) == "not finished"  # the queue unknown


def _stand_ins(tmp_path: Path, squeue_lines: str = "") -> dict:
    """sbatch that logs its arguments and answers job ids 500, 501, ...; squeue that prints
    ``squeue_lines``."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (bin_ / "sbatch").write_text(
        f'#!/bin/bash\nn=$(cat {tmp_path}/n 2>/dev/null || echo 500)\necho $((n + 1)) > '
        f'{tmp_path}/n\nprintf "%s\\n" "$@" > {tmp_path}/sbatch.$n\necho "$n;cluster"\n')
    (bin_ / "squeue").write_text(f"#!/bin/bash\ncat <<'EOF'\n{squeue_lines}\nEOF\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    return {"PATH": f"{bin_}:{os.environ['PATH']}"}


def test_one_array_job_for_the_runs_left_and_a_report_job_after_it(tmp_path, monkeypatch):
    for k, v in _stand_ins(tmp_path, "501_3 RUNNING\n77_1 PENDING\n501_5 PENDING").items():
        monkeypatch.setenv(k, v)
    sweep = open_sweep(tmp_path / "s", plan_sweep("s", "demo", parse_grid(["lr=1,2,3,4,5"]), []))
    record = submit_slurm(sweep, [1, 3, 4], max_parallel=2, sbatch_args=["--time=01:00:00"])
    assert record["job_id"] == 500 and record["report_job"] == 501
    args = (tmp_path / "sbatch.500").read_text().splitlines()
    assert "--array=1,3,4%2" in args and "--open-mode=append" in args
    assert f"--output={sweep.folder}/slurm/%A_%a.out" in args
    assert (sweep.folder / "slurm").is_dir()  # Slurm does not create it
    assert "--ntasks=1" in args and "--time=01:00:00" in args
    assert args[-1] == str(ROOT / "slurm" / "sweep.slurm")
    report = (tmp_path / "sbatch.501").read_text().splitlines()
    assert "--dependency=afterany:500" in report
    assert any(a.startswith("--wrap=") and f"report {sweep.folder}" in a for a in report)
    assert json.loads((sweep.folder / "sweep.json").read_text())["jobs"] == [record]
    # squeue lists tasks of every job: only this sweep's array counts (job 500)
    (tmp_path / "bin" / "squeue").write_text("#!/bin/bash\nprintf '500_3 RUNNING\\n77_1 "
                                             "PENDING\\n500_4 PENDING\\n'\n")
    states = [r["state"] for r in sweep_states(sweep)]
    assert states == ["not started", "failed", "not started", "running", "queued"]


def test_a_system_run_takes_its_nodes_and_ranks(tmp_path, monkeypatch):
    for k, v in _stand_ins(tmp_path).items():
        monkeypatch.setenv(k, v)
    sweep = open_sweep(tmp_path / "s", plan_sweep("s", "demo", parse_grid(["lr=1,2"]), []))
    submit_slurm(sweep, [0, 1], system="2xC4140")
    args = (tmp_path / "sbatch.500").read_text().splitlines()
    assert {"--nodes=2", "--ntasks=8", "--exclusive"} <= set(args)
    with pytest.raises(SweepError, match="config_9xC4140.sh does not exist"):
        submit_slurm(sweep, [0], system="9xC4140")


@pytest.mark.parametrize("best, drawn", [(0.0014, False), (0.2, True)])
def test_the_target_line_only_near_the_runs(best, drawn):
    """Far above every run, the target line would squash the curves at the bottom: it is drawn
    once a run comes within half of it, else the mAP curves' title names it."""
    from types import SimpleNamespace

    import matplotlib.pyplot as plt

    from ssdwb import plots

    runs = [SimpleNamespace(name=f"lr={lr}", config={"target_map": 0.23},
                            evals=[{"epoch": 1, "mAP": 0.0}, {"epoch": 2, "mAP": best * lr / 0.1}])
            for lr in (0.05, 0.1)]
    ax = plots.plot_map_curves(runs)
    assert (len(ax.get_lines()) == 3) is drawn
    assert ("0.23" in ax.get_title()) is not drawn
    rows = [{"lr": str(lr), "final_map": best * lr / 0.1, "best_map": best * lr / 0.1}
            for lr in (0.05, 0.1)]
    fig = plots.plot_sweep(rows, ["lr"], target=0.23)
    assert all((len(ax.get_lines()) == 2) is drawn for ax in fig.axes)
    plt.close("all")


def test_cli_errors_name_the_problem(tmp_path):
    r = subprocess.run([SSDWB, "sweep", "s", "--grid", "lr=1,2", "--run-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "(--slurm | --local)" in r.stderr
    r = subprocess.run([SSDWB, "sweep", "status", "nope", "--run-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "sweep.json does not exist" in r.stderr


# --- a whole local sweep ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    return make_shapes_coco(tmp_path_factory.mktemp("tiny"), num_train=24, num_val=8, seed=0)


@pytest.fixture(scope="module")
def local_sweep(tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    r = subprocess.run([SSDWB, *sweep_args("grid", runs, tiny_data), "--local", "--jobs", "2"],
                       capture_output=True, text=True, env=one_thread_env(), timeout=1800)
    return r, runs / "grid"


def check_finished_sweep(folder: Path, env: dict | None = None) -> None:
    """What a finished 2 x 2 sweep leaves, locally or on Slurm: every run done with its report,
    ``sweep status`` saying so, and the sweep's report naming the best run. ``env``: what
    ``squeue`` needs (the cluster's SLURM_CONF)."""
    spec = json.loads((folder / "sweep.json").read_text())
    assert [r["run_id"] for r in spec["runs"]] == ["lr=0.05,seed=1", "lr=0.05,seed=2",
                                                    "lr=0.1,seed=1", "lr=0.1,seed=2"]
    best = {}
    for run in spec["runs"]:
        summary = json.loads((folder / run["run_id"] / "summary.json").read_text())
        assert summary["status"] == "success", summary
        assert (folder / run["run_id"] / "report.html").exists()
        best[run["run_id"]] = max(e["mAP"] for e in summary["evals"])
    status = subprocess.run([SSDWB, "sweep", "status", folder.name, "--run-dir",
                             str(folder.parent)], capture_output=True, text=True, timeout=600,
                            env=env)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["run", "lr", "seed", "state", "epoch", "best", "mAP", "to",
                                "target"]
    for line in lines[1:5]:
        assert re.search(r"\bdone\s+3\s+\d\.\d{4}", line), status.stdout
    assert lines[-1] == "grid: 4 runs, 4 done"
    html = (folder / "report.html").read_text()
    winner = max(best, key=best.get)
    assert f"best run: {winner} (best mAP {best[winner]:.4f}" in html
    assert "The sweep" in html and "Config keys that differ" in html
    assert html.count("<img") >= 2  # mAP against the parameters, the curves


def test_local_sweep_runs_every_run_and_reports(local_sweep):
    r, folder = local_sweep
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "4 runs, 0 done, 0 queued or running, 4 to run" in r.stdout
    check_finished_sweep(folder)
    assert (folder / "logs" / "lr=0.1,seed=2.log").exists()


def test_the_same_local_sweep_again_runs_nothing(local_sweep, tiny_data):
    r, folder = local_sweep
    assert r.returncode == 0
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/summary.json")}
    again = subprocess.run([SSDWB, *sweep_args("grid", folder.parent, tiny_data), "--local"],
                           capture_output=True, text=True, env=one_thread_env(), timeout=600)
    assert again.returncode == 0, again.stderr
    assert "4 runs, 4 done, 0 queued or running, 0 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/summary.json")} == stamps


def test_a_run_held_by_another_process_is_not_started_twice(local_sweep):
    _, folder = local_sweep
    sweep = Sweep(folder, json.loads((folder / "sweep.json").read_text()))
    with run_lock(sweep, 1):
        r = subprocess.run([SSDWB, "sweep-task", str(folder), "1"], capture_output=True,
                           text=True, timeout=600)
    assert r.returncode == 3 and "not starting a second copy" in r.stdout


def test_the_sweep_report_reads_in_a_browser(local_sweep):
    """In headless Chromium: every figure decoded and not blank, the best run named on screen."""
    from lab_server import CHROMIUM, CHROMIUM_ARGS

    if not os.path.exists(CHROMIUM):
        pytest.skip("no /usr/bin/chromium: `make system-deps` installs it as root")
    playwright = pytest.importorskip("playwright.sync_api")
    _, folder = local_sweep
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((folder / "report.html").as_uri())
        page.wait_for_load_state("load")
        assert page.locator("h2", has_text="The sweep").is_visible()
        assert page.get_by_text(re.compile(r"^best run: lr=")).first.is_visible()
        images = page.locator("img")
        assert images.count() >= 2
        for i in range(images.count()):
            img = images.nth(i)
            assert img.evaluate("e => e.complete && e.naturalWidth > 0"), f"image {i}"
            img.scroll_into_view_if_needed()
            pixels = np.asarray(Image.open(io.BytesIO(img.screenshot())).convert("L"), float)
            assert pixels.std() > 5.0, f"image {i} is blank"
        assert errors == []
        browser.close()
