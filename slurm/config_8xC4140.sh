#!/bin/bash
# 8 x Dell PowerEdge C4140 (32 x V100): Dell EMC's MLPerf v0.6 SSD config (SPEC.md).
# Sourced by slurm/run.slurm; any variable can be overridden from the environment.
export DGXNNODES=8                          # nodes
export DGXNGPU=4                            # GPUs per node = ranks per node
export BATCHSIZE=${BATCHSIZE:-32}           # per GPU: global batch 1024
export LR=${LR:-3.2e-3}                     # Dell's base-LR flag, rounded by LR_SCALING=dell
export LR_SCALING=${LR_SCALING:-dell}       # 2.5e-3 * max(1, round(LR/2.5e-3 * gbs/32))
export WD=${WD:-1.3e-4}
export WARMUP=${WARMUP:-650}                # iterations
export EVAL_BATCHSIZE=${EVAL_BATCHSIZE:-160}
export NUMEPOCHS=${NUMEPOCHS:-70}
export PRESET=${PRESET:-reference}
export DEVICE=${DEVICE:-cuda}
export AMP=${AMP:-fp16}                     # mixed precision (GradScaler): V100 tensor cores
export CHANNELS_LAST=${CHANNELS_LAST:-true} # NHWC convolutions: faster on tensor cores
export NUM_WORKERS=${NUM_WORKERS:-8}        # loader processes per rank: at most CPUs/rank - 1
                                            # (a 40-core C4140: 10 per rank; run.slurm warns)
export WALLTIME=${WALLTIME:-01:00:00}
