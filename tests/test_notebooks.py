"""The notebooks' building blocks: coverage and augmentation statistics, run folders, reports,
papermill parameters and signal forwarding. The notebooks themselves run under nbval
(``make test`` prepares them with tests/nbval_prepare.py)."""

import base64
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ssdwb.apps.notebooks import NOTEBOOKS, notebook_path
from ssdwb.apps.report import render_report
from ssdwb.config import PRESETS, TrainConfig
from ssdwb.runs.reader import config_diff, find_runs, latest_run, load_run, target_of, time_to_target
from ssdwb.ssd.anchors import DefaultBoxes, coverage_summary

ROOT = Path(__file__).resolve().parent.parent


# --- anchors / augmentation statistics ----------------------------------------------------------
def test_coverage_summary_by_size_and_level():
    # One level of 2x2 cells, one square type of side 0.5: priors are the four quadrants.
    d = DefaultBoxes(100, [2], [50], [50, 50], [[]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5],  # exactly a prior: covered
                       [0.5, 0.5, 1.0, 1.0],  # exactly a prior: covered
                       [0.0, 0.0, 0.1, 0.1]])  # IoU 0.04 with the best prior: not covered
    areas = torch.tensor([50.0 * 50, 200.0**2, 10.0])  # medium, large, small
    res = coverage_summary(d, gt, areas)
    assert res["count"] == {"all": 3, "small": 1, "medium": 1, "large": 1}
    assert res["share"]["all"] == pytest.approx(2 / 3)
    assert res["share"]["small"] == 0.0 and res["share"]["large"] == 1.0
    assert res["by_level"].tolist() == [3]
    assert res["best_iou"][2] == pytest.approx(0.04)


def test_coverage_summary_empty_bin_is_nan(dboxes):
    res = coverage_summary(dboxes, torch.tensor([[0.1, 0.1, 0.6, 0.6]]), torch.tensor([1e5]))
    assert math.isnan(res["share"]["small"]) and res["count"]["small"] == 0
    assert res["share"]["large"] == 1.0


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    return make_shapes_coco(tmp_path_factory.mktemp("shapes"), num_train=6, num_val=4, seed=3)


def test_all_boxes_areas_match_annotations(shapes):
    from ssdwb.data import CocoDetection

    ds = CocoDetection(shapes / "val", shapes / "annotations" / "instances_val.json")
    gt = ds.all_boxes()
    anns = json.loads((shapes / "annotations" / "instances_val.json").read_text())["annotations"]
    assert len(gt["boxes"]) == len(anns)
    imgs = {i["id"]: i for i in json.loads(
        (shapes / "annotations" / "instances_val.json").read_text())["images"]}
    expected = []  # the box clipped to the image, in pixels
    for a in anns:
        x, y, w, h = a["bbox"]
        im = imgs[a["image_id"]]
        expected.append((min(x + w, im["width"]) - x) * (min(y + h, im["height"]) - y))
    assert sorted(gt["areas"].tolist()) == pytest.approx(sorted(expected), rel=1e-5)
    assert gt["index"].max() == len(ds) - 1


def test_augmentation_stats(shapes):
    from ssdwb.data import CocoDetection
    from ssdwb.data.transforms import CROP_OPTIONS, augmentation_stats

    ds = CocoDetection(shapes / "train", shapes / "annotations" / "instances_train.json")
    a = augmentation_stats(ds, num_draws=30, seed=1)
    b = augmentation_stats(ds, num_draws=30, seed=1)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # seeded
    assert len(a["option"]) == 30 and a["option"].max() < len(CROP_OPTIONS)
    assert (a["kept"] >= 1).all()
    assert len(a["size_after"]) == a["kept"].sum()
    assert len(a["size_before"]) == sum(len(ds.raw(i % len(ds))[1]["labels"]) for i in range(30))
    # "whole image" draws keep every box at its size
    assert ((a["option"] == 0) <= (a["dropped"] == 0)).all()


