#!/bin/bash
# 2 nodes x 2 CPU ranks, gloo, the synthetic dataset, a tiny run: checks that a cluster without
# GPUs launches ONE process group across nodes, writes the run folder and resumes after requeue.
#   DATADIR=data/shapes-tiny SYSTEM=CPU2x2 sbatch -N 2 -n 4 slurm/run.slurm
# Sourced by slurm/run.slurm; any variable can be overridden from the environment.
export DGXNNODES=2                          # nodes
export DGXNGPU=2                            # ranks per node (CPU processes)
export BATCHSIZE=${BATCHSIZE:-2}            # per rank: global batch 8
export LR=${LR:-0.1}
export LR_SCALING=${LR_SCALING:-linear}
export WD=${WD:-5e-4}
export WARMUP=${WARMUP:-4}                  # iterations
export EVAL_BATCHSIZE=${EVAL_BATCHSIZE:-4}
export NUMEPOCHS=${NUMEPOCHS:-2}
export EVAL_AT=${EVAL_AT:-[1,2]}            # epochs (the demo preset counts in epochs)
export PRESET=${PRESET:-demo}
export DEVICE=${DEVICE:-cpu}
export AMP=${AMP:-off}                      # float32 on CPU
export CHANNELS_LAST=${CHANNELS_LAST:-false}
export NUM_WORKERS=${NUM_WORKERS:-0}        # in-process loading: mid-epoch resume is exact;
                                            # 1 CPU per rank here (2 per node, 2 ranks)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export WALLTIME=${WALLTIME:-00:30:00}
