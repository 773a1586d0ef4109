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

Each cell gets ``CELL_TIMEOUT_S`` seconds (by notebook; ``cell_timeout`` changes it): a cell that
runs longer fails with ``CellTimeout``, naming the cell and how it starts, instead of holding a
job until its time limit. The notebooks draw their ipywidgets only for a person at a front end
(``live_front_end``): in batch, nbclient can wait forever on a cell that creates widgets
(jupyter/nbclient#312, nteract/papermill#723).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
from pathlib import Path

from ssdwb.files import project_root
from ssdwb.runtime import PROGRESS_BARS_ENV

__all__ = ["NOTEBOOKS", "CELL_TIMEOUT_S", "DEFAULT_CELL_TIMEOUT_S", "CellTimeout", "notebook_path",
           "execute", "parse_value", "live_front_end", "progress_bars_only_live"]

NOTEBOOKS = ("anchors", "augmentations", "train", "results", "compare_runs", "plan")

HOUR = 3600
# Seconds one cell may run under execute(), by notebook name (a path counts by its stem); others
# get DEFAULT_CELL_TIMEOUT_S. A backstop against a kernel that never answers, set far above a
# cell's real work on COCO:
# - train: its training cell is the whole run, hours on the cluster and days for the reference
#   preset on one small GPU. A Slurm job's time limit (with SIGUSR1: checkpoint, then stop) comes
#   first; a week only ends a run that nobody bounded.
# - results, compare_runs: they may train tiny demo runs first, and results re-infers the whole
#   val split on the CPU by default (attribution), which on COCO is the longest of their cells.
# - anchors, augmentations, plan: the longest cell is the anchor fit on COCO's train split.
CELL_TIMEOUT_S = {"train": 7 * 24 * HOUR, "results": 4 * HOUR, "compare_runs": 4 * HOUR,
                  "anchors": HOUR, "augmentations": HOUR, "plan": HOUR}
DEFAULT_CELL_TIMEOUT_S = HOUR


class CellTimeout(TimeoutError):
    """A notebook cell ran longer than execute()'s ``cell_timeout``."""


def live_front_end() -> bool:
    """Whether the cell running now was sent by a front end that a person works in (JupyterLab,
    Jupyter Notebook, VS Code): there ipywidgets are drawn and answered. False in a batch run
    (papermill, ``ssdwb notebook``, nbval, ``jupyter nbconvert --execute``, Slurm jobs) and outside
    a kernel.

    The rule is the ``allow_stdin`` flag of the cell's execute request, which says whether the
    sender can answer ``input()``: front ends send True, the batch clients False (nbclient, under
    papermill and ``ssdwb notebook``, sets it off; nbval asks with False). It is in the request
    itself, so it holds however the kernel was started, and it needs no variable that a plain
    ``papermill`` run would not set. Voila runs notebooks with nbclient too, so it gets the
    static figures. Call it from a cell, not from a widget callback (whose request is a comm
    message, with no such flag).
    """
    try:
        # lazy: only inside a kernel is there an IPython to ask
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:  # plain Python or the IPython terminal: no widgets to draw
        return False
    try:
        request = kernel.get_parent("shell")
    except (AttributeError, TypeError):  # ipykernel < 6
        request = getattr(kernel, "_parent_header", {})
    content = (request or {}).get("content") or {}
    return bool(content.get("allow_stdin", False))


def progress_bars_only_live() -> None:
    """Turns train()'s tqdm bars off in this kernel unless a person watches it
    (``live_front_end``): in a kernel they are ipywidgets, which a batch run can hang on as on any
    widget, and which its saved notebook shows at "0%". train() prints a line per epoch anyway."""
    if not live_front_end():
        os.environ[PROGRESS_BARS_ENV] = "0"


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
    # lazy: only notebook execution needs jupyter_client and papermill (seconds to import)
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


def _timeout_message(name: str, output, what: str, index: int, cell) -> str:
    lines = [x for x in (cell.source if cell is not None else "").splitlines() if x.strip()]
    start = "\n".join(f"    {x}" for x in lines[:3]) + ("\n    ..." if len(lines) > 3 else "")
    cell_id = cell.get("id") if cell is not None else None
    where = f"cell {index}" + (f" (id {cell_id})" if cell_id else "")
    return (f"notebook {name}: {where} {what}; the executed notebook up to there is {output}. "
            f"The cell starts:\n{start}")


def execute(notebook: str | os.PathLike, output: str | os.PathLike, parameters: dict | None = None,
            kernel_name: str = "python3", forward_signals: bool = True, progress: bool = True,
            cwd: str | os.PathLike | None = None, log_output: bool = False,
            cell_timeout: float | None | str = "default"):
    """Executes a notebook with papermill (parameters injected after its ``parameters`` cell).
    ``log_output`` echoes what the cells print (e.g. the per-evaluation lines) to this process's
    log as they run; ``progress`` is papermill's cell-count bar. ``cell_timeout``: seconds one
    cell may run ("default": the notebook's ``CELL_TIMEOUT_S``; None: no limit).

    Returns the executed notebook node; raises papermill's ``PapermillExecutionError`` (the
    output notebook is still written, with the failing cell marked) when a cell fails, and
    ``CellTimeout`` (the output notebook written up to that cell) when one runs out of time.
    """
    # lazy: only notebook execution needs papermill and nbclient (seconds to import)
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError

    path = notebook_path(notebook)
    if cell_timeout == "default":
        cell_timeout = CELL_TIMEOUT_S.get(path.stem, DEFAULT_CELL_TIMEOUT_S)
    if cell_timeout is not None:  # nbclient takes whole seconds
        cell_timeout = max(1, math.ceil(cell_timeout))
    running = {"index": -1, "cell": None}

    def note_cell(cell, cell_index, **_):
        running.update(index=cell_index, cell=cell)

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
        return pm.execute_notebook(str(path), str(output),
                                   parameters=parameters or {}, kernel_name=kernel_name,
                                   progress_bar=progress, log_output=log_output,
                                   cwd=str(cwd) if cwd else None,
                                   execution_timeout=cell_timeout, on_cell_execute=note_cell,
                                   kernel_manager_class=_private_kernel_manager(socket_dir))
    except CellTimeoutError as e:
        what = (f"ran longer than its {cell_timeout} s timeout (execute's cell_timeout)"
                if "IOPub" not in str(e) else
                "finished, but its last outputs never came (nbclient's iopub_timeout)")
        raise CellTimeout(_timeout_message(path.name, output, what, running["index"],
                                           running["cell"])) from e
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
