"""The run folder's writer (ssdwb.runs.folder.RunFolder): safe checkpoints, no mixed runs, durable
atomic writes, and one step of the training loop per named point."""

import json
import multiprocessing
import os
import random
import signal
import time

import pytest
import torch

from ssdwb.runs.checkpoint import CheckpointError, load_checkpoint, rng_state, set_rng_state
from ssdwb.runs.folder import RunFolder


class _Payload:
    """Unpickling this creates a file: what a crafted checkpoint could do on the cluster."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_crafted_checkpoint_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {}, "config": {}, "x": _Payload(str(target))}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: refused to load.*Nothing in it"):
        load_checkpoint(path)
    assert not target.exists()


def test_crafted_checkpoint_refused_by_resume_and_eval(tmp_path):
    from ssdwb.cli import main
    from ssdwb.engine.loop import train

    target = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "config": {}, "x": _Payload(str(target))}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        train(resume=run)
    with pytest.raises(CheckpointError, match="refused to load"):
        main(["eval", "--checkpoint", str(run / "checkpoint.pt")])
    assert not target.exists()


def _old_format_checkpoint(path):
    """What ssdwb wrote before the safe format: RNG states as Python/numpy objects."""
    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state()}
    torch.save({"model": {"w": torch.ones(2)}, "config": {"seed": 3}, "rng": [state],
                "iteration": 4}, path)


def test_old_checkpoint_explains_how_to_convert(tmp_path, capsys):
    from ssdwb.cli import main

    path = tmp_path / "checkpoint.pt"
    _old_format_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"ssdwb checkpoint convert .*checkpoint.pt"):
        load_checkpoint(path)
    assert main(["checkpoint", "convert", str(path)]) == 0
    ckpt = load_checkpoint(path)
    assert ckpt["iteration"] == 4 and torch.equal(ckpt["model"]["w"], torch.ones(2))
    set_rng_state(ckpt["rng"][0])  # the converted RNG state is usable


def test_rng_state_round_trip_is_safe_and_exact(tmp_path):
    import numpy as np

    path = tmp_path / "s.pt"
    torch.save({"model": {}, "config": {}, "rng": [rng_state()]}, path)
    want = (torch.rand(3), random.random(), np.random.rand(2))
    set_rng_state(load_checkpoint(path)["rng"][0])
    got = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(want[0], got[0]) and want[1] == got[1] and (want[2] == got[2]).all()


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path):
    from ssdwb.config import preset

    config = preset("demo", run_id="x")
    RunFolder.create(tmp_path / "x", config)
    assert (tmp_path / "x" / "config.json").exists()
    with pytest.raises(FileExistsError, match=r"already holds a run \(config.json\).*--resume"):
        RunFolder.create(tmp_path / "x", config)
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "train.ipynb").write_text("{}")  # papermill writes this first: fine
    RunFolder.create(tmp_path / "y", config)


def _checkpoint_forever(path, ready):
    folder = RunFolder(path)
    state = {"model": {"w": torch.randn(512, 1024)}, "config": {}, "rng": [rng_state()]}
    n = 0
    while True:
        n += 1
        state["iteration"] = n
        folder.save_checkpoint(state)
        ready.set()


def test_kill_9_while_checkpointing_leaves_a_loadable_checkpoint(tmp_path):
    """20 kills at random moments of a process that writes checkpoints back to back."""
    ctx = multiprocessing.get_context("fork")
    rnd = random.Random(0)
    last = 0
    for _ in range(20):
        ready = ctx.Event()
        proc = ctx.Process(target=_checkpoint_forever, args=(tmp_path, ready))
        proc.start()
        assert ready.wait(60)
        time.sleep(rnd.uniform(0, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
        assert ckpt["iteration"] >= 1 and ckpt["model"]["w"].shape == (512, 1024)
        last = ckpt["iteration"]
    assert last >= 1


def test_atomic_json_replaces_whole_files(tmp_path):
    from ssdwb.files import atomic_json

    atomic_json({"a": 1}, tmp_path / "s.json")
    atomic_json({"a": 2}, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 2}
    assert not list(tmp_path.glob(".*.tmp"))

