"""Checks of a finished package directory on local disk: what its manifests name is there, its
segments keep to the target duration, and its video variants cut at the same times.

A package is what `stages.hls` writes: `master.m3u8` over one media playlist per variant (FFmpeg's
hls muxer: `seg_NNNNN.ts` or `.m4s` with `init.mp4`), and for CMAF (Shaka Packager) also the audio
and subtitle folders and `manifest.mpd`. Shaka 3.4.2 writes the MPD as one `SegmentTemplate` per
Representation (`initialization="<folder>/init.mp4"`, `media="<folder>/$Number%05d$.m4s"`) with a
`SegmentTimeline`; `SegmentBase`/`BaseURL` (one file per track) and `SegmentList` are read too.

The playlists and MPDs are our own simple ones, parsed here by hand (neither `m3u8` nor
`mpegdash` is a dependency; the MPD is read with the standard library's ElementTree). Each check
returns plain sentences naming the file, an empty list when all is well. No Dagster here.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

MASTER = "master.m3u8"
DASH_MANIFEST = "manifest.mpd"

_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_DASH_NS = "{urn:mpeg:dash:schema:mpd:2011}"
_IDENTIFIER = re.compile(r"\$(Number|Time|RepresentationID|Bandwidth)(?:%0(\d+)d)?\$")
_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>[\d.]+)D)?(?:T(?:(?P<h>[\d.]+)H)?(?:(?P<m>[\d.]+)M)?(?:(?P<s>[\d.]+)S)?)?$"
)


def _attributes(line: str) -> dict[str, str]:
    """The attribute list of a tag line (`#EXT-X-MEDIA:TYPE=AUDIO,URI="a/index.m3u8"`)."""
    _, _, rest = line.partition(":")
    return {k: v.strip('"') for k, v in _ATTR.findall(rest)}


@dataclass
class _Media:
    """A media playlist as read: its target duration, (EXTINF seconds, URI) per segment, and the
    EXT-X-MAP and local EXT-X-KEY URIs."""

    target: Optional[int] = None
    segments: list[tuple[float, str]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


@dataclass
class _Master:
    variants: list[str] = field(default_factory=list)  # EXT-X-STREAM-INF URIs, in order, once
    others: list[str] = field(default_factory=list)  # EXT-X-MEDIA, I-frame playlists


def _key_uri(line: str) -> Optional[str]:
    """The URI of an EXT-X-KEY / EXT-X-SESSION-KEY if it names a file (not a DRM's `skd:`, a key
    server's `https:` or inline `data:`)."""
    uri = _attributes(line).get("URI")
    return uri if uri and not _SCHEME.match(uri) else None


def _read_master(path: Path) -> _Master:
    master = _Master()
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("#EXT-X-STREAM-INF"):
            uri = next((ln for ln in lines[i + 1 :] if ln and not ln.startswith("#")), None)
            if uri and uri not in master.variants:
                master.variants.append(uri)
        elif line.startswith(("#EXT-X-MEDIA:", "#EXT-X-I-FRAME-STREAM-INF")):
            uri = _attributes(line).get("URI")
            if uri:
                master.others.append(uri)
        elif line.startswith(("#EXT-X-SESSION-KEY", "#EXT-X-KEY")):
            key = _key_uri(line)
            if key:
                master.others.append(key)
    return master


def _read_media(path: Path) -> _Media:
    media = _Media()
    duration: Optional[float] = None
    for line in (ln.strip() for ln in path.read_text().splitlines()):
        if line.startswith("#EXT-X-TARGETDURATION:"):
            media.target = int(line.split(":", 1)[1])
        elif line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",")[0])
        elif line.startswith("#EXT-X-MAP"):
            uri = _attributes(line).get("URI")
            if uri:
                media.others.append(uri)
        elif line.startswith("#EXT-X-KEY"):
            key = _key_uri(line)
            if key:
                media.others.append(key)
        elif line and not line.startswith("#"):
            media.segments.append((duration if duration is not None else math.nan, line))
            duration = None
    return media


