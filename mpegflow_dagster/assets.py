"""The built-in stages of a pipeline spec, one module each in `stages/`, as Dagster assets made
with the stage API (`stage.py`): ingest + probe (one step), the ladder's renditions + thumbnails
(one step sharing each decode of the source), captions, hls, and emit for what the stages
declare to publish.
"""

import importlib
import pkgutil
from types import ModuleType
from typing import Any, Optional

from dagster import AssetsDefinition

from . import stages
from .provenance import code_version
from .spec import PipelineSpec
from .stage import StepLayout


def build_video_assets(
    spec: PipelineSpec, *, encoder_build: Optional[str] = None, chunk_steps: int = 0
) -> list[AssetsDefinition]:
    """Assets for one pipeline spec, every key prefixed with `spec.name` and partitioned by video:
    ingest -> probe -> rendition_<rung> (one per ladder rung), thumbnails, captions -> hls ->
    emit / emit_captions. `encoder_build` (the FFmpeg build hash or pinned version) is part of
    every stage's code version, so a new encoder build marks them stale. `chunk_steps` (the
    deployment's) lays the ladder's time chunks out in that many steps of their own (see
    `StepLayout`); it never changes an output.

    Examples:
        .. code-block:: python

            from pathlib import Path
            from mpegflow_dagster import build_video_assets, load_spec

            assets = build_video_assets(load_spec(Path("resources/pipelines/vod.yaml")))
    """

    def version(*parts: Any) -> str:
        return code_version(*parts, encoder_build=encoder_build)

    layout = StepLayout(chunk_steps=chunk_steps)
    built: list[AssetsDefinition] = []
    for module in stage_modules():
        built += module.assets(spec, version, built, layout)
    return built


def stage_modules() -> list[ModuleType]:
    """The modules of `stages/` that make assets (`ORDER`, `assets(spec, version, built, layout)`), in
    order: a new stage kind is a new module there, found without being listed anywhere."""
    found = [
        importlib.import_module(f"{stages.__name__}.{m.name}")
        for m in pkgutil.iter_modules(stages.__path__)
    ]
    return sorted((m for m in found if hasattr(m, "assets")), key=lambda m: m.ORDER)
