"""Running the project's notebooks with papermill: what ``make demo`` and ``slurm/run.slurm`` call.

    ssdwb notebook train runs/<id>/train.ipynb -p run_id <id> -p epochs 3
    ssdwb notebook anchors /tmp/anchors.ipynb -p data_dir data/coco

The same as ``papermill notebooks/<name>.ipynb OUT -p ...`` with two differences that matter for
batch jobs: values given with ``-p`` are parsed as JSON when they can be (``-p eval_at [1,2]``),
and SIGTERM / SIGUSR1 sent to this process (Slurm's warning before a time limit or preemption)
are passed on to the notebook's kernel, where ``ssdwb.engine.loop`` checkpoints and stops cleanly.
Plain papermill would die of SIGUSR1 and leave the kernel running unwarned.

The kernel is ``python3`` (this interpreter, as ipykernel registers it); JupyterLab users get the
``ssdwb`` kernel that ``make`` installs. It talks to papermill over Unix sockets in a private
(0700) temporary folder, not over TCP ports on localhost: on a shared Slurm node other users
cannot listen in, and ipykernel has no unencrypted-TCP warning to print into the job's log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

from ssdwb.files import project_root
from ssdwb.runtime import PROGRESS_BARS_ENV

__all__ = ["NOTEBOOKS", "notebook_path", "execute", "parse_value"]

NOTEBOOKS = ("anchors", "augmentations", "train", "results", "compare_runs", "plan")


def notebook_path(name: str | os.PathLike) -> Path:
    """A notebook by short name (``train``) or by path."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.exists():
        return p
    candidate = project_root() / "notebooks" / f"{p.stem}.ipynb"
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"no notebook {name!r}: give a path or one of {NOTEBOOKS}")


def _descendants(pid: int) -> list[int]:
    """Child processes (recursively) from /proc: the kernel papermill started, among others."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                kids = []
            out += kids
            todo += kids
    return out


def _private_kernel_manager(socket_dir: str):
    """A jupyter_client kernel manager whose sockets are files under ``socket_dir`` (IPC)."""
    from jupyter_client import AsyncKernelManager

    class PrivateKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            # Absolute: a relative ip would be resolved against the kernel's cwd by one side
            # and papermill's by the other.
            self.ip = os.path.join(socket_dir, "kernel")

        async def _async_interrupt_kernel(self) -> None:
            # jupyter_client interrupts (SIGINT) the kernel before every shutdown request. After
            # papermill's last cell that kernel is idle, or still a few instructions from the end
            # of its execute handler, where ipykernel turns SIGINT into KeyboardInterrupt and logs
            # "KeyboardInterrupt caught in kernel." into the job's log: a race a loaded node loses
            # now and then. A shutdown needs no interrupt: a kernel that does not stop on the
            # request is killed after ``shutdown_wait_time`` all the same.
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return PrivateKernelManager


def execute(notebook: str | os.PathLike, output: str | os.PathLike, parameters: dict | None = None,
            kernel_name: str = "python3", forward_signals: bool = True, progress: bool = True,
            cwd: str | os.PathLike | None = None, log_output: bool = False):
    """Executes a notebook with papermill (parameters injected after its ``parameters`` cell).
    ``log_output`` echoes what the cells print (e.g. the per-evaluation lines) to this process's
    log as they run; ``progress`` is papermill's cell-count bar.

    Returns the executed notebook node; raises papermill's ``PapermillExecutionError`` (the
    output notebook is still written, with the failing cell marked) when a cell fails.
    """
    import papermill as pm

    previous = {}
    if forward_signals:
        def forward(signum, frame):
            for pid in _descendants(os.getpid()):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    pass

        for s in (signal.SIGTERM, signal.SIGUSR1):
            try:
                previous[s] = signal.signal(s, forward)
            except ValueError:  # not the main thread
                break
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    # The kernel inherits this process's environment: no tqdm widgets in a notebook nobody
    # watches (saved, they read "0%" in the report); train() prints a line per epoch instead.

    bars_before = os.environ.get(PROGRESS_BARS_ENV)
    os.environ[PROGRESS_BARS_ENV] = "0"
    # Short: a Unix socket's path is limited to ~107 bytes, so not under a deep TMPDIR.
    socket_dir = tempfile.mkdtemp(prefix="ssdwb-kernel-",
                                  dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        return pm.execute_notebook(str(notebook_path(notebook)), str(output),
                                   parameters=parameters or {}, kernel_name=kernel_name,
                                   progress_bar=progress, log_output=log_output,
                                   cwd=str(cwd) if cwd else None,
                                   kernel_manager_class=_private_kernel_manager(socket_dir))
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        for s, h in previous.items():
            signal.signal(s, h)
        if bars_before is None:
            os.environ.pop(PROGRESS_BARS_ENV, None)
        else:
            os.environ[PROGRESS_BARS_ENV] = bars_before


def parse_value(raw: str):
    """A ``-p`` value: JSON when it parses (numbers, lists, true/false/null), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