# --- per-class COCO details -----------------------------------------------------------------------
def test_coco_eval_details_matches_summary(shapes):
    from ssdwb.data.coco import load_coco_json
    from ssdwb.evaluation.coco_eval import coco_eval, coco_eval_details

    gt = load_coco_json(shapes / "annotations" / "instances_val.json")
    rng = np.random.default_rng(0)
    results = []
    for a in gt.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        jit = rng.normal(0, 2, 4)
        results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": [x + jit[0], y + jit[1], w + jit[2], h + jit[3]],
                        "score": float(rng.uniform(0.2, 1))})
    d = coco_eval_details(gt, results)
    assert d["stats"] == pytest.approx(coco_eval(gt, results, "pycocotools"), abs=1e-12)
    assert d["precision"].shape[:3] == (10, 101, len(d["cat_ids"]))
    present = {a["category_id"] for a in gt.dataset["annotations"]}
    for cid, name in zip(d["cat_ids"], d["class_names"]):
        assert math.isnan(d["per_class_ap"][name]) == (cid not in present)
    # the summary mAP is the mean over classes that have GT
    vals = [v for v in d["per_class_ap"].values() if not math.isnan(v)]
    assert d["stats"]["mAP"] == pytest.approx(np.mean(vals), abs=1e-9)
    empty = coco_eval_details(gt, [])
    assert empty["stats"]["mAP"] == 0.0
    for cid, name in zip(empty["cat_ids"], empty["class_names"]):  # same convention as above
        ap = empty["per_class_ap"][name]
        assert math.isnan(ap) if cid not in present else ap == 0.0


# --- run folders ------------------------------------------------------------------------------
def _fake_run(path: Path, seed: int, maps: list[float], torn: bool = False) -> Path:
    path.mkdir(parents=True)
    TrainConfig(seed=seed, run_id=path.name).save(path / "config.json")
    lines = [json.dumps({"iteration": 10 * (i + 1), "epoch": i + 1, "loss": 5.0 - i, "lr": 0.1,
                         "images_per_s": 9.0}) for i in range(len(maps))]
    lines += [json.dumps({"eval": True, "epoch": i + 1, "iteration": 10 * (i + 1), "mAP": m})
              for i, m in enumerate(maps)]
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"iteration": 99, "lo'
    (path / "metrics.jsonl").write_text(text)
    (path / "summary.json").write_text(json.dumps(
        {"status": "success", "iterations": 10 * len(maps), "time_to_train_s": 100.0}))
    return path


def test_runs_load_compare_and_time_to_target(tmp_path):
    a = _fake_run(tmp_path / "a", 1, [0.1, 0.25, 0.3], torn=True)
    time.sleep(0.01)
    b = _fake_run(tmp_path / "b", 2, [0.05, 0.1])
    ra = load_run(a)
    assert len(ra.steps) == 3 and [e["mAP"] for e in ra.evals] == [0.1, 0.25, 0.3]
    runs = find_runs(str(tmp_path / "*"))
    assert [r.name for r in runs] == ["a", "b"]
    assert config_diff(runs) == {"seed": [1, 2]}
    assert time_to_target(ra) == pytest.approx(100.0 * 20 / 30)  # first eval >= 0.23 at it 20
    assert time_to_target(runs[1]) is None
    assert target_of(ra) == 0.23
    ra.config["target_map"] = 1.0  # a run that never stops early (the demo): MLPerf's target
    assert target_of(ra) == 0.23 and time_to_target(ra) == pytest.approx(100.0 * 20 / 30)
    ra.config["target_map"] = 0.05
    assert time_to_target(ra) == pytest.approx(100.0 * 10 / 30)
    assert latest_run(tmp_path).name == "b"
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path)
    (b / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="summary.json"):
        load_run(b)


