"""EventBridge on this machine: events spooled on disk, delivered at least once to the handlers.

``emit`` writes an event as a file in ``<spool>/pending/`` (atomically), from any process: the local
stack, the ``dogbreeds`` command in another terminal. The bus's thread delivers pending events in
order of emission to ``deliver(event)`` and deletes each file only after delivery returned, so an
event whose handling was cut short by a crash is delivered again when the stack restarts. A
delivery that raises is retried with backoff; after ``max_attempts`` the event is moved to
``<spool>/dead/`` with the error beside it, and the bus goes on with the next one.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("dogbreeds.localaws.eventbus")
_sequence = itertools.count()


def emit_to(spool: Path, event: dict) -> Path:
    """Queue ``event`` in ``spool`` (usable without a running bus, e.g. from the CLI)."""
    pending = Path(spool) / "pending"
    pending.mkdir(parents=True, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}-{uuid.uuid4().hex[:8]}.json"
    with tempfile.NamedTemporaryFile("w", dir=pending, prefix=".tmp-", suffix=".json", delete=False) as handle:
        json.dump(event, handle)
    target = pending / name
    os.replace(handle.name, target)
    return target


class EventBus:
    def __init__(self, spool: Path, deliver: Callable[[dict], object], max_attempts: int = 5,
                 backoff_seconds: float = 0.5, poll_seconds: float = 0.1):
        self.spool = Path(spool)
        self.deliver = deliver
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: Optional[threading.Thread] = None
        (self.spool / "pending").mkdir(parents=True, exist_ok=True)
        (self.spool / "dead").mkdir(parents=True, exist_ok=True)

    def emit(self, event: dict) -> None:
        self._idle.clear()
        emit_to(self.spool, event)
        self._wake.set()

    def start(self) -> "EventBus":
        self._thread = threading.Thread(target=self._run, name="eventbus", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def pending(self) -> list:
        return sorted(p for p in (self.spool / "pending").glob("*.json") if not p.name.startswith(".tmp-"))

    def drain(self, timeout: float = 30) -> bool:
        """Wait until every pending event was delivered (or given up); True when the spool is empty."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.pending() and self._idle.is_set():
                return True
            self._wake.set()
            time.sleep(0.02)
        return not self.pending()

    def _run(self) -> None:
        while not self._stop.is_set():
            files = self.pending()
            if not files:
                self._idle.set()
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            self._idle.clear()
            self._deliver_file(files[0])

    def _deliver_file(self, path: Path) -> None:
        try:
            event = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.error("unreadable event %s: %s", path.name, exc)
            self._bury(path, f"unreadable: {exc}")
            return
        for attempt in range(1, self.max_attempts + 1):
            try:
                self.deliver(event)
            except Exception:
                error = traceback.format_exc()
                log.warning("delivery %d/%d of %s failed:\n%s", attempt, self.max_attempts, path.name, error)
                if self._stop.wait(self.backoff_seconds * 2 ** (attempt - 1)):
                    return          # stopping: the event stays pending and is delivered after a restart
                continue
            path.unlink(missing_ok=True)
            return
        self._bury(path, error)

    def _bury(self, path: Path, reason: str) -> None:
        dead = self.spool / "dead" / path.name
        os.replace(path, dead)
        dead.with_suffix(".error.txt").write_text(reason)
        log.error("event %s given up after %d attempts; kept in %s", path.name, self.max_attempts, dead)
