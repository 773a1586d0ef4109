#!/usr/bin/env bash
# The wheels bench/bench_gpu.py needs beyond what a lent GPU machine has (torch, torchvision,
# numpy, pillow, tqdm are there; the COCO evaluators are not), for its Python 3.12, downloaded
# here into .whl/ (git-ignored). On the device, before the bench:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=.:/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl faster-coco-eval pycocotools
ls .whl
