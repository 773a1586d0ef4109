"""Process-group set-up from the launcher's environment.

Launch one process per GPU (or per CPU rank) with either

* ``torchrun --nproc-per-node=4 -m ssdwb train ...``: RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR and MASTER_PORT come from torchrun; or
* ``srun`` under Slurm (``slurm/run.slurm``, or a plain ``srun python -m ssdwb train``):
  SLURM_PROCID, SLURM_STEP_NUM_TASKS (or SLURM_NTASKS) and SLURM_LOCALID give the rank, the world
  size and the local rank. MASTER_ADDR and MASTER_PORT come from the environment when set (the
  batch script exports them); otherwise they are derived the same way the batch script does it:
  the first host of the step's node list, and port 20000 + job id mod 20000, so every node joins
  one process group. A multi-task launch where neither works is refused with what to set,
  instead of every task training alone as rank 0 into one folder.

NCCL with one GPU per process (``cuda:LOCAL_RANK``) on CUDA, gloo on CPU. One process without
any of these variables runs alone, without a process group.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch

__all__ = ["DistInfo", "init_distributed", "env_rank", "first_host", "slurm_rendezvous",
           "side_group", "long_wait", "shutdown"]


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_rank(env=None) -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's or Slurm's variables; (0, 1, 0) alone.

    Under Slurm the world is the srun step's task count (SLURM_STEP_NUM_TASKS): a notebook or
    shell inside an allocation but outside srun (SLURM_NTASKS set, no step) runs alone, unless
    MASTER_ADDR says a process group is meant."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env:
        tasks = env.get("SLURM_STEP_NUM_TASKS") or (
            env.get("SLURM_NTASKS") if "MASTER_ADDR" in env else None)
        if tasks:
            return int(env["SLURM_PROCID"]), int(tasks), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``node[03-05,9],gpu1`` -> ``node03``."""
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not head or not head.group(1):
        raise ValueError(f"cannot read the Slurm node list {nodelist!r}")
    prefix, ranges = head.group(1), head.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def slurm_rendezvous(env=None) -> tuple[str, str]:
    """(MASTER_ADDR, MASTER_PORT) for a Slurm step, as ``slurm/run.slurm`` derives them."""
    env = os.environ if env is None else env
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get(
        "SLURM_NODELIST")
    job = env.get("SLURM_JOB_ID")
    if not nodes or not job:
        raise RuntimeError(
            "a multi-task Slurm launch without MASTER_ADDR/MASTER_PORT, and no SLURM_JOB_ID and "
            "SLURM_STEP_NODELIST to derive them from: export MASTER_ADDR (the first node's "
            "hostname) and MASTER_PORT (a free port) before srun, or use slurm/run.slurm")
    return env.get("MASTER_ADDR") or first_host(nodes), env.get("MASTER_PORT") or str(
        20000 + int(job) % 20000)


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    rank, world, local = env_rank()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing and "SLURM_PROCID" in os.environ:
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = slurm_rendezvous()
        elif missing:
            raise RuntimeError(f"world size {world} but {missing} not set: export them (the "
                               f"first node's hostname and a free port) before launching")
        torch.distributed.init_process_group(
            "nccl" if use_cuda else "gloo", init_method="env://", rank=rank, world_size=world,
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local, dev)


def side_group(timeout_s: int):
    """A gloo group over every rank with its own (long) timeout, for the waits on rank 0 alone:
    the main group (NCCL on GPUs) then never waits longer than its own timeout. None on one
    rank."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return None
    return torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


def long_wait(group, timeout_s: int) -> None:
    """Every rank waits here until all have arrived (rank 0 last, after scoring or writing),
    at most ``timeout_s``; rank 0 names the ranks that did not arrive when it fails."""
    if group is not None:
        torch.distributed.monitored_barrier(group=group, timeout=timedelta(seconds=timeout_s),
                                            wait_all_ranks=True)


def shutdown() -> None:
    """Ends the process group at the end of a command (left to the interpreter's exit, gloo's
    threads can abort the process: "terminate called without an active exception")."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
