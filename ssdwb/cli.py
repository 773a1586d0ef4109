"""The ``ssdwb`` command. Each subcommand parses its flags and calls one function of the package;
``python -m ssdwb ...`` and ``python -m ssdwb.cli ...`` are the same command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from ssdwb.apps.export import check_onnx, export_onnx
from ssdwb.apps.notebooks import NOTEBOOKS, execute, parse_value
from ssdwb.apps.predict import predict
from ssdwb.apps.report import render_report
from ssdwb.apps.sweep import (
    SweepError,
    format_status,
    load_sweep,
    open_sweep,
    parse_grid,
    plan_sweep,
    render_sweep_report,
    run_local,
    run_task,
    submit_slurm,
    sweep_states,
    task_environment,
)
from ssdwb.config import PRESETS, TrainConfig, demo_preset, describe_fields, preset
from ssdwb.data import CocoDetection, build_loader, resolve_data
from ssdwb.data.download import DatasetError, download_coco, verify_coco
from ssdwb.data.layout import DATASET_SUFFIXES
from ssdwb.data.split import split_coco
from ssdwb.data.synthetic import DEMO_SHAPES, THIN_SHAPES, ensure_shapes, make_shapes_coco
from ssdwb.data.verify import verify_decode, verify_quick
from ssdwb.engine.distributed import shutdown
from ssdwb.engine.loop import train
from ssdwb.evaluation.inference import evaluate
from ssdwb.files import atomic_write, resolve_path
from ssdwb.lab.anchor_fit import fit_design
from ssdwb.lab.data_stats import dataset_stats, format_stats
from ssdwb.lab.plan import SSDWB, SYSTEMS, format_plan, plan_table
from ssdwb.plots import plot_data_stats
from ssdwb.runs.checkpoint import CheckpointError, convert_checkpoint
from ssdwb.runs.trained import load_trained
from ssdwb.runtime import resolve_amp
from ssdwb.ssd.anchors import save_design


def _data_split(args) -> int:
    """``ssdwb data split``: one COCO export -> DIR/train.json, val.json and dataset.yaml."""
    out = split_coco(resolve_path(args.annotations), resolve_path(args.out), val=args.val,
                     seed=args.seed, images=resolve_path(args.images) if args.images else None)
    print(f"images: {out['images']} ({out['images_from']})")
    print(f"train: {out['train']} images, {out['train_boxes']} boxes; val: {out['val']} images, "
          f"{out['val_boxes']} boxes (seed {args.seed})")
    print(f"dataset file: {out['dataset']}; check it with `ssdwb data verify {out['dataset']}`")
    return 0


def _data_stats(args) -> int:
    """``ssdwb data stats``: classes, objects per image, sizes and the reference's coverage."""
    stats = dataset_stats(resolve_path(args.data), args.split)
    print(format_stats(stats))
    if args.plot:
        axes = plot_data_stats(stats)
        out = resolve_path(args.plot)
        fig = axes[0].figure
        fig.tight_layout()
        atomic_write(out, lambda f: fig.savefig(f, format=out.suffix.lstrip(".") or "png",
                                                dpi=110))
        print(f"figure: {out}")
    return 0


def _coco_copy(data: Path) -> bool:
    """Whether ``ssdwb data verify`` runs COCO 2017's check (zips and/or extracted) on ``data``:
    not a dataset file, not a synthetic-layout folder."""
    try:
        return resolve_data(data)["kind"] == "coco2017"
    except (FileNotFoundError, ValueError):
        # a folder of zips, or a missing folder: verify_coco names what it lacks
        return not data.is_file() and data.suffix.lower() not in DATASET_SUFFIXES


