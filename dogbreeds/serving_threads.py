"""How the model server spreads its work over the CPUs: the thread plan, and how a lone request runs.

Defaults come from the CPUs this process may use (``usable_cores``); nothing needs tuning. The
measurements behind each rule are in bench/README.md (``endpoint_throughput.py``).

- The forward is the work; decoding a request (``input_fn`` + ``preprocess``) costs a few percent of
  it. Decoding shares the cores with the forwards: a core kept free for it would halve the forward
  throughput on a small machine.
- On CPU the forwards run in ``forward_workers`` = one worker per core, each with 1 torch thread, not in
  one forward with a team of all cores: a team of OpenMP threads waits at every barrier for its slowest
  member, so it slows down several times as soon as anything else (a decoding request, a client, another
  process) takes a core, while single-threaded workers share the CPU.
- A request alone in the server (nothing else queued, decoding or running) may use a team of all
  cores (``lone_threads``): faster on an idle machine, much slower on a busy one. ``LoneTuner`` times
  both ways and uses the faster.
- ``decode_slots`` = cores: at most one decode per core at a time, each with 1 torch thread (the
  resize); parallelism comes from decoding several requests at once, not from splitting one image.
- On CUDA one worker feeds the GPU with 1 CPU thread; decoding gets every core.
- Passing ``torch_threads`` and/or ``forward_workers`` fixes the layout (no lone team). If
  ``torch_threads`` > 1 and the workers' threads fill every core, decoding waits while a forward runs
  (``exclusive_forward``) instead of oversubscribing it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def usable_cores() -> int:
    """CPUs this process may run on (affinity/cgroup cpuset aware where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    forward_workers: int        # threads that each run whole forwards...
    torch_threads: int          # ...with this many intra-op threads
    lone_threads: int | None    # the team a forward may use when it is the only work in the server
    decode_slots: int           # requests decoding at once
    exclusive_forward: bool     # decoding waits while a multi-threaded forward runs


def default_threads(cores: int, device_type: str, torch_threads: int | None = None,
                    forward_workers: int | None = None) -> ThreadPlan:
    """The thread plan for ``cores`` CPUs and a model on ``device_type`` ("cpu", "cuda"); the
    ``torch_threads`` and ``forward_workers`` given replace the defaults (see the module docstring)."""
    if device_type == "cuda":  # the GPU computes; CPU threads feed it
        workers, threads = forward_workers or 1, torch_threads or 1
        return ThreadPlan(forward_workers=workers, torch_threads=threads, lone_threads=None,
                          decode_slots=cores, exclusive_forward=False)
    threads = torch_threads or 1
    workers = forward_workers or max(1, cores // threads)
    lone = cores if torch_threads is None and forward_workers is None and cores > threads else None
    return ThreadPlan(forward_workers=workers, torch_threads=threads, lone_threads=lone,
                      decode_slots=cores, exclusive_forward=threads > 1 and workers * threads >= cores)


class LoneTuner:
    """Chooses how a request that is alone in the server runs: with a team of all cores or one thread.

    A team of all cores answers a lone request fastest on an idle machine but is several times slower
    than one thread when other processes keep a core busy (OpenMP threads wait at every barrier for a
    descheduled peer). So both are timed: an average of seconds per image for each (seeded by the
    warm-up); the faster one is used and the other is re-timed now and then: after ``explore_every``
    lone forwards when the two are close, less often the further apart they are
    (``explore_every * ratio**2``, at most ``max_interval``), which keeps the cost of re-timing small
    against the lone latency.
    """

    def __init__(self, explore_every: int = 16, max_interval: int = 256, alpha: float = 0.3):
        self.explore_every, self.max_interval, self.alpha = explore_every, max_interval, alpha
        self.seconds_per_image: dict[bool, float | None] = {True: None, False: None}
        self.since_explored = 0

    def interval(self) -> int:
        """Lone forwards between two re-timings of the slower way."""
        team, single = self.seconds_per_image[True], self.seconds_per_image[False]
        ratio = max(team, single) / max(min(team, single), 1e-9)
        return int(min(self.max_interval, max(self.explore_every, round(self.explore_every * ratio ** 2))))

    def choose(self) -> bool:
        """True: run this lone request with the team."""
        team, single = self.seconds_per_image[True], self.seconds_per_image[False]
        if team is None or single is None:
            return team is None
        best = team <= single
        self.since_explored += 1
        if self.since_explored >= self.interval():
            self.since_explored = 0
            return not best
        return best

    def record(self, team: bool, seconds_per_image: float) -> None:
        """Fold one timed lone forward (team or single thread) into that way's moving average."""
        old = self.seconds_per_image[team]
        self.seconds_per_image[team] = seconds_per_image if old is None else old + self.alpha * (seconds_per_image - old)
