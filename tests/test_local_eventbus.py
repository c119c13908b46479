"""The local EventBridge: events spooled on disk, delivered in order, at least once."""

from __future__ import annotations

import json

from dogbreeds.localaws.eventbus import EventBus, emit_to


def test_events_are_delivered_in_order_and_a_failing_delivery_is_retried(tmp_path):
    delivered, failures = [], {"left": 2}

    def deliver(event):
        if event["n"] == 1 and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("throttled")
        delivered.append(event["n"])

    bus = EventBus(tmp_path, deliver, backoff_seconds=0.01).start()
    try:
        for n in range(4):
            bus.emit({"n": n})
        assert bus.drain(10)
    finally:
        bus.stop()
    assert delivered == [0, 1, 2, 3] and failures["left"] == 0
    assert bus.pending() == [] and list((tmp_path / "dead").iterdir()) == []


def test_undelivered_events_survive_a_restart_and_hopeless_ones_are_kept_aside(tmp_path):
    emit_to(tmp_path, {"n": "from another process"})      # e.g. the CLI, while no bus runs
    emit_to(tmp_path, {"n": "poison"})
    delivered = []

    def deliver(event):
        if event["n"] == "poison":
            raise ValueError("cannot handle this one")
        delivered.append(event["n"])

    bus = EventBus(tmp_path, deliver, max_attempts=3, backoff_seconds=0.01).start()
    try:
        assert bus.drain(10)
    finally:
        bus.stop()
    assert delivered == ["from another process"]
    dead = sorted(p.name for p in (tmp_path / "dead").iterdir())
    assert len(dead) == 2 and sum(name.endswith(".error.txt") for name in dead) == 1
    poison = next(p for p in (tmp_path / "dead").iterdir() if p.suffix == ".json")
    assert json.loads(poison.read_text()) == {"n": "poison"}
    assert "cannot handle this one" in poison.with_suffix(".error.txt").read_text()
