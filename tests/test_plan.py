"""The time-to-train planner (ssdwb.lab.plan, ssdwb plan, notebooks/plan.ipynb): it reproduces Dell
EMC's published MLPerf v0.7 C4140 times within 15 %, its constants are its fit, its systems are
the C4140 table's (ssdwb/lab/c4140_systems.csv) and the Slurm configs', and its parts behave as
the formulas say."""

import csv
import json
import os
import subprocess
from pathlib import Path

import nbformat
import pytest

from ssdwb.lab import plan

ROOT = Path(__file__).resolve().parents[1]


def test_reproduces_dell_within_15_percent():
    rows = plan.dell_table()
    assert [r["published_min"] for r in rows] == [43.87, 22.67, 12.44]
    assert [r["global_batch"] for r in rows] == [512, 1024, 896]
    for r in rows:
        assert abs(r["fit_error"]) < 0.15 and abs(r["model_error"]) < 0.15, r
        assert r["epochs"] == 50 and r["evals"] == 2  # v0.7 eval points 40 and 50
        assert r["model_img_per_s"] == pytest.approx(r["published_img_per_s"], rel=0.15)
    # and with the constants the package ships (not only a fresh fit)
    for p in plan.DELL_V07:
        shipped = plan.DELL_FIT_PROFILE  # its defaults are SSDWB's fitted constants
        got = plan.predict_system(shipped, p.system, img_per_s=p.img_per_s)["minutes"]
        assert got == pytest.approx(p.minutes, rel=0.15)


def test_shipped_constants_are_the_fit():
    fit = plan.fit_dell()
    for key, value in fit.items():
        assert getattr(plan.SSDWB, key) == pytest.approx(value, rel=2e-3), key
    # the fit responds to its inputs: a slower network leaves less of the step to compute
    slow = plan.fit_dell(plan.DELL_FIT_PROFILE.replace(inter_node_GBps=3.0))
    assert slow["step_overhead_s"] + 56 / slow["compute_img_per_s"] < \
        fit["step_overhead_s"] + 56 / fit["compute_img_per_s"]


def _table() -> dict[str, dict[str, str]]:
    """ssdwb/lab/c4140_systems.csv read here with the csv module (``#`` lines are comments)."""
    text = (ROOT / "ssdwb" / "lab" / "c4140_systems.csv").read_text()
    lines = [x for x in text.splitlines() if x.strip() and not x.startswith("#")]
    return {r["system"]: r for r in csv.DictReader(lines)}


def _slurm(name: str) -> tuple[int, int, int]:
    """Nodes, GPUs per node and batch per GPU of slurm/config_<name>.sh, as bash sources it."""
    out = subprocess.run(["bash", "-c", f'source "{ROOT}/slurm/config_{name}.sh" && '
                          'echo "$DGXNNODES $DGXNGPU $BATCHSIZE"'], capture_output=True,
                         text=True, env={"PATH": os.environ["PATH"]}, check=True).stdout
    nodes, gpus_per_node, batch = map(int, out.split())
    return nodes, gpus_per_node, batch


def test_systems_are_the_table_and_the_slurm_configs():
    table = _table()
    assert list(plan.SYSTEMS) == list(table) == ["1xC4140", "2xC4140", "4xC4140", "8xC4140",
                                                 "16xC4140"]
    assert plan.read_system_table() == list(table.values())  # the file the package ships
    for name, s in plan.SYSTEMS.items():
        r = table[name]
        got = (s.nodes, s.gpus_per_node, s.batch_per_gpu)
        assert got == (int(r["nodes"]), int(r["gpus_per_node"]), int(r["batch_per_gpu"]))
        assert got == _slurm(name)
    # SPEC.md (published, written out): GPUs and global batches of 1x-8x, and 16x's 64 x 24
    assert [s.gpus for s in plan.SYSTEMS.values()] == [4, 8, 16, 32, 64]
    assert [s.batch_per_gpu for s in plan.SYSTEMS.values()] == [120, 120, 56, 32, 24]
    assert [s.global_batch for s in plan.SYSTEMS.values()] == [480, 960, 896, 1024, 1536]


