"""MLPerf v0.6 ``:::MLL`` logging, as ``python -m mlperf_logging.compliance_checker --usage training
--ruleset 0.6.0`` reads it: ``:::MLL <unix time> <key>: {"value": ..., "metadata": {...}}``.

Only rank 0 writes. Lines are appended and flushed one by one. Which events a run logs, and when,
is ``ssdwb.runs.folder.RunFolder``'s job (it also cuts the log back to a checkpoint's offset on resume,
so a resumed run continues one compliant log).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

__all__ = ["MLPerfLogger"]


class MLPerfLogger:
    def __init__(self, path: str | os.PathLike | None, enabled: bool = True):
        self.path = Path(path) if path else None
        self.enabled = enabled and self.path is not None

    def event(self, key: str, value=None, metadata: dict | None = None) -> None:
        if not self.enabled:
            return
        caller = inspect.stack()[1]
        meta = {"file": os.path.basename(caller.filename), "lineno": caller.lineno}
        meta.update(metadata or {})
        line = f":::MLL {time.time():.3f} {key}: {json.dumps({'value': value, 'metadata': meta})}"
        with open(self.path, "a") as f:
            f.write(line + "\n")
