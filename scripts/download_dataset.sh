#!/usr/bin/env bash
# Downloads, md5-checks and extracts COCO 2017 into DATADIR (default ./coco), as the MLPerf
# reference's download_dataset.sh did. Resumes partial downloads when run again.
set -euo pipefail
DATADIR=${1:-${DATADIR:-coco}}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
[ -x "$py" ] || py=python3
exec "$py" -m ssdwb.cli data download "$DATADIR"