def test_ensure_shapes_makes_the_demo_profile_once_under_concurrency(tmp_path):
    """Two ranks (or notebooks) asking for the demo set at once get one copy, in the demo profile;
    an existing dataset is left as it is."""
    from concurrent.futures import ProcessPoolExecutor

    from PIL import Image

    from ssdwb.data.synthetic import DEMO_SHAPES, ensure_shapes

    target = tmp_path / "shapes"
    with ProcessPoolExecutor(2) as pool:
        outs = list(pool.map(ensure_shapes, [target] * 2, [6] * 2, [3] * 2))
    assert outs == [target, target]
    ann = json.loads((target / "annotations" / "instances_train.json").read_text())
    assert len(ann["images"]) == 6 and len(list((target / "train").iterdir())) == 6
    assert {(i["width"], i["height"]) for i in ann["images"]} == {DEMO_SHAPES["size"]}
    assert Image.open(next((target / "val").iterdir())).size == DEMO_SHAPES["size"]
    sides = [min(a["bbox"][2:]) for a in ann["annotations"]]
    assert min(sides) >= DEMO_SHAPES["min_side"] * 0.7 - 1  # aspect jitter is 0.7-1.3
    mtime = (target / "annotations" / "instances_val.json").stat().st_mtime
    ensure_shapes(target, 50, 50)  # present: not regenerated, whatever the sizes asked
    assert (target / "annotations" / "instances_val.json").stat().st_mtime == mtime


def test_data_synth_profiles(tmp_path):
    from ssdwb.cli import main
    from ssdwb.data.synthetic import DEMO_SHAPES

    def sizes(out):
        ann = json.loads((out / "annotations" / "instances_train.json").read_text())
        return ({(i["width"], i["height"]) for i in ann["images"]},
                max(len([a for a in ann["annotations"] if a["image_id"] == i["id"]])
                    for i in ann["images"]))

    assert main(["data", "synth", str(tmp_path / "d"), "--train", "12", "--val", "2",
                 "--profile", "demo"]) == 0
    got, most = sizes(tmp_path / "d")
    assert got == {DEMO_SHAPES["size"]} and most <= DEMO_SHAPES["max_objects"]
    assert main(["data", "synth", str(tmp_path / "f"), "--train", "12", "--val", "2"]) == 0
    got, _ = sizes(tmp_path / "f")
    assert len(got) > 1 and all(320 <= s <= 640 for wh in got for s in wh)


# --- reports -----------------------------------------------------------------------------------
def _png(colour) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_render_report(tmp_path, caplog):
    run = tmp_path / "run1"
    run.mkdir()
    nb = new_notebook(cells=[
        new_markdown_cell("# Training run"),
        new_code_cell("hidden_plumbing = 1", metadata={"tags": ["hide-input"]},
                      outputs=[new_output("display_data", data={"image/png": _png("red"),
                                                                "text/plain": "<Figure>"})]),
        new_code_cell("visible_code = 2"),
        new_code_cell("secret_cell = 3", metadata={"tags": ["remove-cell"]}),
        new_markdown_cell("## Curves"),
        new_code_cell("plots = 4", outputs=[
            new_output("display_data", data={"image/png": _png(c), "text/plain": "<Figure>"})
            for c in ("blue", "green")]),
    ])
    nbformat.write(nb, run / "train.ipynb")
    nbformat.write(new_notebook(cells=[new_markdown_cell("results part")]),
                   run / "results.ipynb")
    caplog.set_level(logging.WARNING)
    out = render_report(run)
    assert out == run / "report.html"
    html = out.read_text()
    # Each figure described by its section; nothing for nbconvert to warn about.
    assert re.findall(r'alt="([^"]*)"', html) == ["Training run, figure 1", "Curves, figure 1",
                                                  "Curves, figure 2"]
    assert not [r for r in caplog.records if "Alternative text" in r.getMessage()]
    assert "data:image/png;base64," + _png("red")[:40] in html
    assert "visible_code" in html and "hidden_plumbing" not in html and "secret_cell" not in html
    assert html.index("Training run") < html.index("results part")  # train.ipynb first
    assert 'src="http' not in html  # nothing fetched from the network
    assert "hidden_plumbing" in render_report(run, tmp_path / "full.html", show_code=True).read_text()