def _data(args) -> int:
    if args.data_cmd == "synth":
        shapes = {"demo": DEMO_SHAPES, "thin": THIN_SHAPES}.get(args.profile, {})
        out = make_shapes_coco(args.out_dir, args.train, args.val, seed=args.seed, **shapes)
        print(f"synthetic COCO-format dataset in {out}")
        return 0

    try:
        if args.data_cmd in ("split", "stats"):
            return (_data_split if args.data_cmd == "split" else _data_stats)(args)
        if args.data_cmd == "download":
            report = download_coco(args.datadir, keep_zips=not args.remove_zips)
        elif args.decode:
            report = verify_decode(resolve_path(args.datadir), workers=args.workers,
                                   check_zips=not args.skip_md5)
        elif _coco_copy(resolve_path(args.datadir)):
            report = verify_coco(args.datadir, check_zips=not args.skip_md5)
        else:
            report = verify_quick(resolve_path(args.datadir))
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(report))
    print("ok")
    return 0


# --- train, eval, demo, report, notebook, checkpoint ------------------------------------------
def _config_from_args(args):
    config = preset(args.preset) if args.preset else TrainConfig()
    if args.config:
        config = TrainConfig.load(args.config)
    return config.with_overrides(args.set or [])


def _config(args) -> int:
    config = preset(args.preset) if args.preset else TrainConfig()
    print(json.dumps(config.to_dict(), indent=2) if args.json else describe_fields(config))
    return 0


def _train(args) -> int:
    try:
        if args.resume:
            summary = train(resume=args.resume, overrides=args.set)
        else:
            summary = train(_config_from_args(args))
    finally:
        shutdown()
    return 0 if summary["status"] == "success" or "signal" in summary["reason"] else 1


def _eval(args) -> int:
    """A checkpoint on a val split, through the evaluator training uses."""
    trained = load_trained(args.checkpoint, args.device)
    ds = trained.val_dataset(args.data)
    device, config = trained.device, trained.config
    loader = build_loader(ds, args.batch_size, train=False, num_workers=args.workers,
                          device=device)
    stats, _ = evaluate(trained.with_layout(), loader, trained.coder, ds, device,
                        amp=resolve_amp(args.amp or config.amp, device),
                        channels_last=config.channels_last, backend=args.backend, progress=True)
    print(json.dumps(stats, indent=1))
    return 0


class _ProgressLines(logging.Filter):
    """Of what the notebook's cells print (papermill logs it), only train()'s ``[ssdwb]`` lines
    (one per epoch with images/s, loss and ETA, one per evaluation), and warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        lines = [x for x in record.getMessage().splitlines() if x.startswith("[ssdwb]")]
        record.msg, record.args = "\n".join(lines), ()
        return bool(lines)


def _demo(args) -> int:
    """The README's demo: the training notebook on the synthetic set, then the run's report."""

    data = ensure_shapes(args.data)
    run_id = args.run_id or time.strftime("demo-%Y%m%d-%H%M%S")
    run = resolve_path(args.run_dir) / run_id

    name = demo_preset()
    why = {"demo": "", "demo-bf16": ": this CPU computes bf16 without AMX, so fewer epochs",
           "demo-fp32": ": this CPU has no native bf16, so fp32 and fewer epochs"}
    print(f"[ssdwb] preset {name}{why[name]}", flush=True)
    params = {"preset": name, "data_dir": str(data), "run_dir": str(run.parent),
              "run_id": run_id, "extra": list(args.set or [])}
    print(f"[ssdwb] training notebook -> {run / 'train.ipynb'}", flush=True)
    logging.getLogger("papermill").addFilter(_ProgressLines())
    execute("train", run / "train.ipynb", params, progress=False, log_output=True)
    report = render_report(run)
    summary = json.loads((run / "summary.json").read_text())
    print(f"[ssdwb] demo run folder: {run}")
    final = summary["final_map"]
    print(f"[ssdwb] final mAP@[.5:.95] on the synthetic val split: "
          f"{'no evaluation ran' if final is None else f'{final:.4f}'} ({summary['status']}: "
          f"{summary['reason']})")
    print(f"[ssdwb] report: {report}")
    return 0 if summary["status"] == "success" else 1


def _anchors(args) -> int:
    """``ssdwb anchors fit``: default boxes fitted to a dataset's GT boxes, as a design file."""
    try:
        paths = resolve_data(resolve_path(args.data))
        ds = CocoDetection(paths[f"{args.split}_images"], paths[f"{args.split}_ann"])
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    gt = ds.all_boxes()
    design, report = fit_design(gt["boxes"], gt["areas"], budget=args.budget,
                                max_types=args.max_types, sample=args.sample, seed=args.seed)
    out = resolve_path(args.out or f"anchors/{paths['name']}.json")
    save_design(design, out, fit={**report, "data": str(args.data), "split": args.split,
                                  "annotations": str(paths[f"{args.split}_ann"])})
    cov = report["coverage"]
    print(f"{report['gt_boxes']} GT boxes ({args.split}), fitted on {report['fit_sample']} in "
          f"{report['seconds']:.1f} s; share with best IoU > 0.5:")
    print(f"  {'':<10}{'all':>7}{'small':>7}{'medium':>7}{'large':>7}{'mean IoU':>10}{'boxes':>7}")
    for name, boxes in (("reference", 8732), ("fitted", report["boxes"])):
        c = cov[name]
        print(f"  {name:<10}" + "".join(f"{c[k]:>7.3f}" for k in ("all", "small", "medium",
                                                                      "large"))
              + f"{c['mean_best_iou']:>10.3f}{boxes:>7}")
    print(f"box types per level {report['types_per_level']}; design: {out}")
    print(f"train with it: ssdwb train ... --set anchors={out}")
    return 0


