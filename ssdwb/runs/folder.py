"""Writing a run folder: the one owner of what a training run writes.

``runs/<run_id>/`` gets ``config.json``, ``metrics.jsonl``, the MLPerf event sequence
(``mlperf.log``), ``checkpoint.pt``, the epochs' ``detections_epochN.json``, TensorBoard events and
``summary.json``. The training loop calls :class:`RunFolder` at named points (start, step window,
epoch start/end, eval start/end, stop) and never writes a file itself. Only rank 0 writes; other
ranks hold a RunFolder with ``enabled=False`` whose writes do nothing.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch

from ssdwb.evaluation.coco_eval import results_json
from ssdwb.files import atomic_json, atomic_write
from ssdwb.runs.checkpoint import CHECKPOINT_FORMAT
from ssdwb.runs.mlperf import MLPerfLogger
from ssdwb.runs.tensorboard import TensorBoardLog

__all__ = ["RunFolder", "truncate_file"]


_RUN_FILES = ("config.json", "metrics.jsonl", "mlperf.log", "checkpoint.pt", "summary.json")


def truncate_file(path: Path, offset: int) -> None:
    """Cuts a log back to ``offset`` bytes (a resumed run continues from its checkpoint's logs)."""
    if path.exists():
        data = path.read_bytes()[:offset]
        atomic_write(path, lambda f: f.write(data))


class RunFolder:
    """Writes ``runs/<run_id>/`` for one training run (see the module docstring for the files).

    Use :meth:`create` for a fresh run (it refuses a folder that already holds one) or
    :meth:`resume` to continue from ``checkpoint.pt`` (logs are cut back to the checkpoint's
    offsets, so a resumed run continues one compliant MLPerf log and one metrics file).
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
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

    # --- evaluation off the critical path (async_eval) -------------------------------------
    def eval_submitted(self, epoch: int, results, model_state: dict,
                       eval_epochs: list[int]) -> None:
        """The epoch's inference is done and its scoring goes on elsewhere: ``block_stop`` now
        (MLPerf's 0.6.0 checker accepts eval_start/eval_accuracy/eval_stop together later, when
        the result lands); rank 0 writes the raw detections and keeps the evaluated model in
        ``model_epochN.pt`` (``checkpoint.pt`` moves on each epoch)."""
        if self.enabled:
            self._write_detections(results, self.path / f"detections_epoch{epoch}.json")
            atomic_write(self.path / f"model_epoch{epoch}.pt",
                         lambda f: torch.save(model_state, f))
        first = max([0] + [e for e in eval_epochs if e < epoch]) + 1
        self.mlperf.event("block_stop", metadata={"first_epoch_num": first})

    def eval_result(self, epoch: int, iteration: int, arrived: int, stats: dict | None,
                    accuracy: float, results) -> None:
        """A result that landed at iteration ``arrived``: eval_start, eval_accuracy and
        eval_stop of ``epoch``; on rank 0 the stats line (with ``arrived_iteration``) and the
        TensorBoard scalars."""
        self.mlperf.event("eval_start", metadata={"epoch_num": epoch})
        self.mlperf.event("eval_accuracy", accuracy, metadata={"epoch_num": epoch})
        self.mlperf.event("eval_stop", metadata={"epoch_num": epoch})
        if self.enabled and stats is not None:
            self._metrics({"eval": True, "epoch": epoch, "iteration": iteration,
                           "arrived_iteration": arrived, **stats})
            self.tensorboard.eval_end(iteration, stats, results)

    def save_checkpoint(self, state: dict) -> None:
        """``state``: tensors and plain containers (model, optimizer, scaler, RNG states as
        :func:`rng_state` gives them, counters, config dict, history); the log offsets and the
        format number are added here."""
        if not self.enabled:
            return

        state = {**state, "format": CHECKPOINT_FORMAT, "metrics_offset": self._offset(
            self.metrics_path), "mlperf_offset": self._offset(self.mlperf.path)}
        atomic_write(self.path / "checkpoint.pt", lambda f: torch.save(state, f))

    def write_summary(self, summary: dict) -> None:
        """summary.json alone (the watchdog's verdict on a stalled run: nothing else is safe
        to touch then)."""
        if self.enabled:
            atomic_json(summary, self.path / "summary.json")

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
