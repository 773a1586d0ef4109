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
``GradScaler`` bit for bit, skipped steps included (parameters, momentum buffers and the
unscaled ``.grad``; tests/test_optim.py on the CPU; on CUDA this rests on the foreach and
per-tensor kernels rounding alike, unchecked without a GPU). The arithmetic is multi-tensor
(``torch._foreach_*``, as stock SGD's CUDA path); the selects are one ``torch.where`` per tensor
(there is no foreach ``where``): about 4 small kernels per parameter against stock's handful of
multi-tensor ones, the price of never waiting for the device. Supported: momentum, dampening,
weight decay (the reference's SGD); not nesterov or maximize. A checkpoint whose every step was
skipped holds a zero buffer that stock SGD would take as started (only matters with dampening).
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
            raise ValueError("ssdwb.engine.optim.SGD: nesterov and maximize are not supported")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, foreach=foreach)

    @torch.no_grad()
    def step(self, closure=None):
        found_inf = getattr(self, "found_inf", None)
        if found_inf is None:  # no GradScaler (fp32, bf16) or a disabled one: stock SGD
            return _stock_step(self, closure)
        if any(g.get("nesterov") or g.get("maximize") for g in self.param_groups):
            raise ValueError("ssdwb.engine.optim.SGD: nesterov and maximize are not supported")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)  # None: the user called unscale_ already
        for group in self.param_groups:
            by_device: dict[torch.device, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_device.setdefault(p.grad.device, []).append(p)
            for device, params in by_device.items():
                self._update(group, params, (found_inf.to(device, non_blocking=True) > 0),
                             None if grad_scale is None else grad_scale.to(device))
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], skip: torch.Tensor,
                grad_scale: torch.Tensor | None) -> None:
        """One group's parameters on one device: multi-tensor arithmetic as stock SGD's foreach
        path, then per tensor a select between the new and the old values."""
        momentum, dampening = group["momentum"], group["dampening"]
        lr, weight_decay = group["lr"], group["weight_decay"]
        grads = [p.grad for p in params]
        if any(g.dtype == torch.float16 for g in grads):
            raise ValueError("Attempting to unscale FP16 gradients.")  # as GradScaler.unscale_
        if grad_scale is not None:  # in place, as GradScaler.unscale_ leaves them
            torch._foreach_mul_(grads, grad_scale.double().reciprocal().float())
        if weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        if momentum != 0:
            bufs, started = [], []
            for p in params:
                state = self.state[p]
                if "started" not in state:  # before the first step, taken or skipped
                    had = state.get("momentum_buffer")  # e.g. from a stock-SGD checkpoint
                    # 0/1 in the parameter's dtype: load_state_dict casts state to it
                    state["started"] = torch.full((), float(had is not None), dtype=p.dtype,
                                                  device=p.device)
                    state["momentum_buffer"] = torch.zeros_like(p) if had is None else had
                bufs.append(state["momentum_buffer"])
                started.append(state["started"])
            moved = torch._foreach_mul(bufs, momentum)  # stock: mul_ then add_
            torch._foreach_add_(moved, grads, alpha=1 - dampening)
            for buf, new, grad, on in zip(bufs, moved, grads, started):
                # stock's first step clones the gradient: before it, `new` is not the buffer
                torch.where(skip, buf, torch.where(on > 0, new, grad), out=buf)
            taken = (~skip).to(started[0].dtype)  # a list of it: a Tensor scalar would be read
            torch._foreach_maximum_(started, [taken] * len(started))
            grads = bufs
        updated = torch._foreach_add(params, grads, alpha=-lr)
        for p, new in zip(params, updated):
            torch.where(skip, p, new, out=p)


def _stock_step(optimizer: SGD, closure):
    """``torch.optim.SGD.step`` without its optimizer-hook wrapper (present once a stock SGD
    was made in this process): the subclass's own wrapper already ran the hooks."""
    step = torch.optim.SGD.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    return step(optimizer, closure)
