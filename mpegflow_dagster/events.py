"""Pipeline events for customers (`rendition.failed`, `video.succeeded`, ...) and where they go.

Events are facts about one video. Each has an id derived from what it announces (its type,
pipeline, video, subject and `version`: the output's data version, or the recipe that failed and
how), not from the run that found it out: a re-send after a restart, or a re-run that made the
same bytes again, has the same id, and a sink (or the customer) drops it. No Dagster here; the
Dagster layer decides when to emit.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, Sequence


@dataclass(frozen=True)
class Event:
    type: str  # video.received | rendition.ready | rendition.failed | package.ready | video.published | video.succeeded | video.failed
    pipeline: str
    video: str
    run_id: str
    message: str
    subject: Optional[str] = None  # the rendition or stage the event is about
    # What makes this fact differ from an earlier one of its type and subject: the sha256 of the
    # output it announces (ready, published, succeeded), or `<recipe>:<class>:<reason>` of a failure.
    version: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        """Same type, pipeline, video, subject and version -> same id, whichever run sends it."""
        basis = "\x1f".join(
            [self.type, self.pipeline, self.video, self.subject or "", self.version]
        )
        return "evt_" + hashlib.sha256(basis.encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


def entries(facts: Mapping[str, Any]) -> dict[str, str]:
    """What an emit stage published, by part: the file a viewer opens (its `<part>_entry` facts)."""
    return {k.removesuffix("_entry"): str(v) for k, v in facts.items() if k.endswith("_entry")}


def failure_version(recipe: Optional[str], message: str, failure_class: str, reason: str) -> str:
    """The `version` of a failure event: the recipe that failed names the inputs and parameters;
    without one (a source that cannot be read) the message, which names the source, tells
    failures apart."""
    return f"{recipe or message}:{failure_class}:{reason}"


class EventSink(Protocol):
    def send(self, event: Event) -> None:
        """Deliver one event; implementations drop an id they have already delivered."""


class JsonlEventSink:
    """Appends events to a JSON Lines file, once per event id (safe across processes).

    An id names a fact, not a run, so a repeat can come weeks later (the same failure again, a
    forced re-encode that made the same bytes): the whole file is searched, mapped into memory
    (about 30 ms per 100 MB of events here, read from the page cache)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def send(self, event: Event) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            if fh.seek(0, 2):  # mmap refuses an empty file
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as written:
                    if written.find(f'"id": "{event.id}"'.encode()) != -1:
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
