"""HLS packaging: one variant per packaged rendition (stream copy) and a master playlist over them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from dagster import (
    AssetKey,
    AssetsDefinition,
    Failure,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
)

from .. import qc
from ..media import cmaf, commands
from ..media.hls import (
    AudioRendition,
    SubtitleTrack,
    VariantStream,
    master_playlist,
    measure_variant,
)
from ..media.languages import UNDETERMINED
from ..media.mp4 import read_mp4
from ..media.package_qc import check_package
from ..media.runner import RunResult
from ..media.variants import Candidate, choose_variants, dropped_text
from ..spec import HlsSpec, PipelineSpec
from ..stage import StageContext, StepLayout, pipeline_key, video_asset
from ..storage import sha256_files
from .audio import AudioGroupFiles, load_audio_groups
from .encode import rendition_asset_name
from .ingest import load_probe
from .subtitles import WebvttTrack, load_tracks
from .toolkit import StageOutput, Tools


def packaged_renditions(
    renditions: dict[str, Path], spec: PipelineSpec, source_height: int
) -> tuple[dict[str, Path], dict[str, str]]:
    """The renditions that become variants, and why each other one was left out (see
    `media.variants.choose_variants`: rungs above the source, several of one resolution in one
    codec)."""
    rungs = {r.name: r.height for r in spec.ladder}
    candidates = []
    for name, mp4 in renditions.items():
        header = read_mp4(mp4)
        bits = mp4.stat().st_size * 8
        candidates.append(
            Candidate(
                name,
                header.video.width,
                header.video.height,
                round(bits / header.duration_s),
                rungs.get(name),
                header.video.codec_name,
            )
        )
    kept, dropped = choose_variants(candidates, source_height, spec.packages_above_source)
    return {c.name: renditions[c.name] for c in kept}, dropped


def package_hls(
    renditions: dict[str, Path],
    cfg: HlsSpec,
    tools: Tools,
    work: Path,
    dropped: Mapping[str, str],
) -> StageOutput:
    """One HLS variant per rendition (stream copy, all at once: each is a short I/O-bound run)
    and a master playlist over all of them; `dropped` (left out, and why) goes into the facts."""
    out = work / "hls"

    def variant(name: str, mp4: Path) -> tuple[VariantStream, RunResult, dict[Path, str]]:
        vdir = out / name
        vdir.mkdir(parents=True)
        header = read_mp4(
            mp4
        )  # verified by the encode stage; the header is all a master playlist needs
        run = tools.run(
            f"hls {name}",
            commands.hls_variant_args(
                mp4, vdir, segment_s=cfg.segment_s, segment_type=cfg.segment_type
            ),
            duration_s=header.duration_s,
        )
        peak, average, version = measure_variant(vdir / "index.m3u8")
        video = header.video
        rate = float(video.frame_rate) if video.frame_rate else None
        stream = VariantStream(
            f"{name}/index.m3u8",
            version,
            video.width,
            video.height,
            rate,
            header.codecs,
            peak,
            average,
            video_range=video.video_range,
        )
        return stream, run, sha256_files(vdir)

    with ThreadPoolExecutor(max_workers=max(1, len(renditions))) as pool:
        made = list(pool.map(lambda item: variant(*item), renditions.items()))
    variants = [v for v, _, _ in made]
    (out / "master.m3u8").write_text(master_playlist(variants))
    facts = {
        "variants": len(variants),
        "segment_s": cfg.segment_s,
        "segment_type": cfg.segment_type,
        "dropped": dropped_text(dropped),
    }
    return StageOutput(
        out,
        facts,
        [run for _, run, _ in made],
        hashed={f: h for _, _, known in made for f, h in known.items()},
        display={"ladder": ladder_table(variants)},
    )


def package_cmaf(
    renditions: dict[str, Path],
    audio: Sequence[AudioGroupFiles],
    cfg: HlsSpec,
    work: Path,
    dropped: Mapping[str, str],
    subtitles: Sequence[WebvttTrack] = (),
) -> StageOutput:
    """One Shaka Packager run: each rendition's video, the audio artifact's tracks (each audio
    group with one track per language, `audio`: the groups of the audio stage) and each of
    `subtitles` (WebVTT by language) as CMAF segments, a static DASH MPD over them, and our
    multivariant playlist over Shaka's media playlists, each rung with the audio group it pairs
    with. A rendition of your own (hls.include) keeps the audio it holds, in a group of its own."""
    out = work / "hls"
    headers = {name: read_mp4(mp4) for name, mp4 in renditions.items()}
    tracks = [cmaf.Track(name, mp4, "video") for name, mp4 in renditions.items()]
    media: list[AudioRendition] = []
    audio_of: dict[str, list[tuple[str, str]]] = {}  # rendition -> (its audio groups, CODECS)
    for g in audio:
        rungs = [r for r in g.rungs if r in renditions]
        if not rungs:  # its rungs were left out of the package
            continue
        for r in rungs:
            audio_of.setdefault(r, []).append((g.group, f"{headers[r].video.codec},{g.codecs}"))
        for t in g.tracks:
            folder = t.path.stem
            tracks.append(cmaf.Track(folder, t.path, "audio", g.group, t.language, t.default))
            media.append(
                AudioRendition(
                    g.group, f"{folder}/index.m3u8", g.channels, t.name, t.language, t.default
                )
            )
    for name, mp4 in renditions.items():
        if name in audio_of or headers[name].audio_codec is None:
            continue
        group = f"audio_{name}"
        tracks.append(cmaf.Track(group, mp4, "audio", group))
        media.append(
            AudioRendition(group, f"{group}/index.m3u8", headers[name].audio_channels or 2, group)
        )
        audio_of[name] = [(group, headers[name].codecs)]
    texts = [
        SubtitleTrack(cmaf.SUBTITLES_GROUP, f"subtitles_{t.name}/index.m3u8", t.language, t.label)
        for t in subtitles
    ]
    tracks += [
        cmaf.Track(f"subtitles_{t.name}", t.path, "text", language=t.language, label=t.label)
        for t in subtitles
    ]
    args = cmaf.packager_args(tracks, out, segment_s=cfg.segment_s)
    if cfg.encryption:
        kid, key = cmaf.deployment_key()
        iv = cmaf.content_iv(kid, [t.source for t in tracks])
        args += cmaf.encryption_args(cfg.encryption, kid, key, iv)
    run = cmaf.run_packager(args)
    (out / ".shaka-master.m3u8").unlink()
    measured = {
        t.name: measure_variant(out / t.name / "index.m3u8") for t in tracks if t.stream != "text"
    }
    # a variant's BANDWIDTH holds its audio group's most demanding track
    group_bps = {
        group: (
            max(measured[t.name][0] for t in tracks if t.group == group),
            max(measured[t.name][1] for t in tracks if t.group == group),
        )
        for group in {g for groups in audio_of.values() for g, _ in groups}
    }
    variants = []
    for name, header in headers.items():
        video_peak, video_average, version = measured[name]
        video = header.video
        # a rung is offered once per audio group it pairs with (one per audio codec)
        for group, codecs in audio_of.get(name) or [(None, header.codecs)]:
            peak, average = video_peak, video_average
            if group:
                peak, average = peak + group_bps[group][0], average + group_bps[group][1]
            variants.append(
                VariantStream(
                    f"{name}/index.m3u8",
                    version,
                    video.width,
                    video.height,
                    float(video.frame_rate) if video.frame_rate else None,
                    codecs,
                    peak,
                    average,
                    group,
                    cmaf.SUBTITLES_GROUP if texts else None,
                    video.video_range,
                )
            )
    (out / "master.m3u8").write_text(master_playlist(variants, media, texts))
    facts = {
        "variants": len(variants),
        "audio_tracks": len(media),
        "audio_languages": ", ".join(sorted({a.language or UNDETERMINED for a in media})) or "none",
        "subtitles": ", ".join(t.name for t in subtitles) or "none",
        "encryption": f"{cfg.encryption} (raw key)" if cfg.encryption else "none",
        "segment_s": cfg.segment_s,
        "segment_type": cfg.segment_type,
        "dash": cmaf.DASH_MANIFEST,
        "packager": cmaf.packager_version(run.argv[0]),
        "dropped": dropped_text(dropped),
    }
    return StageOutput(out, facts, [run], display={"ladder": ladder_table(variants)})


LADDER_SCHEMA = TableSchema(
    columns=[
        TableColumn("rendition", "string"),
        TableColumn("resolution", "string"),
        TableColumn("peak_kbps", "int", description="BANDWIDTH: the highest segment's bitrate"),
        TableColumn("average_kbps", "int", description="AVERAGE-BANDWIDTH"),
        TableColumn("codecs", "string"),
    ]
)


def ladder_table(variants: list[VariantStream]) -> MetadataValue:
    """The packaged ladder, lowest bitrate first (as in the master playlist), for the UI."""
    return MetadataValue.table(
        records=[
            TableRecord(
                {
                    "rendition": v.uri.split("/")[0],
                    "resolution": f"{v.width}x{v.height}",
                    "peak_kbps": round(v.peak_bps / 1000),
                    "average_kbps": round(v.average_bps / 1000),
                    "codecs": v.codecs,
                }
            )
            for v in sorted(variants, key=lambda v: (v.peak_bps, v.height))
        ],
        schema=LADDER_SCHEMA,
    )


ORDER = 40  # after the renditions


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """The hls asset over the ladder's renditions and the spec's `hls.include` (your own)."""
    packaged = [pipeline_key(spec, rendition_asset_name(r.name)) for r in spec.ladder]
    packaged += [pipeline_key(spec, name) for name in spec.hls.include]

    ins: dict[str, AssetKey | list[AssetKey]] = {
        "renditions": packaged,
        "probe": pipeline_key(spec, "probe"),
    }
    if spec.packages_tracks:
        ins["audio"] = pipeline_key(spec, "audio")
    if spec.packages_subtitles:
        ins["subtitles"] = pipeline_key(spec, "subtitles")

    @video_asset(
        key=pipeline_key(spec, "hls"),
        ins=ins,
        code_version=version(spec.hls),
        announces="package.ready",
        retry=spec.failures.retry_for("package"),
        publish_as="hls",
        entry="master.m3u8",
        run_with_missing=spec.hls.min_renditions is not None,
        description="HLS VOD: one variant per rendition (none above the source unless "
        "hls.above_source: keep, one per resolution) and a master playlist.",
        checks=qc.package_checks(spec),
    )
    def hls(
        context: StageContext,
        renditions: list[Path],
        probe: Path,
        audio: Optional[Path] = None,
        subtitles: Optional[Path] = None,
    ) -> StageOutput:
        by_name = {path.stem: path for path in renditions}
        if len(by_name) < len(renditions):
            raise Failure(
                description="the renditions to package were loaded ambiguously: materialize hls together "
                "with all its renditions (unchanged ones are reused, not re-encoded)",
                allow_retries=False,
            )
        if len(by_name) < spec.renditions_required:
            raise Failure(
                description=f"only {len(by_name)} of {len(packaged)} renditions were produced; packaging "
                f"needs {spec.renditions_required} (hls.min_renditions)",
                allow_retries=False,
            )
        video = load_probe(probe).video
        assert video is not None and video.height  # the probe refuses a source without video
        kept, dropped = packaged_renditions(by_name, spec, video.height)
        if dropped:
            context.log.info(f"left out of the package: {dropped_text(dropped)}")
        if audio is not None:  # CMAF
            out = package_cmaf(
                kept,
                load_audio_groups(audio),
                spec.hls,
                context.work,
                dropped,
                load_tracks(subtitles) if subtitles is not None else [],
            )
        else:
            out = package_hls(kept, spec.hls, context.ffmpeg, context.work, dropped)
        if spec.qc.package.enabled:
            # one frame of the source's rate (the variants keep it)
            frame_s = 1 / (video.frame_rate or 30.0)
            report = check_package(out.path, segment_s=spec.hls.segment_s, tolerance_s=frame_s)
            out.facts[qc.PACKAGE_QC] = report.asdict()
        return out

    return [hls]