def _report(args) -> int:
    try:
        if (resolve_path(args.run_dir) / "sweep.json").exists():
            out = render_sweep_report(resolve_path(args.run_dir))
        else:
            out = render_report(args.run_dir, args.out, show_code=args.show_code)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


# --- sweeps ------------------------------------------------------------------------------------
def _sweep(args) -> int:
    """``ssdwb sweep NAME ...`` (plan, then run or submit what is left) and ``sweep status``."""
    try:
        if args.name == "status":
            if not args.status_of:
                raise SweepError("usage: ssdwb sweep status NAME")
            sweep = load_sweep(resolve_path(args.run_dir) / args.status_of)
            print(format_status(sweep, sweep_states(sweep)))
            return 0
        return _run_sweep(args)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run_sweep(args) -> int:
    if args.status_of or not (args.slurm or args.local):
        raise SweepError("usage: ssdwb sweep NAME --preset P --grid KEY=V1,V2 ... "
                         "(--slurm | --local)")
    spec = plan_sweep(args.name, args.preset, parse_grid(args.grid), args.set or [])
    sweep = open_sweep(resolve_path(args.run_dir) / args.name, spec)
    rows = sweep_states(sweep)
    todo = [i for i, r in enumerate(rows) if r["state"] not in ("done", "queued", "running")]
    busy = sum(r["state"] in ("queued", "running") for r in rows)
    done = sum(r["state"] == "done" for r in rows)
    print(f"[ssdwb] sweep {sweep.folder}: {len(rows)} runs, {done} done, {busy} queued or "
          f"running, {len(todo)} to {'submit' if args.slurm else 'run'}", flush=True)
    if args.slurm:
        if not todo:
            return 0
        gpus = args.gpus_per_task
        if gpus is None:
            gpus = 0 if (args.system or preset(args.preset).with_overrides(
                args.set or []).device == "cpu") else 1
        job = submit_slurm(sweep, todo, system=args.system, max_parallel=args.max_parallel,
                           gpus_per_task=gpus, sbatch_args=args.sbatch_arg)
        print(f"[ssdwb] submitted array job {job['job_id']} (runs {job['indices']}), report job "
              f"{job['report_job']} after it; `ssdwb sweep status {args.name}` shows progress")
        return 0
    codes = run_local(sweep, todo, jobs=args.jobs, timeout_s=args.timeout) if todo else {}
    if busy == 0 and (todo or not (sweep.folder / "report.html").exists()):  # the last run ended
        print(f"[ssdwb] sweep report: {render_sweep_report(sweep.folder)}")
    print(format_status(sweep, sweep_states(sweep)))
    return 1 if any(codes.values()) else 0


