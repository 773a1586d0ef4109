"""Process-group set-up from the launcher's environment.

Launch one process per GPU (or per CPU rank) with either

* ``torchrun --nproc-per-node=4 -m ssdwb.train ...``: RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR and MASTER_PORT come from torchrun; or
* ``srun`` under Slurm (``slurm/run.slurm``): SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID give
  the rank, the world size and the local rank; MASTER_ADDR (first host of the job) and
  MASTER_PORT (derived from the job id) are exported by the batch script, so every node joins
  one process group.

NCCL with one GPU per process (``cuda:LOCAL_RANK``) on CUDA, gloo on CPU. One process without
any of these variables runs alone, without a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

__all__ = ["DistInfo", "init_distributed", "env_rank"]


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


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's or Slurm's variables; (0, 1, 0) alone."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


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
        if missing:
            raise RuntimeError(f"world size {world} but {missing} not set: export them (the "
                               f"first node's hostname and a free port) before launching")
        torch.distributed.init_process_group(
            "nccl" if use_cuda else "gloo", init_method="env://", rank=rank, world_size=world,
            timeout=timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local, dev)
