"""A real two-node Slurm cluster on 127.0.0.1 for the tests: munged, slurmctld and two
``slurmd -N nodeK`` daemons on their own ports, all state under one temporary folder.

Needs Debian's ``slurm-wlm`` and ``munge`` (``make system-deps`` installs them as root; the
tests never install anything, they skip and say why) and a slurmd built with multiple-slurmd
support (Debian's is). Every daemon started here is stopped by PID on ``stop()``; this sandbox
leaves zombies behind, so liveness is checked with ``munge -n`` / ``scontrol ping`` and process
state, never by process name.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def missing_requirements() -> str | None:
    """Why a local cluster cannot run here, or None."""
    for tool in ("slurmctld", "slurmd", "sbatch", "munged", "munge"):
        if shutil.which(tool) is None:
            return (f"{tool} not found: Debian's slurm-wlm and munge are not installed "
                    f"(`make system-deps` installs them, as root)")
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd runs jobs as their user)"
    return None


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class LocalCluster:
    """``with LocalCluster(tmp) as c: c.sbatch(...)``; ``c.env`` has SLURM_CONF for commands."""

    def __init__(self, root: Path, nodes: int = 2, cpus: int = 2):
        self.root = Path(root)
        self.nodes = [f"node{i + 1}" for i in range(nodes)]
        self.cpus = cpus
        self.pids: list[int] = []
        self.started_munged = False
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # --- set-up --------------------------------------------------------------------------
    def _write_conf(self) -> None:
        host = socket.gethostname()
        ctld_port, *node_ports = _free_ports(1 + len(self.nodes))
        for d in ("state", "log", *[f"spool-{n}" for n in self.nodes]):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        lines = [
            "ClusterName=ssdwbtest",
            # job ids (and so run.slurm's rendezvous ports) differ between test clusters
            f"FirstJobId={random.randrange(1000, 60000)}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # a requeued job waits cred_expire seconds before it may start again (default 120)
            "AuthInfo=cred_expire=10",
            f"StateSaveLocation={self.root}/state",
            f"SlurmdSpoolDir={self.root}/spool-%n",
            f"SlurmctldPidFile={self.root}/slurmctld.pid",
            f"SlurmdPidFile={self.root}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root}/log/slurmctld.log",
            f"SlurmdLogFile={self.root}/log/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SlurmdParameters=config_overrides",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobRequeue=1",
            "KillWait=30",
            "InactiveLimit=0",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
        ]
        for name, port in zip(self.nodes, node_ports):
            lines.append(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                         f"CPUs={self.cpus} RealMemory=8000 State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES "
                     f"MaxTime=INFINITE State=UP OverSubscribe=NO")
        self.conf.write_text("\n".join(lines) + "\n")

    def _munge_ok(self) -> bool:
        r = subprocess.run("munge -n | unmunge", shell=True, capture_output=True)
        return r.returncode == 0

    def _start_munged(self) -> None:
        if self._munge_ok():
            return
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create"], check=True)
        for p in ("/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge"):
            Path(p).mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(["munged", "--foreground", "--force"],
                                stdout=open(self.root / "log" / "munged.log", "w"),
                                stderr=subprocess.STDOUT)
        self.pids.append(proc.pid)
        self.started_munged = True
        for _ in range(100):
            if self._munge_ok():
                return
            time.sleep(0.1)
        raise RuntimeError("munged did not start: " + (self.root / "log/munged.log").read_text())

    def start(self) -> LocalCluster:
        self._write_conf()
        self._start_munged()
        ctld = subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(self.conf)],
                                stdout=open(self.root / "log" / "slurmctld.out", "w"),
                                stderr=subprocess.STDOUT, env=self.env)
        self.pids.append(ctld.pid)
        self._wait(lambda: self.run(["scontrol", "ping"], check=False).stdout.count("UP") > 0,
                   "slurmctld", 60)
        for name in self.nodes:
            d = subprocess.Popen(["slurmd", "-D", "-N", name, "-f", str(self.conf)],
                                 stdout=open(self.root / "log" / f"slurmd-{name}.out", "w"),
                                 stderr=subprocess.STDOUT, env=self.env)
            self.pids.append(d.pid)

        def idle() -> bool:
            out = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False).stdout.split()
            states = dict(zip(out[::2], out[1::2]))
            return all(states.get(n, "").startswith("idle") for n in self.nodes)

        self._wait(idle, "both slurmd nodes idle", 90)
        return self

    def _wait(self, ok, what: str, timeout: float) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if ok():
                return
            if not all(_alive(p) for p in self.pids):
                break
            time.sleep(0.5)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                         for p in sorted((self.root / "log").glob("*")) if p.is_file())
        raise RuntimeError(f"local Slurm: {what} not reached in {timeout:.0f} s\n{logs}")

    # --- use ----------------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env={**self.env, **kw.pop(
            "env", {})}, check=check, **kw)

    def sbatch(self, args: list[str], env: dict | None = None, cwd: str | None = None) -> int:
        out = self.run(["sbatch", "--parsable", *args], env=env or {}, cwd=cwd).stdout
        return int(out.strip().split(";")[0])

    def job_state(self, job: int) -> str:
        out = self.run(["scontrol", "show", "job", str(job)], check=False).stdout
        for tok in out.split():
            if tok.startswith("JobState="):
                return tok.split("=", 1)[1]
        return "UNKNOWN"

    def job_field(self, job: int, field: str) -> str:
        out = self.run(["scontrol", "show", "job", str(job)], check=False).stdout
        for tok in out.split():
            if tok.startswith(field + "="):
                return tok.split("=", 1)[1]
        return ""

    def wait_job(self, job: int, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                         "NODE_FAIL", "OUT_OF_MEMORY"), timeout: float = 900) -> str:
        t0 = time.time()
        while time.time() - t0 < timeout:
            s = self.job_state(job)
            if s in states:
                return s
            time.sleep(1)
        raise TimeoutError(f"job {job} still {self.job_state(job)} after {timeout:.0f} s")

    # --- tear-down ------------------------------------------------------------------------------
    def _job_processes(self) -> list[int]:
        """Every process started for this cluster's jobs: slurmstepd, the batch script and
        the tasks all inherit our SLURM_CONF (slurmstepd daemonizes, so it is no child of ours).
        Children of the daemons are theirs (slurmctld's slurmscriptd ignores SIGTERM and goes
        with slurmctld; killing it first made slurmctld's own exit wait 20 s)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) not in self.pids and int(d.name) != os.getpid():
                try:
                    parent = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    if parent not in self.pids and mark in (d / "environ").read_bytes().split(b"\0"):
                        pids.append(int(d.name))
                except (OSError, IndexError, ValueError):
                    pass
        return pids

    def stop(self) -> None:
        # Cancel jobs first so slurmstepd cleans up; then sweep what is left, so a failed test
        # never leaves a rank holding the rendezvous port of the next cluster.
        if any(_alive(p) for p in self.pids):
            self.run(["scancel", "--full", "--user", str(os.geteuid())], check=False)
            t0 = time.time()
            while time.time() - t0 < 20 and self.run(["squeue", "-h"], check=False).stdout.strip():
                time.sleep(0.5)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._job_processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            t0 = time.time()
            while any(_alive(p) for p in self._job_processes()) and time.time() - t0 < 10:
                time.sleep(0.2)
        for pid in reversed(self.pids):
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        t0 = time.time()
        while any(_alive(p) for p in self.pids) and time.time() - t0 < 20:
            time.sleep(0.2)
        for pid in self.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids:  # reap our children so they do not linger as zombies
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
