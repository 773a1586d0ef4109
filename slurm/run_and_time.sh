#!/bin/bash
# One rank of an ssdwb Slurm job (started by slurm/run.slurm or slurm/sweep.slurm through srun): runs
# notebooks/train.ipynb with papermill and the config's parameters, then, on rank 0, renders the
# run's report and prints the MLPerf-style result line
#   RESULT,OBJECT_DETECTION,<seed>,<seconds from run start to stop>,<user>,<start time>
# The seconds are the run's own training clock (summary.json: time_to_train_s, summed over
# requeues); without a summary, the wall time of this step.
set -euo pipefail

rank=${SLURM_PROCID:-0}
root=${SSDWB_ROOT:?}
run="$LOGDIR/$RUN_ID"
if [[ "$rank" == 0 ]]; then
    out="$run/train.ipynb"
else
    out="$run/ranks/train_rank${rank}.ipynb"
fi
mkdir -p "$(dirname "$out")" "$run/ranks"

# NCCL's flight recorder: the last collectives of each rank, dumped when a collective times out
# (ssdwb's watchdog names the stalled rank first; the dump shows which collective it missed):
# runs/<id>/ranks/nccl_trace_rank_<N>. No effect on gloo (CPU) runs.
export TORCH_NCCL_TRACE_BUFFER_SIZE=${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}
export TORCH_NCCL_DUMP_ON_TIMEOUT=${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}
export TORCH_NCCL_DEBUG_INFO_TEMP_FILE=${TORCH_NCCL_DEBUG_INFO_TEMP_FILE:-$run/ranks/nccl_trace_rank_}

# shellcheck source=/dev/null
source "$root/slurm/launch.sh"
ssdwb_command "$root" "$DATADIR" "$LOGDIR"

params=(-r preset "$PRESET" -r data_dir "$DATADIR" -r run_dir "$LOGDIR" -r run_id "$RUN_ID"
        -p resume "$RESUME" -p seed "$SEED")
# A system's recipe (slurm/config_$SYSTEM.sh); a sweep run without --system has none: its preset,
# --set and grid values (EXTRA_JSON) are the whole config.
if [[ -n "${SYSTEM:-}" ]]; then
    params+=(-p batch_size "$BATCHSIZE" -p lr "$LR" -r lr_scaling "$LR_SCALING"
             -p weight_decay "$WD" -p warmup "$WARMUP" -p eval_batch_size "$EVAL_BATCHSIZE"
             -p epochs "$NUMEPOCHS" -r device "$DEVICE" -p num_workers "$NUM_WORKERS" -r amp "$AMP"
             -p channels_last "$CHANNELS_LAST")
    [[ -n "${EVAL_AT:-}" ]] && params+=(-p eval_at "$EVAL_AT")
fi
# The notebook's `extra` list (JSON), applied last: EXTRA_JSON (a sweep run's --set and grid
# values), EXTRA="key=value ...", and with a system its MLPerf platform name and the
# micro-batches per step (run.slurm derives them from GLOBAL_BATCH).
extra=$(python3 -c 'import json, sys
extra = json.loads(sys.argv[1] or "[]") + sys.argv[2].split()
if sys.argv[3]:
    extra += ["submission_platform=" + sys.argv[3], "grad_accum=" + sys.argv[4]]
print(json.dumps(extra))' "${EXTRA_JSON:-}" "${EXTRA:-}" "${SYSTEM:-}" "${GRAD_ACCUM:-1}")
params+=(-p extra "$extra")

# Slurm signals every process of the step (proctrack), this shell included: keep the shell
# alive (bash runs a trap only once the foreground command returns) so the notebook can
# checkpoint and finish; `ssdwb notebook` passes the signal on to the kernel.
trap 'echo "rank $rank: signal received; the run checkpoints and stops"' USR1 TERM

start=$(date +%s)
start_fmt=$(date +%Y-%m-%d\ %r)
echo "STARTING TIMING RUN AT $start_fmt (rank $rank)"
cd "$root"
log=()
[[ "$rank" == 0 ]] && log=(--log-output)  # rank 0's prints (one line per eval) go to the job log
"${SSDWB[@]}" notebook train "$out" "${params[@]}" --no-progress "${log[@]}"
end=$(date +%s)

if [[ "$rank" == 0 ]]; then
    "${SSDWB[@]}" report "$run" || echo "warning: no report for $run" >&2
    seconds=$((end - start))
    if [[ -f "$run/summary.json" ]]; then
        seconds=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["time_to_train_s"]))' "$run/summary.json")
    fi
    echo "ENDING TIMING RUN AT $(date +%Y-%m-%d\ %r)"
    echo "RESULT,OBJECT_DETECTION,${SEED},${seconds},${SLURM_JOB_USER:-${USER:-$(id -un)}},${start_fmt}"
fi
