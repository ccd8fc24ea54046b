"""Parse FFmpeg's `-progress` key=value stream into progress reports, and say them per output."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence


@dataclass(frozen=True)
class Progress:
    out_time_s: float
    speed: Optional[float]  # x realtime
    frame: Optional[int]
    duration_s: Optional[float]
    done: bool

    @property
    def percent(self) -> Optional[float]:
        if not self.duration_s:
            return None
        return max(0.0, min(100.0, 100.0 * self.out_time_s / self.duration_s))


class ProgressParser:
    """Feed lines; every `progress=continue|end` line closes a block and yields a Progress."""

    def __init__(self, duration_s: Optional[float]) -> None:
        self._duration = duration_s
        self._block: dict[str, str] = {}

    def feed(self, line: str) -> Optional[Progress]:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        self._block[key] = value.strip()
        if key != "progress":
            return None
        block, self._block = self._block, {}
        out_us = block.get("out_time_us") or block.get("out_time_ms")  # both are microseconds
        try:
            out_time = max(0.0, int(out_us) / 1e6) if out_us and out_us != "N/A" else 0.0
        except ValueError:
            out_time = 0.0
        speed_s = block.get("speed", "").rstrip("x").strip()
        frame_s = block.get("frame", "")
        return Progress(
            out_time_s=out_time,
            speed=float(speed_s) if speed_s and speed_s != "N/A" else None,
            frame=int(frame_s) if frame_s.isdigit() else None,
            duration_s=self._duration,
            done=value.strip() == "end",
        )


@dataclass
class _Output:
    total_s: Optional[float]
    started: float
    runs: dict[int, float] = field(default_factory=dict)  # run -> seconds of it done
    finished: set[int] = field(default_factory=set)
    said: Optional[float] = None  # when the last line was said
    done: bool = False


class ProgressBoard:
    """Progress per output of a stage, fed by any number of FFmpeg runs: one run may make several
    outputs (the renditions of a lane) and one output may be made by several runs (its time
    chunks), so an output's done seconds are the sum over the runs that make a part of it.

    Each output gets lines in one format, `progress rendition_720p  37% (22.1/60.0 s, 1.9x
    realtime, eta 20 s)`: the first once it has run `first_s`, then at most one every `every_s`,
    and a last one when done; an output done within `first_s` says nothing (each line is an
    event-log write). Thread-safe: every FFmpeg run reports from its own reader thread."""

    def __init__(
        self, say: Callable[[str], None], *, first_s: float = 1.0, every_s: float = 3.0
    ) -> None:
        self._say, self._first_s, self._every_s = say, first_s, every_s
        self._outputs: dict[str, _Output] = {}
        self._lock = threading.Lock()
        self._runs = itertools.count()

    def expect(self, outputs: Iterable[str], total_s: float) -> None:
        """`outputs` are `total_s` seconds each, whatever part of them each run makes."""
        with self._lock:
            for name in outputs:
                self._outputs.setdefault(name, _Output(total_s, time.monotonic()))

    def run(
        self, outputs: Sequence[str], duration_s: Optional[float]
    ) -> Callable[[Progress], None]:
        """The progress callback of one FFmpeg run making (a part of) each of `outputs`."""
        run = next(self._runs)
        with self._lock:
            for name in outputs:
                self._outputs.setdefault(name, _Output(duration_s, time.monotonic()))

        def report(progress: Progress) -> None:
            lines = []
            with self._lock:
                now = time.monotonic()
                for name in outputs:
                    line = self._update(self._outputs[name], name, run, progress, now)
                    if line:
                        lines.append(line)
            for line in lines:
                self._say(line)

        return report

    def _update(
        self, out: _Output, name: str, run: int, progress: Progress, now: float
    ) -> Optional[str]:
        if out.done:
            return None
        if progress.done:
            out.finished.add(run)
            out.runs[run] = progress.duration_s or progress.out_time_s
        else:
            out.runs[run] = progress.out_time_s
        done_s = sum(out.runs.values())
        if out.total_s:
            done_s = min(done_s, out.total_s)
        # Done when every run started for it has ended and, with a total, they made all of it
        # (a chunked output waits for the chunks not started yet).
        complete = out.finished == set(out.runs) and (
            not out.total_s or done_s >= out.total_s - 1e-3
        )
        elapsed = now - out.started
        if complete:
            out.done = True
            if out.said is None:
                return None
        elif out.said is None and elapsed < self._first_s:
            return None
        elif out.said is not None and now - out.said < self._every_s:
            return None
        out.said = now
        return _line(name, done_s, out.total_s, elapsed, complete)


def _line(name: str, done_s: float, total_s: Optional[float], elapsed_s: float, done: bool) -> str:
    speed = done_s / elapsed_s if elapsed_s > 0 else 0.0
    if total_s:
        head = f"progress {name:<16} {100.0 * done_s / total_s:3.0f}% ({done_s:.1f}/{total_s:.1f} s"
    else:
        head = f"progress {name:<16} ({done_s:.1f} s"
    if done:
        return f"{head}, {speed:.1f}x realtime, done in {elapsed_s:.0f} s)"
    eta = f", eta {(total_s - done_s) / speed:.0f} s" if total_s and speed > 0 else ""
    return f"{head}, {speed:.1f}x realtime{eta})"
