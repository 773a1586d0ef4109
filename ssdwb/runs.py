"""Reading run folders back: what the result notebooks, the comparison notebook and reports use.

A run folder ``runs/<run_id>/`` holds ``config.json``, ``metrics.jsonl``, ``summary.json``,
``detections_epochN.json``, ``checkpoint.pt`` and, when papermill ran the training notebook,
``train.ipynb`` (see ``ssdwb/train.py``). Also here: where the project's relative paths point
(notebooks run with their own folder as the working directory, papermill with the caller's), and
making the demo's synthetic dataset on first use.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["project_root", "resolve_path", "ensure_shapes", "Run", "load_run", "find_runs",
           "RunFolder", "load_checkpoint", "convert_checkpoint", "CheckpointError",
           "atomic_write", "atomic_json", "rng_state", "set_rng_state",
           "latest_run", "config_diff", "target_of", "time_to_target", "DEMO_DATA", "DEMO_SHAPES",
           "THIN_SHAPES"]

# The demo's synthetic dataset: `make demo` and the notebooks' defaults share it. Its images are
# 300x300 (no resize on the way in) with 1 to 6 objects of 24 px to 60 % of the side: easier
# than the generator's default mix, so a small model learns it in CPU minutes (README, demo).
DEMO_DATA = {"dir": "data/shapes", "num_train": 960, "num_val": 64, "seed": 0}
DEMO_SHAPES = {"size": (300, 300), "max_objects": 6, "min_side": 24, "max_side": 0.6}
# Mostly small or elongated objects: bars 3:1 to 8:1 (sides 12 px to 40 % of the image), where
# the reference's default boxes (ratios up to 3) cover badly and fitted ones should do better.
THIN_SHAPES = {"size": (300, 300), "max_objects": 6, "min_side": 12, "max_side": 0.4,
               "elongation": (3.0, 8.0)}


def project_root() -> Path:
    """``$SSDWB_ROOT`` if set (Slurm jobs, the container), else the checkout holding
    ``pyproject.toml`` (editable install), else the working directory."""
    if os.environ.get("SSDWB_ROOT"):
        return Path(os.environ["SSDWB_ROOT"])
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here
    return Path.cwd()


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute paths stay; relative ones are taken from the project root, so ``data/shapes``
    means the same folder from a notebook, papermill, the CLI and Slurm."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else project_root() / p


def ensure_shapes(data_dir: str | os.PathLike = DEMO_DATA["dir"], num_train: int | None = None,
                  num_val: int | None = None, seed: int | None = None) -> Path:
    """The synthetic dataset at ``data_dir``, generated on first use in the demo profile
    (``DEMO_SHAPES``; ``DEMO_DATA``'s image counts and seed unless given). A lock file keeps two
    notebooks or ranks from writing it at the same time; an existing COCO-format dataset there is
    used as it is."""
    from ssdwb.data.synthetic import make_shapes_coco

    out = resolve_path(data_dir)
    ann = out / "annotations"
    done = [ann / "instances_val.json", ann / "instances_val2017.json"]
    if any(p.exists() for p in done):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not any(p.exists() for p in done):  # val is written last: its file marks completion
            make_shapes_coco(out, num_train or DEMO_DATA["num_train"],
                             num_val or DEMO_DATA["num_val"],
                             seed=DEMO_DATA["seed"] if seed is None else seed, **DEMO_SHAPES)
    return out


@dataclass
class Run:
    """One run folder, read back.

    Attributes:
        path: the folder.
        config: ``config.json`` as a dict.
        steps: the training lines of ``metrics.jsonl`` (iteration, epoch, loss, lr, images_per_s).
        evals: the eval lines (epoch, iteration and the 12 COCO stats).
        summary: ``summary.json`` (empty while the run is going or after a crash).
    """

    path: Path
    config: dict
    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def detections(self, epoch: int | None = None) -> tuple[int, list[dict]]:
        """``(epoch, results)`` of ``detections_epochN.json`` (the last one by default)."""
        files = sorted(self.path.glob("detections_epoch*.json"),
                       key=lambda p: int(p.stem.removeprefix("detections_epoch")))
        if epoch is not None:
            files = [p for p in files if p.stem == f"detections_epoch{epoch}"]
        if not files:
            raise FileNotFoundError(f"{self.path}: no detections_epoch{epoch or 'N'}.json "
                                    f"(the run has not evaluated yet)")
        return int(files[-1].stem.removeprefix("detections_epoch")), json.loads(
            files[-1].read_text())


def _read_json(path: Path, default=None):
    if not path.exists():
        if default is not None:
            return default
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} a run folder?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_run(path: str | os.PathLike) -> Run:
    """Reads a run folder. A torn last line of ``metrics.jsonl`` (a killed run) is skipped."""
    path = resolve_path(path)
    config = _read_json(path / "config.json")
    steps, evals = [], []
    mpath = path / "metrics.jsonl"
    if mpath.exists():
        for line in mpath.read_text().splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # only the last line of a killed run can be partial
            (evals if rec.get("eval") else steps).append(rec)
    return Run(path, config, steps, evals, _read_json(path / "summary.json", {}))


def find_runs(pattern: str | os.PathLike | list = "runs/*") -> list[Run]:
    """Run folders matching a glob (or a list of folders/globs), oldest first."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    paths: list[Path] = []
    for p in patterns:
        for hit in sorted(glob.glob(str(resolve_path(p)))):
            hp = Path(hit)
            if (hp / "config.json").exists() and hp not in paths:
                paths.append(hp)
    paths.sort(key=lambda p: (p / "config.json").stat().st_mtime)
    return [load_run(p) for p in paths]


def latest_run(run_dir: str | os.PathLike = "runs", with_evals: bool = True) -> Run | None:
    """The newest run under ``run_dir`` (that has evaluated, when ``with_evals``), or None."""
    runs = [r for r in find_runs(Path(run_dir) / "*") if r.evals or not with_evals]
    return runs[-1] if runs else None


def config_diff(runs: list[Run], ignore=("run_id", "run_dir")) -> dict[str, list]:
    """The config keys whose values differ between runs: ``{key: [value per run]}``."""
    keys = sorted({k for r in runs for k in r.config} - set(ignore))
    out = {}
    for k in keys:
        values = [r.config.get(k) for r in runs]
        if any(v != values[0] for v in values[1:]):
            out[k] = values
    return out


def target_of(run: Run) -> float:
    """The run's ``target_map`` when it is reachable; MLPerf's 0.23 for runs that never stop
    early (the demo sets 1.0 to train all its epochs)."""
    t = float(run.config.get("target_map", 0.23))
    return t if t < 1 else 0.23


def time_to_target(run: Run, target: float | None = None) -> float | None:
    """Seconds of training until the first eval at or above the target mAP (None if never).

    Uses the summary's time when the run stopped at the target; otherwise the share of
    iterations done at that eval times the total training time (evals are not timed apart)."""
    target = target_of(run) if target is None else target
    hit = next((e for e in run.evals if e.get("mAP", 0.0) >= target), None)
    if hit is None or not run.summary:
        return None
    total_t, total_it = run.summary.get("time_to_train_s"), run.summary.get("iterations")
    if not total_t or not total_it:
        return None
    return total_t * hit["iteration"] / total_it


# --- writing a run folder -----------------------------------------------------------------------
# The one owner of what a run writes: config.json, metrics.jsonl, the MLPerf event sequence
# (mlperf.log), checkpoint.pt and summary.json. The training loop calls it at named points
# (start, step window, epoch start/end, eval, stop) and never writes a file itself. Only rank 0
# writes; other ranks hold a RunFolder with ``enabled=False`` whose writes do nothing.

CHECKPOINT_FORMAT = 2  # 2: tensors and plain containers only (loads with weights_only=True)
_RUN_FILES = ("config.json", "metrics.jsonl", "mlperf.log", "checkpoint.pt", "summary.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or does not fit the run."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Writes ``path`` through ``write(binary file)`` into a temporary file beside it, fsyncs it,
    renames it over ``path`` and fsyncs the folder: a reader (or a crash, or a kill -9 at any
    moment) sees the old complete file or the new complete file, never a torn one; once this
    returns the new file survives a power loss too (the rename alone would not be durable)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_json(obj, path: str | os.PathLike, indent: int | None = 1) -> None:
    text = json.dumps(obj, indent=indent) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def truncate_file(path: Path, offset: int) -> None:
    """Cuts a log back to ``offset`` bytes (a resumed run continues from its checkpoint's logs)."""
    if path.exists():
        data = path.read_bytes()[:offset]
        atomic_write(path, lambda f: f.write(data))


def rng_state() -> dict:
    """This process's RNG states as tensors and plain containers (safe to load)."""
    import random

    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": {"version": version, "state": list(mt), "gauss": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "cached_gaussian": cached}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Reads a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers
    only, so a crafted file cannot run code. Raises ``CheckpointError`` (naming the file) for a
    file that holds anything else, such as a checkpoint of ssdwb's first format (numpy RNG
    states), which ``ssdwb checkpoint convert`` rewrites once the user says they trust it."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain containers "
            f"({first}). Nothing in it was run. If it is a checkpoint written by an older ssdwb "
            f"(RNG states as numpy objects) and you trust its source, convert it once with "
            f"`ssdwb checkpoint convert {path}`; a file of unknown origin should be deleted."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not an ssdwb checkpoint (no 'model' and 'config')")
    return ckpt


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Rewrites an older ssdwb checkpoint in the safe format. This unpickles ``src`` fully
    (``weights_only=False``): only for a file whose source the user trusts."""
    import torch

    src = Path(src)
    dst = Path(dst) if dst else src
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{src}: not an ssdwb checkpoint (no 'model')")

    def safe(state):
        if "numpy" in state and isinstance(state["numpy"], tuple):
            import numpy as np

            name, keys, pos, has_gauss, cached = state["numpy"]
            version, mt, gauss = state["python"]
            state = {**state, "numpy": {"name": name, "keys": torch.from_numpy(
                np.asarray(keys).astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached)},
                "python": {"version": version, "state": list(mt), "gauss": gauss}}
        return state

    ckpt["rng"] = [safe(s) for s in ckpt.get("rng", [])]
    ckpt.setdefault("format", CHECKPOINT_FORMAT)
    atomic_write(dst, lambda f: torch.save(ckpt, f))
    load_checkpoint(dst)  # proves the result loads safely
    return dst


class RunFolder:
    """Writes ``runs/<run_id>/`` for one training run (see the module docstring for the files).

    Use :meth:`create` for a fresh run (it refuses a folder that already holds one) or
    :meth:`resume` to continue from ``checkpoint.pt`` (logs are cut back to the checkpoint's
    offsets, so a resumed run continues one compliant MLPerf log and one metrics file).
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        from ssdwb.mlperf import MLPerfLogger
        from ssdwb.tensorboard import TensorBoardLog

        self.path = Path(path)
        self.enabled = enabled
        self.mlperf = MLPerfLogger(self.path / "mlperf.log", enabled=enabled)
        self.metrics_path = self.path / "metrics.jsonl"
        self._writer: threading.Thread | None = None  # the detections file being written
        self._writer_error: BaseException | None = None
        self.tensorboard = TensorBoardLog(self.path, enabled=False)  # create/resume enable it

    # --- opening ---------------------------------------------------------------------------
    @staticmethod
    def existing_run(path: str | os.PathLike) -> list[str]:
        """The run files already in ``path`` (empty: free for a fresh run)."""
        return [n for n in _RUN_FILES if (Path(path) / n).exists()]

    @classmethod
    def create(cls, path: str | os.PathLike, config, enabled: bool = True) -> RunFolder:
        from ssdwb.tensorboard import TensorBoardLog

        folder = cls(path, enabled)
        if enabled:
            found = cls.existing_run(folder.path)
            if found:
                raise FileExistsError(
                    f"{folder.path} already holds a run ({', '.join(found)}): continue it with "
                    f"`ssdwb train --resume {folder.path}` (resume=True in the training "
                    f"notebook), or choose another run_id")
            folder.path.mkdir(parents=True, exist_ok=True)
            folder.write_config(config)
        folder.tensorboard = TensorBoardLog(folder.path, config, enabled and config.tensorboard)
        return folder

    @classmethod
    def resume(cls, path: str | os.PathLike, checkpoint: dict, config,
               enabled: bool = True) -> RunFolder:
        from ssdwb.tensorboard import TensorBoardLog

        folder = cls(path, enabled)
        if enabled:
            folder.write_config(config)
            truncate_file(folder.metrics_path, checkpoint["metrics_offset"])
            truncate_file(folder.mlperf.path, checkpoint["mlperf_offset"])
        # what the first run logged after its checkpoint is logged again: TensorBoard drops it
        folder.tensorboard = TensorBoardLog(folder.path, config, enabled and config.tensorboard,
                                            purge_step=checkpoint["iteration"] + 1)
        return folder

    def write_config(self, config) -> None:
        if self.enabled:
            atomic_json(config.to_dict(), self.path / "config.json", indent=2)

    # --- the named points of the loop ------------------------------------------------------
    def start(self, config, world_size: int) -> None:
        """A fresh run's MLPerf header: submission keys, init_start, the hyperparameters,
        init_stop and run_start."""
        ev = self.mlperf.event
        ev("submission_benchmark", "ssd")
        ev("submission_org", config.submission_org)
        ev("submission_platform", config.submission_platform)
        ev("submission_division", "open")
        ev("submission_status", "research")
        ev("submission_poc_name", "ssdwb")
        ev("submission_entry", "ssdwb")
        ev("cache_clear", True)
        ev("init_start")
        ev("global_batch_size", config.global_batch(world_size))
        ev("opt_base_learning_rate", config.base_lr(world_size))
        ev("opt_weight_decay", config.weight_decay)
        ev("opt_learning_rate_warmup_steps", max(config.warmup, 1))
        ev("opt_learning_rate_warmup_factor", 0)
        ev("max_samples", 1)
        ev("model_bn_span", config.batch_size)
        ev("init_stop")
        ev("run_start")

    def epoch_start(self, epoch: int, eval_epochs: list[int]) -> None:
        """``epoch`` is 1-based (MLPerf's); a block runs from one eval to the next."""
        prev_eval = max([0] + [e for e in eval_epochs if e < epoch])
        if epoch == prev_eval + 1:
            nxt = min(e for e in eval_epochs if e >= epoch)
            self.mlperf.event("block_start", metadata={"first_epoch_num": epoch,
                                                       "epoch_count": nxt - epoch + 1})
        self.mlperf.event("epoch_start", metadata={"epoch_num": epoch})

    def step_window(self, **record) -> None:
        """One metrics.jsonl line per log interval (iteration, epoch, loss, lr, images_per_s;
        with gradient clipping also grad_norm, the window's mean norm before it, and
        grad_norm_max)."""
        self._metrics(record)
        self.tensorboard.step_window(record)

    def epoch_end(self, epoch: int, bad_images: int = 0, bad_files: list[str] = ()) -> None:
        self.mlperf.event("epoch_stop", metadata={"epoch_num": epoch})
        if bad_images:
            self._metrics({"epoch": epoch, "bad_images": bad_images,
                           "bad_files": list(bad_files)[:100]})

    def eval_start(self, epoch: int) -> None:
        self.mlperf.event("eval_start", metadata={"epoch_num": epoch})

    def eval_end(self, epoch: int, iteration: int, stats: dict | None, accuracy: float,
                 results, eval_epochs: list[int]) -> None:
        """eval_stop/eval_accuracy/block_stop; on rank 0 the stats line and the epoch's
        detections (``results``: array [N, 7], written compactly)."""
        self.mlperf.event("eval_stop", metadata={"epoch_num": epoch})
        self.mlperf.event("eval_accuracy", accuracy, metadata={"epoch_num": epoch})
        if self.enabled and stats is not None:
            self._metrics({"eval": True, "epoch": epoch, "iteration": iteration, **stats})
            self._write_detections(results, self.path / f"detections_epoch{epoch}.json")
            self.tensorboard.eval_end(iteration, stats, results)
        first = max([0] + [e for e in eval_epochs if e < epoch]) + 1
        self.mlperf.event("block_stop", metadata={"first_epoch_num": first})

    def save_checkpoint(self, state: dict) -> None:
        """``state``: tensors and plain containers (model, optimizer, scaler, RNG states as
        :func:`rng_state` gives them, counters, config dict, history); the log offsets and the
        format number are added here."""
        if not self.enabled:
            return
        import torch

        state = {**state, "format": CHECKPOINT_FORMAT, "metrics_offset": self._offset(
            self.metrics_path), "mlperf_offset": self._offset(self.mlperf.path)}
        atomic_write(self.path / "checkpoint.pt", lambda f: torch.save(state, f))

    def stop(self, status: str, summary: dict) -> None:
        self.mlperf.event("run_stop", metadata={"status": status})
        self.tensorboard.close()
        if self.enabled:
            self.wait()
            atomic_json(summary, self.path / "summary.json")

    def wait(self) -> None:
        """Returns once the last epoch's detections file is on disk."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
            if self._writer_error is not None:
                error, self._writer_error = self._writer_error, None
                raise error

    def _write_detections(self, results, path: Path) -> None:
        # COCO's ~1M detections make ~150 MB of JSON and seconds of formatting: a thread writes
        # them while training goes on (the other ranks would wait for rank 0 at the next
        # all-reduce), atomically as every file here. One at a time; stop() waits for it. A
        # kill in those seconds loses that epoch's file, never its stats (in metrics.jsonl).
        from ssdwb.evaluate import results_json

        self.wait()

        def write():
            try:
                text = (results_json(results) + "\n").encode()
                atomic_write(path, lambda f: f.write(text))
            except BaseException as e:  # raised again in the training thread by wait()
                self._writer_error = e

        self._writer = threading.Thread(target=write, name="ssdwb-detections", daemon=False)
        self._writer.start()

    # --- internals -------------------------------------------------------------------------
    def _metrics(self, record: dict) -> None:
        if self.enabled:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    @staticmethod
    def _offset(path: Path) -> int:
        return path.stat().st_size if path.exists() else 0
