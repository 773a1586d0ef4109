"""No silent hangs: each rank's heartbeat file, and a watchdog that ends a stalled run with a
verdict naming the stalled ranks.

A rank that stalls (a dead node, a stuck file read, a SIGSTOPped process) leaves the others
waiting in a collective. gloo's timeout error names no peer, and NCCL's async error handling
kills the process before Python can write anything. So every rank runs two threads:

* the heartbeat writes ``ranks/heartbeat_rankN.json`` every few seconds: the loop's phase and
  iteration, when they last changed, and when the file was written. The loop only sets Python
  attributes (no host sync); a stopped or dead process stops writing.
* the watchdog checks this rank's own progress. When the phase has not changed for longer than
  its limit (just under the process group's timeout, or the long-wait limit in the phases that
  wait for rank 0 alone: set-up, evaluation, checkpoint), it reads every rank's heartbeat, names
  the stale ranks with their last phase and iteration, writes the verdict (rank 0: summary.json
  with status ``failed``; another rank, when rank 0 is the stale one:
  ``ranks/failure_rankN.json``) and ends the process with ``os._exit(1)``: destroying a broken
  process group can itself hang.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ssdwb.files import atomic_json

__all__ = ["Heartbeat", "Watchdog", "LONG_PHASES", "stale_ranks"]

log = logging.getLogger(__name__)

# Phases in which a rank waits for rank 0 alone (scoring, writing the checkpoint) or for the
# slowest rank's start-up: they have the long limit.
LONG_PHASES = ("setup", "eval", "checkpoint")


class _Periodic:
    """A daemon thread that calls ``tick()`` every ``every`` seconds until :meth:`stop`, which
    joins it (an unjoined one can abort the interpreter's exit)."""

    def __init__(self, name: str, every: float):
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.tick()

    def tick(self) -> None:
        raise NotImplementedError


class Heartbeat(_Periodic):
    """This rank's liveness, written by a thread into ``<run>/ranks/heartbeat_rank<N>.json``.

    ``at(phase, iteration)`` is called by the loop (plain attribute writes); the thread writes
    the file every ``period`` seconds.
    """

    def __init__(self, run_dir: str | os.PathLike, rank: int, period: float):
        super().__init__("ssdwb-heartbeat", period)
        self.path = Path(run_dir) / "ranks" / f"heartbeat_rank{rank}.json"
        self.rank, self.period = rank, period
        self.phase, self.iteration, self.since = "setup", 0, time.time()

    def at(self, phase: str, iteration: int | None = None) -> None:
        """The loop entered ``phase`` (or made progress in it) at ``iteration``."""
        self.phase, self.since = phase, time.time()
        if iteration is not None:
            self.iteration = iteration

    def record(self) -> dict:
        return {"rank": self.rank, "pid": os.getpid(), "phase": self.phase,
                "iteration": self.iteration, "since": self.since, "written_at": time.time()}

    def write(self) -> None:
        atomic_json(self.record(), self.path)

    def start(self) -> Heartbeat:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()
        return super().start()

    def tick(self) -> None:
        try:
            self.write()
        except OSError as e:  # a full or unreachable disk must not end training
            log.warning("heartbeat %s not written: %s", self.path, e)


def stale_ranks(run_dir: str | os.PathLike, world_size: int, max_age: float,
                now: float | None = None) -> list[dict]:
    """The ranks whose heartbeat file is missing, unreadable or older than ``max_age`` seconds,
    each ``{"rank", "phase", "iteration", "age_s"}`` (phase and iteration as last written)."""
    now = time.time() if now is None else now
    out = []
    for rank in range(world_size):
        path = Path(run_dir) / "ranks" / f"heartbeat_rank{rank}.json"
        try:
            beat = json.loads(path.read_text())
        except (OSError, ValueError):
            out.append({"rank": rank, "phase": "unknown", "iteration": None, "age_s": None})
            continue
        age = now - float(beat["written_at"])
        if age > max_age:
            out.append({"rank": rank, "phase": beat["phase"], "iteration": beat["iteration"],
                        "age_s": round(age, 1)})
    return out


class Watchdog(_Periodic):
    """Ends this rank when its phase has not changed for longer than the phase's limit.

    Args:
        heartbeat: this rank's :class:`Heartbeat`.
        world_size: ranks in the group.
        limit_s: the limit of the steady phases, just under the process group's timeout.
        long_limit_s: the limit of :data:`LONG_PHASES`.
        summary: ``summary(status, reason)`` -> rank 0's summary dict (built from Python data
            only: the devices may be the stalled part).
        write_summary: writes that dict (rank 0's run folder).
    """

    def __init__(self, heartbeat: Heartbeat, world_size: int, limit_s: float,
                 long_limit_s: float, summary: Callable[[str, str], dict],
                 write_summary: Callable[[dict], None]):
        super().__init__("ssdwb-watchdog", min(heartbeat.period, 5.0))
        self.beat, self.world_size = heartbeat, world_size
        self.limit_s, self.long_limit_s = limit_s, long_limit_s
        self.summary, self.write_summary = summary, write_summary

    def limit(self, phase: str) -> float:
        return self.long_limit_s if phase in LONG_PHASES else self.limit_s

    def tick(self) -> None:
        phase, since = self.beat.phase, self.beat.since
        if time.time() - since > self.limit(phase) and not self._stop.is_set():
            self.verdict(phase, since)

    def verdict(self, phase: str, since: float) -> None:
        """Names the stale ranks, writes the verdict and ends the process."""
        run_dir = self.beat.path.parent.parent
        me = self.beat.rank
        # this rank is running the verdict, so it is alive whatever its file's age says (a
        # loaded host may delay its own heartbeat thread)
        stale = [s for s in stale_ranks(run_dir, self.world_size, max_age=3 * self.beat.period)
                 if s["rank"] != me]
        waited = time.time() - since
        if stale:
            named = "; ".join(
                f"rank {s['rank']} (last heartbeat {s['age_s']} s ago, phase {s['phase']}, "
                f"iteration {s['iteration']})" if s["age_s"] is not None
                else f"rank {s['rank']} (no heartbeat)" for s in stale)
            reason = f"stalled: {named}; rank {me} waited {waited:.0f} s in phase {phase}"
        else:
            reason = (f"rank {me} made no progress for {waited:.0f} s in phase {phase} "
                      f"(iteration {self.beat.iteration}); every rank's heartbeat is fresh, so "
                      f"a rank is stuck inside a step or a collective")
        print(f"[ssdwb] watchdog: {reason}", file=sys.stderr, flush=True)
        try:
            if me == 0:
                self.write_summary(self.summary("failed", reason))
            elif not stale or any(s["rank"] == 0 for s in stale):
                atomic_json({"rank": me, "status": "failed", "reason": reason,
                             "stale_ranks": stale, "time": time.time()},
                            run_dir / "ranks" / f"failure_rank{me}.json")
            else:  # rank 0 is alive and writes the run's verdict: give it time to
                time.sleep(2 * self.beat.period)
        finally:
            os._exit(1)
