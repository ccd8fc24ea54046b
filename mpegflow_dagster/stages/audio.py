"""Audio tracks of a CMAF package: every audio stream of the source, in AAC at each audio tier of
the ladder (a bitrate, sample rate and channel count its rungs are encoded with) and in each
further codec of `audio.extra` (E-AC-3, AC-3, Opus), all from one decode. A tier is an HLS audio
group holding one track per source stream, LANGUAGE and NAME from the stream's tags and the
source's default stream the group's DEFAULT; DASH gets an AdaptationSet per language and codec.
A source without audio gives an artifact holding no track, and the package has video only."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from dagster import AssetsDefinition

from ..media import commands
from ..media.languages import UNDETERMINED, bcp47, display_name, iso639_2
from ..media.mp4 import read_audio_codec
from ..media.probe import MediaInfo, probe
from ..media.verify import OutputRejected, Policy, verify_output
from ..spec import PipelineSpec
from ..stage import StageContext, StepLayout, pipeline_key, video_asset
from .ingest import load_probe, source_file
from .source_qc import source_inputs, source_loudnorm
from .toolkit import IN_MENUS, StageOutput, Tools, unique_name

TRACKS = "tracks.json"


@dataclass(frozen=True)
class Tier:
    """One audio encode setting of the package, and the rungs offered with it."""

    group: str  # the HLS GROUP-ID, also the stem of its tracks' files
    codec: str  # commands.AUDIO_ENCODERS
    bitrate_kbps: int
    sample_rate: int
    channels: int
    rungs: tuple[str, ...]


def audio_tiers(spec: PipelineSpec) -> list[Tier]:
    """The ladder's distinct AAC settings, in ladder order, each with the rungs encoded with it,
    then each of `audio.extra`, offered with every rung. Named `audio_<kbps>k` (AAC) and
    `audio_<codec>_<kbps>k`, with the channels and rate where two tiers would share a name."""
    rungs: dict[tuple[str, int, int, int], list[str]] = {}
    for rendition in spec.ladder:
        preset = spec.preset_for(rendition)
        key = ("aac", rendition.audio_bitrate_kbps, preset.audio_sample_rate, preset.audio_channels)
        rungs.setdefault(key, []).append(rendition.name)
    for extra in spec.audio.extra:
        key = (extra.codec, extra.bitrate_kbps, extra.sample_rate, extra.channels)
        rungs[key] = [r.name for r in spec.ladder]
    shared = Counter((codec, kbps) for codec, kbps, _, _ in rungs)
    return [
        Tier(
            "audio_"
            + ("" if codec == "aac" else f"{codec}_")
            + f"{kbps}k"
            + (f"_{channels}ch_{rate}" if shared[codec, kbps] > 1 else ""),
            codec,
            kbps,
            rate,
            channels,
            tuple(names),
        )
        for (codec, kbps, rate, channels), names in rungs.items()
    ]


@dataclass(frozen=True)
class SourceAudio:
    """One audio stream of the source as a track: `stream` for FFmpeg ("a:1": its second),
    `key` naming its files (the language, made unique), `name` unique among them."""

    stream: str
    key: str
    language: str
    name: str
    default: bool


def source_audio(info: MediaInfo) -> list[SourceAudio]:
    """Every audio stream of the source (`info.default_audio` the default); a stream's name is its
    title, else its language's own name."""
    streams, default = info.audio_streams, info.default_audio
    found: list[SourceAudio] = []
    for i, stream in enumerate(streams):
        language = bcp47(stream.language)
        key = unique_name(language, {a.key for a in found})
        name = unique_name(
            stream.title or display_name(language), {a.name for a in found}, IN_MENUS
        )
        found.append(SourceAudio(f"a:{i}", key, language, name, i == default))
    return found


