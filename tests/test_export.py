"""ssdwb export: the ONNX file runs in onnxruntime (CPU) with any batch size, matches torch within
1e-4 on real-looking inputs (the synthetic val images, normalised as evaluation does), and its
outputs through ``postprocess`` give torch's detections."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from test_predict import make_checkpoint

from ssdwb.data.transforms import normalize, val_transform


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ssdwb.apps.export import export_onnx
    from ssdwb.data.synthetic import make_shapes_coco

    root = tmp_path_factory.mktemp("export")
    make_shapes_coco(root / "data", num_train=4, num_val=4, seed=2)
    ckpt = make_checkpoint(root / "checkpoint.pt", root / "data")
    path = export_onnx(ckpt, root / "sub" / "model.onnx", decoded=True)
    files = sorted((root / "data" / "val").iterdir())
    images = torch.stack([val_transform(300)(Image.open(f).convert("RGB"), {})[0] for f in files])
    return root, ckpt, path, normalize(images)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_onnxruntime_matches_torch_for_any_batch(exported, batch):
    from ssdwb.apps.export import OnnxModel
    from ssdwb.runs.trained import load_trained

    _, ckpt, path, images = exported
    trained = load_trained(ckpt)
    x = images[:batch]
    with torch.no_grad():
        ref = OnnxModel(trained.model, trained.coder)(x)
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    assert names == ["ploc", "plabel", "boxes", "scores"]
    got = session.run(names, {"images": x.numpy()})
    for name, g, r in zip(names, got, ref):
        assert g.shape == tuple(r.shape), name
        np.testing.assert_allclose(g, r.numpy(), rtol=0, atol=1e-4, err_msg=name)
    # the decoded outputs are what postprocess computes before its score filter
    np.testing.assert_allclose(got[2], trained.coder.decode(ref[0]).numpy(), atol=1e-4)
    np.testing.assert_allclose(got[3], torch.softmax(ref[1], 1).numpy(), atol=1e-5)


def test_onnxruntime_outputs_through_postprocess_give_the_same_detections(exported):
    from ssdwb.runs.trained import load_trained
    from ssdwb.ssd.postprocess import postprocess

    _, ckpt, path, images = exported
    trained = load_trained(ckpt)
    with torch.no_grad():
        ploc, plabel = trained.model(images)
    ort_ploc, ort_plabel = _session(path).run(["ploc", "plabel"], {"images": images.numpy()})
    for threshold in (0.05, 0.3):
        ref = postprocess(ploc, plabel, trained.coder, score_threshold=threshold)
        got = postprocess(torch.from_numpy(ort_ploc), torch.from_numpy(ort_plabel),
                          trained.coder, score_threshold=threshold)
        assert sum(len(d[2]) for d in ref) > 0
        for (rb, rl, rs), (gb, gl, gs) in zip(ref, got):
            assert torch.equal(rl, gl)  # same detections, same order
            torch.testing.assert_close(gb, rb, rtol=0, atol=1e-4)
            torch.testing.assert_close(gs, rs, rtol=0, atol=1e-5)


def test_file_describes_itself_and_has_a_dynamic_batch(exported):
    _, ckpt, path, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "images" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [
        3, 300, 300]
    meta = json.loads({p.key: p.value for p in model.metadata_props}["ssdwb"])
    assert meta["image_size"] == 300 and meta["num_classes"] == 13
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["outputs"][:2] == ["ploc", "plabel"]
    assert meta["label_names"]["1"] == "red square" and meta["label_to_cat"]["1"] == 1
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, nothing left over


def test_cli_exports_the_raw_outputs_and_checks_them(exported, tmp_path, capsys):
    from ssdwb.cli import main

    _, ckpt, _, images = exported
    out = tmp_path / "raw.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime (CPU) vs torch" in text and "ploc" in text and "boxes" not in text
    assert [o.name for o in _session(out).get_outputs()] == ["ploc", "plabel"]
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--onnx",
                 str(tmp_path / "x.onnx")]) == 1
    assert "none.pt: no checkpoint there" in capsys.readouterr().err
