"""The bench scripts run and print every figure they promise (small sizes: figures, not speed;
speed is measured by running the scripts themselves, see the README's Performance section)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def figure(line: str) -> float:
    return float(re.search(r"\s(\d+\.\d+)\s", line + " ").group(1))


@pytest.mark.parametrize("workers", ["0", "2"])
def test_bench_data_prints_every_pipeline_and_stage(workers):
    out = run("bench_data.py", "--images", "16", "--batch", "8", "--epochs", "1",
              "--workers", workers, *(["--stages"] if workers == "0" else []))
    lines = out.splitlines()
    assert lines[0].startswith(f"workers={workers} ")
    names = ["ssdwb (reference pixels)", "ssdwb resize=tensor", "ssdwb, encode in the consumer",
             "torchvision v2 equivalent", 'torchvision detection "ssd" preset']
    for name, line in zip(names, lines[1:6]):
        assert line.strip().startswith(name) and figure(line) > 0
        assert line.rstrip().endswith("x the v2 equivalent")
    assert lines[4].rstrip().endswith("1.00x the v2 equivalent")
    assert re.fullmatch(r"targets for ssdwb \(reference pixels\): 150 img/s per core (NOT )?met, "
                        r"2x the v2 equivalent (NOT )?met", lines[6].strip()), lines[6]
    if workers == "2":
        assert re.fullmatch(r"consumer process, ssdwb \(reference pixels\): \d+ % of one core "
                            r"during its best pass", lines[7].strip()), lines[7]
    if workers == "0":
        stages = {line[:36].strip(): figure(line) for line in lines[7:]}
        assert {"decode", "colour jitter", "encode (BoxCoder.encode_batch)",
                "normalise (consumer)"} <= stages.keys()
        assert all(ms > 0 for ms in stages.values())


def test_target_verdict_names_what_is_short():
    sys.path.insert(0, str(BENCH))
    try:
        from bench_data import target_verdict
    finally:
        sys.path.remove(str(BENCH))
    assert target_verdict(150.0, 2.0).count("NOT") == 0
    assert "per core NOT met, 2x the v2 equivalent met" in target_verdict(149.9, 2.5)
    assert "per core met, 2x the v2 equivalent NOT met" in target_verdict(300.0, 1.99)
