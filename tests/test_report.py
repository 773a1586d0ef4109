"""ssdwb.apps.report: a run's notebooks rendered as one self-contained HTML report."""

import base64
import logging
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ssdwb.apps.report import render_report


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
