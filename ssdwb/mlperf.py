"""MLPerf v0.6 ``:::MLL`` logging, as ``python -m mlperf_logging.compliance_checker --usage training
--ruleset 0.6.0`` reads it: ``:::MLL <unix time> <key>: {"value": ..., "metadata": {...}}``.

Only rank 0 writes. Lines are appended and flushed one by one; ``truncate`` cuts the file back to
a byte offset recorded in a checkpoint, so a resumed run continues one compliant log.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

__all__ = ["MLPerfLogger", "truncate_file"]


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

    def offset(self) -> int:
        return self.path.stat().st_size if self.enabled and self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        if self.enabled and self.path.exists():
            truncate_file(self.path, offset)


def truncate_file(path: Path, offset: int) -> None:
    """Cuts a file back to ``offset`` bytes, atomically (temp file + rename)."""
    data = path.read_bytes()[:offset]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
