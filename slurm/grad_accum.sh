#!/bin/bash
# A recipe's global batch on however many ranks a job has (issue: the 4-node recipe on 1 node).
# Sourced by slurm/run.slurm:
#
#   grad_accum_for GLOBAL_BATCH BATCHSIZE RANKS   # prints the micro-batches per step (k), or
#                                                 # fails naming what would divide
#
# The run then computes what GLOBAL_BATCH / BATCHSIZE ranks compute (ssdwb's grad_accum: each
# rank accumulates k micro-batches of BATCHSIZE images per optimiser step).

grad_accum_for() {
    local global=$1 batch=$2 ranks=$3
    local step=$((batch * ranks))
    if (( global < step || global % step )); then
        echo "error: GLOBAL_BATCH=$global is not a multiple of BATCHSIZE ($batch) x ranks ($ranks) = $step; use a multiple of $step, or change BATCHSIZE or the node count" >&2
        return 1
    fi
    echo $((global / step))
}
