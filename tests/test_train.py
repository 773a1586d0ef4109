"""The training loop (ssdwb.engine): a tiny run's folder and MLPerf log, the epoch line, gradient
clipping and its logged norms, resume, SIGUSR1, the GPU code paths on the CPU, host syncs."""

import json
import math
import subprocess
import sys

import pytest

from ssdwb.config import preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    root = tmp_path_factory.mktemp("tiny")
    make_shapes_coco(root / "data", num_train=8, num_val=4, seed=0)
    return root


def tiny_config(root, run_id, **kw):
    # fp32 NCHW unless a test asks: the demo preset's amp="auto" is bf16 on some hosts only;
    # no gradient clipping unless a test asks (the reference's path; the demo's limit of 10 is
    # for its model after the first steps, far below the norms of these 8 steps)
    kw = {"batch_size": 2, "epochs": 2, "eval_at": [1, 2], "num_workers": 0, "log_interval": 1,
          "eval_batch_size": 4, "warmup": 2, "lr": 5e-3, "amp": "off", "channels_last": False,
          "lr_decay_at": [2], "grad_clip_norm": 0.0, **kw}
    return preset("demo", data_dir=str(root / "data"), run_dir=str(root / "runs"), run_id=run_id,
                  **kw)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_tiny_training_run_folder_and_compliance(tiny):
    from ssdwb.engine.loop import train

    summary = train(tiny_config(tiny, "full"))
    run = tiny / "runs" / "full"
    assert summary["status"] == "success" and summary["iterations"] == 8
    for name in ("config.json", "metrics.jsonl", "mlperf.log", "summary.json", "checkpoint.pt",
                 "detections_epoch1.json", "detections_epoch2.json"):
        assert (run / name).exists(), name
    m = lines(run / "metrics.jsonl")
    losses = [x["loss"] for x in m if "loss" in x]
    assert len(losses) == 8 and sum(losses[-4:]) / 4 < 0.75 * sum(losses[:2]) / 2  # it falls
    evals = [x for x in m if x.get("eval")]
    assert [e["epoch"] for e in evals] == [1, 2] and set(evals[0]) >= {"mAP", "AP50", "ARl"}
    assert json.loads((run / "config.json").read_text())["run_id"] == "full"
    out = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                          "training", "--ruleset", "0.6.0", str(run / "mlperf.log")],
                         capture_output=True, text=True, cwd=tiny)
    assert "SUCCESS" in out.stdout + out.stderr, out.stdout + out.stderr


def test_the_epoch_line_shows_the_epoch_mean_loss(tiny, capsys):
    """4 iterations per epoch. log_interval 1 gives every iteration's loss in metrics.jsonl; the
    terminal's epoch line must show their mean over the epoch whatever the log interval (2: the
    epoch ends on a log line, whose window is reset before the epoch line is printed)."""
    import re

    from ssdwb.engine.loop import train

    def epoch_losses():
        out = capsys.readouterr().out
        return [float(x) for x in re.findall(r"\[ssdwb\] epoch \d+/2: .* loss ([0-9.]+),", out)]

    capsys.readouterr()
    train(tiny_config(tiny, "epoch-line-1", log_interval=1))
    printed_1 = epoch_losses()
    per_iteration = [x["loss"] for x in lines(tiny / "runs" / "epoch-line-1" / "metrics.jsonl")
                     if "loss" in x]
    want = [sum(per_iteration[:4]) / 4, sum(per_iteration[4:]) / 4]
    train(tiny_config(tiny, "epoch-line-2", log_interval=2))
    printed_2 = epoch_losses()
    assert printed_1 == pytest.approx(want, abs=1e-3)
    assert printed_2 == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize("scaled", [False, True], ids=["no-scaler", "fp16-scaler"])
