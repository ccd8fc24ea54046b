"""Pipeline events for customers (`rendition.failed`, `video.succeeded`, ...) and where they go.

Events are facts about one video in one run. Each has a stable id derived from what it is about,
so a sink (or the customer) can drop duplicates: emitting the same event twice is harmless.
No Dagster here; the Dagster layer decides when to emit.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence


@dataclass(frozen=True)
class Event:
    type: str  # video.received | rendition.ready | rendition.failed | package.ready | video.published | video.succeeded | video.failed
    pipeline: str
    video: str
    run_id: str
    message: str
    subject: Optional[str] = None  # the rendition or stage the event is about
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        """Stable across re-emission: same type, pipeline, video, subject and run -> same id."""
        basis = "\x1f".join([self.type, self.pipeline, self.video, self.subject or "", self.run_id])
        return "evt_" + hashlib.sha256(basis.encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


class EventSink(Protocol):
    def send(self, event: Event) -> None:
        """Deliver one event; implementations drop an id they have already delivered."""


class JsonlEventSink:
    """Appends events to a JSON Lines file, once per event id (safe across processes).

    An event id names its run, and a run's events are written while it runs, so a repeat can only
    be among the last lines: only the file's tail is searched, however long the file grows."""

    TAIL_BYTES = 1 << 20

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def send(self, event: Event) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            size = fh.seek(0, 2)
            fh.seek(max(0, size - self.TAIL_BYTES))
            if f'"id": "{event.id}"'.encode() in fh.read():
                return
            fh.write((json.dumps(event.to_dict(), sort_keys=True) + "\n").encode())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [
            json.loads(line)
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]


class FanoutSink:
    """Sends every event to each sink in order. Each sink gets the event even if an earlier one
    raised; the first error is re-raised afterwards."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)

    def send(self, event: Event) -> None:
        error: Optional[BaseException] = None
        for sink in self.sinks:
            try:
                sink.send(event)
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error