def _sweep_task(args) -> int:
    """One run of a sweep (what ``--local`` starts per run; ``--env``: what sweep.slurm reads)."""
    sweep = load_sweep(args.sweep_dir)
    if not 0 <= args.index < len(sweep.runs):
        print(f"error: {sweep.folder} has runs 0-{len(sweep.runs) - 1}, not {args.index}",
              file=sys.stderr)
        return 2
    if args.env:
        print(task_environment(sweep, args.index), end="")
        return 0
    return run_task(sweep, args.index)


def _notebook(args) -> int:
    params = {k: parse_value(v) for k, v in (args.parameter or [])}
    params.update({k: v for k, v in (args.parameter_raw or [])})
    execute(args.notebook, args.output, params, kernel_name=args.kernel,
            progress=not args.no_progress, log_output=args.log_output,
            cell_timeout=args.cell_timeout if args.cell_timeout else "default")
    return 0


def _checkpoint(args) -> int:
    try:
        out = convert_checkpoint(args.path, args.out)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{out}: converted to the safe checkpoint format")
    return 0


# --- use a trained model: predict, export; plan a cluster ------------------------------------
def _predict(args) -> int:
    try:
        summary = predict(args.checkpoint, args.inputs, args.out, score=args.score,
                          device=args.device, batch_size=args.batch_size, workers=args.workers,
                          draw=not args.no_png)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{summary['images']} image(s), {summary['detections']} detection(s) above "
          f"{args.score} -> {summary['out']}/detections.json (class names: "
          f"{summary['classes_from']})")
    for name, reason in summary["skipped"]:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 1 if summary["skipped"] else 0


def _export(args) -> int:
    try:
        out = export_onnx(args.checkpoint, args.onnx, decoded=args.decoded)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{out}: ONNX, input images [B, 3, 300, 300] (dynamic B), outputs ploc, plabel"
          f"{', boxes, scores' if args.decoded else ''}")
    if not args.no_check:
        diff = check_onnx(out, args.checkpoint)
        worst = max(diff.values())
        print("onnxruntime (CPU) vs torch, largest |difference|: "
              + ", ".join(f"{k} {v:.2g}" for k, v in diff.items()))
        if worst > 1e-3:
            print(f"error: onnxruntime differs from torch by {worst:.2g}", file=sys.stderr)
            return 1
    return 0


def _plan(args) -> int:
    a = SSDWB.replace(overlap=args.overlap, inter_node_GBps=args.inter_node_gbps,
                      grad_bytes=2 if args.fp16_gradients else 4)
    if args.img_per_s_per_gpu is not None:
        try:
            a = a.measured(args.img_per_s_per_gpu, args.bench_batch)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    systems = [SYSTEMS[args.system]] if args.system else None
    rows = plan_table(a, systems)
    print(json.dumps(rows, indent=1) if args.json else format_plan(rows, a))
    return 0


def _add_use_subcommands(sub) -> None:
    pr = sub.add_parser("predict", help="run a trained checkpoint on your images",
                        description="Run a checkpoint on images: detections.json and a PNG with "
                        "labelled boxes per image.")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    pr.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    pr.add_argument("--score", type=float, default=0.3, help="keep detections above this score")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--workers", type=int, default=2, help="loader processes decoding images")
    pr.add_argument("--no-png", action="store_true", help="only detections.json")
    pr.set_defaults(func=_predict)
    ex = sub.add_parser("export", help="export a checkpoint to ONNX",
                        description="A checkpoint to ONNX (dynamic batch), checked with "
                        "onnxruntime.")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--decoded", action="store_true",
                    help="also output the decoded boxes and the softmax scores (before NMS)")
    ex.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    ex.set_defaults(func=_export)
    pl = sub.add_parser("plan", help="estimate the minutes to 0.23 mAP on 1-16 C4140 nodes",
                        description="Minutes to 0.23 mAP on 1-16 C4140 nodes (fitted to Dell "
                        "EMC's MLPerf v0.7 results)")
    pl.add_argument("--system", choices=list(SYSTEMS), help="one system (default: all)")
    pl.add_argument("--img-per-s-per-gpu", type=float, metavar="X",
                    help="measured training throughput of one GPU (bench/bench_gpu.py); default: "
                         "the V100 figure fitted to Dell's results")
    pl.add_argument("--bench-batch", type=int, default=120,
                    help="images per GPU per step of that measurement (bench_gpu.py's --batch)")
    pl.add_argument("--inter-node-gbps", type=float, default=SSDWB.inter_node_GBps,
                    help="all-reduce bandwidth between nodes, GB/s (default: EDR InfiniBand)")
    pl.add_argument("--overlap", type=float, default=SSDWB.overlap,
                    help="share of the all-reduce hidden behind the backward pass (0-1)")
    pl.add_argument("--fp16-gradients", action="store_true",
                    help="all-reduce fp16 gradients (ssdwb's DDP reduces fp32)")
    pl.add_argument("--json", action="store_true", help="the rows as JSON")
    pl.set_defaults(func=_plan)


