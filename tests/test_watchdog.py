"""No silent hangs: a stalled rank ends the run with a verdict that names it, the last checkpoint
stays loadable and ``--resume`` goes on (ssdwb/engine/watchdog.py)."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from ranks import launch, wait_all

from ssdwb.data.synthetic import make_shapes_coco
from ssdwb.engine.watchdog import Heartbeat, stale_ranks
from ssdwb.runs.checkpoint import load_checkpoint


def test_stale_ranks_names_old_missing_and_torn_heartbeats(tmp_path):
    now = 1000.0
    for rank, written in ((0, now - 1), (1, now - 40)):
        beat = Heartbeat(tmp_path, rank, period=5)
        beat.at("train", 7 + rank)
        record = {**beat.record(), "written_at": written}
        beat.path.parent.mkdir(parents=True, exist_ok=True)
        beat.path.write_text(json.dumps(record))
    (tmp_path / "ranks" / "heartbeat_rank3.json").write_text("{torn")
    stale = stale_ranks(tmp_path, 4, max_age=15, now=now)
    assert [s["rank"] for s in stale] == [1, 2, 3]
    assert stale[0] == {"rank": 1, "phase": "train", "iteration": 8, "age_s": 40.0}
    assert stale[1]["phase"] == stale[2]["phase"] == "unknown"
    assert stale_ranks(tmp_path, 2, max_age=60, now=now) == []


def _wait_for(predicate, what: str, limit_s: float, procs) -> None:
    deadline = time.time() + limit_s
    while not predicate():
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank ended while waiting for {what}")
        if time.time() > deadline:
            raise AssertionError(f"no {what} after {limit_s} s")
        time.sleep(0.2)


@pytest.mark.slow
def test_a_stopped_rank_is_named_and_the_run_resumes(tmp_path):
    make_shapes_coco(tmp_path / "data", num_train=32, num_val=4, seed=0, size=(300, 300),
                     max_objects=3)
    run = tmp_path / "runs" / "hang"
    sets = [f"data_dir={tmp_path / 'data'}", f"run_dir={tmp_path / 'runs'}", "run_id=hang",
            "batch_size=2", "eval_batch_size=2", "num_workers=0", "amp=off",
            "channels_last=false", "epochs=50", "eval_at=[1]", "log_interval=1", "warmup=2",
            "tensorboard=false", "dist_timeout_s=20", "dist_long_timeout_s=60", "device=cpu"]
    procs = launch(["--preset", "demo", "--set", *sets], tmp_path, "first")
    try:
        _wait_for(lambda: (run / "checkpoint.pt").exists(), "checkpoint after epoch 1", 600,
                  procs)
        time.sleep(1.0)  # into epoch 2
        os.kill(procs[1].pid, signal.SIGSTOP)
        stopped = time.time()
        # rank 0 notices within its limit (18 s) plus a watchdog period; 5 min is far above
        code = procs[0].wait(timeout=300)
        waited = time.time() - stopped
    finally:
        for p in procs:
            p.kill()
            p.wait()
    log0 = (tmp_path / "first_rank0.log").read_text()
    assert code != 0, log0[-3000:]
    assert waited < 300
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed", summary
    assert "rank 1 (last heartbeat" in summary["reason"], summary["reason"]
    assert "rank 0 (" not in summary["reason"]
    assert "[ssdwb] watchdog: stalled: rank 1" in log0

    checkpoint = load_checkpoint(run / "checkpoint.pt")  # the last checkpoint stays loadable
    done = checkpoint["iteration"]
    assert checkpoint["epoch"] >= 1 and done > 0

    again = launch(["--resume", str(run), "--set", f"epochs={checkpoint['epoch'] + 1}"],
                    tmp_path, "resume")
    wait_all(again, tmp_path, "resume")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "success" and summary["iterations"] > done, summary


def test_slurm_ranks_keep_nccls_flight_recorder_in_the_run_folder():
    text = (Path(__file__).resolve().parent.parent / "slurm" / "run_and_time.sh").read_text()
    for line in ("TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}",
                 "TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}",
                 "TORCH_NCCL_DEBUG_INFO_TEMP_FILE=${TORCH_NCCL_DEBUG_INFO_TEMP_FILE:-$run/ranks/"):
        assert f"export {line}" in text, line