def test_render_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        render_report(tmp_path)
    (tmp_path / "train.ipynb").write_text("{broken")
    with pytest.raises(ValueError, match="train.ipynb"):
        render_report(tmp_path)
    assert not (tmp_path / "report.html").exists()


# --- the notebooks as files ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_clean_and_parameterised(name):
    nb = nbformat.read(notebook_path(name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be parameters"
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs not cleared"
    assert nb.metadata["kernelspec"]["name"] == "ssdwb"


def test_train_notebook_parameters_are_config_fields():
    import papermill as pm

    params = pm.inspect_notebook(str(notebook_path("train")))
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(params) - fields == {"preset", "resume", "extra"}
    # None means "the preset's value", so one notebook serves the demo and the C4140 configs
    assert all(params[k]["default"] == "None" for k in set(params) & fields)
    assert params["preset"]["default"].strip("'\"") in PRESETS
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook",
                          str(notebook_path("train"))], capture_output=True, text=True, check=True)
    for key in ("epochs", "batch_size", "data_dir", "amp", "seed", "eval_at"):
        assert key in out.stdout


# --- the kernel's shutdown -----------------------------------------------------------------------
def test_execute_shuts_the_kernel_down_without_an_interrupt(tmp_path):
    """jupyter_client sends SIGINT before its shutdown request; when it lands before ipykernel has
    restored SIG_IGN after the last cell, the job's log gets "KeyboardInterrupt caught in
    kernel." (seen in CI). The last cell here leaves a SIGINT handler in place after it ends, so
    any interrupt at shutdown leaves a file behind: deterministic, not a race."""
    from ssdwb.apps.notebooks import execute

    marker = tmp_path / "interrupted"
    nb = new_notebook(cells=[
        new_code_cell(f"marker = {str(marker)!r}", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "import signal\n"
            "def note_sigint(signum, frame):\n"
            "    open(marker, 'w').close()\n"
            "# ipykernel puts SIG_IGN back after each message; this hook puts the handler there.\n"
            "kernel = get_ipython().kernel\n"
            "kernel.post_handler_hook = lambda: signal.signal(signal.SIGINT, note_sigint)\n"
            "print('ready')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "last.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    executed = execute(src, out, progress=False)
    assert "ready" in "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert not marker.exists(), "the kernel got SIGINT on its way down"


# --- signals reach the kernel -------------------------------------------------------------------
def test_execute_forwards_sigusr1_to_the_kernel(tmp_path):
    nb = new_notebook(cells=[
        new_code_cell("timeout = 60", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "import signal, time\n"
            "got = []\n"
            "signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))\n"
            "open(marker, 'w').close()\n"
            "t0 = time.time()\n"
            "while not got and time.time() - t0 < timeout:\n"
            "    time.sleep(0.05)\n"
            "print('kernel got', got)"),
        new_code_cell("from ipykernel.kernelapp import IPKernelApp\n"
                      "app = IPKernelApp.instance()\n"
                      "print('transport', app.transport, app.ip)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out, marker = tmp_path / "wait.ipynb", tmp_path / "out.ipynb", tmp_path / "ready"
    nbformat.write(nb, src)
    proc = subprocess.Popen([sys.executable, "-m", "ssdwb", "notebook", str(src), str(out),
                             "-r", "marker", str(marker), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.time()
    while not marker.exists() and time.time() - t0 < 120:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate(timeout=5)[0].decode()[-2000:]
    os.kill(proc.pid, signal.SIGUSR1)  # what Slurm does before a time limit
    log = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, log[-2000:]
    cells = nbformat.read(out, 4).cells
    text = "".join(o.get("text", "") for o in cells[-2].outputs)
    assert f"kernel got [{int(signal.SIGUSR1)}]" in text
    # Unix sockets in a private folder, removed afterwards; no TCP, so no warning about it.
    transport, ip = "".join(o.get("text", "") for o in cells[-1].outputs).split()[1:]
    assert transport == "ipc" and os.path.isabs(ip), (transport, ip)
    assert not Path(ip).parent.exists()
    assert "without encryption" not in log and "TCP" not in log, log[-2000:]