class _Package:
    """A package directory: its master playlist and the media playlists it names, read once."""

    def __init__(self, package_dir: Path) -> None:
        self.root = Path(package_dir).resolve()
        self.problems: list[str] = []
        self.files: set[Path] = set()  # every existing, non-empty file named inside the package
        self.master: Optional[_Master] = None
        self.media: dict[str, _Media] = {}  # by URI relative to the master
        self._mpd: Optional[ET.Element | bool] = None  # False: none (or unreadable)
        master = self.root / MASTER
        if not master.is_file():
            self.problems.append(f"{MASTER} is missing")
            return
        self.master = _read_master(master)
        for uri in [*self.master.variants, *self.master.others]:
            path = self.resolve(MASTER, uri)
            if path is None or not uri.endswith(".m3u8"):
                continue
            try:
                self.media[uri] = _read_media(path)
            except (OSError, UnicodeDecodeError, ValueError) as err:
                self.problems.append(f"{uri}: unreadable playlist ({err})")

    def name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def resolve(self, named_in: str, uri: str) -> Optional[Path]:
        """The file `uri` (relative to the manifest `named_in`, itself relative to the package)
        names, if it is a non-empty file inside the package; else None, the problem said."""
        if _SCHEME.match(uri) or uri.startswith("/"):
            self.problems.append(f"{named_in}: {uri} is not a relative path inside the package")
            return None
        path = ((self.root / named_in).parent / uri).resolve()
        if not path.is_relative_to(self.root):
            self.problems.append(f"{named_in}: {uri} points outside the package")
            return None
        if not path.is_file():
            self.problems.append(f"{named_in}: {uri} is missing ({self.name(path)})")
            return None
        if path.stat().st_size == 0:
            self.problems.append(f"{named_in}: {uri} is empty ({self.name(path)})")
            return None
        self.files.add(path)
        return path

    def mpd(self) -> Optional[ET.Element]:
        """manifest.mpd's root, if the package has one that parses (else None, the problem
        said once)."""
        if self._mpd is None:
            path = self.root / DASH_MANIFEST
            if not path.is_file():
                self._mpd = False
            else:
                try:
                    self._mpd = ET.parse(path).getroot()
                except ET.ParseError as err:
                    self.problems.append(f"{DASH_MANIFEST}: unreadable ({err})")
                    self._mpd = False
        return self._mpd if isinstance(self._mpd, ET.Element) else None

    def video_playlists(self) -> list[str]:
        return [uri for uri in (self.master.variants if self.master else []) if uri in self.media]


def _check_playlists(package: _Package) -> None:
    for uri, media in package.media.items():
        named_in = package.name((package.root / MASTER).parent / uri)
        for other in media.others:
            package.resolve(named_in, other)
        for _, segment in media.segments:
            package.resolve(named_in, segment)


def _seconds(value: Optional[str]) -> float:
    """An xs:duration such as `PT7S` or `PT1H2M3.5S` in seconds (0 if absent or unread)."""
    found = _ISO_DURATION.match(value or "")
    if not found:
        return 0.0
    parts = {k: float(v) for k, v in found.groupdict().items() if v}
    return (
        parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
    ) + parts.get("s", 0)


def _fill(template: str, rep: ET.Element, number: int = 0, time: int = 0) -> str:
    values = {
        "Number": number,
        "Time": time,
        "RepresentationID": rep.get("id", ""),
        "Bandwidth": rep.get("bandwidth", ""),
    }

    def put(found: re.Match[str]) -> str:
        value = values[found.group(1)]
        width = found.group(2)
        return f"{int(value):0{int(width)}d}" if width else str(value)

    return _IDENTIFIER.sub(put, template).replace("$$", "$")


def _inherited(levels: list[ET.Element], tag: str) -> Optional[ET.Element]:
    """The nearest `tag` child from the Representation up (Representation, AdaptationSet,
    Period), as DASH inherits SegmentTemplate/SegmentBase/SegmentList."""
    for level in reversed(levels):
        found = level.find(_DASH_NS + tag)
        if found is not None:
            return found
    return None


def _timeline(template: ET.Element, period_s: float) -> list[tuple[int, int]]:
    """(number, time) of each segment of a SegmentTemplate: from its SegmentTimeline (S@t, @d,
    @r; r=-1 repeats to the end of the period), else from @duration over the period."""
    start = int(template.get("startNumber", "1"))
    timescale = int(template.get("timescale", "1"))
    timeline = template.find(_DASH_NS + "SegmentTimeline")
    out: list[tuple[int, int]] = []
    if timeline is None:
        duration = int(template.get("duration", "0"))
        count = math.ceil(period_s * timescale / duration) if duration else 0
        return [(start + i, i * duration) for i in range(count)]
    t = 0
    for s in timeline.iterfind(_DASH_NS + "S"):
        t = int(s.get("t", t))
        d = int(s.get("d", "0"))
        repeat = int(s.get("r", "0"))
        if repeat < 0:
            repeat = max(0, math.ceil((period_s * timescale - t) / d) - 1) if d else 0
        for _ in range(repeat + 1):
            out.append((start + len(out), t))
            t += d
    return out


