#!/bin/bash
# 16 x Dell PowerEdge C4140 (64 x V100). Dell EMC shipped no 16-node SSD config: NVIDIA's
# 64-GPU v0.6 global batch with Dell's LR flag, weight decay and warmup of its 4x and 8x
# configs, an ssdwb choice (the table's comments say which value comes from where).
# Sourced by slurm/run.slurm; any variable can be overridden from the environment. The system's
# numbers are its row of ssdwb/lab/c4140_systems.csv, the one table of the C4140 systems.
# shellcheck source=slurm/system_table.sh
source "$(dirname "${BASH_SOURCE[0]}")/system_table.sh"
system_row 16xC4140 || return
export DGXNNODES=$ROW_NODES                 # nodes
export DGXNGPU=$ROW_GPUS_PER_NODE           # GPUs per node = ranks per node
export BATCHSIZE=${BATCHSIZE:-$ROW_BATCH_PER_GPU}  # per GPU
export LR=${LR:-$ROW_LR_FLAG}               # Dell's base-LR flag, rounded by LR_SCALING=dell
export LR_SCALING=${LR_SCALING:-dell}       # 2.5e-3 * max(1, round(LR/2.5e-3 * gbs/32))
export WD=${WD:-$ROW_WEIGHT_DECAY}
export WARMUP=${WARMUP:-$ROW_WARMUP}        # iterations
export EVAL_BATCHSIZE=${EVAL_BATCHSIZE:-160}
export NUMEPOCHS=${NUMEPOCHS:-$ROW_EPOCHS}  # at most: 80 for 1xC4140, 70 for the others
export PRESET=${PRESET:-reference}
export DEVICE=${DEVICE:-cuda}
export AMP=${AMP:-fp16}                     # mixed precision (GradScaler): V100 tensor cores
export CHANNELS_LAST=${CHANNELS_LAST:-true} # NHWC convolutions: faster on tensor cores
export NUM_WORKERS=${NUM_WORKERS:-8}        # loader processes per rank: at most CPUs/rank - 1
                                            # (a 40-core C4140: 10 per rank; run.slurm warns)
export WALLTIME=${WALLTIME:-$ROW_WALLTIME}
