"""The threads that run the local SageMaker's jobs and start its endpoints, and the stop signal they watch."""

from __future__ import annotations

import threading
import time
from typing import List


class JobThreads:
    def __init__(self):
        self.stopping = threading.Event()   # set by close(): running jobs end Stopped
        self._threads: List[threading.Thread] = []
        self._lock = threading.RLock()

    def start(self, target, *args, name: str) -> None:
        """Run ``target(*args)`` in a daemon thread named ``name``."""
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def join(self, timeout: float) -> None:
        """Wait for every thread, ``timeout`` seconds in all."""
        deadline = time.time() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.time()))

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no thread runs; True when idle, False after ``timeout`` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self._lock:
                busy = [t for t in self._threads if t.is_alive()]
            if not busy:
                return True
            busy[0].join(min(1.0, max(0.0, deadline - time.time())))
        return False