def encode_audio_tracks(
    source: Path,
    info: MediaInfo,
    tiers: list[Tier],
    tools: Tools,
    work: Path,
    policy: Policy,
    loudnorm: Optional[commands.Loudnorm] = None,
) -> StageOutput:
    """`<group>_<key>.m4a` per tier and source stream, from one FFmpeg run, each verified
    against the source, and `tracks.json` saying which track is what. `loudnorm` (measured on
    the default stream) normalizes the default stream's tracks."""
    out = work / "audio"
    out.mkdir()
    streams = source_audio(info)
    outputs = {out / f"{tier.group}_{a.key}.m4a": (tier, a) for tier in tiers for a in streams}
    runs = []
    if outputs:
        encodes = {
            path: commands.AudioOutput(
                t.bitrate_kbps,
                t.sample_rate,
                t.channels,
                a.stream,
                iso639_2(a.language),
                t.codec,
                loudnorm=loudnorm if a.default else None,
            )
            for path, (t, a) in outputs.items()
        }
        run = tools.run("audio", commands.audio_args(source, encodes), duration_s=info.duration)
        runs.append(run)
        for path in outputs:
            problems = verify_output(
                probe(path, tools.ffprobe),
                info,
                expect_audio=True,
                expect_video=False,
                policy=policy,
                messages=run.messages,
            )
            if problems:
                raise OutputRejected([f"{path.name}: {p}" for p in problems])
    listing = []
    for tier in tiers if streams else []:
        mine = [(path, a) for path, (t, a) in outputs.items() if t == tier]
        listing.append(
            {
                **asdict(tier),
                # the codec string, read from a track as encoded (all of a tier's are alike)
                "codecs": read_audio_codec(mine[0][0]),
                "tracks": [
                    {"file": p.name, "language": a.language, "name": a.name, "default": a.default}
                    for p, a in mine
                ],
            }
        )
    (out / TRACKS).write_text(json.dumps({"groups": listing}, indent=2))
    facts: dict[str, object] = {
        "source_streams": len(streams),
        "languages": ", ".join(f"{a.language} ({a.name})" for a in streams) or "none",
        "groups": "; ".join(f"{g['group']}: {', '.join(g['rungs'])}" for g in listing) or "none",
    }
    return StageOutput(out, facts, runs)


@dataclass(frozen=True)
class AudioTrack:
    path: Path
    language: Optional[str]  # None: undetermined
    name: str
    default: bool


@dataclass(frozen=True)
class AudioGroupFiles:
    """One tier's tracks in an audio artifact, and the rungs that play with it."""

    group: str
    codecs: str  # RFC 6381: mp4a.40.2, ec-3, opus, ...
    channels: int
    rungs: tuple[str, ...]
    tracks: tuple[AudioTrack, ...]


def load_audio_groups(audio_dir: Path) -> list[AudioGroupFiles]:
    listed = json.loads((Path(audio_dir) / TRACKS).read_text())["groups"]
    return [
        AudioGroupFiles(
            g["group"],
            g["codecs"],
            g["channels"],
            tuple(g["rungs"]),
            tuple(
                AudioTrack(
                    Path(audio_dir) / t["file"],
                    None if t["language"] == UNDETERMINED else t["language"],
                    t["name"],
                    t["default"],
                )
                for t in g["tracks"]
            ),
        )
        for g in listed
    ]


ORDER = 34  # after ingest, before packaging


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """The audio asset of a CMAF package (hls.segment_type: cmaf)."""
    if not spec.packages_tracks:
        return []
    tiers = audio_tiers(spec)

    @video_asset(
        key=pipeline_key(spec, "audio"),
        ins=source_inputs(spec),
        code_version=version(
            [asdict(t) for t in tiers],
            spec.failures.verification,
            *([spec.audio.loudnorm] if spec.audio.loudnorm else []),
        ),
        retry=spec.failures.retry_for("encode"),
        description="Every audio stream of the source in AAC at each audio bitrate of the "
        "ladder: the package's audio tracks, one per language in each audio group.",
    )
    def audio(
        context: StageContext, ingest: Path, probe: Path, source_qc: Optional[Path] = None
    ) -> StageOutput:
        return encode_audio_tracks(
            source_file(ingest),
            load_probe(probe),
            tiers,
            context.ffmpeg,
            context.work,
            spec.failures.verification,
            source_loudnorm(spec, source_qc),
        )

    return [audio]
