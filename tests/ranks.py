"""Launching ``python -m ssdwb train`` as N gloo ranks, the way torchrun would (for the tests of
multi-rank behaviour that need separate processes to signal or stop)."""

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log_dir, tag: str, ranks: int = 2) -> list[subprocess.Popen]:
    """``ranks`` processes of ``python -m ssdwb train ARGS``; rank r's output goes to
    ``log_dir/<tag>_rank<r>.log``."""
    port = str(free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    procs = []
    for rank in range(ranks):
        out = open(log_dir / f"{tag}_rank{rank}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ssdwb", "train", *args],
            env={**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
                 "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"},
            stdout=out, stderr=subprocess.STDOUT))
        out.close()
    return procs


def wait_all(procs: list[subprocess.Popen], log_dir, tag: str, timeout: float = 600,
             status: int = 0) -> None:
    """Every rank ends with ``status`` (1: a run stopped by ``max_iters``), or the assertion
    shows rank 0's last output."""
    codes = [p.wait(timeout=timeout) for p in procs]
    assert codes == [status] * len(procs), (log_dir / f"{tag}_rank0.log").read_text()[-3000:]
