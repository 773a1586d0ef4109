"""Browser tests in Debian's headless Chromium, driven by Playwright (Python):

* a run report (``ssdwb report``) renders with its plots: images present, decoded, not blank;
* JupyterLab on 127.0.0.1 with a token: open ``anchors.ipynb``, run all cells, change the level
  widget and check that the drawn figure changes.

``make test`` installs ``chromium`` with apt when it is missing and it runs as root; elsewhere
these tests skip and say so.
"""

import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason="no /usr/bin/chromium: `make test` installs it as root (apt-get "
                              "install chromium); run it as root or install it yourself"),
    pytest.mark.slow,
]
# Flags for a sandboxed CI machine with no network beyond loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


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
    from ssdwb.notebooks import execute
    from ssdwb.report import render_report

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path, small_data):
    """JupyterLab on 127.0.0.1 serving a copy of anchors.ipynb (small dataset, python3 kernel)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from ssdwb.notebooks import notebook_path

    nb = parameterize_notebook(load_notebook_node(str(notebook_path("anchors"))),
                               {"data_dir": str(small_data)})
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}  # this interpreter
    root = tmp_path / "lab"
    root.mkdir()
    nbformat.write(nb, root / "anchors.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    # Render every cell (no windowing), so widgets far down the page exist in the DOM.
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), HOME=str(tmp_path),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--ServerApp.allow_root=True"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 90:
                    raise RuntimeError("JupyterLab did not start:\n"
                                       + (tmp_path / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_jupyterlab_anchor_explorer_redraws(browser, jupyterlab):
    url, token = jupyterlab
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(f"{url}/lab/tree/anchors.ipynb?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    # Wait for the kernel (its name replaces "No Kernel" / "Kernel starting" in the toolbar).
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    page.wait_for_selector(".jp-KernelName:has-text('Python')", timeout=120_000)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    # the last cell's table means every cell ran
    page.wait_for_selector("text=covered small", timeout=300_000)
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
    page.close()
