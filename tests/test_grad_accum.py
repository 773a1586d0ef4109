"""Gradient accumulation over virtual ranks: a run's data and gradients depend only on the global
batch and on ranks x grad_accum, so 2 ranks x 2 micro-batches compute what 1 rank x 4 does, and a
checkpoint of one split resumes on another (elastic resume)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from ranks import launch, wait_all

from ssdwb.data.loader import MicroBatchSampler, ShardSampler
from ssdwb.data.synthetic import make_shapes_coco
from ssdwb.runs.checkpoint import load_checkpoint


@pytest.mark.parametrize("world,k", [(1, 4), (2, 2), (4, 1)])
def test_micro_batch_j_of_rank_r_is_batch_s_of_virtual_rank_r_k_plus_j(world, k):
    data, b = list(range(50)), 3
    shards = []
    for v in range(4):
        s = ShardSampler(data, num_replicas=4, rank=v, shuffle=True, seed=5, drop_last=True)
        s.set_epoch(2)
        keys = list(s)
        shards.append([keys[i:i + b] for i in range(0, len(keys) - b + 1, b)])
    for rank in range(world):
        sampler = MicroBatchSampler(data, b, k, rank, world, seed=5)
        sampler.set_epoch(2)
        got = list(sampler)
        assert len(got) == len(sampler) == k * len(shards[0])
        for n, batch in enumerate(got):
            step, j = divmod(n, k)
            assert batch == shards[rank * k + j][step], (rank, n)
        sampler.skip_batches(2, b)  # a resumed pass starts at step 2 of every shard
        assert list(sampler) == got[2 * k:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("accum")
    make_shapes_coco(root / "data", num_train=64, num_val=4, seed=0, size=(300, 300),
                     max_objects=3)
    return root


def settings(root, run_id: str, **kw) -> list[str]:
    """4 steps per epoch at a global batch of 16; no evaluation before step 20. The gradient
    norm is clipped to 1: this small model's first steps, unclipped, amplify the float32
    summation-order differences between any two splits (4 x 1 DDP against 2 x 2 as well) to
    several per cent within 20 steps, through near-zero batch variances of BatchNorm."""
    values = {"data_dir": root / "data", "run_dir": root / "runs", "run_id": run_id,
              "batch_size": 4, "num_workers": 0, "amp": "off", "channels_last": "false",
              "epochs": 50, "eval_at": "[50]", "log_interval": 1, "warmup": 4, "lr": 0.001,
              "grad_clip_norm": 1, "tensorboard": "false", "device": "cpu", **kw}
    return ["--set", *(f"{k}={v}" for k, v in values.items())]


def train_ranks(root, run_id: str, ranks: int, **kw) -> None:
    """A run cut by ``max_iters`` (the command's status is then 1)."""
    wait_all(launch(["--preset", "demo", *settings(root, run_id, **kw)], root, run_id, ranks),
             root, run_id, status=1)


def losses(root, run_id: str) -> dict[int, float]:
    path = root / "runs" / run_id / "metrics.jsonl"
    return {x["iteration"]: x["loss"] for x in map(json.loads, path.read_text().splitlines())
            if "loss" in x}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))


@pytest.mark.slow
def test_two_ranks_by_two_compute_what_one_rank_by_four_does(data):
    train_ranks(data, "w2k2-1", 2, grad_accum=2, max_iters=1)
    train_ranks(data, "w1k4-1", 1, grad_accum=4, max_iters=1)
    a = load_checkpoint(data / "runs" / "w2k2-1" / "checkpoint.pt")
    b = load_checkpoint(data / "runs" / "w1k4-1" / "checkpoint.pt")
    assert a["global_batch"] == b["global_batch"] == 16
    loss_a, loss_b = losses(data, "w2k2-1")[1], losses(data, "w1k4-1")[1]
    assert abs(loss_a - loss_b) <= 1e-5 * abs(loss_b), (loss_a, loss_b)
    moved = 0
    for name, value in b["model"].items():  # parameters and BN running statistics
        if value.is_floating_point():
            assert relative(a["model"][name], value) <= 1e-5, name
        else:
            assert torch.equal(a["model"][name], value), name  # num_batches_tracked
        moved += "running_mean" in name and bool(value.abs().sum() > 0)
    assert moved > 10  # BN statistics did move (micro-batch 0's update only, on both sides)

    train_ranks(data, "w2k2", 2, grad_accum=2, max_iters=20)
    train_ranks(data, "w1k4", 1, grad_accum=4, max_iters=20)
    la, lb = losses(data, "w2k2"), losses(data, "w1k4")
    assert sorted(la) == sorted(lb) == list(range(1, 21))
    for i in la:  # float summation order makes later steps drift a little
        assert abs(la[i] - lb[i]) <= 1e-2 * abs(lb[i]), (i, la[i], lb[i])


@pytest.mark.slow
def test_a_two_by_two_run_stopped_mid_epoch_resumes_as_one_by_four(data):
    reference = data / "runs" / "w2k2"
    if not reference.exists():
        train_ranks(data, "w2k2", 2, grad_accum=2, max_iters=20)
    run = data / "runs" / "elastic"
    procs = launch(["--preset", "demo", *settings(data, "elastic", grad_accum=2)], data,
                   "elastic", 2)
    deadline = time.time() + 600
    while not ((run / "metrics.jsonl").exists()
               and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    for p in procs:  # what Slurm sends every rank before a time limit or preemption
        p.send_signal(signal.SIGUSR1)
    wait_all(procs, data, "elastic")
    cut = load_checkpoint(run / "checkpoint.pt")
    assert cut["world_size"] == 2 and 0 < cut["iteration"] < 20

    # on to the end of epoch 5 (step 20) and its evaluation: a complete MLPerf log
    wait_all(launch(["--resume", str(run), "--set", "epochs=5"], data, "elastic-1x4", 1),
             data, "elastic-1x4")
    assert json.loads((run / "config.json").read_text())["grad_accum"] == 4
    got, want = losses(data, "elastic"), losses(data, "w2k2")
    assert sorted(got) == list(range(1, 21))
    first = cut["iteration"] + 1
    for i in got:
        limit = 1e-5 if i <= first else 1e-2  # the first resumed step, then summation drift
        assert abs(got[i] - want[i]) <= limit * abs(want[i]), (i, got[i], want[i])
    out = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                          "training", "--ruleset", "0.6.0", str(run / "mlperf.log")],
                         capture_output=True, text=True, cwd=data, env=dict(os.environ))
    assert "SUCCESS" in out.stdout + out.stderr, out.stdout + out.stderr


def test_a_split_that_does_not_divide_is_refused_naming_the_rank_counts(data):
    from ssdwb.config import preset
    from ssdwb.engine.setup import fit_to_ranks

    config = preset("demo", grad_accum=2)
    checkpoint = {"world_size": 3, "global_batch": 48, "config": config.to_dict()}
    assert fit_to_ranks(config, checkpoint, "runs/x", 2).grad_accum == 3
    assert fit_to_ranks(config, checkpoint, "runs/x", 6).grad_accum == 1
    with pytest.raises(ValueError, match=r"6 virtual ranks .*one of \[1, 2, 3, 6\] ranks"):
        fit_to_ranks(config, checkpoint, "runs/x", 4)
    with pytest.raises(ValueError, match="do not make 6"):  # an explicit grad_accum that misfits
        fit_to_ranks(config.replace(grad_accum=5), checkpoint, "runs/x", 2)
