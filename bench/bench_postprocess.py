"""postprocess with the default-box index against postprocess before it, in one run.

    .venv/bin/python bench/bench_postprocess.py [--batch 32] [--repeats 20] [--before REV]

Three functions, measured in alternation (best of ``--repeats`` each; this machine is a VM whose
speed drifts): ``ssdwb.ssd.postprocess.postprocess`` as it was at ``--before`` (default 461eebc, the
commit before the index; its ``ssdwb/detect.py`` is read with ``git show`` and imported), and
today's, without and with ``return_index=True``. The inputs are ``bench/bench_core.py``'s: batch
32 of random logits x2.5 (every class fills its 200 candidates) and trained-like logits
(background dominant). Prints images/s and the ratio to the one before for each, then whether
the index costs at most 5 % (target), with the drift between two timings of the one before in
the same alternation (the noise floor). Checks first that all three give the same detections
and that the index points at each detection's decoded box.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ssdwb.runtime import tune_cpu_allocator
from ssdwb.ssd.anchors import dboxes300_coco
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.postprocess import postprocess

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import best_times  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.05  # the index may cost this much


def postprocess_before(rev: str):
    """``postprocess`` of ``ssdwb/detect.py`` at git revision ``rev``."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:ssdwb/detect.py"],
                         capture_output=True, text=True)
    if src.returncode != 0:
        raise SystemExit(f"cannot read ssdwb/detect.py at {rev} (a git checkout is needed): "
                         f"{src.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / "detect_before.py"
    path.write_text(src.stdout)
    spec = importlib.util.spec_from_file_location("detect_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.postprocess


def same(a, b) -> bool:
    return all(torch.equal(x, y) for da, db in zip(a, b, strict=True) for x, y in zip(da, db))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--before", default="461eebc", help="git revision of the postprocess before")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tune_cpu_allocator()
    before = postprocess_before(args.before)
    gen = torch.Generator().manual_seed(0)
    coder = BoxCoder(dboxes300_coco())
    ploc = torch.randn(args.batch, 4, 8732, generator=gen) * 0.5
    cases = {
        "random logits x2.5": torch.randn(args.batch, 81, 8732, generator=gen) * 2.5,
        "trained-like": torch.randn(args.batch, 81, 8732, generator=gen)
        + torch.nn.functional.one_hot(torch.zeros(8732, dtype=torch.int64), 81).t() * 7.0,
    }
    print(f"torch {torch.__version__}, 1 thread, batch {args.batch}, best of {args.repeats}; "
          f"before = {args.before}")
    worst = noise = 0.0
    for name, plabel in cases.items():
        fns = [lambda p=plabel: before(ploc, p, coder),
               lambda p=plabel: postprocess(ploc, p, coder),
               lambda p=plabel: postprocess(ploc, p, coder, return_index=True)]
        outs = [f() for f in fns]
        indexed = outs[2]
        if not (same(outs[0], outs[1]) and same(outs[0], [d[:3] for d in indexed])):
            raise SystemExit(f"{name}: the three postprocess calls disagree")
        decoded = coder.decode(ploc)
        if not all(torch.equal(decoded[b, d[3]], d[0]) for b, d in enumerate(indexed)):
            raise SystemExit(f"{name}: the prior index does not give the detections' boxes")
        # the one before twice: how far two timings of the same code drift apart in this run
        t_before, t_now, t_index, t_again = best_times([*fns, fns[0]], args.repeats)
        worst = max(worst, t_index / t_before - 1)
        noise = max(noise, abs(t_again / t_before - 1))
        print(f"{name:>18}: before {args.batch / t_before:7.1f} img/s   today "
              f"{args.batch / t_now:7.1f} img/s ({t_now / t_before:5.3f}x the time)   "
              f"with index {args.batch / t_index:7.1f} img/s ({t_index / t_before:5.3f}x the time)"
              f"   before again {t_again / t_before:5.3f}x")
    verdict = "met" if worst <= TARGET else "NOT met"
    print(f"index cost at most {100 * worst:+.1f} % of the time before: target "
          f"{100 * TARGET:.0f} % {verdict} (the same code timed twice differed by up to "
          f"{100 * noise:.1f} %)")


if __name__ == "__main__":
    main()