def _representations(mpd: ET.Element) -> Iterator[tuple[list[ET.Element], float]]:
    """[MPD, Period, AdaptationSet, Representation] of each representation, with the period's
    duration (its own, else the presentation's)."""
    total = _seconds(mpd.get("mediaPresentationDuration"))
    for period in mpd.iterfind(_DASH_NS + "Period"):
        period_s = _seconds(period.get("duration")) or total
        for aset in period.iterfind(_DASH_NS + "AdaptationSet"):
            for rep in aset.iterfind(_DASH_NS + "Representation"):
                yield [mpd, period, aset, rep], period_s


def _base(levels: list[ET.Element]) -> str:
    """The BaseURLs from the MPD down to the representation, joined (relative ones)."""
    base = ""
    for level in levels:
        found = level.find(_DASH_NS + "BaseURL")
        if found is not None and found.text:
            text = found.text.strip()
            base = text if _SCHEME.match(text) or text.startswith("/") else base + text
    return base


def _dash_files(levels: list[ET.Element], period_s: float) -> list[str]:
    """Every file a representation names, relative to the MPD."""
    rep, base = levels[-1], _base(levels)
    template = _inherited(levels, "SegmentTemplate")
    if template is not None:
        names = (
            [_fill(template.get("initialization", ""), rep)]
            if template.get("initialization")
            else []
        )
        media = template.get("media", "")
        names += [_fill(media, rep, n, t) for n, t in _timeline(template, period_s)]
        return [base + name for name in names]
    segment_list = _inherited(levels, "SegmentList")
    if segment_list is not None:
        init = segment_list.find(_DASH_NS + "Initialization")
        names = [init.get("sourceURL", "")] if init is not None and init.get("sourceURL") else []
        names += [s.get("media", "") for s in segment_list.iterfind(_DASH_NS + "SegmentURL")]
        return [base + name for name in names if name]
    return [base] if base else []  # SegmentBase: the BaseURL is the one file (byte ranges in it)


def _check_dash(package: _Package, mpd: ET.Element) -> None:
    for levels, period_s in _representations(mpd):
        names = _dash_files(levels, period_s)
        if not names:
            rid = levels[-1].get("id")
            package.problems.append(f"{DASH_MANIFEST}: Representation {rid} names no file")
        for name in names:
            package.resolve(DASH_MANIFEST, name)


def _references(package: _Package) -> list[str]:
    _check_playlists(package)
    mpd = package.mpd()
    if mpd is not None:
        _check_dash(package, mpd)
    return package.problems


def references_problems(package_dir: Path) -> list[str]:
    """Every URI of master.m3u8 (variants, EXT-X-MEDIA, I-frame playlists, local keys) and of
    each media playlist (segments, EXT-X-MAP, local EXT-X-KEY), and every file manifest.mpd names
    (if the package has one), as a non-empty file inside `package_dir`: a missing, empty, absolute
    or escaping (`..`) one is a problem."""
    return _references(_Package(package_dir))


def _round(seconds: float) -> int:
    """To the nearest integer, halves up (RFC 8216 4.3.3.1's "rounded to the nearest integer")."""
    return math.floor(seconds + 0.5)


def _target_duration(package: _Package, segment_s: int) -> list[str]:
    problems = []
    for uri, media in package.media.items():
        if media.target is None:
            problems.append(f"{uri}: no EXT-X-TARGETDURATION")
            continue
        for i, (seconds, name) in enumerate(media.segments):
            if math.isnan(seconds):
                problems.append(f"{uri}: segment {i} ({name}) has no EXTINF")
            elif _round(seconds) > media.target:
                problems.append(
                    f"{uri}: segment {i} ({name}) is {seconds:g} s, longer than "
                    f"EXT-X-TARGETDURATION:{media.target}"
                )
        # The muxers round the longest segment up: FFmpeg per playlist (a fraction of 1 ms or
        # more counts), Shaka over the whole package (the 2.005 s AAC segments of segment_s 2
        # make every playlist's 3). Shorter than segment_s: content shorter than one segment.
        if media.target > segment_s + 1 or (media.target < segment_s and len(media.segments) > 1):
            problems.append(
                f"{uri}: EXT-X-TARGETDURATION:{media.target}, segment_s {segment_s} asks for "
                f"{segment_s} (or {segment_s + 1}, the muxer rounding up)"
            )
    return problems


def target_duration_problems(package_dir: Path, *, segment_s: int) -> list[str]:
    """Each media playlist's EXTINFs, rounded to the nearest integer, at most its
    EXT-X-TARGETDURATION (RFC 8216 4.3.3.1), and that target segment_s or segment_s + 1 (the
    muxers round the longest segment up: a 2.005 s AAC segment makes 3); less only in a
    playlist of one segment (content shorter than segment_s)."""
    return _target_duration(_Package(package_dir), segment_s)


