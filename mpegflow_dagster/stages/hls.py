"""HLS packaging: one variant per rendition (stream copy) and a master playlist over all of them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from dagster import AssetsDefinition, Failure

from ..media import commands
from ..media.hls import VariantStream, master_playlist, measure_variant
from ..media.mp4 import read_mp4
from ..media.runner import RunResult
from ..spec import HlsSpec, PipelineSpec
from ..stage import StageContext, pipeline_key, video_asset
from ..storage import sha256_files
from .encode import rendition_asset_name
from .toolkit import StageOutput, Tools


def package_hls(renditions: dict[str, Path], cfg: HlsSpec, tools: Tools, work: Path) -> StageOutput:
    """One HLS variant per rendition (stream copy, all at once: each is a short I/O-bound run)
    and a master playlist over all of them."""
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
        "ladder": ", ".join(
            f"{v.height}p@{v.peak_bps // 1000}k" for v in sorted(variants, key=lambda v: v.peak_bps)
        ),
    }
    return StageOutput(
        out,
        facts,
        [run for _, run, _ in made],
        hashed={f: h for _, _, known in made for f, h in known.items()},
    )


ORDER = 40  # after the renditions


def assets(
    spec: PipelineSpec, version: Callable[..., str], built: Sequence[AssetsDefinition]
) -> list[AssetsDefinition]:
    """The hls asset over the ladder's renditions and the spec's `hls.include` (your own)."""
    packaged = [pipeline_key(spec, rendition_asset_name(r.name)) for r in spec.ladder]
    packaged += [pipeline_key(spec, name) for name in spec.hls.include]

    @video_asset(
        key=pipeline_key(spec, "hls"),
        ins={"renditions": packaged},
        code_version=version(spec.hls),
        announces="package.ready",
        retry=spec.failures.retry_for("package"),
        publish_as="hls",
        entry="master.m3u8",
        run_with_missing=spec.hls.min_renditions is not None,
        description="HLS VOD: one variant per rendition and a master playlist.",
    )
    def hls(context: StageContext, renditions: list[Path]) -> StageOutput:
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
        return package_hls(by_name, spec.hls, context.ffmpeg, context.work)

    return [hls]
