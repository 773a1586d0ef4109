"""Notebooks in batch: no widget, no hang, and a cell that runs too long fails by name.

The explorer notebooks (anchors, augmentations) run with their defaults (``interactive = True``)
ten times in a row under plain papermill and ten times under ``ssdwb notebook``: none may hang.
Before they left their ipywidgets out in batch, augmentations' widget cell hung every second to
fourth run (jupyter/nbclient#312, nteract/papermill#723); on that version this test fails within
the first few attempts under either runner.

Forty executions of the commands as a user types them would take most of ``make test``'s time.
Two things make each one cheaper while keeping the defaults' code path, and leave this out:

* Each runner's ten attempts run in one child process (this file run as a script), which calls
  what the command calls: papermill's click command, ``ssdwb.cli.main(["notebook", ...])``. Every
  attempt starts its own kernel and client, as the command does; the interpreter start and the
  imports of papermill and of the ssdwb CLI (seconds each) are paid once per ten. Left out: the
  console scripts' own start (test_notebooks.py runs ``python -m ssdwb notebook``).
* The notebooks keep their default ``data_dir = "data/shapes"``; ``SSDWB_ROOT`` (the project root
  that relative paths start from, as on a Slurm node) points at a folder holding a small synthetic
  set in the demo profile (12 + 6 images), made by ``ensure_shapes``, the call the notebooks
  make. Left out: generating the 1024-image demo set on a fresh checkout (ensure_shapes' own
  test) and the anchor fit's time on it.

A shared kernel for the ten attempts would save the kernel's start and imports as well, but
neither command ever reuses a kernel: it would no longer be their batch path.

Each attempt has ``HANG_S`` seconds, far above its real time even on a loaded machine, after which
the child and its kernel are killed and the test fails naming the notebook, the runner and the
attempt. Nothing else depends on timing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPLORERS = ("anchors", "augmentations")
ATTEMPTS = 10
HANG_S = 300
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


# --- the child: one runner, one notebook, ATTEMPTS executions in a row -------------------------
def _kernel_args() -> list[str]:
    """Plain papermill runs the notebook's own kernel (``ssdwb``, which ``make venv`` installs in
    the venv); without it installed, ``python3`` here is the same interpreter."""
    from jupyter_client.kernelspec import find_kernel_specs

    return [] if "ssdwb" in find_kernel_specs() else ["-k", "python3"]


def _child(runner: str, name: str, out_dir: str, attempts: int) -> int:
    notebooks = Path(os.environ["SSDWB_ROOT"]) / "notebooks"
    for k in range(1, attempts + 1):
        out = str(Path(out_dir) / f"{name}-{k}.ipynb")
        print(f"start {k}", flush=True)
        if runner == "papermill":
            from papermill.cli import papermill as papermill_command

            # papermill notebooks/NAME.ipynb OUT --cwd notebooks
            papermill_command.main([str(notebooks / f"{name}.ipynb"), out, "--cwd", str(notebooks),
                                    *_kernel_args()], standalone_mode=False)
        else:
            from ssdwb.cli import main

            assert main(["notebook", name, out]) == 0  # ssdwb notebook NAME OUT
        print(f"done {k}", flush=True)
    return 0


# --- the test ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project root for SSDWB_ROOT: the checkout's notebooks, and at the default data_dir
    (``data/shapes``) a small synthetic set in the demo profile."""
    from ssdwb.data.synthetic import ensure_shapes

    root = tmp_path_factory.mktemp("project")
    (root / "notebooks").symlink_to(ROOT / "notebooks")
    ensure_shapes(root / "data" / "shapes", num_train=12, num_val=6)
    return root


def _kill(proc: subprocess.Popen) -> None:
    """The child and its kernel (which jupyter_client starts in a session of its own)."""
    from ssdwb.apps.notebooks import _descendants

    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _run_attempts(runner: str, name: str, root: Path, out: Path) -> None:
    env = dict(os.environ, SSDWB_ROOT=str(root), PYTHONUNBUFFERED="1")
    log = out / "child.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, __file__, runner, name, str(out), str(ATTEMPTS)],
                                stdout=subprocess.PIPE, stderr=err, env=env, cwd=root,
                                start_new_session=True)
    started, done, buffer = 0, 0, b""
    deadline = time.monotonic() + HANG_S
    try:
        while done < ATTEMPTS:
            left = deadline - time.monotonic()
            if left <= 0:
                tail = log.read_text()[-3000:]
                pytest.fail(f"{name} under {runner}: attempt {max(started, done + 1)} of {ATTEMPTS} "
                            f"did not finish within {HANG_S} s (hung); the child's log ends:\n{tail}")
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 5.0))
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:  # the child exited
                proc.wait()
                pytest.fail(f"{name} under {runner}: the child exited ({proc.returncode}) after "
                            f"{done} of {ATTEMPTS} attempts; its log ends:\n"
                            f"{log.read_text()[-3000:]}")
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                word, _, k = line.decode().partition(" ")
                if word == "start":
                    started = int(k)
                    deadline = time.monotonic() + HANG_S  # each attempt has its own HANG_S
                elif word == "done":
                    done = int(k)
        assert proc.wait(timeout=HANG_S) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            _kill(proc)
        proc.stdout.close()


