"""Emit: publish what the stages declare (`publish_as`) to the delivery location, atomically,
with a manifest of what went where and each part's entry point (`entry`, e.g. the master playlist).
A part from an optional stage (one that may produce nothing, like captions) gets its own
`emit_<stage>` step, so that its absence holds nothing else back. `emit` itself concludes the
video: its new publication is `video.succeeded`.

An emit whose inputs are unchanged is reused, not published again, while the delivery location
still holds each part as the stored manifest recorded it (same place, same sha256): a re-run that
changed nothing publishes nothing and announces nothing."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Optional, Sequence

from dagster import AssetKey, AssetsDefinition

from ..media.cmaf import DASH_MANIFEST
from ..outcomes import CONCLUDING_ASSET
from ..spec import PipelineSpec
from ..stage import (
    ENTRY_TAG,
    OPTIONAL_TAG,
    PUBLISH_TAG,
    Context,
    StageContext,
    StepLayout,
    pipeline_key,
    video_asset,
)
from ..status import summary_metadata
from ..storage import ArtifactStore, copy_tree_hashing, describe
from .toolkit import StageOutput


def emit(
    video: str,
    parts: dict[str, Path],
    delivery: ArtifactStore,
    work: Path,
    entries: Optional[dict[str, str]] = None,
) -> StageOutput:
    """Publish each part to `<delivery>/<video>/<part>` (atomically, one part at a time, playlists
    inside a part appear together with their segments) and write a manifest of what went where;
    `entries` names the file of a tree that a viewer opens (`<part>_entry` in the facts; a file
    part is its own entry); a CMAF package's DASH MPD is its `dash_entry`."""
    manifest: dict[str, dict[str, object]] = {}
    for part, path in parts.items():
        staged = work / part
        known = copy_tree_hashing(
            Path(path), staged
        )  # hashed while copied, not read again to publish
        record = delivery.publish(staged, PurePosixPath(video) / part, describe(staged, known))
        manifest[part] = {
            "uri": record.uri,
            "sha256": record.sha256,
            "size_bytes": record.size_bytes,
            "files": record.files,
        }
        if entries and part in entries:
            manifest[part]["entry"] = f"{record.uri}/{entries[part]}"
        elif not record.is_dir:
            manifest[part]["entry"] = record.uri  # a file is its own entry
        if (Path(path) / DASH_MANIFEST).is_file():  # a CMAF package: DASH players open this
            manifest[part]["dash_entry"] = f"{record.uri}/{DASH_MANIFEST}"
    out = work / "published.json"
    out.write_text(json.dumps({"video": video, "parts": manifest}, indent=2, sort_keys=True))
    facts: dict[str, object] = {"published": ", ".join(manifest)}
    for part, m in manifest.items():
        facts[f"{part}_uri"] = m["uri"]
        for key in ("entry", "dash_entry"):
            if key in m:
                facts[f"{part}_{key}"] = m[key]
    return StageOutput(out, facts)


def _published(
    built: Sequence[AssetsDefinition],
) -> list[tuple[AssetKey, str, Optional[str], bool]]:
    """(key, part, entry, optional) of every output the stages declared for publishing."""
    found = []
    for assets_def in built:
        for spec in assets_def.specs:
            meta = spec.metadata or {}
            if PUBLISH_TAG in meta:
                found.append(
                    (
                        spec.key,
                        str(meta[PUBLISH_TAG]),
                        meta.get(ENTRY_TAG),
                        bool(meta.get(OPTIONAL_TAG)),
                    )
                )
    return found


ORDER = 90  # last: it publishes what the others declare


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """`emit` for the parts of required stages, `emit_<stage>` for each optional one's."""
    published = _published(built)
    groups = [(CONCLUDING_ASSET, [p for p in published if not p[3]])]
    groups += [
        (f"emit_{key.path[-1]}", [(key, part, entry, True)])
        for key, part, entry, optional in published
        if optional
    ]
    return [_emit_asset(spec, version, name, parts) for name, parts in groups if parts]


def _emit_asset(
    spec: PipelineSpec,
    version: Callable[..., str],
    name: str,
    parts: list[tuple[AssetKey, str, Optional[str], bool]],
) -> AssetsDefinition:
    ins = {key.path[-1]: key for key, _, _, _ in parts}
    part_of = {key.path[-1]: part for key, part, _, _ in parts}
    entries = {part: entry for _, part, entry, _ in parts if entry}

    def still_published(
        context: Context, stored: Mapping[str, Any], inputs: Mapping[str, Optional[str]]
    ) -> bool:
        """Each part is still at the delivery where the manifest says, with its input's bytes."""
        delivery = context.resources.delivery.store()
        for input_name, part in part_of.items():
            found = delivery.stat(PurePosixPath(context.partition_key) / part)
            if found is None or (found.uri, found.sha256) != (
                stored.get(f"{part}_uri"),
                inputs.get(input_name),
            ):
                context.log.info(
                    f"{name}: {part} is not at the delivery as published: publishing again"
                )
                return False
        return True

    @video_asset(
        key=pipeline_key(spec, name),
        ins=ins,
        code_version=version(spec.emit, sorted(ins)),
        reuse_if=still_published,
        concludes=name == CONCLUDING_ASSET,
        # the final asset shows the whole video at a glance, as of this run
        annotate=partial(summary_metadata, spec=spec, stage=name)
        if name == CONCLUDING_ASSET
        else None,
        announces="video.published",
        retry=spec.failures.retry_for("emit"),
        kinds=(),
        required_resource_keys=["delivery"],
        description=f"Publishes {' and '.join(part_of.values())} to the delivery location.",
    )
    def emit_parts(context: StageContext, **paths: Path) -> StageOutput:
        return emit(
            context.video,
            {part_of[name]: path for name, path in paths.items()},
            context.dagster.resources.delivery.store(),
            context.work,
            entries,
        )

    return emit_parts
