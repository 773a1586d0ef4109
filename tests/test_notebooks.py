"""The notebooks as files (clean, parameterised, parameters are config fields) and
ssdwb.apps.notebooks' runner: the kernel shut down without an interrupt, SIGUSR1 forwarded to it.
The notebooks themselves run under nbval (``make test`` prepares them with
tests/nbval_prepare.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from ssdwb.apps.notebooks import NOTEBOOKS, notebook_path
from ssdwb.config import PRESETS, TrainConfig


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