def test_train_step_clips_the_unscaled_gradient_norm(scaled):
    """grad_clip_norm: train_step returns the global gradient norm before clipping, and SGD
    steps with the gradients scaled down to the limit (the first momentum step is the gradient
    itself: p - lr * g * limit / norm). Through fp16's GradScaler (ssdwb.engine.optim.SGD) the norm is
    the unscaled one and the step the same, not unscaled twice (the scale is a power of 2, so
    scaling is exact). A limit above the norm changes nothing; 0 computes no norm."""
    import torch
    from torch import nn

    from ssdwb.engine.optim import SGD
    from ssdwb.engine.step import train_step

    class Heads(nn.Module):  # (ploc [B, 4, A], plabel [B, C, A]) as SSD300's
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 7, 3, stride=4)

        def forward(self, x):
            y = self.conv(x).flatten(2)
            return y[:, :4], y[:, 4:]

    def criterion(ploc, plabel, gloc, glabel):
        return ((ploc - gloc) ** 2).sum() + nn.functional.cross_entropy(plabel, glabel)

    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=g),
             "gloc": torch.randn(2, 16, 4, generator=g),  # [B, A, 4]: 4x4 positions
             "glabel": torch.randint(0, 3, (2, 16), generator=g)}

    def step(limit, scaled):
        torch.manual_seed(0)
        model = Heads()
        before = [p.detach().clone() for p in model.parameters()]
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, enabled=scaled)
        loss, norm = train_step(model, criterion, opt, scaler, None, batch, torch.device("cpu"),
                                None, False, "worker", limit)
        return before, [p.detach() for p in model.parameters()], norm

    before, free, none = step(0.0, False)
    assert none is None
    grads = [(b - a) / 0.1 for b, a in zip(before, free)]  # the unclipped gradient
    norm = float(torch.linalg.vector_norm(torch.cat([x.flatten() for x in grads])))
    for limit in (norm / 4, norm * 2):
        _, after, got = step(limit, scaled)
        assert float(got) == pytest.approx(norm, rel=1e-5)
        factor = min(1.0, limit / norm)
        for b, a, gr in zip(before, after, grads):
            torch.testing.assert_close(a, b - 0.1 * factor * gr, rtol=1e-5, atol=1e-6)


def test_the_gradient_norm_lines_are_each_windows_mean_and_largest(tiny):
    """With clipping on, a metrics.jsonl line at log_interval 2 holds the mean and the largest of
    its two steps' norms, which log_interval 1 gives one by one (a limit far above the norms, so
    both runs take the same steps)."""
    from ssdwb.engine.loop import train

    def norms(interval):
        run = f"grad-norms-{interval}"
        train(tiny_config(tiny, run, log_interval=interval, grad_clip_norm=1e9))
        return [(x["grad_norm"], x["grad_norm_max"])
                for x in lines(tiny / "runs" / run / "metrics.jsonl") if "loss" in x]

    single, paired = norms(1), norms(2)
    assert len(single) == 8 and all(mean == top > 0 for mean, top in single)
    want = [((a + b) / 2, max(a, b)) for (a, _), (b, _) in zip(single[::2], single[1::2])]
    assert len(paired) == 4 and single[0][0] != single[1][0]
    for (mean, top), (want_mean, want_top) in zip(paired, want):
        assert mean == pytest.approx(want_mean, rel=1e-5)
        assert top == pytest.approx(want_top, rel=1e-5)


@pytest.mark.parametrize("cut,workers,accum", [(4, 0, 1), (6, 0, 1), (6, 1, 1), (3, 0, 2)],
                         ids=["epoch-end", "mid-epoch", "mid-epoch-worker", "mid-epoch-accum"])
def test_resume_gives_the_same_metrics(tiny, cut, workers, accum):
    """4 iterations per epoch: cut=4 stops at the end of epoch 1, cut=6 half-way through 2;
    with grad_accum=2, 2 steps per epoch and cut=3 half-way through 2."""
    from ssdwb.engine.loop import train

    ref = tiny / "runs" / f"full-w{workers}-k{accum}"
    if not ref.exists():
        train(tiny_config(tiny, ref.name, num_workers=workers, grad_accum=accum))
    name = f"cut{cut}-w{workers}-k{accum}"
    first = train(tiny_config(tiny, name, max_iters=cut, num_workers=workers, grad_accum=accum))
    assert first["status"] == "aborted" and first["iterations"] == cut
    resumed = train(resume=tiny / "runs" / name, overrides=["max_iters=0"])
    assert resumed["status"] == "success" and resumed["iterations"] == 8 // accum

    def values(path):
        return [{k: v for k, v in x.items() if k != "images_per_s"} for x in lines(path)]

    assert values(tiny / "runs" / name / "metrics.jsonl") == values(ref / "metrics.jsonl")
    out = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                          "training", "--ruleset", "0.6.0",
                          str(tiny / "runs" / name / "mlperf.log")],
                         capture_output=True, text=True, cwd=tiny)
    assert "SUCCESS" in out.stdout + out.stderr


