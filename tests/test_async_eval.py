"""Evaluation off the critical path (``async_eval``): the same scores as inline evaluation, applied
when they land; an MLPerf log that passes the 0.6.0 checker with a result one epoch late; no eval
result lost to a kill; a scorer crash fails the run with its cause."""

import json
import subprocess
import sys

import pytest

from ssdwb.config import preset
from ssdwb.data.synthetic import make_shapes_coco
from ssdwb.engine import eval_in_flight
from ssdwb.engine.loop import train
from ssdwb.runs.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("async")
    make_shapes_coco(root / "data", num_train=8, num_val=4, seed=0)
    return root


def config(root, run_id, **kw):
    """4 steps per epoch, an evaluation at every epoch."""
    kw = {"batch_size": 2, "epochs": 3, "eval_at": [1, 2, 3], "num_workers": 0,
          "log_interval": 1, "eval_batch_size": 4, "warmup": 2, "lr": 5e-3, "amp": "off",
          "channels_last": False, "lr_decay_at": [2], "grad_clip_norm": 0.0,
          "tensorboard": False, **kw}
    return preset("demo", data_dir=str(root / "data"), run_dir=str(root / "runs"), run_id=run_id,
                  **kw)


def evals(root, run_id) -> list[dict]:
    path = root / "runs" / run_id / "metrics.jsonl"
    return [x for x in map(json.loads, path.read_text().splitlines()) if x.get("eval")]


def compliant(root, run_id) -> None:
    out = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                          "training", "--ruleset", "0.6.0",
                          str(root / "runs" / run_id / "mlperf.log")],
                         capture_output=True, text=True, cwd=root)
    assert "SUCCESS" in out.stdout + out.stderr, out.stdout + out.stderr


def maps(run_evals: list[dict]) -> dict[int, float]:
    return {e["epoch"]: e["mAP"] for e in run_evals}


@pytest.fixture(scope="module")
def inline(root):
    """The reference: every evaluation scored inline."""
    summary = train(config(root, "inline", async_eval="off"))
    assert summary["status"] == "success"
    return maps(evals(root, "inline"))


def test_scores_land_while_training_and_equal_inline_ones(root, inline):
    summary = train(config(root, "async", async_eval="on"))
    assert summary["status"] == "success" and summary["iterations"] == 12
    lines = evals(root, "async")
    assert maps(lines) == inline  # the same detections scored the same way
    for e in lines:  # epochs 1 and 2 were scored while training went on; 3 is the last, inline
        assert ("arrived_iteration" in e) == (e["epoch"] < 3)
        assert e.get("arrived_iteration", e["iteration"]) >= e["iteration"]
    assert [e["epoch"] for e in summary["evals"]] == [1, 2, 3]
    assert (root / "runs" / "async" / "model_epoch1.pt").exists()  # the evaluated model
    compliant(root, "async")


def test_a_result_one_epoch_late_keeps_the_mlperf_log_compliant(root, inline, monkeypatch):
    # the scorer never reports early: each result lands at the next evaluation (one epoch late)
    monkeypatch.setattr(eval_in_flight.EvalInFlight, "ready", lambda self: False)
    summary = train(config(root, "late", async_eval="on"))
    lines = evals(root, "late")
    assert maps(lines) == inline
    late = {e["epoch"]: e for e in lines}
    assert late[1]["arrived_iteration"] == 8 and late[2]["arrived_iteration"] == 12
    assert summary["status"] == "success"
    compliant(root, "late")


def test_a_kill_with_a_scoring_in_flight_loses_no_result(root, inline, monkeypatch):
    monkeypatch.setattr(eval_in_flight.EvalInFlight, "ready", lambda self: False)
    cut = train(config(root, "killed", async_eval="on", max_iters=6))  # mid-epoch 2
    assert cut["status"] == "aborted" and cut["evals"] == []
    assert load_checkpoint(root / "runs" / "killed" / "checkpoint.pt")["pending_eval"] == {
        "epoch": 1, "iteration": 4}
    monkeypatch.undo()
    done = train(resume=root / "runs" / "killed", overrides=["max_iters=0"])
    assert done["status"] == "success"
    assert maps(evals(root, "killed")) == inline  # epoch 1 scored again from its detections
    compliant(root, "killed")


def test_a_scorer_crash_fails_the_run_with_its_cause(root, monkeypatch):
    submit = eval_in_flight.EvalInFlight.submit

    def to_a_missing_file(self, *args):
        self.ann_file = str(root / "missing.json")
        submit(self, *args)

    monkeypatch.setattr(eval_in_flight.EvalInFlight, "submit", to_a_missing_file)
    with pytest.raises(RuntimeError, match=r"the scorer failed on epoch 1's detections: "
                                           r"FileNotFoundError"):
        train(config(root, "crash", async_eval="on"))


@pytest.mark.slow
def test_two_ranks_learn_the_landed_result_together(root, tmp_path):
    """Rank 0's result reaches rank 1 in the log interval's all_reduce: both stop alike, and
    the scores equal inline scoring's on the same two ranks."""
    from ranks import launch, wait_all

    def run(run_id, mode):
        sets = [f"{k}={json.dumps(v) if isinstance(v, list) else v}"
                for k, v in config(root, run_id, async_eval=mode).to_dict().items()
                if k in ("data_dir", "run_dir", "run_id", "batch_size", "epochs", "eval_at",
                         "num_workers", "log_interval", "eval_batch_size", "warmup", "lr",
                         "amp", "channels_last", "lr_decay_at", "grad_clip_norm", "tensorboard",
                         "async_eval")]
        wait_all(launch(["--preset", "demo", "--set", *sets], tmp_path, run_id, 2), tmp_path,
                 run_id)

    run("ddp-inline", "off")
    run("ddp-async", "on")
    assert maps(evals(root, "ddp-async")) == maps(evals(root, "ddp-inline"))
    compliant(root, "ddp-async")
