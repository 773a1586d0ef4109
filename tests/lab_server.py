"""JupyterLab and Chromium helpers shared by ``tests/test_browser.py`` and
``scripts/screenshots.py``: one way to start a throwaway JupyterLab and run a notebook in it."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a sandboxed CI machine with no network beyond loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def write_notebook(name: str, folder: Path, parameters: dict) -> Path:
    """A parametrized copy of ``notebooks/<name>.ipynb`` in ``folder`` that runs on the
    ``python3`` kernel (this interpreter), whatever kernels the machine has registered."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from ssdwb.apps.notebooks import notebook_path

    nb = parameterize_notebook(load_notebook_node(str(notebook_path(name))), parameters)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    return folder / f"{name}.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, state: Path):
    """JupyterLab serving ``root`` on 127.0.0.1 with a random token; its config, runtime and
    settings live under ``state``. Yields ``(url, token)``; stopped on exit."""
    port, token = _free_port(), secrets.token_hex(16)
    # Render every cell (no windowing), so widgets far down the page exist in the DOM.
    settings = state / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(state / "cfg"),
               JUPYTER_RUNTIME_DIR=str(state / "rt"), HOME=str(state),
               JUPYTERLAB_SETTINGS_DIR=str(state / "settings"))
    log_path = state / "lab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
             "--LabApp.news_url=",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
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
                                           + log_path.read_text()[-3000:]) from None
                    time.sleep(0.5)
            yield url, token
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_all(page, url: str, token: str, notebook: str, done_text: str,
            timeout_s: float = 300) -> None:
    """Opens ``notebook`` in JupyterLab, waits for its kernel, runs all cells and waits until
    ``done_text`` appears (something only the last cell prints).

    "Run All Cells" acts on the notebook that has focus; on a loaded machine the click can land
    before the notebook is the current widget, and then nothing runs. So the click is repeated
    until a cell shows it is queued or has run, and a stall names what the page shows."""
    page.set_default_timeout(120_000)
    page.goto(f"{url}/lab/tree/{notebook}?token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    page.wait_for_selector(".jp-KernelName:has-text('Python')")
    started = ("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]"
               ".some(e => /\\[[0-9*]+\\]/.test(e.textContent))")
    for _ in range(3):  # a click on a cell makes the notebook current
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
        try:
            page.wait_for_function(started, timeout=30_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; try the click again
            page.keyboard.press("Escape")
    try:
        page.wait_for_selector(f"text={done_text}", state="attached",
                               timeout=timeout_s * 1000)
    except Exception as err:
        prompts = page.eval_on_selector_all(
            ".jp-CodeCell .jp-InputPrompt", "es => es.map(e => e.textContent.trim())")
        status = page.eval_on_selector(".jp-Notebook-ExecutionIndicator",
                                       "e => e.getAttribute('data-status')")
        errors = page.eval_on_selector_all(
            ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
            "es => es.map(e => e.textContent.slice(0, 500))")
        raise AssertionError(
            f"{notebook} in JupyterLab never showed {done_text!r}: kernel {status}, "
            f"cell prompts {prompts}, stderr {errors}") from err
    page.locator(f"text={done_text}").first.scroll_into_view_if_needed()
