"""ssdwb: a notebook-first workbench for SSD300-ResNet34 (MLPerf ``single_stage_detector``).

The names a notebook needs, imported on first use so that ``import ssdwb`` stays cheap (torch
alone takes over a second)::
    import ssdwb
    config = ssdwb.preset("demo", epochs=2)
    summary = ssdwb.train(config)
    run = ssdwb.load_run(summary["run_dir"])

Subpackages by role, each importing only the ones below it: ``ssd`` (the maths), ``data``,
``evaluation``, ``runs`` (the run folder), ``engine`` (the loop), ``lab`` (research instruments),
``apps`` (tools on finished runs); ``config``, ``runtime``, ``files`` and ``plots`` are leaves.
"""

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    # the SSD maths
    "SSD300": "ssdwb.ssd.model", "build_model": "ssdwb.ssd.model",
    "DefaultBoxes": "ssdwb.ssd.anchors", "dboxes300_coco": "ssdwb.ssd.anchors",
    "default_boxes": "ssdwb.ssd.anchors", "BoxCoder": "ssdwb.ssd.box_coder",
    "MultiBoxLoss": "ssdwb.ssd.loss", "postprocess": "ssdwb.ssd.postprocess",
    # data
    "CocoDetection": "ssdwb.data.coco", "train_transform": "ssdwb.data.transforms",
    "val_transform": "ssdwb.data.transforms", "normalize": "ssdwb.data.transforms",
    "build_loader": "ssdwb.data.loader", "resolve_data": "ssdwb.data.layout",
    "ensure_shapes": "ssdwb.data.synthetic", "check_dataset": "ssdwb.data.check",
    "split_coco": "ssdwb.data.split", "dataset_stats": "ssdwb.lab.data_stats",
    # config, training, evaluation
    "TrainConfig": "ssdwb.config", "PRESETS": "ssdwb.config", "preset": "ssdwb.config",
    "demo_preset": "ssdwb.config", "train": "ssdwb.engine.loop",
    "evaluate": "ssdwb.evaluation.inference", "coco_eval": "ssdwb.evaluation.coco_eval",
    # run folders
    "RunFolder": "ssdwb.runs.folder", "Run": "ssdwb.runs.reader", "load_run": "ssdwb.runs.reader",
    "find_runs": "ssdwb.runs.reader", "latest_run": "ssdwb.runs.reader",
    "load_trained": "ssdwb.runs.trained", "resolve_path": "ssdwb.files",
}
_SUBPACKAGES = {"ssd", "data", "evaluation", "runs", "engine", "lab", "apps", "config", "runtime",
                "files", "plots", "cli"}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API) + list(_SUBPACKAGES))
