#!/bin/bash
# Builds the Apptainer image of ssdwb from containers/ssdwb.def and runs its %test section.
#   containers/build_container.sh                 # -> containers/ssdwb.sif
#   containers/build_container.sh /scratch/ssdwb.sif
#   SANDBOX=1 containers/build_container.sh /scratch/ssdwb-sandbox   # a writable directory
#   FAKEROOT=1 containers/build_container.sh      # build without root (needs subuid mappings)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${1:-$here/ssdwb.sif}

if ! command -v apptainer >/dev/null 2>&1; then
    echo "error: apptainer not found (https://apptainer.org/docs/admin/main/installation.html)" >&2
    exit 1
fi
args=()
if [[ "${SANDBOX:-0}" == 1 ]]; then
    args+=(--sandbox)
fi
if [[ "${FAKEROOT:-0}" == 1 ]]; then
    args+=(--fakeroot)
fi

# %files paths in the definition are relative to the checkout.
cd "$root"
apptainer build "${args[@]}" "$out" containers/ssdwb.def
apptainer test "$out"
echo "built $out"