def test_a_second_fresh_run_with_the_same_id_is_refused(tiny):
    from ssdwb.engine.loop import train

    run = tiny / "runs" / "twice"
    train(tiny_config(tiny, "twice", epochs=1, eval_at=[1], max_iters=2))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match=r"already holds a run .*--resume .*another run_id"):
        train(tiny_config(tiny, "twice", epochs=1, eval_at=[1]))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_sigusr1_checkpoints_and_the_run_resumes(tiny):
    """What Slurm sends before a time limit: checkpoint at the next iteration, exit, resume."""
    import os
    import signal
    import time

    run = tiny / "runs" / "sig"
    cmd = [sys.executable, "-m", "ssdwb", "train", "--preset", "demo", "--set",
           f"data_dir={tiny / 'data'}", f"run_dir={tiny / 'runs'}", "run_id=sig", "batch_size=2",
           "epochs=2", "eval_at=[1, 2]", "num_workers=0", "log_interval=1", "eval_batch_size=4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "aborted" and "signal" in summary["reason"]
    assert summary["iterations"] < 8 and (run / "checkpoint.pt").exists()
    assert '"status": "aborted"' in (run / "mlperf.log").read_text()
    done = subprocess.run([sys.executable, "-m", "ssdwb", "train", "--resume", str(run)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "success" and summary["iterations"] == 8


# fp16's backward on the CPU is about a hundred times slower than fp32's (no fast kernel): its one
# case has everything a CUDA run adds, at half the demo's width (60 s instead of 172 s alone here)
FP16_WIDTH = 0.125


@pytest.mark.parametrize("changes", [{"encode_on": "device"}, {"channels_last": True},
                                     {"amp": "bf16"},
                                     {"amp": "fp16", "channels_last": True, "encode_on": "device",
                                      "grad_clip_norm": 50.0, "model_width": FP16_WIDTH}],
                         ids=["encode-on-device", "channels-last", "bf16", "cuda-like-fp16"])
def test_gpu_code_paths_train_on_the_cpu(tiny, changes):
    """What a CUDA run does differently (encode in the loop, NHWC, autocast, fp16's GradScaler)
    runs through train() here. Encoding in the loop is bit-identical to encoding in the loader;
    the others stay close to the fp32 run on the same batches. fp16 overflows at the initial
    scale, so its first steps are skipped, and training must go on finite after them (torch
    2.14's fused SGD did not: garbage momentum, a non-finite loss)."""
    from ssdwb.engine.loop import train
    from ssdwb.runs.checkpoint import load_checkpoint

    width = changes.get("model_width")
    ref = tiny / "runs" / ("full" if width is None else f"full-width-{width}")
    if not ref.exists():
        train(tiny_config(tiny, ref.name, **({} if width is None else {"model_width": width})))
    name = "gpu-path-" + "-".join(f"{k}-{v}" for k, v in changes.items())
    summary = train(tiny_config(tiny, name, **changes))
    assert summary["status"] == "success" and summary["iterations"] == 8
    assert summary["amp"] == changes.get("amp", "off")
    assert summary["channels_last"] == changes.get("channels_last", False)
    got = [x["loss"] for x in lines(tiny / "runs" / name / "metrics.jsonl") if "loss" in x]
    want = [x["loss"] for x in lines(ref / "metrics.jsonl") if "loss" in x]
    if changes == {"encode_on": "device"}:
        assert got == want
    else:
        # the first step: same weights, same batch; the loss itself is float32 in every mode
        assert got[0] == pytest.approx(want[0], rel=0.02)
        assert all(math.isfinite(x) for x in got) and got[-1] < got[0]
    if "grad_clip_norm" in changes:
        # each line: the window's mean and largest norm; null for a step skipped for overflow
        norms = [(x["grad_norm"], x["grad_norm_max"])
                 for x in lines(tiny / "runs" / name / "metrics.jsonl") if "loss" in x]
        taken = [n for n in norms if n != (None, None)]
        assert len(norms) == 8 and 2 <= len(taken) < 8  # the first steps overflow
        assert all(0 < a <= b < math.inf for a, b in taken)
    scaler = load_checkpoint(tiny / "runs" / name / "checkpoint.pt")["scaler"]
    assert bool(scaler) == (changes.get("amp") == "fp16")  # GradScaler state only with fp16
    if scaler:
        assert scaler["scale"] < 2.0 ** 16  # steps were skipped for overflow


@pytest.mark.parametrize("changes", [{"grad_clip_norm": 10.0},
                                     {"encode_on": "device", "amp": "bf16", "channels_last": True},
                                     {"encode_on": "device", "amp": "fp16", "channels_last": True,
                                      "grad_clip_norm": 10.0, "model_width": FP16_WIDTH},
                                     # 8 images, 4 steps per epoch: the cut is in epoch 2
                                     {"grad_accum": 2, "grad_clip_norm": 10.0, "epochs": 2,
                                      "eval_at": [2]}],
                         ids=["cpu-path", "cuda-path", "cuda-fp16-path", "grad-accum"])
def test_host_syncs_at_most_one_per_log_interval(tiny, changes):
    """The steady path reads the device once per log interval: 2 more iterations at
    log_interval=2 add at most 1 read (``.item()``/``bool(tensor)``/``nonzero`` would add one
    per iteration). The loader works in a worker process, outside the counting. The CUDA path
    (encoding in the loop, autocast, NHWC) is counted the same way on the CPU, with bf16 and with
    fp16's GradScaler (ssdwb.engine.optim.SGD skips overflow on the device; stock SGD would make
    GradScaler.step() read its inf flag at every step). Gradient clipping (the demo's) keeps
    its norm on the device too, with and without the scaler."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from ssdwb.engine.loop import train

    syncing = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
               torch.ops.aten.is_nonzero.default}

    class CountSyncs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func in syncing
            return func(*args, **(kwargs or {}))

    def syncs(iterations):
        with CountSyncs() as c:
            kw = {"batch_size": 1, "epochs": 1, "eval_at": [1], **changes}
            s = train(tiny_config(tiny, f"syncs{iterations}-{'-'.join(map(str, changes.values()))}",
                                  max_iters=iterations, log_interval=2, num_workers=1, **kw))
        assert s["iterations"] == iterations
        return c.n

    assert syncs(4) - syncs(2) <= 1


def test_a_signal_at_an_epochs_last_step_resumes_at_the_epoch_end(tiny, monkeypatch):
    """A stop read at the epoch's last step checkpoints position = steps per epoch; the resumed
    pass has no step left and goes straight to the epoch's end (evaluation, checkpoint)."""
    import signal

    from ssdwb.engine import loop

    run = tiny / "runs" / "sig-last"

    class StopAtIterationFour(loop.StopSignal):
        """The flag is read before the step's line is written: 3 lines means iteration 4."""

        @property
        def received(self):
            m = run / "metrics.jsonl"
            return signal.SIGUSR1 if m.exists() and len(lines(m)) >= 3 else None

        @received.setter
        def received(self, value):
            pass

    monkeypatch.setattr(loop, "StopSignal", StopAtIterationFour)
    first = loop.train(tiny_config(tiny, "sig-last"))
    assert first["iterations"] == 4 and "signal" in first["reason"]
    monkeypatch.undo()
    resumed = loop.train(resume=run)
    assert resumed["status"] == "success" and resumed["iterations"] == 8
    ref = tiny / "runs" / "full-w0-k1"
    if not ref.exists():
        loop.train(tiny_config(tiny, ref.name))

    def values(path):
        return [{k: v for k, v in x.items() if k != "images_per_s"} for x in lines(path)]

    assert values(run / "metrics.jsonl") == values(ref / "metrics.jsonl")
