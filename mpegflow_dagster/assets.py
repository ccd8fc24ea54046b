"""The built-in stages of a pipeline spec, one module each (`stages/`), as Dagster assets made
with the stage API (`stage.py`): ingest + probe (one step), the ladder's renditions + thumbnails
(one step sharing each decode of the source), captions, hls, and emit for what the stages
declare to publish.
"""

from typing import Any, Optional

from dagster import AssetsDefinition

from .provenance import code_version
from .spec import PipelineSpec
from .stage import pipeline_key
from .stages import captions, emit, encode, hls, ingest


def build_video_assets(spec: PipelineSpec, *, encoder_build: Optional[str] = None) -> list[AssetsDefinition]:
    """Assets for one pipeline spec, every key prefixed with `spec.name` and partitioned by video:
    ingest -> probe -> rendition_<rung> (one per ladder rung), thumbnails, captions -> hls ->
    emit / emit_captions. `encoder_build` (the FFmpeg build hash or pinned version) is part of
    every stage's code version, so a new encoder build marks them stale.

    Examples:
        .. code-block:: python

            from pathlib import Path
            from mpegflow_dagster import build_video_assets, load_spec

            assets = build_video_assets(load_spec(Path("resources/pipelines/vod.yaml")))
    """
    def version(*parts: Any) -> str:
        return code_version(*parts, encoder_build=encoder_build)

    renditions = [pipeline_key(spec, encode.rendition_asset_name(r.name)) for r in spec.ladder]
    renditions += [pipeline_key(spec, name) for name in spec.hls.include]
    built = [*ingest.assets(spec, version), *encode.assets(spec, version), *captions.assets(spec, version),
             *hls.assets(spec, version, renditions)]
    return [*built, *emit.assets(spec, version, built)]
