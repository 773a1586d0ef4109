"""ssdwb: a notebook-first workbench for SSD300-ResNet34 (MLPerf ``single_stage_detector``).

Submodules are imported lazily so that ``import ssdwb`` stays cheap (torch alone takes ~1.5 s):
``ssdwb.anchors``, ``ssdwb.box_coder``, ``ssdwb.loss``, ``ssdwb.detect``, ``ssdwb.model`` ...
load on first attribute access.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "anchors", "box_coder", "loss", "detect", "model", "data", "config", "distributed",
    "train", "evaluate", "mlperf", "runtime", "cli", "plots", "report", "runs", "notebooks",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
