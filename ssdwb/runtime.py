"""Process-level settings: the CPU allocator, and the precision a run uses (``resolve_amp``).

``tune_cpu_allocator``: PyTorch's CPU tensors come from glibc ``malloc``. Blocks above glibc's
mmap threshold (128 KiB at start, adapting up to 32 MiB) are fresh ``mmap`` pages every time, so
every large temporary (an 8732-prior IoU matrix, a conv activation) pays page faults on first
touch. Raising the mmap and trim thresholds keeps freed memory in the heap for reuse, which
makes the encoder's batch IoU several times faster on the CPU (measured: docs/performance.md;
``bench/bench_core.py`` applies it to both sides).
The same effect as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` in the environment, or
preloading jemalloc/tcmalloc, as Intel's PyTorch CPU tuning guides suggest. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # lazy: config imports this module: `import ssdwb.config` stays free of torch
    import torch

# "0" turns train()'s tqdm bars off: ssdwb.apps.notebooks sets it for the kernels papermill
# starts, where a saved widget would read "0%" in the report; the per-epoch lines remain.
PROGRESS_BARS_ENV = "SSDWB_PROGRESS_BARS"

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_done = False


def tune_cpu_allocator(threshold: int = 1 << 30) -> bool:
    """Keeps blocks below ``threshold`` bytes in the heap; returns whether glibc accepted it."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(opt, val) == 1 for opt, val in (
        (_M_MMAP_THRESHOLD, min(threshold, 1 << 30)),
        (_M_TRIM_THRESHOLD, min(threshold, 1 << 30)),
        (_M_TOP_PAD, 64 << 20),
    ))
    _done = ok
    return ok


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic instructions: AVX512-BF16 or AMX-BF16 on x86, the
    BF16 extension (or SVE-BF16) on ARM.

    Read from ``torch.cpu.get_capabilities()`` (public, cpuinfo's feature flags). Not from
    ``torch.backends.cpu.get_cpu_capability()``: that is ATen's kernel dispatch level ("AVX2",
    "AVX512", "DEFAULT"), which says nothing about bf16. Not from
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` either: private, and oneDNN counts plain
    AVX512 (Skylake, Cascade Lake) as bf16 support because it emulates bf16 there, where bf16
    autocast gains nothing over fp32 - the case "auto" must leave off."""
    # lazy: config imports this module: `import ssdwb.config` stays free of torch
    import torch

    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        return False
    return any(bool(caps.get(flag)) for flag in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX-BF16 tiles (Intel Sapphire Rapids and newer): oneDNN then runs
    bf16 convolutions on the matrix unit, and the demo trains about twice as fast as with bf16
    in the vector units alone: hence a preset per class (the speeds measured on each kind of
    host: docs/demo.md). Same ``torch.cpu.get_capabilities()`` flags as
    ``cpu_has_native_bf16``."""
    # lazy: config imports this module: `import ssdwb.config` stays free of torch
    import torch

    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        return False
    return bool(caps.get("amx_bf16")) and bool(caps.get("amx_tile", True))


def cpu_class() -> str:
    """The CPU's class for the demo presets: "amx" (AMX-BF16), "bf16" (bf16 in the vector units:
    AVX512-BF16, ARM BF16), or "fp32" (no native bf16: autocast would only emulate it)."""
    if not cpu_has_native_bf16():
        return "fp32"
    return "amx" if cpu_has_amx_bf16() else "bf16"


def cuda_has_bf16(device: torch.device | str = "cuda") -> bool:
    """Whether this GPU computes bf16 natively (compute capability 8.0+, or ROCm). Asks
    ``torch.cuda.is_bf16_supported(including_emulation=False)``: its default (True) also says yes
    for a V100, where bf16 tensors exist but run emulated."""
    # lazy: config imports this module: `import ssdwb.config` stays free of torch
    import torch

    device = torch.device(device)
    if device.index is None:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    with torch.cuda.device(device.index):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_amp(amp: str, device: torch.device | str) -> str:
    """The precision a run uses: ``"off"``, ``"fp16"`` or ``"bf16"``.

    ``"auto"``: fp16 (with a GradScaler) on CUDA, bf16 on a CPU with native bf16, fp32 elsewhere.
    An explicit ``"bf16"`` on a GPU without bf16 (before compute capability 8.0, e.g. the
    C4140's V100) is refused at start rather than emulated slowly."""
    # lazy: config imports this module: `import ssdwb.config` stays free of torch
    import torch

    if amp not in ("off", "fp16", "bf16", "auto"):
        raise ValueError(f"amp must be one of off, fp16, bf16, auto; not {amp!r}")
    device = torch.device(device)
    if amp == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "off"
    if amp == "bf16" and device.type == "cuda" and not cuda_has_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"amp=bf16 needs a GPU with bf16 (compute capability 8.0+); this is "
                         f"{name}: use amp=fp16")
    return amp