def _add_run_subcommands(sub) -> None:
    tr = sub.add_parser("train", help="train a run, or resume one",
                        description="Train a run (or resume one). The config starts from the "
                        "reference defaults, a --preset or a --config file; --set changes fields.",
                        epilog="config fields (name, type, default, why; `ssdwb config --preset "
                        "NAME` shows a preset's values):\n" + describe_fields(),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("--preset", choices=sorted(PRESETS), help="start from a named preset")
    tr.add_argument("--config", help="a config.json to start from")
    tr.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                    help="change config fields (listed below)")
    tr.add_argument("--resume", metavar="RUN_DIR",
                    help="continue the run in RUN_DIR (--set then changes its config)")
    tr.set_defaults(func=_train)
    ev = sub.add_parser("eval", help="score a checkpoint on a val split (COCO mAP)")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--data", help="dataset folder (default: the run's data_dir)")
    ev.add_argument("--backend", default="faster-coco-eval",
                    choices=["faster-coco-eval", "pycocotools"])
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--workers", type=int, default=2, help="loader processes")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--amp", choices=["off", "fp16", "bf16", "auto"],
                    help="default: the run's amp setting")
    ev.set_defaults(func=_eval)
    demo = sub.add_parser("demo", help="train on the synthetic set and write an HTML report",
                          description="The training notebook with the demo preset on the "
                          "synthetic dataset, then the run's HTML report")
    demo.add_argument("--data", default="data/shapes", help="generated there on first use")
    demo.add_argument("--run-dir", default="runs")
    demo.add_argument("--run-id", default="", help="default: demo-<timestamp>")
    demo.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="change preset fields")
    demo.set_defaults(func=_demo)
    rep = sub.add_parser("report", help="render a run's or a sweep's HTML report",
                         description="A run's executed notebooks -> runs/<id>/report.html; "
                         "a sweep folder's comparison notebook -> runs/<name>/report.html.")
    rep.add_argument("run_dir")
    rep.add_argument("--out", help="default: RUN_DIR/report.html")
    rep.add_argument("--show-code", action="store_true", help="keep the code of every cell")
    rep.set_defaults(func=_report)
    nb = sub.add_parser("notebook", help="execute a project notebook with papermill")
    nb.add_argument("notebook", help=f"one of {', '.join(NOTEBOOKS)} or a path")
    nb.add_argument("output", help="where the executed notebook goes")
    nb.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                    help="a parameter; the value is parsed as JSON when it can be")
    nb.add_argument("-r", "--parameter-raw", nargs=2, action="append", metavar=("NAME", "VALUE"),
                    help="a parameter kept as a string")
    nb.add_argument("-k", "--kernel", default="python3")
    nb.add_argument("--no-progress", action="store_true")
    nb.add_argument("--log-output", action="store_true", help="echo what the cells print")
    nb.add_argument("--cell-timeout", type=float, metavar="SECONDS",
                    help="the most one cell may run (default: per notebook, e.g. train 7 days, "
                         "the explorers 1 h); the error names the cell")
    nb.set_defaults(func=_notebook)
    cf = sub.add_parser("config", help="list the training config fields and their values",
                        description="Every TrainConfig field: name, type, value and why.")
    cf.add_argument("--preset", choices=sorted(PRESETS), help="a preset's values (default: the "
                    "reference defaults)")
    cf.add_argument("--json", action="store_true", help="the values as JSON (a --config file)")
    cf.set_defaults(func=_config)
    ck = sub.add_parser("checkpoint", help="convert an older checkpoint to the safe format")
    cksub = ck.add_subparsers(dest="checkpoint_cmd", required=True)
    conv = cksub.add_parser("convert", help="rewrite an older ssdwb checkpoint in the safe "
                            "format (unpickles it fully: only for files you trust)")
    conv.add_argument("path")
    conv.add_argument("--out", help="default: overwrite PATH (atomically)")
    ck.set_defaults(func=_checkpoint)


