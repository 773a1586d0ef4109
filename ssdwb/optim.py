"""SGD that takes fp16's overflow skip on the device, so a GradScaler step never waits for it.

``torch.optim.SGD`` under ``GradScaler.step`` makes the host read the inf flag at every step
(``found_inf.item()`` decides whether to call ``step`` at all): with fp16 that was the one host
sync per iteration left in the training loop (issue 16). GradScaler hands the flag to an
optimizer that declares ``_step_supports_amp_scaling`` instead (``optimizer.found_inf`` and
``optimizer.grad_scale``, tensors on the device), which is what this one does: it unscales the
gradients itself (the same multiply by ``1 / scale`` as ``GradScaler.unscale_``) and selects,
element by element with ``torch.where``, between the updated and the old parameters and
momentum buffers.

Why not the fused SGD (``fused=True``), which does the same in one kernel: in torch 2.14 it
leaves an uninitialised momentum buffer when the first steps are skipped for overflow, which
they are at GradScaler's initial scale (seen here on the CPU: a non-finite loss 6 steps later).
This class keeps stock SGD's first-step rule (the buffer starts as the first *taken* step's
gradient) with a per-parameter ``started`` flag on the device (0 or 1 in the parameter's dtype,
as ``load_state_dict`` casts optimizer state to it).

Without a scaler (fp32, bf16), or when GradScaler is disabled, ``step`` is
``torch.optim.SGD.step`` itself. With one, the numbers are those of stock SGD under
``GradScaler`` bit for bit, skipped steps included (tests/test_optim.py). Supported: momentum,
dampening, weight decay (the reference's SGD); not nesterov or maximize.
"""

from __future__ import annotations

import torch

__all__ = ["SGD"]


class SGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose GradScaler steps skip overflow on the device (module docstring).

    Args: those of ``torch.optim.SGD`` (``nesterov`` and ``maximize`` must stay False; ``fused``
    is not taken).
    """

    _step_supports_amp_scaling = True  # GradScaler then passes found_inf / grad_scale

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
                 foreach: bool | None = None):
        if nesterov or maximize:
            raise ValueError("ssdwb.optim.SGD: nesterov and maximize are not supported")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, foreach=foreach)

    @torch.no_grad()
    def step(self, closure=None):
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:  # no GradScaler (fp32, bf16) or a disabled one: stock SGD
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        skip = found_inf > 0
        inv_scale = None if grad_scale is None else grad_scale.double().reciprocal().float()
        for group in self.param_groups:
            momentum, dampening = group["momentum"], group["dampening"]
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if inv_scale is None else p.grad * inv_scale  # as unscale_
                if weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                if momentum != 0:
                    state = self.state[p]
                    if "started" not in state:  # before the first step, taken or skipped
                        had = state.get("momentum_buffer")  # e.g. from a stock-SGD checkpoint
                        # 0/1 in the parameter's dtype: load_state_dict casts state to it
                        state["started"] = torch.full((), float(had is not None), dtype=p.dtype,
                                                      device=p.device)
                        state["momentum_buffer"] = (torch.zeros_like(p) if had is None else had)
                    buf, started = state["momentum_buffer"], state["started"]
                    on = started > 0
                    moved = torch.where(on, buf * momentum, buf)  # stock: mul_ then add_
                    moved = torch.where(on, moved.add(grad, alpha=1 - dampening), grad)
                    buf.copy_(torch.where(skip, buf, moved))
                    started.copy_(torch.where(skip, started, torch.ones_like(started)))
                    grad = buf
                p.copy_(torch.where(skip, p, p.add(grad, alpha=-lr)))
        return loss
