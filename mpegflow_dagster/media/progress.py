"""Parse FFmpeg's `-progress` key=value stream into progress reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


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

    @property
    def eta_s(self) -> Optional[float]:
        if not self.duration_s or not self.speed:
            return None
        return max(0.0, (self.duration_s - self.out_time_s) / self.speed)

    def describe(self) -> str:
        parts = [
            f"{self.percent:5.1f}%" if self.percent is not None else f"t={self.out_time_s:.1f}s"
        ]
        if self.speed:
            parts.append(f"speed {self.speed:.2f}x")
        if self.eta_s is not None:
            parts.append(f"ETA {self.eta_s:.0f}s")
        return " ".join(parts)


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