def _add_sweep_subcommands(sub) -> None:
    sw = sub.add_parser("sweep", help="a grid of runs: a Slurm job array, or here",
                        description="Runs the grid's cartesian product as runs/NAME/<run>, "
                        "with one comparison report (runs/NAME/report.html). The same command "
                        "again runs only what is left. `ssdwb sweep status NAME` shows a table.",
                        epilog="example: ssdwb sweep lr-seed --preset demo --grid lr=0.05,0.1 "
                        "seed=1,2 --slurm --max-parallel 2")
    sw.add_argument("name", help="the sweep's folder under --run-dir (or `status`)")
    sw.add_argument("status_of", nargs="?", metavar="NAME", help="with `status`: the sweep")
    sw.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    sw.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                    help="config fields and their values; every combination is a run")
    sw.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="fields every run changes")
    sw.add_argument("--run-dir", default="runs", help="parent of the sweep folder")
    where = sw.add_mutually_exclusive_group()
    where.add_argument("--slurm", action="store_true", help="submit one sbatch job array")
    where.add_argument("--local", action="store_true", help="run here")
    sw.add_argument("--system", help="--slurm: each run on this system's nodes and ranks "
                    "(slurm/config_SYSTEM.sh); default: one rank per run")
    sw.add_argument("--max-parallel", type=int, metavar="M", help="--slurm: at most M runs at "
                    "once (--array=...%%M)")
    sw.add_argument("--gpus-per-task", type=int, help="--slurm without --system: GPUs per run "
                    "through GRES (default: 0 with device=cpu, else 1)")
    sw.add_argument("--sbatch-arg", action="append", metavar="ARG",
                    help="--slurm: one more sbatch option, e.g. --sbatch-arg=--time=04:00:00")
    sw.add_argument("--jobs", type=int, default=1, metavar="N", help="--local: N runs at once")
    sw.add_argument("--timeout", type=float, metavar="SECONDS",
                    help="--local: kill a run after this long (default: the notebook's cell "
                         "timeouts)")
    sw.set_defaults(func=_sweep)
    task = sub.add_parser("sweep-task", help="run one run of a sweep (what sweep starts per run)",
                          description="Runs run INDEX of the sweep in SWEEP_DIR here, resuming "
                          "its checkpoint; --env prints what slurm/sweep.slurm reads instead.")
    task.add_argument("sweep_dir")
    task.add_argument("index", type=int)
    task.add_argument("--env", action="store_true", help="print the run's shell exports")
    task.set_defaults(func=_sweep_task)


