"""A checkpoint to ONNX: ``ssdwb export --checkpoint C --onnx model.onnx [--decoded]``.

The graph takes ``images`` (float32 [B, 3, 300, 300], RGB, /255 then normalised with
``ssdwb.data.transforms.MEAN``/``STD``, what ``normalize`` gives) with a dynamic batch B and
returns the network's raw outputs

* ``ploc`` (float32 [B, 4, P]): box offsets against the P default boxes (8732 for the
  reference's design),
* ``plabel`` (float32 [B, C, P]): class logits, class 0 = background;

and with ``decoded=True`` also what ``postprocess`` computes before its score filter and NMS:

* ``boxes`` (float32 [B, P, 4]): ``BoxCoder.decode(ploc)``, (x1, y1, x2, y2) fractions of
  the image, unclipped,
* ``scores`` (float32 [B, C, P]): ``softmax(plabel, dim=1)`` (background included).

Exporter: torch's ``torch.export``-based one (``torch.onnx.export(dynamo=True)``, the default
since torch 2.9; it needs ``onnxscript``), opset 18. The legacy TorchScript exporter also works
with this model in torch 2.14, but is deprecated. The file carries its own description in its
metadata (``ssdwb`` key, JSON): image size, mean and std, the class names and COCO category ids
by label, the outputs, the checkpoint it came from, and the anchor design (``default_boxes``:
``DefaultBoxes.to_dict()``, which ``ssdwb.ssd.anchors.default_boxes`` rebuilds).

:func:`check_onnx` runs the file with onnxruntime (CPU) next to torch; ``ssdwb export`` calls it
and prints the largest difference. Running the file elsewhere (docs/using-a-model.md): resize to
300x300 (bilinear), scale to [0, 1], normalise, run, then ``postprocess(ploc, plabel,
default_boxes(meta["default_boxes"]))`` (or your own NMS on ``boxes``/``scores``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from ssdwb.data.transforms import MEAN, STD
from ssdwb.files import atomic_write
from ssdwb.runs.trained import load_trained

__all__ = ["OnnxModel", "export_onnx", "check_onnx", "onnx_metadata", "OPSET"]

OPSET = 18


class OnnxModel(torch.nn.Module):
    """The exported graph: ``SSD300`` and, with a ``coder``, the decoded boxes and softmax scores.

    Forward: images (Tensor[B, 3, S, S]) -> ``(ploc [B, 4, P], plabel [B, C, P])`` or
    ``(ploc, plabel, boxes [B, P, 4], scores [B, C, P])``.
    """

    def __init__(self, model: torch.nn.Module, coder=None):
        super().__init__()
        self.model = model
        self.coder = coder
        if coder is not None:
            # Builds the coder's constants on the CPU now: torch.export cannot trace how they
            # are made (data-dependent checks), only their use in decode.
            coder.decode(torch.zeros(1, 4, coder.num_priors))

    def forward(self, images: torch.Tensor):
        ploc, plabel = self.model(images)
        if self.coder is None:
            return ploc, plabel
        return ploc, plabel, self.coder.decode(ploc), torch.softmax(plabel.float(), dim=1)

    @property
    def output_names(self) -> list[str]:
        return ["ploc", "plabel"] + (["boxes", "scores"] if self.coder is not None else [])


def onnx_metadata(trained, checkpoint: str | os.PathLike, outputs: list[str]) -> dict:
    return {"format": 1, "checkpoint": str(checkpoint), "image_size": trained.config.image_size,
            "mean": list(MEAN), "std": list(STD), "num_classes": trained.num_classes,
            "label_names": {str(k): v for k, v in trained.label_names.items()},
            "label_to_cat": {str(k): v for k, v in trained.label_to_cat.items()},
            "classes_from": trained.classes_from, "outputs": outputs,
            "default_boxes": trained.coder.dboxes.to_dict()}


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, decoded: bool = False,
                example_batch: int = 2, quiet: bool = True) -> Path:
    """Writes the ONNX file of a checkpoint (atomically) and returns its path.

    Args:
        checkpoint: an ssdwb ``checkpoint.pt`` (loaded weights only).
        out: the ``.onnx`` file.
        decoded: also output ``boxes`` and ``scores`` (module docstring).
        example_batch: batch of the example input the graph is traced with; B stays dynamic.
        quiet: keep the exporter's progress lines off stdout.
    """
    # lazy: only `ssdwb export` needs onnx (seconds to import)
    import onnx


    trained = load_trained(checkpoint, "cpu")
    wrapper = OnnxModel(trained.model, trained.coder if decoded else None).eval()
    size = trained.config.image_size
    example = torch.zeros(example_batch, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    sink = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    try:
        with sink, torch.no_grad():
            program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=OPSET,
                                        input_names=["images"],
                                        output_names=wrapper.output_names,
                                        dynamic_shapes={"images": {0: batch}},
                                        verbose=False)
    except ImportError as e:  # onnxscript missing
        raise RuntimeError(f"ONNX export needs onnxscript and onnx ({e}); "
                           f"`pip install onnxscript onnx`") from e
    proto = program.model_proto
    meta = onnx_metadata(trained, checkpoint, wrapper.output_names)
    proto.metadata_props.add(key="ssdwb", value=json.dumps(meta))
    onnx.checker.check_model(proto)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = proto.SerializeToString()
    atomic_write(out, lambda f: f.write(data))
    return out


def check_onnx(onnx_path: str | os.PathLike, checkpoint: str | os.PathLike,
               images: torch.Tensor | None = None) -> dict[str, float]:
    """Runs ``onnx_path`` in onnxruntime (CPU) and the checkpoint in torch on the same
    normalised ``images`` (Tensor[B, 3, S, S]; default: 3 seeded random images) and returns the
    largest absolute difference per output."""
    # lazy: only the ONNX check needs onnxruntime (seconds to import)
    import onnxruntime as ort


    trained = load_trained(checkpoint, "cpu")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    decoded = "boxes" in names
    if images is None:
        size = trained.config.image_size
        images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = OnnxModel(trained.model, trained.coder if decoded else None)(images)
    got = session.run(names, {"images": images.numpy()})
    return {n: float(np.abs(g - r.numpy()).max()) for n, g, r in zip(names, got, ref)}
