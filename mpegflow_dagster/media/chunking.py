"""Where a rendition encode is cut into time chunks that encode side by side.

x264 gives the same bytes on every run only with one thread per encoder, so a lone 1080p encode
uses one core. Cutting the source in time at keyframe boundaries lets the chunks encode in
parallel processes, each decoding only its own part of the source, and the chunk files are then
joined without re-encoding. Where the cuts fall depends only on the source's duration and the
spec, never on the machine, so the bytes stay the same whatever the number of cores (and on a
retry with fewer processes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

# Part of every rendition's code version (`PipelineSpec.encode_settings`): where the cuts fall
# shapes the bytes. 3: a chunk after the first starts a lead before its cut (2: on its cut; 1: cuts
# on exact marks only, so a 29.97 fps source was encoded whole).
PLAN_VERSION = 3


@dataclass(frozen=True)
class Span:
    """The part of the source one chunk makes: from `start_s` for `duration_s` (None: to the end).
    Its encode starts `lead_s` earlier: x264's one-pass rate control starts from a stock guess and
    takes about a second to settle, so a chunk that started on its cut would show that second at
    every cut (up to 3 dB PSNR on light rungs, docs/seams.md); the lead's frames, which the chunk
    before also encodes, warm it up and are dropped in the join."""

    start_s: Fraction
    duration_s: Optional[Fraction]
    lead_s: Fraction = Fraction(0)

    @property
    def whole(self) -> bool:
        return self.start_s == 0 and self.duration_s is None

    @property
    def encode_start_s(self) -> Fraction:
        return self.start_s - self.lead_s


WHOLE = Span(Fraction(0), None)


def _fraction(seconds: float) -> Fraction:
    return Fraction(str(seconds)).limit_denominator(1000)


def boundary_step(*periods_s: float) -> Fraction:
    """The shortest length that is a whole number of every period (keyframe interval, thumbnail
    interval): a cut there falls on a keyframe of every rendition and on a thumbnail mark."""
    fractions = [_fraction(p) for p in periods_s]
    denominator = math.lcm(*(f.denominator for f in fractions))
    return Fraction(math.lcm(*(int(f * denominator) for f in fractions)), denominator)


def plan_spans(
    duration_s: float,
    constant_frame_rate: Optional[str],
    chunk_s: float,
    step: Fraction,
    lead_s: Fraction = Fraction(0),
) -> list[Span]:
    """About `duration_s / chunk_s` chunks, cut near multiples of `step`: on the first frame at or
    after each multiple, the frame a whole-source encode makes a keyframe and a thumbnail of there.
    At 30000/1001 a 10 s mark falls between frames, so that cut is at 300 frames, 10.01 s. The
    whole source is one span when that gives fewer than two, when `chunk_s` is 0, or when the
    frame rate is not constant (no frame times to cut on). Each chunk after the first starts its
    encode on the first frame at or after `lead_s` before its cut (see `Span`)."""
    count = round(duration_s / chunk_s) if chunk_s > 0 else 0
    if count < 2 or not constant_frame_rate:
        return [WHOLE]
    rate = Fraction(constant_frame_rate)
    duration = _fraction(duration_s)
    marks = sorted(
        {round(duration * k / count / step) * step for k in range(1, count)} - {Fraction(0)}
    )
    cuts = [c for c in (math.ceil(m * rate) / rate for m in marks) if c < duration]
    if not cuts:
        return [WHOLE]
    starts = [Fraction(0), *cuts]
    ends: list[Optional[Fraction]] = [*cuts, None]
    # the encode starts on a frame too (FFmpeg's -ss keeps the frame its time falls in), so the
    # cut's time inside the chunk file is exactly the lead, where the join's `inpoint` goes
    leads = [s - math.ceil(max(Fraction(0), s - lead_s) * rate) / rate for s in starts]
    return [
        Span(start, None if end is None else end - start, lead)
        for start, end, lead in zip(starts, ends, leads, strict=True)
    ]


def marks_before(span: Span, period_s: float) -> int:
    """How many of the source's marks t = 0, period, 2 * period, ... the spans before this one
    took. A span starts on the first frame at or after a mark (`plan_spans`), less than a frame
    (so less than a period) after it: the marks before that one."""
    return math.floor(span.start_s / _fraction(period_s))
