#!/bin/bash
# CPUs per rank for slurm/run.slurm's srun (sourced by it; defines functions, runs nothing).
#
# cpus_per_task: the CPUs the job holds on this node split evenly between the node's ranks,
# at least 1. The CPUs: SLURM_CPUS_ON_NODE (set in the batch script), else the first count of
# SLURM_JOB_CPUS_PER_NODE ("40(x2),20" -> 40), else 1; the ranks: DGXNGPU (the config's ranks
# per node), else 1. CPUS_PER_TASK, when set, is used as it is. The batch node's count stands
# for every node: the configs assume identical nodes.
# With `#SBATCH --exclusive` the job holds whole nodes: a C4140 with 2 x 20-core Xeons
# (40 CPUs, 80 with hyperthreads as CPUs) gives each of its 4 ranks 10 (20); the local test
# cluster (2 CPUs per node, 2 ranks per node) gives 1.
cpus_per_task() {
    if [[ -n "${CPUS_PER_TASK:-}" ]]; then
        echo "$CPUS_PER_TASK"
        return
    fi
    local cpus=${SLURM_CPUS_ON_NODE:-${SLURM_JOB_CPUS_PER_NODE:-1}}
    cpus=${cpus%%[!0-9]*}
    local ranks=${DGXNGPU:-1}
    ranks=${ranks%%[!0-9]*}
    local n=$(( ${cpus:-1} / ( ${ranks:-1} > 0 ? ${ranks:-1} : 1 ) ))
    echo $(( n > 1 ? n : 1 ))
}

# loader_fits NUM_WORKERS CPUS: true when a rank's loader processes leave one of its CPUS to
# the training process itself (NUM_WORKERS <= CPUS - 1).
loader_fits() {
    (( $1 <= $2 - 1 ))
}
