"""The bench scripts run and print every figure they promise (small sizes: figures, not speed;
speed is measured by running the scripts themselves, see docs/performance.md)."""

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


def ratio_bounds(rate: float, base: float) -> tuple[float, float]:
    """The range of unrounded rate / base given both printed to 0.1."""
    return (rate - 0.05) / (base + 0.05), (rate + 0.05) / max(base - 0.05, 1e-9)


def check_verdict(line: str, rate: float, base: float) -> None:
    """The targets line says "met" / "NOT met" as the printed figures demand: 150 img/s per
    core for ssdwb's rate, 2x for its ratio to the v2 equivalent (a figure within rounding of a
    target may go either way)."""
    m = re.fullmatch(r"targets for ssdwb \(reference pixels\): 150 img/s per core (met|NOT met), "
                     r"2x the v2 equivalent (met|NOT met)", line.strip())
    assert m, line
    for verdict, (lo, hi), target in ((m.group(1), (rate - 0.05, rate + 0.05), 150.0),
                                      (m.group(2), ratio_bounds(rate, base), 2.0)):
        if lo >= target:
            assert verdict == "met", (line, rate, base)
        elif hi < target:
            assert verdict == "NOT met", (line, rate, base)


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
    rates, ratios = [], []
    for name, line in zip(names, lines[1:6]):
        m = re.fullmatch(rf"\s*{re.escape(name)}\s+(\d+\.\d)\s+(\d+\.\d\d)x the v2 equivalent\s*",
                         line)
        assert m, line
        rates.append(float(m.group(1)))
        ratios.append(float(m.group(2)))
    assert all(r > 0 for r in rates)
    # each ratio is the line's rate over the v2 equivalent's (printed rates are rounded to 0.1)
    for rate, ratio in zip(rates, ratios):
        lo, hi = ratio_bounds(rate, rates[3])
        assert lo - 0.005 <= ratio <= hi + 0.005, (rate, ratio, rates[3])
    check_verdict(lines[6], rates[0], rates[3])
    if workers == "2":
        assert re.fullmatch(r"consumer process, ssdwb \(reference pixels\): \d+ % of one core "
                            r"during its best pass", lines[7].strip()), lines[7]
    if workers == "0":
        stages = {line[:36].strip(): figure(line) for line in lines[7:]}
        assert {"decode", "colour jitter", "encode (BoxCoder.encode_batch)",
                "normalise (consumer)"} <= stages.keys()
        assert all(ms > 0 for ms in stages.values())


def load_bench_data():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_data
    finally:
        sys.path.remove(str(BENCH))
    return bench_data


@pytest.mark.parametrize("rate, ratio, per_core, vs_v2", [
    (150.0, 2.0, "met", "met"),  # the targets themselves are met
    (300.0, 5.0, "met", "met"),
    (149.9, 2.5, "NOT met", "met"),
    (300.0, 1.99, "met", "NOT met"),
    (20.0, 0.5, "NOT met", "NOT met"),
])
def test_target_verdict_names_what_is_short(rate, ratio, per_core, vs_v2):
    verdict = load_bench_data().target_verdict(rate, ratio)
    assert verdict == (f"targets for ssdwb (reference pixels): 150 img/s per core {per_core}, "
                       f"2x the v2 equivalent {vs_v2}")


@pytest.mark.parametrize("rate, base, per_core, vs_v2", [
    (200.0, 50.0, "met", "met"), (100.0, 20.0, "NOT met", "met"),
    (200.0, 150.0, "met", "NOT met"), (100.0, 80.0, "NOT met", "NOT met")])
def test_check_verdict_rejects_the_wrong_wording(rate, base, per_core, vs_v2):
    """The check on bench_data's printed verdict passes the right wording and fails the wrong
    one, both ways, for each target."""
    flip = {"met": "NOT met", "NOT met": "met"}
    line = "targets for ssdwb (reference pixels): 150 img/s per core {}, 2x the v2 equivalent {}"
    assert line.format(per_core, vs_v2) == load_bench_data().target_verdict(rate, rate / base)
    check_verdict(line.format(per_core, vs_v2), rate, base)
    for wrong in (line.format(flip[per_core], vs_v2), line.format(per_core, flip[vs_v2])):
        with pytest.raises(AssertionError):
            check_verdict(wrong, rate, base)