class _OneLinePerCommand(argparse.HelpFormatter):
    """A help column wide enough for the longest subcommand (argparse measures the names one
    indent short and would put ``checkpoint``'s help on a line of its own)."""

    def add_argument(self, action):
        super().add_argument(action)
        self._action_max_length = max(self._action_max_length, 16)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ssdwb", description="ssdwb: train, evaluate and look "
                                 "into SSD300-ResNet34 detectors (MLPerf single_stage_detector).",
                                 formatter_class=_OneLinePerCommand)
    sub = ap.add_subparsers(dest="cmd", required=True, title="commands", metavar="COMMAND")

    data = sub.add_parser("data", help="make, download, split, look into or verify a dataset")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    synth = dsub.add_parser("synth", help="write the synthetic shapes dataset")
    synth.add_argument("out_dir")
    synth.add_argument("--train", type=int, default=1000, help="train images")
    synth.add_argument("--val", type=int, default=200, help="val images")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--profile", choices=("full", "demo", "thin"), default="full",
                       help="full: 320-640 px images, 1-12 objects from 12 px; demo: what "
                            "`make demo` uses (300x300, 1-6 objects from 24 px); thin: "
                            "300x300, 1-6 bars 3:1 to 8:1 from 12 px (anchor fitting)")
    dl = dsub.add_parser("download", help="fetch, md5-check and extract COCO 2017")
    dl.add_argument("datadir")
    dl.add_argument("--remove-zips", action="store_true", help="delete each zip once extracted")
    ver = dsub.add_parser("verify", help="check a dataset: a COCO 2017 copy (zips and/or "
                          "extracted), or the quick check of a dataset file or folder",
                          description="COCO 2017 folder: md5s, image counts, annotation files. "
                          "Dataset file or synthetic folder: the check every training run makes "
                          "(image files exist, boxes inside their image, train and val "
                          "categories match). Exit code 1, problems on stderr, when refused.")
    ver.add_argument("datadir", metavar="DATA", help="dataset folder or file (.yaml, .json)")
    ver.add_argument("--skip-md5", action="store_true", help="do not hash the zips (slow)")
    ver.add_argument("--decode", action="store_true",
                     help="also decode every train and val image and list the missing, "
                          "truncated or undecodable files; exit code 1 if any")
    ver.add_argument("--workers", type=int, default=None,
                     help="decoding processes for --decode (default: one per CPU)")
    spl = dsub.add_parser("split", help="split one COCO annotation file into train and val, "
                          "with a dataset.yaml", description="Split a COCO export by image "
                          "(seeded): OUT/train.json, OUT/val.json and OUT/dataset.yaml, whose "
                          "image folder points at the export's images.")
    spl.add_argument("annotations", metavar="ANNOTATIONS.json")
    spl.add_argument("--val", type=float, default=0.1, help="share of images for val (0-1)")
    spl.add_argument("--seed", type=int, default=0)
    spl.add_argument("--out", required=True, metavar="DIR", help="where the files go")
    spl.add_argument("--images", metavar="FOLDER",
                     help="the folder file_name is relative to (default: images/ beside the "
                          "annotation file, else ../images, else the annotation file's folder)")
    sta = dsub.add_parser("stats", help="classes, objects per image, box sizes and the "
                          "reference anchors' coverage of a dataset",
                          description="A first look at a dataset, before `ssdwb anchors fit`.")
    sta.add_argument("data", metavar="DATA", help="dataset folder or file (.yaml, .json)")
    sta.add_argument("--split", choices=("train", "val"), default="train")
    sta.add_argument("--plot", metavar="FILE", help="also save a figure (.png, .svg, .pdf)")
    data.set_defaults(func=_data)

    anc = sub.add_parser("anchors", help="fit default boxes to a dataset")
    asub = anc.add_subparsers(dest="anchors_cmd", required=True)
    fit = asub.add_parser("fit", help="search box types per level for a dataset's GT boxes "
                          "(coverage at IoU > 0.5 per COCO size, worst size weighted up) and "
                          "write a design JSON for `--set anchors=FILE`")
    fit.add_argument("--data", required=True,
                     help="dataset folder (COCO 2017 or synthetic) or file (.yaml, .json)")
    fit.add_argument("--split", choices=("train", "val"), default="train")
    fit.add_argument("--budget", type=int, default=8732,
                     help="most default boxes (default: the reference's 8732)")
    fit.add_argument("--max-types", type=int, default=8, help="most box types per level")
    fit.add_argument("--sample", type=int, default=20000,
                     help="GT boxes the search looks at (coverage is reported on all)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--out", help="the design file (default: anchors/<dataset name>.json: "
                     "the folder's name, or the dataset file's name or stem)")
    anc.set_defaults(func=_anchors)

    _add_run_subcommands(sub)
    _add_sweep_subcommands(sub)
    _add_use_subcommands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
