"""FFmpeg argv for each stage, built with ffmpeg-python (never a shell string).

Every input is opened with the `file:` protocol and only that protocol is allowed, so a file
named `-x.mp4` or `concat:a|b` is read as a plain local file and nothing else is fetched.
Outputs are written with bit-exact flags and without metadata so the same build gives the same
bytes twice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import ffmpeg

from . import codecs
from .chunking import WHOLE, Span, marks_before
from .probe import Hdr10Metadata
from .safety import SAFE_INPUT, SOURCE_FORMATS

_CHUNK_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2"  # what our own chunk and audio files are

_BITEXACT = {
    "fflags": "+bitexact",
    "flags:v": "+bitexact",
    "flags:a": "+bitexact",
    "map_metadata": "-1",
    "map_chapters": "-1",
}


def _input(path: Path, *, formats: str = SOURCE_FORMATS, **options: object):
    return ffmpeg.input(
        f"file:{Path(path).resolve()}", **{**SAFE_INPUT, "format_whitelist": formats}, **options
    )


def _output_name(path: Path) -> str:
    return f"file:{Path(path).resolve()}"


def even(n: float) -> int:
    return max(2, int(round(n / 2.0)) * 2)


def rendition_height(target: int, source: int, upscale: bool) -> int:
    return even(target if upscale else min(target, source))


@dataclass(frozen=True)
class LoudnormTarget:
    """EBU R 128 loudness to normalize to: integrated loudness, true peak, loudness range."""

    integrated_lufs: float = -23.0
    true_peak_dbtp: float = -1.0
    range_lu: float = 7.0


@dataclass(frozen=True)
class Loudnorm:
    """The second pass of a two-pass loudnorm: the target and the first pass's measurement of
    the stream (`source_qc.loudnorm_for`). FFmpeg applies one linear gain when it can reach the
    target that way (the stream's range within the target's, its peak after the gain under the
    target's), else it falls back to its dynamic mode."""

    target: LoudnormTarget
    measured_i: float
    measured_tp: float
    measured_lra: float
    measured_thresh: float
    offset: float


@dataclass(frozen=True)
class AudioOutput:
    """One AAC encode of one of the source's audio streams (`stream`: "a:0" is its first), its
    `language` (ISO 639-2/T) written in the track's header; with `loudnorm`, normalized in
    loudness (two-pass loudnorm) before it is encoded."""

    bitrate_kbps: int
    sample_rate: int
    channels: int
    stream: str = "a:0"
    language: Optional[str] = None
    codec: str = "aac"  # or eac3, ac3, opus (AUDIO_ENCODERS)
    loudnorm: Optional[Loudnorm] = None


# FFmpeg's encoder of each audio codec: its own AAC, AC-3 and E-AC-3, libopus for Opus (FFmpeg's
# own Opus encoder is experimental)
AUDIO_ENCODERS = {"aac": "aac", "ac3": "ac3", "eac3": "eac3", "opus": "libopus"}


@dataclass(frozen=True)
class VideoOutput:
    """Everything that shapes one rendition's bytes (besides the source and the build): its
    video encoder's settings (see `codecs`) and its AAC audio."""

    encoder: str  # libx264, libx265, libsvtav1
    height: int
    video_bitrate_kbps: int
    maxrate_factor: float
    profile: Optional[str]  # None: the encoder's default (codecs.Codec.default_profile)
    level: Optional[str]
    crf: Optional[int]  # capped CRF's quality (SVT-AV1)
    audio_bitrate_kbps: int
    speed: str
    tune: Optional[str]
    pix_fmt: str
    encoder_params: tuple[tuple[str, str], ...]
    audio_sample_rate: int
    audio_channels: int
    gop_s: float
    frame_rate: float
    has_audio: bool
    tone_map: bool = False  # an HDR source into a rung that cannot carry it: to SDR BT.709
    audio_stream: str = "a:0"  # the source's default audio stream
    hdr10: Optional[Hdr10Metadata] = None  # the HDR source's, for a rung that keeps its PQ
    loudnorm: Optional[Loudnorm] = None  # of the audio (see AudioOutput)

    @property
    def audio(self) -> AudioOutput:
        return AudioOutput(
            self.audio_bitrate_kbps,
            self.audio_sample_rate,
            self.audio_channels,
            self.audio_stream,
            loudnorm=self.loudnorm,
        )


# PQ or HLG to SDR BT.709: linear light at 100 nits peak, BT.709 primaries, Hable's curve, then
# BT.709 transfer and matrix in limited range (zscale reads the source's from each frame)
TONE_MAP = (
    ("zscale", {"t": "linear", "npl": 100}),
    ("format", {"pix_fmts": "gbrpf32le"}),
    ("zscale", {"p": "bt709"}),
    ("tonemap", {"tonemap": "hable", "desat": 0}),
    ("zscale", {"t": "bt709", "m": "bt709", "r": "tv"}),
)


@dataclass(frozen=True)
class ThumbnailOutput:
    interval_s: float
    width: int
    quality: int


def _seconds(t: Fraction, *, up: bool = False) -> str:
    """`t` for -ss/-t, rounded down to FFmpeg's microsecond: a cut on a frame at 10.01 s, or at
    40.0066333... s (frame 1199 at 30000/1001), keeps that frame and not the one before. `up`
    rounds up instead (an `inpoint`: the keyframe at or before it must be the one at `t`)."""
    whole, micro = divmod((math.ceil if up else math.floor)(t * 1_000_000), 1_000_000)
    return f"{whole}.{micro:06d}".rstrip("0").rstrip(".")


def _at_marks(span: Span, period_s: float, count: str, *, in_lead: bool) -> str:
    """An FFmpeg expression: is this frame at or after the next mark (source times 0, period,
    2 * period, ...), `count` being the marks taken so far? Inside a chunk `t` starts at 0 where
    its encode starts, so that start and the marks before it are added back: those before the
    encode's start (`in_lead`: keyframes, forced in the lead too), or before the chunk's own start
    (thumbnails: none from the lead, whose frames the chunk before has)."""
    start = span.encode_start_s
    taken = marks_before(Span(start, None) if in_lead else span, period_s)
    if start == 0 and taken == 0:
        return f"gte(t,{period_s:g}*{count})"
    return f"gte(t+{float(start)!r},{period_s:g}*({taken}+{count}))"


def _rendition_output(video, audio, out: Path, enc: VideoOutput, threads: int, span: Span = WHOLE):
    """An MP4 with keyframes forced every `gop_s` seconds of source time, so every rendition of
    the same source, in any codec, has its keyframes (and so its HLS segment boundaries) at the
    same times: for a chunk, the frames a whole-source encode would make keyframes."""
    video = video.filter("scale", -2, enc.height, flags="bicubic")
    if enc.tone_map:  # after scaling: the float pipeline at the rung's size, not the source's
        for name, options in TONE_MAP:
            video = video.filter(name, **options)
    video = video.filter("format", enc.pix_fmt)
    maxrate = int(enc.video_bitrate_kbps * enc.maxrate_factor)
    opts = codecs.video_options(
        enc.encoder,
        speed=enc.speed,
        profile=enc.profile,
        level=enc.level,
        bitrate_kbps=enc.video_bitrate_kbps,
        maxrate_kbps=maxrate,
        crf=enc.crf,
        gop_frames=max(1, math.ceil(enc.gop_s * max(enc.frame_rate, 1.0))),
        keyframes=_at_marks(span, enc.gop_s, "n_forced", in_lead=True),
        params=enc.encoder_params,
        threads=threads,
        hdr10=enc.hdr10,
    )
    if enc.tune:
        opts["tune"] = enc.tune
    streams = [video]
    if enc.has_audio and audio is not None:  # None: a chunk, whose audio is encoded apart
        streams.append(audio)
        opts.update(_audio_options(enc.audio))
    return ffmpeg.output(
        *streams, _output_name(out), movflags="+faststart", f="mp4", **opts, **_BITEXACT
    )


def _audio_streams(inp, audios: Sequence[Optional[AudioOutput]]) -> list:
    """The stream each of `audios` encodes from (None: no audio): the input's stream as it is,
    or normalized in loudness. Outputs of the same stream with the same loudnorm and sample rate
    share one loudnorm (split with asplit): it is the costly part of an audio encode."""
    wanted: dict[tuple[str, Loudnorm, int], int] = {}
    for audio in audios:
        if audio is not None and audio.loudnorm is not None:
            key = (audio.stream, audio.loudnorm, audio.sample_rate)
            wanted[key] = wanted.get(key, 0) + 1
    branches: dict[tuple[str, Loudnorm, int], list] = {}
    for (stream, norm, rate), count in wanted.items():
        normalized = inp[stream].filter(
            "loudnorm",
            I=norm.target.integrated_lufs,
            TP=norm.target.true_peak_dbtp,
            LRA=norm.target.range_lu,
            measured_I=norm.measured_i,
            measured_TP=norm.measured_tp,
            measured_LRA=norm.measured_lra,
            measured_thresh=norm.measured_thresh,
            offset=norm.offset,
            linear="true",
            print_format="none",
        )
        # loudnorm's output is 192 kHz, whatever its input's rate
        normalized = normalized.filter("aresample", rate)
        if count == 1:
            branches[(stream, norm, rate)] = [normalized]
        else:
            split = normalized.filter_multi_output("asplit", count)
            branches[(stream, norm, rate)] = [split.stream(i) for i in range(count)]
    streams = []
    for audio in audios:
        if audio is None:
            streams.append(None)
        elif audio.loudnorm is None:
            streams.append(inp[audio.stream])
        else:
            streams.append(branches[(audio.stream, audio.loudnorm, audio.sample_rate)].pop(0))
    return streams


def _audio_options(audio: AudioOutput) -> dict[str, object]:
    return {
        "c:a": AUDIO_ENCODERS[audio.codec],
        "b:a": f"{audio.bitrate_kbps}k",
        "ar": audio.sample_rate,
        "ac": audio.channels,
    }


def _thumbnail_output(
    video, out_dir: Path, thumbs: ThumbnailOutput, threads: int, span: Span = WHOLE
):
    """One JPEG for each of t = 0, interval, 2*interval, ... < duration (the first frame at or after
    each mark, so there are ceil(duration / interval)), named 00001.jpg, 00002.jpg, ...; a chunk's
    are those of its part of the source, numbered on from the marks before it.

    `select` against the frame count does not drift, unlike `fps=1/N`, which also drops the
    last mark when it falls within half an interval of the end."""
    at_marks = _at_marks(span, thumbs.interval_s, "selected_n", in_lead=False)
    video = video.filter("select", at_marks).filter("scale", thumbs.width, -2)
    return ffmpeg.output(
        video,
        _output_name(Path(out_dir) / "%05d.jpg"),
        f="image2",
        fps_mode="vfr",
        start_number=1 + marks_before(span, thumbs.interval_s),
        **{"q:v": thumbs.quality},
        threads=threads,
        **_BITEXACT,
    )


def encode_rendition_args(
    src: Path,
    out: Path,
    enc: VideoOutput,
    *,
    threads: int,
    subtitles: Optional[str] = None,
    subtitle_font_size: int = 24,
) -> list[str]:
    """One rendition. `subtitles` is a file name relative to the working directory FFmpeg runs in
    (filter-path escaping is avoided by running in a scratch dir holding a copy named plainly)."""
    inp = _input(src)
    video = inp["v:0"]
    if subtitles:
        # Burn in at source resolution before scaling, so text is sharp at every size.
        video = video.filter(
            "subtitles", filename=subtitles, force_style=f"FontSize={subtitle_font_size}"
        )
    (audio,) = _audio_streams(inp, [enc.audio if enc.has_audio else None])
    return _rendition_output(video, audio, out, enc, threads).get_args()


def encode_ladder_args(
    src: Path,
    renditions: dict[Path, VideoOutput],
    *,
    threads: int,
    thumbnails: Optional[tuple[Path, ThumbnailOutput]] = None,
    span: Span = WHOLE,
    analysis: Optional[Callable[[Any, Any], list]] = None,
) -> list[str]:
    """Every rendition (and the thumbnails) from one decode of the source: the video is split
    once, each branch scaled and encoded with exactly the options `encode_rendition_args` uses.
    `analysis(video, input)` adds streams on a branch of the decoded video (of the span, lead
    included) and on the input's other streams, into one null output: the source's analysis
    (`source_qc.Analysis.streams`) riding on this decode instead of making its own.

    For a chunk (`span` other than the whole source) only that part is decoded (seeking is
    frame-exact: frames before the start are decoded and dropped), the renditions are written
    without audio (see `audio_args`, `join_args`) and the thumbnails numbered on from the marks
    before the chunk. Keyframes and thumbnail marks are placed by source time (the chunk's start
    plus time inside it), so they fall on the frames a whole-source run picks."""
    options: dict[str, str] = {}
    if not span.whole:
        options["ss"] = _seconds(span.encode_start_s)
        if span.duration_s is not None:
            options["t"] = _seconds(span.duration_s + span.lead_s)
    inp = _input(src, **options)
    branches = len(renditions) + (1 if thumbnails else 0) + (1 if analysis else 0)
    split = inp["v:0"].filter_multi_output("split", branches) if branches > 1 else None

    def branch(i: int):
        return split.stream(i) if split is not None else inp["v:0"]

    audios = _audio_streams(
        inp, [enc.audio if span.whole and enc.has_audio else None for enc in renditions.values()]
    )
    outputs = [
        _rendition_output(branch(i), audio, out, enc, threads, span)
        for i, ((out, enc), audio) in enumerate(zip(renditions.items(), audios, strict=True))
    ]
    if thumbnails:
        outputs.append(
            _thumbnail_output(branch(len(renditions)), thumbnails[0], thumbnails[1], threads, span)
        )
    if analysis is not None:
        outputs.append(ffmpeg.output(*analysis(branch(branches - 1), inp), "-", f="null"))
    return ffmpeg.merge_outputs(*outputs).get_args()


def audio_args(
    src: Path,
    outputs: dict[Path, AudioOutput],
    analysis: Optional[Callable[[Any, Any], list]] = None,
) -> list[str]:
    """AAC files, one per output, encoded in one process from the whole source: the audio of
    chunked renditions (AAC cannot be cut and joined without a gap at each cut), as
    `_rendition_output` would encode it, and a CMAF package's audio tracks. `analysis(None,
    input)`: the source's audio analysis on the same decode (see `encode_ladder_args`)."""
    inp = _input(src)
    streams = _audio_streams(inp, list(outputs.values()))
    encoded = [
        ffmpeg.output(
            stream,
            _output_name(out),
            f="mp4",
            **_audio_options(audio),
            **_BITEXACT,
            **({"metadata:s:a:0": f"language={audio.language}"} if audio.language else {}),
        )
        for (out, audio), stream in zip(outputs.items(), streams, strict=True)
    ]
    if analysis is not None:
        encoded.append(ffmpeg.output(*analysis(None, inp), "-", f="null"))
    return ffmpeg.merge_outputs(*encoded).get_args()


def concat_listing(chunks: list[Path], spans: Sequence[Span] = ()) -> str:
    """An ffconcat file list of our own chunk files (never a user's file: see `safety`). A chunk
    whose span has a lead starts at its cut (`inpoint`, the keyframe its lead ends on)."""
    # Inside single quotes nothing is special; a quote itself is closed, escaped and reopened.
    leads = [s.lead_s for s in spans] or [Fraction(0)] * len(chunks)
    return "ffconcat version 1.0\n" + "".join(
        "file '"
        + _output_name(c).replace("'", "'\\''")
        + "'\n"
        + (f"inpoint {_seconds(lead, up=True)}\n" if lead else "")
        for c, lead in zip(chunks, leads, strict=True)
    )


def join_args(listing: Path, audio: Optional[Path], out: Path) -> list[str]:
    """Chunk files joined into one rendition, with `audio` muxed in, without re-encoding: the
    chunks hold whole GOPs, so the joined stream is the frames of every chunk in order."""
    video = _input(listing, formats=f"concat,{_CHUNK_FORMATS}", f="concat", safe=0)["v:0"]
    streams = [video, *([_input(audio, formats=_CHUNK_FORMATS)["a:0"]] if audio else [])]
    return ffmpeg.output(
        *streams, _output_name(out), c="copy", movflags="+faststart", f="mp4", **_BITEXACT
    ).get_args()


def webvtt_args(src: Path, out: Path, stream: Optional[int] = None) -> list[str]:
    """Text subtitles as WebVTT, their cues as they are: a subtitle file (SRT or WebVTT, as
    `safety` lets through), or with `stream` that stream (by index) of the source."""
    subtitles = _input(src, formats="srt,webvtt") if stream is None else _input(src)[str(stream)]
    return ffmpeg.output(
        subtitles,
        _output_name(out),
        **{"c:s": "webvtt"},
        f="webvtt",
        **_BITEXACT,
    ).get_args()


def sprite_args(
    thumb_dir: Path, out: Path, *, columns: int, rows: int, tile_width: int, quality: int
) -> list[str]:
    """Tile the numbered thumbnails into one sprite sheet, row by row."""
    tiles = (
        _input(Path(thumb_dir) / "%05d.jpg", formats="image2", f="image2", start_number=1)
        .filter("scale", tile_width, -2)
        .filter("tile", f"{columns}x{rows}")
    )
    return ffmpeg.output(
        tiles, _output_name(out), vframes=1, f="image2", update=1, **{"q:v": quality}, **_BITEXACT
    ).get_args()


def hls_variant_args(src: Path, out_dir: Path, *, segment_s: int, segment_type: str) -> list[str]:
    """Repackage one encoded rendition as an HLS VOD variant; no re-encode, cuts at its keyframes."""
    out_dir = Path(out_dir).resolve()
    ext = "m4s" if segment_type == "fmp4" else "ts"
    return ffmpeg.output(
        _input(src, formats="mov,mp4"),
        _output_name(out_dir / "index.m3u8"),
        c="copy",
        f="hls",
        hls_time=segment_s,
        hls_playlist_type="vod",
        hls_segment_type=segment_type,
        hls_flags="independent_segments",
        hls_segment_filename=str(out_dir / f"seg_%05d.{ext}"),
        **_BITEXACT,
    ).get_args()


def still_args(
    src: Path, out: Path, *, at_s: float, width: int, quality: int, formats: str
) -> list[str]:
    """One frame of `src` at `at_s` (the first at or after it) scaled to `width`, as a JPEG: a
    preview picture (see `stills`). Seeking on the input decodes from the keyframe before `at_s`,
    so a frame late in a long file costs about one GOP of decoding."""
    inp = _input(src, formats=formats, **({"ss": _seconds(Fraction(at_s))} if at_s > 0 else {}))
    return ffmpeg.output(
        inp["v:0"].filter("scale", width, -2),
        _output_name(out),
        vframes=1,
        f="image2",
        update=1,
        **{"q:v": quality},
        **_BITEXACT,
    ).get_args()


def split_outputs(argv: list[str]) -> tuple[list[str], list[list[str]]]:
    """A command as these functions build it (every option one `-key value` pair): the part its
    outputs share (binary, global and input options, the filtergraph) and each output's own
    options ending in its name. One FFmpeg run can make several outputs (`encode_ladder_args`)."""
    inputs = [i for i, token in enumerate(argv) if token == "-i"]
    end = inputs[-1] + 2 if inputs else 1
    if argv[end : end + 1] == ["-filter_complex"]:
        end += 2
    head, groups, group = argv[:end], [], []
    i = end
    while i < len(argv):
        if argv[i].startswith("-") and i + 1 < len(argv):
            group += argv[i : i + 2]
            i += 2
        else:
            groups.append([*group, argv[i]])
            group, i = [], i + 1
    return head, groups


_LABEL = re.compile(r"\[([^\]]*)\]")
_LEAD = re.compile(r"\s*(?:\[[^\]]*\])+")
_TRAIL = re.compile(r"(?:\[[^\]]*\])+\s*$")


def _filter_links(chain: str) -> tuple[set[str], set[str]]:
    """The input and output labels of one filter chain, `[a][b]filter=args[c]`."""
    lead = _LEAD.match(chain)
    rest = chain[lead.end() :] if lead else chain
    trail = _TRAIL.search(rest)
    return (
        set(_LABEL.findall(lead.group(0))) if lead else set(),
        set(_LABEL.findall(trail.group(0))) if trail else set(),
    )


def own_filtergraph(graph: str, labels: set[str]) -> str:
    """The chains of a filtergraph (`a;b;...`, ffmpeg-python writes one filter per chain) that
    feed the streams `labels`: one output's branch of a shared decode."""
    chains = re.split(r"(?<!\\);", graph)
    needed, kept = set(labels), []
    for chain in reversed(chains):
        ins, outs = _filter_links(chain)
        if outs & needed:
            kept.append(chain)
            needed |= ins
    return ";".join(reversed(kept))


def output_part(argv: list[str], own: Callable[[str], bool]) -> Optional[list[str]]:
    """The part of a command that makes the outputs `own(name)` picks: the shared head, its
    filtergraph cut to what feeds them, and their options; None if the command makes none."""
    head, groups = split_outputs(argv)
    mine = [g for g in groups if own(g[-1])]
    if not mine:
        return None
    head = list(head)
    if "-filter_complex" in head:
        at = head.index("-filter_complex") + 1
        maps = {g[i + 1] for g in mine for i, t in enumerate(g[:-1]) if t == "-map"}
        head[at] = own_filtergraph(head[at], {m.strip("[]") for m in maps if m.startswith("[")})
    return [*head, *(token for g in mine for token in g)]