def test_bench_detections_prints_both_paths_and_checks_they_agree():
    out = run("bench_detections.py", "--rows", "3000", "--images", "100")
    for label in ("dicts + json.dumps (before)", "results_json", "eval_end holds the loop",
                  "array -> dicts -> loadRes", "array -> loadRes", "serial on rank 0: before"):
        assert label in out, (label, out)
    assert re.search(r"mAP 0\.\d{4} both", out), out


def test_bench_gpu_smoke_runs_every_row_on_the_cpu():
    """The GPU check's code runs (tiny sizes) wherever the tests run, so a lent GPU session
    does not spend its minutes on a broken script."""
    out = run("bench_gpu.py", "--smoke", "--skip-tests", "--device", "cpu")
    for label in ("train fp32 NCHW (ssdwb)", "train bf16 + NHWC (ssdwb)",
                  "train bf16 + NHWC (torchvision SSD)", "ratio ssdwb / torchvision (bf16)",
                  "ratio bf16+NHWC / fp32 NCHW", "train bf16 + NHWC compiled (aot_eager)",
                  "ratio compiled / eager (bf16+NHWC)", "eval inference+postprocess (4 img)",
                  "eval coco_eval"):
        assert label in out, (label, out)
    assert re.search(r"train bf16 \+ NHWC \(ssdwb\)\s+\d+\.\d img/s\s+0\.0 syncs/step", out), out


def test_bench_demo_matrix_at_reduced_epochs_and_carried_on(tmp_path):
    from ssdwb.data.synthetic import ensure_shapes

    data = ensure_shapes(tmp_path / "shapes", num_train=16, num_val=4)
    args = ("--data", str(data), "--epochs", "1", "--seeds", "1", "--dir", str(tmp_path / "m"),
            "--preset", "demo")
    out = run("bench_demo.py", *args)
    for label in ("s1-t1", "s1-tall", "s1-fp32", "demo preset: min", "demo-fp32 (amp=off):",
                  "reduced to 1 epochs"):
        assert label in out, (label, out)
    assert re.search(r"s1-fp32\s+demo-fp32\s+1\s+unset\s+off\s+1\s+\d\.\d{4}", out), out
    again = run("bench_demo.py", *args)  # every run is read back from --dir, none is rerun
    table = [x for x in out.splitlines() if x.startswith("s1-")]
    assert [x.split()[:7] for x in again.splitlines() if x.startswith("s1-")] == \
        [x.split()[:7] for x in table]


def test_bench_anchor_fit_prints_each_mix_and_the_iou_comparison():
    out = run("bench_anchor_fit.py", "--boxes", "1500", "--mixes", "square", "thin")
    lines = out.splitlines()
    assert lines[0].startswith("1500 GT boxes per mix")
    rows = {}
    for line in lines[2:4]:
        m = re.fullmatch(r"(\w+)\s+(\d+\.\d)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
                         r"\s+(\d+)\s+\[[\d, ]+\]", line.strip())
        assert m, line
        rows[m.group(1)] = [float(x) for x in m.groups()[1:]]
    assert set(rows) == {"square", "thin"}
    assert rows["thin"][3] > rows["thin"][1] + 0.2  # fitted covers more of the bars
    assert all(r[5] <= 8732 for r in rows.values())
    m = re.search(r"largest difference (\S+)$", lines[4])
    assert m and float(m.group(1)) < 1e-5, lines[4]


def test_bench_eval_overlap_prints_both_modes_side_by_side():
    out = run("bench_eval_overlap.py", "--train", "16", "--val", "4", "--epochs", "2",
              "--batch", "4")
    assert re.search(r"^off\s+\d+\.\d\d \d+\.\d\d\s+\d+\.\d", out, re.M), out
    assert re.search(r"^on\s+\d+\.\d\d \d+\.\d\d\s+\d+\.\d", out, re.M), out
    assert "same mAPs: True" in out, out


def test_bench_sweep_prints_each_way_with_its_ratio():
    # one run a sweep: each run and each sweep renders a report notebook (most of the time)
    out = run("bench_sweep.py", "--grid", "lr=0.05", "--epochs", "1", "--no-slurm",
              "--train-images", "4")
    lines = out.splitlines()
    assert lines[0].split() == ["sweep", "of", "lr", "seconds", "runs", "done", "vs", "one",
                                "after", "another"]
    for name, line in zip(["local, one after another", "local, --jobs 2"], lines[1:3]):
        m = re.fullmatch(rf"{re.escape(name)}\s+(\d+\.\d)\s+1/1\s+(\d+\.\d\d)x", line)
        assert m, line
    assert lines[1].endswith(" 1.00x")
