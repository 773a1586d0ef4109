"""Reading run folders back: what the result notebooks, the comparison notebook and reports use.

A run folder ``runs/<run_id>/`` holds ``config.json``, ``metrics.jsonl``, ``summary.json``,
``detections_epochN.json``, ``checkpoint.pt`` and, when papermill ran the training notebook,
``train.ipynb`` (``ssdwb.runs.folder`` writes them).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ssdwb.files import resolve_path

__all__ = ["Run", "load_run", "find_runs", "latest_run", "config_diff", "target_of",
           "time_to_target"]


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