def test_epochs_by_global_batch_rounded_up_to_eval_points():
    assert [plan.epochs_needed(b) for b in (256, 512, 896, 1024)] == [50.0] * 4
    assert plan.epochs_needed(1536) == pytest.approx(60.0)
    assert 50 < plan.epochs_needed(1280) < 60 < plan.epochs_needed(2048) < 71
    assert plan.SSDWB.eval_epochs == (33, 44, 50, 55, 61, 66, 70)
    assert plan.epochs_to_target(plan.SSDWB, 1024) == (50, 3)
    assert plan.epochs_to_target(plan.SSDWB, 1536) == (61, 5)
    assert plan.epochs_to_target(plan.DELL_FIT_PROFILE, 1536) == (60, 4)
    assert plan.epochs_to_target(plan.SSDWB, 1 << 20) == (70, 7)  # never earlier: the last eval


def test_ring_allreduce_and_step_time():
    a = plan.SSDWB.replace(latency_s=0.0)
    assert plan.ring_allreduce_s(a, 1, 1) == 0.0
    size = plan.PARAMETERS * 4
    assert plan.ring_allreduce_s(a, 4, 1) == pytest.approx(1.5 * size / 100e9)
    assert plan.ring_allreduce_s(a, 64, 16) == pytest.approx(2 * 63 / 64 * size / 11e9)
    assert plan.ring_allreduce_s(a.replace(grad_bytes=2), 64, 16) == pytest.approx(
        plan.ring_allreduce_s(a, 64, 16) / 2)
    s = plan.SYSTEMS["16xC4140"]
    assert plan.step_time(a.replace(overlap=1.0), s)["allreduce"] == 0.0
    full = plan.step_time(a, s)
    assert full["total"] == pytest.approx(full["overhead"] + full["compute"] + full["allreduce"])


def test_a_measured_throughput_is_what_one_gpu_then_runs_at():
    a = plan.SSDWB.measured(700.0, 120)
    one = plan.System("1 GPU", 1, 1, 120)
    assert plan.predict_system(a, one)["img_per_s"] == pytest.approx(700.0)
    faster = plan.predict_system(a, plan.SYSTEMS["4xC4140"])["minutes"]
    assert faster < plan.predict_system(plan.SSDWB, plan.SYSTEMS["4xC4140"])["minutes"]
    with pytest.raises(ValueError, match="not more than the fixed"):
        plan.SSDWB.measured(1e6, 120)


def test_predictions_shrink_with_nodes_but_less_than_linearly():
    rows = plan.plan_table()
    minutes = [r["minutes"] for r in rows]
    assert minutes == sorted(minutes, reverse=True)
    assert minutes[0] / minutes[-1] < 16  # all-reduce, eval and more epochs at 16 nodes
    for r in rows:
        assert r["minutes"] == pytest.approx(r["train_min"] + r["eval_min"])


def test_cli(capsys):
    from ssdwb.cli import main

    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in plan.SYSTEMS) and "fp32 gradients" in out
    assert main(["plan", "--system", "4xC4140", "--json"]) == 0
    (base,) = json.loads(capsys.readouterr().out)
    assert base["system"] == "4xC4140" and base["global_batch"] == 896
    assert main(["plan", "--system", "4xC4140", "--img-per-s-per-gpu", "900", "--json"]) == 0
    (fast,) = json.loads(capsys.readouterr().out)
    assert fast["minutes"] < base["minutes"] and fast["img_per_s"] > base["img_per_s"]
    assert main(["plan", "--system", "4xC4140", "--img-per-s-per-gpu", "1e9"]) == 1
    assert "not more than the fixed" in capsys.readouterr().err


def test_notebook_is_clean_and_parameterised():
    nb = nbformat.read(ROOT / "notebooks" / "plan.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata["kernelspec"]["name"] == "ssdwb"


@pytest.mark.slow
def test_notebook_runs_and_checks_the_fit(tmp_path):
    import papermill as pm

    out = tmp_path / "plan.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "plan.ipynb"), str(out), kernel_name="python3",
                        parameters={"img_per_s_per_gpu": 650.0}, progress_bar=False,
                        cwd=str(ROOT / "notebooks"))
    text = "".join(o.get("text", "") for c in nbformat.read(out, 4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "largest error:" in text and "16xC4140:" in text and "8xC4140:" in text
