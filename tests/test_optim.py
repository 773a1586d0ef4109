"""ssdwb.engine.optim.SGD: stock SGD's numbers under GradScaler, skipped steps included, without a host
read of the inf flag."""

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ssdwb.engine.optim import SGD


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(), nn.LazyLinear(3))


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 12, 12, generator=g), torch.randint(0, 3, (4,), generator=g))
            for _ in range(n)]


def train_step(model, opt, scaler, x, y, lr, enabled=True):
    """One fp16 (or, ``enabled=False``, fp32) step through the scaler."""
    for group in opt.param_groups:
        group["lr"] = lr
    with torch.autocast("cpu", dtype=torch.float16, enabled=enabled):
        out = model(x)
    loss = nn.functional.cross_entropy(out.float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()


def run(optimizer_cls, steps, init_scale=2.0**24, enabled=True):
    model = tiny_model()
    model(torch.zeros(1, 3, 12, 12))  # materialise the lazy layer
    opt = optimizer_cls(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=3,
                                  enabled=enabled)
    history = []
    for i, (x, y) in enumerate(batches(steps)):
        train_step(model, opt, scaler, x, y, 0.05 * min(1.0, (i + 1) / 4), enabled)
        history.append((float(scaler.get_scale()) if enabled else 1.0,
                        [p.detach().clone() for p in model.parameters()]
                        + [p.grad.clone() for p in model.parameters()],  # unscaled, as stock
                        [None if opt.state[p].get("momentum_buffer") is None
                         else opt.state[p]["momentum_buffer"].clone()
                         for p in model.parameters()]))
    return history, model, opt, scaler


@pytest.mark.parametrize("enabled", [True, False], ids=["fp16-scaler", "no-scaler"])
def test_same_numbers_as_stock_sgd_with_skipped_steps(enabled):
    ours, *_ = run(SGD, 20, enabled=enabled)
    stock, *_ = run(torch.optim.SGD, 20, enabled=enabled)
    scales = [h[0] for h in ours]
    if enabled:  # the scale starts far too high: the first steps overflow and are skipped
        skipped = sum(b < a for a, b in zip([2.0**24] + scales, scales))
        assert skipped >= 2 and len(scales) - skipped >= 8, scales
    for (s1, p1, b1), (s2, p2, b2) in zip(ours, stock):
        assert s1 == s2
        for a, b in zip(p1, p2):  # exactly; a skipped step's gradients hold inf / nan
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        for a, b in zip(b1, b2):
            if b is None:  # stock has no buffer before its first taken step: ours holds zeros
                assert a is None or not a.any()
            else:
                assert torch.equal(a, b)
    assert all(torch.isfinite(p).all() for p in ours[-1][1])


def count_syncs(fn):
    syncing = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
               torch.ops.aten.nonzero.default}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func in syncing
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


@pytest.mark.parametrize("cls,reads", [(SGD, 0), (torch.optim.SGD, 1)], ids=["ours", "stock"])
def test_the_scaler_step_reads_the_device_only_with_stock_sgd(cls, reads):
    _, model, opt, scaler = run(cls, 2)
    x, y = batches(1)[0]
    with torch.autocast("cpu", dtype=torch.float16):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()

    def step():
        scaler.step(opt)
        scaler.update()

    assert count_syncs(step) == reads


def test_state_dict_resumes_the_same_and_stock_state_loads():
    full, *_ = run(SGD, 10)
    _, model, opt, scaler = run(SGD, 5)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), scaler.state_dict()))
    # continue a fresh optimizer from the saved state: same numbers as the straight run
    model2 = tiny_model()
    model2(torch.zeros(1, 3, 12, 12))
    model2.load_state_dict(saved[0])
    opt2 = SGD(model2.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    opt2.load_state_dict(saved[1])
    scaler2 = torch.amp.GradScaler("cpu", growth_interval=3)
    scaler2.load_state_dict(saved[2])
    for i, (x, y) in enumerate(batches(10)[5:], start=5):
        train_step(model2, opt2, scaler2, x, y, 0.05 * min(1.0, (i + 1) / 4))
    assert all(torch.equal(a, b) for a, b in zip(model2.parameters(), full[-1][1]))
    # a stock SGD's state (a checkpoint from before) continues as stock SGD would continue it
    ends = []
    for cls in (SGD, torch.optim.SGD):
        _, smodel, sopt, sscaler = run(torch.optim.SGD, 10)  # steps 7, 9 and 10 were taken
        assert all(sopt.state[p]["momentum_buffer"].any() for p in smodel.parameters())
        opt = cls(smodel.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
        opt.load_state_dict(sopt.state_dict())
        for x, y in batches(16)[10:]:
            train_step(smodel, opt, sscaler, x, y, 0.05)
        ends.append([p.detach().clone() for p in smodel.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*ends))


def test_hooks_run_once_per_step():
    torch.optim.SGD(tiny_model().parameters(), lr=0.1)  # a stock SGD wraps its step with hooks
    calls = []
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(lambda *a: calls.append(1))
    try:
        run(SGD, 2, enabled=False)
    finally:
        handle.remove()
    assert len(calls) == 2


def test_nesterov_is_refused_also_in_an_added_group():
    with pytest.raises(ValueError, match="nesterov"):
        SGD(tiny_model().parameters(), lr=0.1, momentum=0.9, nesterov=True)
    _, model, opt, scaler = run(SGD, 1)
    extra = nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra], "nesterov": True})
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(batches(1)[0][0]).float().sum() + extra.sum()
    scaler.scale(loss).backward()
    with pytest.raises(ValueError, match="nesterov"):
        scaler.step(opt)
