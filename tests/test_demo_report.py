"""`ssdwb demo` as a user runs it, shortened: the terminal shows a line per epoch and per
evaluation, and the report it writes holds no traceback, no stderr block and no frozen progress
widget (loader workers in use, as in the real demo)."""

import json
import subprocess
import sys

import nbformat


def test_demo_terminal_lines_and_a_clean_report(tmp_path):
    from ssdwb.data.synthetic import ensure_shapes

    data = ensure_shapes(tmp_path / "shapes", num_train=16, num_val=4)
    out = subprocess.run(
        [sys.executable, "-m", "ssdwb.cli", "demo", "--data", str(data), "--run-dir",
         str(tmp_path / "runs"), "--run-id", "short", "--set", "epochs=2", "eval_at=[1,2]",
         "lr_decay_at=[2]", "batch_size=8", "eval_batch_size=4", "num_workers=1", "warmup=2"],
        capture_output=True, text=True, timeout=600)
    terminal = out.stdout + out.stderr
    assert out.returncode == 0, terminal[-4000:]
    for line in ("[ssdwb] epoch 1/2:", "images/s, loss", "ETA", "[ssdwb] epoch 1: mAP",
                 "[ssdwb] epoch 2: mAP", "[ssdwb] report:"):
        assert line in terminal, (line, terminal[-3000:])
    assert "Executing Cell" not in terminal  # papermill's cell log is filtered out
    # Nothing else: no kernel warning about TCP, no nbconvert warning about alternative texts.
    others = [x for x in terminal.splitlines()
              if x.strip() and not x.startswith(("[ssdwb]", "INFO papermill: [ssdwb]"))]
    assert not others, others

    run = tmp_path / "runs" / "short"
    assert json.loads((run / "summary.json").read_text())["status"] == "success"
    nb = nbformat.read(run / "train.ipynb", as_version=4)
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            assert o["output_type"] != "error", (i, o.get("ename"), o.get("evalue"))
            assert not (o["output_type"] == "stream" and o["name"] == "stderr"), (i, o["text"])
            assert "application/vnd.jupyter.widget-view+json" not in o.get("data", {}), (i, o)
    html = (run / "report.html").read_text()
    # (the template's CSS names the stderr mime type; an output element carries it as an
    # attribute in double quotes)
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html
    assert "Traceback (most recent call last)" not in html and "jp-OutputArea-error" not in html
    assert html.count("<img") >= 3  # curves, per-class AP, detections
    assert "No description has been provided" not in html
