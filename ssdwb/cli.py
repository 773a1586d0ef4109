"""The ``ssdwb`` command: ``ssdwb data {synth,download,verify}``, ``ssdwb train``, ``ssdwb eval``,
``ssdwb demo``. Thin: each subcommand parses flags and calls the package."""

from __future__ import annotations

import argparse
import logging
import sys


def _data(args) -> int:
    if args.data_cmd == "synth":
        from ssdwb.data.synthetic import make_shapes_coco
        from ssdwb.runs import DEMO_SHAPES

        shapes = DEMO_SHAPES if args.profile == "demo" else {}
        out = make_shapes_coco(args.out_dir, args.train, args.val, seed=args.seed, **shapes)
        print(f"synthetic COCO-format dataset in {out}")
        return 0
    from ssdwb.data.download import DatasetError, download_coco, verify_coco

    try:
        if args.data_cmd == "download":
            report = download_coco(args.datadir, keep_zips=not args.remove_zips)
        else:
            report = verify_coco(args.datadir, check_zips=not args.skip_md5)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(report))
    print("ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ssdwb", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    data = sub.add_parser("data", help="datasets: synthetic, COCO download and verification")
    dsub = data.add_subparsers(dest="data_cmd", required=True)
    synth = dsub.add_parser("synth", help="write the synthetic shapes dataset")
    synth.add_argument("out_dir")
    synth.add_argument("--train", type=int, default=1000, help="train images")
    synth.add_argument("--val", type=int, default=200, help="val images")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--profile", choices=("full", "demo"), default="full",
                       help="full: 320-640 px images, 1-12 objects from 12 px; demo: what "
                            "`make demo` uses (300x300, 1-6 objects from 24 px)")
    dl = dsub.add_parser("download", help="fetch, md5-check and extract COCO 2017")
    dl.add_argument("datadir")
    dl.add_argument("--remove-zips", action="store_true", help="delete each zip once extracted")
    ver = dsub.add_parser("verify", help="check a COCO 2017 copy (zips and/or extracted)")
    ver.add_argument("datadir")
    ver.add_argument("--skip-md5", action="store_true", help="do not hash the zips (slow)")
    data.set_defaults(func=_data)

    from ssdwb.train import add_subcommands

    add_subcommands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
