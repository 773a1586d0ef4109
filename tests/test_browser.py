"""Browser tests in Debian's headless Chromium, driven by Playwright (Python):

* a run report (``ssdwb report``) renders with its plots: images present, decoded, not blank;
* JupyterLab on 127.0.0.1 with a token: open ``anchors.ipynb``, run all cells, change the level
  widget and check that the drawn figure changes.

``make test`` installs ``chromium`` with apt when it is missing and it runs as root; elsewhere
these tests skip and say so.
"""

import io
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lab_server import CHROMIUM, CHROMIUM_ARGS, jupyterlab, run_all, write_notebook  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason="no /usr/bin/chromium: `make system-deps` installs it as root (apt-get "
                              "install chromium); run it as root or install it yourself"),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from ssdwb.data.synthetic import make_shapes_coco

    return make_shapes_coco(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=6, seed=0)


def _pixels_vary(png: bytes) -> float:
    import numpy as np
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


def test_report_shows_its_plots(browser, small_data, tmp_path):
    from ssdwb.apps.notebooks import execute
    from ssdwb.apps.report import render_report

    run = tmp_path / "run"
    execute("anchors", run / "anchors.ipynb", {"data_dir": str(small_data), "interactive": False},
            progress=False)
    report = render_report(run)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    images = page.locator("img")
    assert images.count() >= 2, "the anchors report has at least two figures"
    for i in range(images.count()):
        img = images.nth(i)
        assert img.evaluate("e => e.complete && e.naturalWidth > 0"), f"image {i} not decoded"
        img.scroll_into_view_if_needed()
        assert _pixels_vary(img.screenshot()) > 5.0, f"image {i} is blank"
    assert "Default boxes" in page.title() or page.locator("h1").count() >= 1
    page.close()


@pytest.fixture
def lab(tmp_path, small_data):
    """JupyterLab on 127.0.0.1 serving a copy of anchors.ipynb (small dataset, python3 kernel)."""
    write_notebook("anchors", tmp_path / "lab", {"data_dir": str(small_data)})
    with jupyterlab(tmp_path / "lab", tmp_path / "state") as server:
        yield server


def test_jupyterlab_anchor_explorer_redraws(browser, lab):
    url, token = lab
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    run_all(page, url, token, "anchors.ipynb", "covered small")  # the last cell's table
    select = page.locator(".widget-dropdown select").first
    select.scroll_into_view_if_needed()
    figure = page.locator(".widget-output img").first
    figure.wait_for(state="visible", timeout=120_000)
    figure.scroll_into_view_if_needed()
    before = figure.get_attribute("src")
    shot_before = figure.screenshot()
    select.select_option(index=2)  # level 2: 10x10 cells, larger boxes
    page.wait_for_function(
        "prev => { const i = document.querySelector('.widget-output img');"
        " return i && i.getAttribute('src') !== prev; }", arg=before, timeout=60_000)
    after = page.locator(".widget-output img").first
    assert after.get_attribute("src") != before
    assert after.screenshot() != shot_before
    # the row / column sliders moved into level 2's 10x10 grid (from 18 on the 38x38 one)
    readouts = page.locator(".widget-slider .widget-readout")
    page.wait_for_function("() => [...document.querySelectorAll('.widget-slider .widget-readout')]"
                           ".slice(0, 2).every(e => Number(e.textContent) <= 9)", timeout=30_000)
    assert [int(readouts.nth(k).text_content()) for k in (0, 1)] == [4, 4]
    page.close()