def _starts(media: _Media) -> list[float]:
    """Each segment's start from the cumulative EXTINFs (FFmpeg writes them to the microsecond,
    Shaka to the millisecond: far less than a frame apart over a package's segments)."""
    starts, t = [], 0.0
    for seconds, _ in media.segments:
        starts.append(t)
        t += 0 if math.isnan(seconds) else seconds
    return starts


def _compare(starts: dict[str, list[float]], tolerance_s: float, where: str = "") -> Iterator[str]:
    """Each track's segment starts against the first's: the count, then the first start apart."""
    if len(starts) < 2:
        return
    (first, reference), *others = starts.items()
    for name, times in others:
        if len(times) != len(reference):
            yield f"{where}{name}: {len(times)} segments, {first} has {len(reference)}"
        for i, (a, b) in enumerate(zip(reference, times, strict=False)):
            if abs(a - b) > tolerance_s:
                yield (
                    f"{where}{name}: segment {i} starts at {b:.3f} s, {first}'s at {a:.3f} s "
                    f"(tolerance {tolerance_s:g} s)"
                )
                break  # the first cut elsewhere moves the rest


def _dash_video_starts(mpd: ET.Element) -> dict[str, list[float]]:
    """Each video Representation's segment starts (its SegmentTimeline's exact times over the
    timescale), by its id and SegmentTemplate media."""
    starts = {}
    for levels, period_s in _representations(mpd):
        aset, rep = levels[-2], levels[-1]
        kind = aset.get("contentType") or (rep.get("mimeType") or aset.get("mimeType") or "")
        template = _inherited(levels, "SegmentTemplate")
        if not kind.startswith("video") or template is None:
            continue
        timescale = int(template.get("timescale", "1"))
        name = f"Representation {rep.get('id', '?')} ({template.get('media', '')})"
        starts[name] = [t / timescale for _, t in _timeline(template, period_s)]
    return starts


def _alignment(package: _Package, tolerance_s: float) -> list[str]:
    starts = {uri: _starts(package.media[uri]) for uri in package.video_playlists()}
    problems = list(_compare(starts, tolerance_s))
    mpd = package.mpd()
    if mpd is not None:
        problems += _compare(_dash_video_starts(mpd), tolerance_s, f"{DASH_MANIFEST}: ")
    return problems


def alignment_problems(package_dir: Path, *, tolerance_s: float) -> list[str]:
    """The video variants (the master's EXT-X-STREAM-INF playlists; not the EXT-X-MEDIA audio and
    subtitle tracks of CMAF, whose segments end on audio frames, not on the video's keyframes)
    hold as many segments each, starting at the same times within `tolerance_s` (about a frame),
    as the first variant: a player switching variants at a segment boundary lands on the same
    picture. With manifest.mpd, its video Representations too (their SegmentTimelines' exact
    times). Starts are the cumulative EXTINFs, not each segment's first pts: the muxers write
    EXTINF from the keyframes' pts, and reading every segment would cost a read per segment."""
    return _alignment(_Package(package_dir), tolerance_s)


@dataclass(frozen=True)
class PackageReport:
    """What `check_package` found; `asdict()` is JSON-able."""

    variants: int  # video variant playlists (a CMAF rung offered with two audio groups: once)
    segments: dict[str, int]  # media playlist (relative to the master) -> its segment count
    files_referenced: int  # distinct files the manifests name, found in the package
    max_segment_s: float  # the longest EXTINF of any media playlist
    dash: bool  # the package holds manifest.mpd (CMAF)
    references_problems: list[str]
    target_duration_problems: list[str]
    alignment_problems: list[str]

    @property
    def ok(self) -> bool:
        return not (
            self.references_problems or self.target_duration_problems or self.alignment_problems
        )

    def asdict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def check_package(package_dir: Path, *, segment_s: int, tolerance_s: float) -> PackageReport:
    """All three checks of `package_dir` over one reading of its playlists."""
    package = _Package(package_dir)
    references = list(_references(package))
    durations = [s for m in package.media.values() for s, _ in m.segments if not math.isnan(s)]
    return PackageReport(
        variants=len(package.video_playlists()),
        segments={uri: len(m.segments) for uri, m in package.media.items()},
        files_referenced=len(package.files),
        max_segment_s=max(durations, default=0.0),
        dash=package.mpd() is not None,
        references_problems=references,
        target_duration_problems=_target_duration(package, segment_s),
        alignment_problems=_alignment(package, tolerance_s),
    )
