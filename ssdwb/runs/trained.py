"""A trained checkpoint, rebuilt: the one way eval, predict, export and attribution get a model,
its default boxes, its class names and its val data back from a ``checkpoint.pt``.

The model is rebuilt from the checkpoint's own config (``model_width``, ``image_size``,
``resize``) with the number of classes its weights hold, on the default boxes it was trained
with (the checkpoint's anchor design; ``dboxes300_coco`` for older checkpoints).

Class names and COCO category ids, in this order: a ``classes`` list saved in the checkpoint,
the categories of the run's val (or train) annotation file when it is still at the config's
``data_dir`` (a dataset folder or file) and has as many classes as the weights, COCO 2017's 80
categories for an 81-class model, and otherwise ``class N`` with category id N.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from ssdwb.config import TrainConfig
from ssdwb.data import CocoDetection, resolve_data, val_transform
from ssdwb.data.check import category_difference
from ssdwb.data.coco import read_coco_json
from ssdwb.files import resolve_path
from ssdwb.runs.checkpoint import load_checkpoint
from ssdwb.ssd.anchors import DefaultBoxes, default_boxes
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.model import build_model

log = logging.getLogger(__name__)

__all__ = ["Trained", "load_trained", "model_from_checkpoint", "class_info"]


@dataclass
class Trained:
    """A checkpoint's model, ready for inference.

    Attributes:
        model: ``SSD300`` in eval mode, on ``device``.
        config: the run's ``TrainConfig``.
        coder: ``BoxCoder`` on the default boxes it was trained with.
        label_names: label (1..C-1) -> class name.
        label_to_cat: label -> COCO category id.
        classes_from: where the names came from (for messages).
        device: where ``model`` is.
        epoch: the epochs the checkpoint had finished.
        path: the checkpoint file.
    """

    model: torch.nn.Module
    config: TrainConfig
    coder: BoxCoder
    label_names: dict[int, str]
    label_to_cat: dict[int, int]
    classes_from: str
    device: torch.device
    epoch: int
    path: Path

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def dboxes(self) -> DefaultBoxes:
        return self.coder.dboxes

    def val_dataset(self, data_dir: str | os.PathLike | None = None) -> CocoDetection:
        """The val split of ``data_dir`` (a dataset folder or file; default: the run's) through
        the run's val transform; refused when its classes are not the model's (their number,
        or their ids and names when the checkpoint lists them)."""
        paths = resolve_data(data_dir or self.config.data_dir)
        ds = CocoDetection(paths["val_images"], paths["val_ann"],
                           transform=val_transform(self.config.image_size, self.config.resize))
        if ds.num_classes != self.num_classes:
            raise ValueError(f"{paths['val_ann']}: {ds.num_classes - 1} categories, but "
                             f"{self.path} was trained on {self.num_classes - 1}")
        if self.classes_from == "the checkpoint":
            trained = [(self.label_to_cat[k], self.label_names[k]) for k in sorted(self.label_names)]
            data = [(ds.label_to_cat[k], ds.label_names[k]) for k in sorted(ds.label_names)]
            diff = category_difference(trained, data)
            if diff:
                raise ValueError(f"{paths['val_ann']}: not the categories {self.path} was trained "
                                 f"on ('train' is the checkpoint's): " + "; ".join(diff))
        return ds

    def with_layout(self) -> torch.nn.Module:
        """The model in the run's memory layout (NHWC with ``channels_last``), as its
        evaluations ran it."""
        if self.config.channels_last:
            return self.model.to(memory_format=torch.channels_last)
        return self.model


def _num_classes(state: dict, path, types_at_level0: int) -> int:
    """Classes (background included) of an ``SSD300`` state dict: the first conf head has
    ``types_at_level0 * C`` output channels (4 * C for the reference's default boxes)."""
    weight = state.get("conf.0.weight")
    if weight is None or weight.shape[0] % types_at_level0:
        raise ValueError(f"{path}: the model weights hold no SSD300 class head (conf.0.weight) "
                         f"for {types_at_level0} box types")
    return weight.shape[0] // types_at_level0


def model_from_checkpoint(ckpt: dict, path, num_classes: int | None = None):
    """``(model, config, dboxes)`` of a loaded checkpoint: its anchor design (the reference's
    for checkpoints written before designs existed), the ``SSD300`` built for it with the
    weights loaded (on the CPU, train mode) and its ``TrainConfig``.

    Args:
        ckpt: ``ssdwb.runs.checkpoint.load_checkpoint(path)``.
        num_classes: default: read from the weights.
    """

    config = TrainConfig.from_dict(ckpt["config"], str(path))
    dboxes = default_boxes(ckpt.get("anchors"), f"{path} (anchors)")
    if num_classes is None:
        num_classes = _num_classes(ckpt["model"], path, dboxes.num_defaults_per_cell[0])
    model = build_model(num_classes, dboxes, config.model_width, source=f"{path} (anchors)")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: the weights do not fit SSD300(width={config.model_width}, "
                         f"num_classes={num_classes}, box types {dboxes.num_defaults_per_cell}): "
                         f"{str(e).splitlines()[0]}") from e
    return model, config, dboxes


def _coco2017() -> tuple[dict[int, str], dict[int, int]]:
    """COCO 2017's 80 categories in id order (the annotation files' order): torchvision ships
    the names indexed by category id, with "N/A" at the 11 unused ids."""

    names = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]
    ids = [i for i, n in enumerate(names) if i > 0 and n != "N/A"]
    return ({k + 1: names[c] for k, c in enumerate(ids)}, {k + 1: c for k, c in enumerate(ids)})


def class_info(checkpoint: dict, config, num_classes: int
               ) -> tuple[dict[int, str], dict[int, int], str]:
    """``(label -> name, label -> category id, source)`` for a checkpoint (module docstring)."""
    want = num_classes - 1
    saved = checkpoint.get("classes")
    if isinstance(saved, (list, tuple)) and len(saved) == want:
        return ({i + 1: str(c["name"]) for i, c in enumerate(saved)},
                {i + 1: int(c["id"]) for i, c in enumerate(saved)}, "the checkpoint")
    try:
        paths = resolve_data(resolve_path(config.data_dir))
        for key in ("val_ann", "train_ann"):
            if paths[key].exists():
                data, _ = read_coco_json(paths[key])
                cats = data["categories"]
                if len(cats) == want:  # labels follow the file's category order (CocoDetection)
                    return ({i + 1: str(c["name"]) for i, c in enumerate(cats)},
                            {i + 1: int(c["id"]) for i, c in enumerate(cats)}, str(paths[key]))
    except (FileNotFoundError, ValueError) as e:
        log.info("class names: the run's dataset is not usable here (%s)", e)
    if want == 80:
        names, cats = _coco2017()
        return names, cats, "COCO 2017's 80 categories"
    return ({i: f"class {i}" for i in range(1, num_classes)},
            {i: i for i in range(1, num_classes)}, "numbered (no class names found)")


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> Trained:
    """A checkpoint (``load_checkpoint``: weights only, safe) -> :class:`Trained`, the model in
    eval mode on ``device`` (``"auto"``: CUDA when there is one)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ckpt = load_checkpoint(path)
    model, config, dboxes = model_from_checkpoint(ckpt, path)
    device = torch.device(device)
    model.eval().to(device)
    names, cats, source = class_info(ckpt, config, model.num_classes)
    return Trained(model, config, BoxCoder(dboxes), names, cats, source, device,
                   int(ckpt.get("epoch", 0)), Path(path))