def _code_cells(path: Path) -> list[tuple[str, list[dict]]]:
    import nbformat

    return [(c.source, c.outputs) for c in nbformat.read(path, 4).cells if c.cell_type == "code"]


def _check_attempts(runner: str, name: str, root: Path, out: Path) -> None:
    _run_attempts(runner, name, root, out)
    for k in range(1, ATTEMPTS + 1):
        cells = _code_cells(out / f"{name}-{k}.ipynb")
        outputs = [o for _, outs in cells for o in outs]
        assert not [o for o in outputs if WIDGET_VIEW in o.get("data", {})], (name, runner, k)
        # the explorer cell took the batch branch: anchors' figure, static; augmentations' note
        (explorer,) = [outs for source, outs in cells if "live_front_end()" in source]
        if name == "anchors":
            assert [o for o in explorer if "image/png" in o.get("data", {})], (runner, k)
        else:
            assert "no explorer" in "".join(o.get("text", "") for o in explorer), (runner, k)


# One class per runner: ``--dist loadscope`` may give them to different workers.
@pytest.mark.slow
@pytest.mark.parametrize("name", EXPLORERS)
class TestUnderPlainPapermill:
    def test_explorer_never_hangs(self, name, project, tmp_path):
        _check_attempts("papermill", name, project, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPLORERS)
class TestUnderSsdwbNotebook:
    def test_explorer_never_hangs(self, name, project, tmp_path):
        _check_attempts("ssdwb notebook", name, project, tmp_path)


# --- the rule for "no front end" -------------------------------------------------------------------
def test_live_front_end_is_the_requests_allow_stdin():
    """JupyterLab's execute requests allow stdin (its @jupyterlab/services defaults), nbclient's
    and nbval's do not: the kernel sees a front end exactly when the request allows stdin."""
    from jupyter_client.manager import start_new_kernel

    from ssdwb.apps.notebooks import live_front_end

    assert live_front_end() is False  # no kernel here
    km, kc = start_new_kernel(kernel_name="python3")

    def seen_by_the_kernel(allow_stdin: bool) -> str:
        texts = []
        kc.execute_interactive(
            "from ssdwb.apps.notebooks import live_front_end\nprint(live_front_end())",
            allow_stdin=allow_stdin, timeout=HANG_S, stdin_hook=lambda msg: None,
            output_hook=lambda m: texts.append(m["content"].get("text", "")))
        return "".join(texts).strip()

    try:
        assert [seen_by_the_kernel(a) for a in (True, False, True)] == ["True", "False", "True"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# --- the per-cell timeout ----------------------------------------------------------------------------
def test_execute_fails_a_cell_past_its_timeout_by_number_and_source(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from ssdwb.apps.notebooks import CELL_TIMEOUT_S, DEFAULT_CELL_TIMEOUT_S, CellTimeout, execute

    nb = new_notebook(cells=[
        new_code_cell("pause = 600", metadata={"tags": ["parameters"]}),
        new_code_cell("print('quick')"),
        new_code_cell("import time\n# a cell that never ends\ntime.sleep(pause)\nprint('late')"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "stuck.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    with pytest.raises(CellTimeout) as caught:
        execute(src, out, progress=False, cell_timeout=2)
    message = str(caught.value)
    # papermill injected no cell (no parameters given): the sleeping cell is cell 2
    assert "stuck.ipynb: cell 2 (id " in message and "2 s timeout" in message, message
    assert "import time\n    # a cell that never ends\n    time.sleep(pause)\n    ..." in message
    printed = ["".join(o.get("text", "") for o in outs) for _, outs in _code_cells(out)]
    assert printed == ["", "quick\n", ""], printed  # written up to the cell that ran out of time
    # generous defaults: a training cell is a whole run
    assert CELL_TIMEOUT_S["train"] >= 24 * 3600 and DEFAULT_CELL_TIMEOUT_S >= 600


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
