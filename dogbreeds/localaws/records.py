"""The local SageMaker's memory on disk: one JSON record per job, model, endpoint config and endpoint.

The records outlive the runtime (``LocalSageMaker.recover`` reads them after a restart) and are read by
other processes (the ``dogbreeds`` command in another terminal), so every write replaces a whole file
atomically. Times are kept as ISO text; ``with_datetimes`` turns them back into the datetimes boto3's
responses carry.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional


def now() -> datetime:
    """The current time, timezone-aware (UTC), as records and events stamp it."""
    return datetime.now(timezone.utc)


class Records:
    """One JSON file per resource under ``<root>/<kind>/<name>.json``; writes are atomic."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.RLock()

    def path(self, kind: str, name: str) -> Path:
        return self.root / kind / f"{name}.json"

    def get(self, kind: str, name: str) -> Optional[dict]:
        """The record, or None when there is none."""
        path = self.path(kind, name)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def put(self, kind: str, name: str, record: dict) -> None:
        path = self.path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", delete=False) as handle:
            json.dump(record, handle, default=str, indent=1)
        os.replace(handle.name, path)

    def update(self, kind: str, name: str, **changes) -> dict:
        """Apply ``changes`` to an existing record, stamp ``LastModifiedTime``; returns the new record."""
        with self.lock:
            record = self.get(kind, name)
            record.update(changes)
            record["LastModifiedTime"] = now().isoformat()
            self.put(kind, name, record)
            return record

    def all(self, kind: str) -> List[dict]:
        """Every record of ``kind``, in name order."""
        folder = self.root / kind
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []


def with_datetimes(record: dict) -> dict:
    """A copy of ``record`` whose ``...Time`` fields are datetimes, as in boto3's responses."""
    out = dict(record)
    for key, value in record.items():
        if key.endswith("Time") and isinstance(value, str):
            try:
                out[key] = datetime.fromisoformat(value)
            except ValueError:
                pass
    return out
