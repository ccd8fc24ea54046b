"""Ingest and probe: the stored copy of the source (and its caption sidecar) and its ffprobe
facts, refusing what must not be encoded. One step, two assets."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from dagster import AssetExecutionContext, AssetKey, AssetsDefinition, Config, Failure, Output
from pydantic import Field

from ..media.languages import UNDETERMINED
from ..media.probe import MediaInfo, ProbeError, probe
from ..media.safety import MAX_PIXELS, open_in_directory, playlist_signature
from ..media.sidecars import sidecar_language
from ..provenance import code_version
from ..spec import PipelineSpec
from ..stage import (
    Retryable,
    StageContext,
    StageRun,
    StepLayout,
    VideoStage,
    latest_metadata,
    pipeline_key,
    video_multi_asset,
)
from ..storage import copy_hashing, sha256_file
from .toolkit import MediaRejected, StageOutput, Tools

SOURCE_STEM = "source"

CAPTIONS_STEM = "captions"
SUBTITLES_STEM = "subtitles"  # subtitles.<language>.<ext>: a language-tagged sidecar


def find_sidecar(source: Path, extensions: tuple[str, ...]) -> Optional[Path]:
    """The first caption file named like `source` with one of `extensions`; a link counts as
    found (and is then judged by `open_in_directory`, not silently skipped)."""
    for ext in extensions:
        candidate = source.with_suffix(ext)
        if os.path.lexists(candidate):
            return candidate
    return None


def language_sidecars(source: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """The subtitle files named `<source stem>.<language><ext>` (`movie.fr.srt`), by language;
    the first extension found wins for a language."""
    found: dict[str, Path] = {}
    for ext in extensions:
        for candidate in sorted(source.parent.glob(f"{glob.escape(source.stem)}.*{ext}")):
            language = sidecar_language(candidate.name, source.stem, [ext])
            if language:
                found.setdefault(language, candidate)
    return found


FINGERPRINT_BYTES = 1 << 20


def source_fingerprint(source: Path) -> dict[str, object]:
    """What decides whether a local source is the file ingested before, for the price of two
    1 MiB reads: the path as named, size, mtime, inode and ctime (which no `cp -p`, `rsync -t`
    or `touch -d` can set back), and the sha256 of the first and last MiB. A file swapped for
    another of equal size with its mtime kept is a new source; the copy's full sha256, computed
    while ingesting, is then its data version."""
    source = Path(source).absolute()
    fd = _open_source(source, "source")
    try:
        st = os.fstat(fd)
        ends = hashlib.sha256(os.pread(fd, FINGERPRINT_BYTES, 0))
        ends.update(os.pread(fd, FINGERPRINT_BYTES, max(0, st.st_size - FINGERPRINT_BYTES)))
    finally:
        os.close(fd)
    return {
        "source": str(source),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "ends_sha256": ends.hexdigest(),
    }


def _open_source(path: Path, what: str, allow_empty: bool = False) -> int:
    """`path` opened as `safety.open_in_directory` allows, with a missing (or, unless
    `allow_empty`, empty) file refused as a permanent input error naming it."""
    try:
        fd = open_in_directory(path, what)
    except FileNotFoundError:
        raise MediaRejected(f"{what} {path} does not exist", reason="input.not_found") from None
    if not allow_empty and os.fstat(fd).st_size == 0:
        os.close(fd)
        raise MediaRejected(f"{what} {path} is empty (0 bytes)")
    return fd


def ingest(
    source: Path, work: Path, caption_extensions: tuple[str, ...], origin: Optional[str] = None
) -> StageOutput:
    """Copy the source (and a caption sidecar beside it, if any) into one artifact directory, so
    later stages read a stored copy that cannot change under them. Both are opened without
    following a link out of their directory (`safety.open_in_directory`), so nothing but the
    user's own files reaches storage. `origin` names where the source came from when `source`
    is our own download of it (an s3:// URI): that file is private to this stage, so it is moved
    into place and only hashed, not copied a second time."""
    source = Path(source).absolute()  # as named: a link is judged where it stands
    out = work / "ingest"
    out.mkdir()
    stored = out / f"{SOURCE_STEM}{source.suffix.lower() or '.bin'}"
    sidecar = find_sidecar(source, caption_extensions)
    copies = {stored: (source, "source")}
    if sidecar:  # a bad one fails the captions stage alone, which names it
        copies[out / f"{CAPTIONS_STEM}{sidecar.suffix.lower()}"] = (sidecar, "caption sidecar")
    languages = language_sidecars(source, caption_extensions)
    for language, path in languages.items():  # a bad one is left out of the package alone
        copies[out / f"{SUBTITLES_STEM}.{language}{path.suffix.lower()}"] = (path, "subtitle file")
    hashed: dict[Path, str] = {}
    for dest, (path, what) in copies.items():
        if origin is None:
            fd = _open_source(path, what, allow_empty=dest != stored)
            try:
                hashed[dest] = copy_hashing(path, dest, fd=fd)
            finally:
                os.close(fd)
        else:
            os.replace(path, dest)
            hashed[dest] = sha256_file(dest)
    return StageOutput(
        out,
        {
            "original_path": origin or str(source),
            "original_name": source.name,
            "source_sha256": hashed[stored],
            "caption_sidecar": sidecar.name if sidecar else "none",
            "subtitle_languages": ", ".join(languages) or "none",
        },
        hashed=hashed,
    )


def source_file(ingest_dir: Path) -> Path:
    return next(p for p in Path(ingest_dir).iterdir() if p.stem == SOURCE_STEM)


def subtitle_files(ingest_dir: Path) -> list[tuple[str, Path]]:
    """The stored subtitle files with the language tag of their name (as the sidecar's name said
    it: `fre`, `pt-BR`): the plain caption sidecar (`movie.srt`, the one burned in) first, as
    `und`, undetermined, then each language-tagged one by name."""
    plain = captions_file(ingest_dir)
    tagged = [
        (p.name.split(".")[1], p)
        for p in sorted(Path(ingest_dir).iterdir())
        if p.name.startswith(f"{SUBTITLES_STEM}.")
    ]
    return ([(UNDETERMINED, plain)] if plain is not None else []) + tagged


def captions_file(ingest_dir: Path) -> Optional[Path]:
    return next((p for p in Path(ingest_dir).iterdir() if p.stem == CAPTIONS_STEM), None)


def probe_source(ingest_dir: Path, work: Path, tools: Tools, name: str) -> StageOutput:
    """ffprobe facts of the stored source, refusing what the pipeline cannot or must not encode.
    Messages name the source as `name`: where it was ingested from."""
    source = source_file(ingest_dir)
    label = f"source {name}"
    signature = playlist_signature(source)
    if signature:
        raise MediaRejected(
            f"{label} is a playlist or file list ({signature!r}), not media: refused, it would make FFmpeg read other files",
            reason="security.playlist_input",
            failure_class="security",
        )
    try:
        info = probe(source, tools.ffprobe, hdr10=True)  # the renditions that keep HDR write it
    except ProbeError as exc:
        raise ProbeError(f"{label}: {exc}", exc.stderr_tail) from exc
    video = info.video
    if video is None or not video.width or not video.height:
        raise MediaRejected(
            f"{label} has no video stream: nothing to encode", reason="input.no_video_stream"
        )
    if video.width * video.height > MAX_PIXELS:
        raise MediaRejected(
            f"{label} declares {video.width}x{video.height} pixels, above the {MAX_PIXELS} limit",
            reason="input.too_large",
        )
    if info.duration <= 0:
        raise MediaRejected(
            f"{label} has no duration: it is empty or unreadable", reason="input.invalid_data"
        )
    out = work / "probe.json"
    out.write_text(info.model_dump_json(indent=2))
    return StageOutput(out, info.summary())


def load_probe(path: Path) -> MediaInfo:
    return MediaInfo.model_validate_json(Path(path).read_text())


class IngestConfig(Config):
    source_path: Optional[str] = Field(
        default=None,
        description="Local path or s3:// URI of the source video. Default: where this video was last ingested from.",
    )


def _ingest_and_probe(
    context: AssetExecutionContext, spec: PipelineSpec, runs: dict[str, StageRun], source: str
) -> Iterator[Output]:
    """Ingest and probe share one step: the probe reads the stored copy before it is published,
    and a video pays for one step instead of two. Each is still its own asset."""
    ingest_run, probe_run = runs["ingest"], runs["probe"]
    sources = context.resources.sources
    extensions = spec.captions.sidecar_extensions
    try:
        if source.startswith("s3://"):
            head = sources.head(source)
            identity: dict[str, Any] = {
                "source": source,
                "etag": head["ETag"],
                "size": head["ContentLength"],
            }
        else:
            identity = source_fingerprint(Path(source))
    except (
        Exception
    ) as exc:  # a missing source, a link out of its directory: classified like any failure
        raise ingest_run.failure(exc) from exc

    def produce(sc: StageContext) -> StageOutput:
        if source.startswith("s3://"):
            local = sources.download(source, sc.work / "download", extensions)
            return ingest(local, sc.work, extensions, origin=source)
        return ingest(Path(source), sc.work, extensions)

    ingested = ingest_run.prepare(identity)
    if ingested is not None:
        probe_run.upstream_versions["ingest"] = (
            ingested.data_version.value if ingested.data_version else None
        )
        probed = probe_run.prepare()
        if probed is not None:
            yield from (ingested, probed)
            return
    # The probe needs the stored copy in hand: the two are reused together or made again.
    ingested = ingest_run.make(produce)
    assert ingested is not None and ingested.data_version is not None  # ingest always has an output
    probe_run.upstream_versions["ingest"] = ingested.data_version.value
    try:
        probed = probe_run.run(
            lambda sc: probe_source(ingested.value, sc.work, sc.ffmpeg, name=source)
        )
    except (Failure, Retryable):
        # The copy stands (ingest did its part): the run then shows probe, not ingest, as the
        # failed asset. Nothing downstream can use it without a probe.
        yield ingested
        raise
    assert probed is not None
    yield from (ingested, probed)


def _last_source(context: AssetExecutionContext, key: AssetKey) -> str:
    """The path this partition was last ingested from, so a re-run from the UI needs no config."""
    meta = latest_metadata(context, key)
    if "original_path" in meta:
        return str(meta["original_path"])
    raise Failure(
        description=(
            f"video {context.partition_key!r} has never been ingested: pass its file as run config "
            "`ops: {<prefix>__ingest: {config: {source_path: /path/to/video.mp4}}}` or use `mpegflow run FILE`."
        ),
        allow_retries=False,
    )


ORDER = 10  # where build_video_assets calls `assets` among the stage modules


def assets(
    spec: PipelineSpec,
    version: Callable[..., str],
    built: Sequence[AssetsDefinition],
    layout: StepLayout,
) -> list[AssetsDefinition]:
    """The ingest + probe step (its code versions do not name the encoder build: it encodes nothing)."""
    retry = spec.failures.retry_for("ingest")
    stages = [
        VideoStage(
            pipeline_key(spec, "ingest"),
            code_version("ingest"),
            description="Stored copy of the source video and its caption sidecar.",
            announces="video.received",
            retry=retry,
            kinds=frozenset(),
        ),
        VideoStage(
            pipeline_key(spec, "probe"),
            code_version("probe"),
            inputs={"ingest": pipeline_key(spec, "ingest")},
            description="ffprobe facts of the source (JSON).",
            retry=retry,
            kinds=frozenset(),
        ),
    ]

    @video_multi_asset(
        name=f"{spec.name}__ingest",
        stages=stages,
        config=IngestConfig,
        retry=retry,
        required_resource_keys=["sources"],
    )
    def ingest(
        context: AssetExecutionContext, runs: dict[str, StageRun], config: IngestConfig
    ) -> Iterator[Output]:
        source = config.source_path or _last_source(context, pipeline_key(spec, "ingest"))
        yield from _ingest_and_probe(context, spec, runs, source)

    return [ingest]
