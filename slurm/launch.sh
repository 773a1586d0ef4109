#!/bin/bash
# The part of an ssdwb batch job after its config is known, shared by slurm/run.slurm (one run)
# and slurm/sweep.slurm (one run of a sweep's job array). Sourced; defines functions, runs nothing.
#
#   launch_ranks REQUEUE_ID   # srun's one rank per DGXNGPU on every node, each running
#                             # slurm/run_and_time.sh; then, if the run stopped on a signal
#                             # (USR1 near the time limit, preemption), `scontrol requeue
#                             # REQUEUE_ID` puts it back in the queue to resume
#
# Needs SSDWB_ROOT, LOGDIR, RUN_ID, DGXNGPU and what run_and_time.sh reads. REQUEUE_ID is the job
# itself: $SLURM_JOB_ID for a plain job, ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} for an
# array task (an array task's SLURM_JOB_ID is its own id, but the first task's equals the
# array's, and `scontrol requeue <array id>` would requeue every task).

launch_ranks() {
    local requeue_id=$1 status
    # CPUs per rank: the node's CPUs split between its DGXNGPU ranks (slurm/cpu_binding.sh),
    # given to srun itself: since Slurm 22.05 srun does not inherit --cpus-per-task from sbatch,
    # and a step without it has 1 CPU per task, where task/affinity or task/cgroup may pin a
    # rank and all its loader workers to one CPU. --cpus-per-task implies --exact;
    # --cpu-bind=cores pins each rank and its workers to its own cores (only where TaskPlugin
    # includes task/affinity; the tests' local cluster has task/none: no pinning there).
    # shellcheck source=/dev/null
    source "$SSDWB_ROOT/slurm/cpu_binding.sh"
    CPUS_PER_TASK=$(cpus_per_task)
    if ! loader_fits "${NUM_WORKERS:-0}" "$CPUS_PER_TASK"; then
        echo "warning: NUM_WORKERS=$NUM_WORKERS loader processes per rank, but each rank has $CPUS_PER_TASK CPU(s): use at most $((CPUS_PER_TASK - 1)) (one CPU for the training process)" >&2
    fi

    # One process group over all nodes: rank 0's node and a port derived from the job id (an
    # array task's own id: tasks sharing a node get different ports). The address is the
    # node's NodeAddr (what Slurm itself uses to reach it; it defaults to the node name).
    MASTER_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    MASTER_ADDR=$(scontrol show node "$MASTER_NODE" -o 2>/dev/null | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
    MASTER_ADDR=${MASTER_ADDR:-$MASTER_NODE}
    MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
    export MASTER_ADDR MASTER_PORT
    local run="$LOGDIR/$RUN_ID"
    if [[ -f "$run/checkpoint.pt" ]]; then
        export RESUME=true
        echo "resuming $run (restart ${SLURM_RESTART_COUNT:-0})"
    else
        export RESUME=false
    fi
    echo "ssdwb: SYSTEM=${SYSTEM:-none} nodes=${SLURM_JOB_NUM_NODES:-1} tasks=${SLURM_NTASKS:-1} grad_accum=${GRAD_ACCUM:-1} cpus/task=$CPUS_PER_TASK master=$MASTER_ADDR:$MASTER_PORT run=$run seed=$SEED"

    set +e
    srun --ntasks-per-node="$DGXNGPU" --cpus-per-task="$CPUS_PER_TASK" --cpu-bind=cores \
        --kill-on-bad-exit=1 --export=ALL \
        bash "$SSDWB_ROOT/slurm/run_and_time.sh"
    status=$?
    set -e

    # Stopped by USR1/TERM: the run checkpointed; put the job back in the queue to resume it.
    if [[ -f "$run/summary.json" ]] && grep -q '"reason": "stopped by signal' "$run/summary.json"; then
        echo "ssdwb: run $RUN_ID checkpointed after a signal; requeueing job $requeue_id"
        scontrol requeue "$requeue_id"
        return 0
    fi
    return $status
}

# ssdwb_command BIND...: sets the array SSDWB to how this job calls ssdwb: inside $CONTAINER
# (an Apptainer SIF, with the folders given bound) when it is set, else from the checkout's venv
# ($SSDWB_VENV, default $SSDWB_ROOT/.venv).
ssdwb_command() {
    # shellcheck disable=SC2034  # SSDWB is read by the scripts that source this file
    if [[ -n "${CONTAINER:-}" ]]; then
        local binds
        binds=$(IFS=,; echo "$*")
        SSDWB=(apptainer exec --nv --bind "$binds" "$CONTAINER" ssdwb)
    else
        SSDWB=("${SSDWB_VENV:-$SSDWB_ROOT/.venv}/bin/ssdwb")
    fi
}
