"""ssdwb.runs.reader: loading run folders, comparing their configs, time to the target."""

import json
import time
from pathlib import Path

import pytest

from ssdwb.config import TrainConfig
from ssdwb.runs.reader import config_diff, find_runs, latest_run, load_run, target_of, time_to_target


def _fake_run(path: Path, seed: int, maps: list[float], torn: bool = False) -> Path:
    path.mkdir(parents=True)
    TrainConfig(seed=seed, run_id=path.name).save(path / "config.json")
    lines = [json.dumps({"iteration": 10 * (i + 1), "epoch": i + 1, "loss": 5.0 - i, "lr": 0.1,
                         "images_per_s": 9.0}) for i in range(len(maps))]
    lines += [json.dumps({"eval": True, "epoch": i + 1, "iteration": 10 * (i + 1), "mAP": m})
              for i, m in enumerate(maps)]
    text = "\n".join(lines) + "\n"
    if torn:
        text += '{"iteration": 99, "lo'
    (path / "metrics.jsonl").write_text(text)
    (path / "summary.json").write_text(json.dumps(
        {"status": "success", "iterations": 10 * len(maps), "time_to_train_s": 100.0}))
    return path


def test_runs_load_compare_and_time_to_target(tmp_path):
    a = _fake_run(tmp_path / "a", 1, [0.1, 0.25, 0.3], torn=True)
    time.sleep(0.01)
    b = _fake_run(tmp_path / "b", 2, [0.05, 0.1])
    ra = load_run(a)
    assert len(ra.steps) == 3 and [e["mAP"] for e in ra.evals] == [0.1, 0.25, 0.3]
    runs = find_runs(str(tmp_path / "*"))
    assert [r.name for r in runs] == ["a", "b"]
    assert config_diff(runs) == {"seed": [1, 2]}
    assert time_to_target(ra) == pytest.approx(100.0 * 20 / 30)  # first eval >= 0.23 at it 20
    assert time_to_target(runs[1]) is None
    assert target_of(ra) == 0.23
    ra.config["target_map"] = 1.0  # a run that never stops early (the demo): MLPerf's target
    assert target_of(ra) == 0.23 and time_to_target(ra) == pytest.approx(100.0 * 20 / 30)
    ra.config["target_map"] = 0.05
    assert time_to_target(ra) == pytest.approx(100.0 * 10 / 30)
    assert latest_run(tmp_path).name == "b"
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path)
    (b / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="summary.json"):
        load_run(b)
