"""Rank and rendezvous from the launcher's environment (no process group is started here)."""

import pytest

from ssdwb.engine.distributed import env_rank, first_host, init_distributed, slurm_rendezvous


def test_srun_step_gives_the_world_without_master_addr():
    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8",
           "SLURM_LOCALID": "1"}
    assert env_rank(env) == (5, 8, 1)


def test_allocation_shell_outside_srun_runs_alone():
    assert env_rank({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == (0, 1, 0)
    assert env_rank({"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "MASTER_ADDR": "n1"}) == (1, 4, 0)


def test_torchrun_variables_win():
    assert env_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3",
                     "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}) == (3, 4, 3)


@pytest.mark.parametrize("nodes,host", [("node[03-05,9],gpu1", "node03"), ("gpu7", "gpu7"),
                                        ("c4140-[12,14]", "c4140-12"), ("a,b", "a")])
def test_first_host_of_a_node_list(nodes, host):
    assert first_host(nodes) == host


def test_rendezvous_derived_as_run_slurm_does():
    env = {"SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "node[2-3]"}
    assert slurm_rendezvous(env) == ("node2", str(20000 + 123456 % 20000))
    assert slurm_rendezvous({**env, "MASTER_PORT": "999"}) == ("node2", "999")


def test_multi_task_launch_that_cannot_rendezvous_is_refused(monkeypatch):
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "SLURM_JOB_ID",
              "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    with pytest.raises(RuntimeError, match="export MASTER_ADDR"):
        init_distributed("cpu")
