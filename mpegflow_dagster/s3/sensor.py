"""The upload sensor: start the pipeline of a video when its source is uploaded to S3."""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Mapping, Optional

from dagster import (
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from ..videos import video_key
from .resources import S3SourceResource

MEDIA_EXTENSIONS = frozenset({".mp4", ".mov", ".mxf", ".mkv", ".webm", ".m4v", ".ts", ".avi"})
SOURCE_TAG = "mpegflow/source"
_MAX_KEY = 64


def partition_key_for(object_key: str, prefix: str = "") -> str:
    """The video partition key of the object `object_key`, watched under `prefix`.

    An object directly under the prefix gets `video_key(<basename>)`, like a local file of that
    name (`uploads/sample.mp4` -> `sample`). An object in a sub-folder gets a hash of its full key
    appended (`uploads/a/x.mp4` -> `x-1f2e3d4c`), so objects with the same basename in different
    folders never share a partition. As with local files, `x.mp4` and `x.mov` in the same folder
    are the same video: each upload is its own run of that partition.
    """
    watched = prefix.strip("/")
    relative = (
        object_key[len(watched) + 1 :]
        if watched and object_key.startswith(watched + "/")
        else object_key
    )
    base = video_key(object_key.rsplit("/", 1)[-1])
    if "/" not in relative:
        return base
    digest = hashlib.sha256(object_key.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{base[: _MAX_KEY - 9]}-{digest}"


def ingest_run_config(spec_name: str) -> Callable[[str], dict[str, Any]]:
    """Run config that points the `<spec_name>/ingest` asset at the uploaded object's URI."""

    def run_config(uri: str) -> dict[str, Any]:
        return {"ops": {f"{spec_name}__ingest": {"config": {"source_path": uri}}}}

    return run_config


@dataclass
class UploadCursor:
    """What the sensor has seen, bounded by time.

    `newest` is the latest LastModified (S3's clock, epoch seconds) of any media object listed so
    far. `seen` holds a fingerprint of (key, ETag) -> LastModified for the objects modified within
    `lookback_s` of `newest`; older objects are not looked at again. So objects that share a second
    with the last tick are not missed, deleting an object changes nothing, and a re-upload (new
    ETag, new LastModified) is new.
    """

    newest: float = float("-inf")
    seen: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, raw: Optional[str]) -> "UploadCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        seen = {fp: float(t) for t, fps in data["seen"].items() for fp in fps}
        return cls(
            newest=float("-inf") if data["newest"] is None else float(data["newest"]), seen=seen
        )

    def dump(self) -> str:
        """JSON `{"newest": t, "seen": {"<t>": [fingerprint, ...]}}`: about 20 bytes per object."""
        by_time: dict[str, list[str]] = {}
        for fp, t in sorted(self.seen.items()):
            by_time.setdefault(repr(t), []).append(fp)
        newest = None if self.newest == float("-inf") else self.newest
        return json.dumps({"newest": newest, "seen": by_time}, separators=(",", ":"))

    @staticmethod
    def fingerprint(key: str, etag: str) -> str:
        return hashlib.sha256(f"{key}\0{etag}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def build_s3_upload_sensor(
    spec_name: str,
    job_or_asset_selection: Any,
    partitions_def: DynamicPartitionsDefinition,
    bucket: str,
    prefix: str,
    *,
    name: Optional[str] = None,
    minimum_interval_seconds: int = 30,
    lookback_seconds: float = 3600.0,
    run_config: Optional[Callable[[str], Mapping[str, Any]]] = None,
    default_status: DefaultSensorStatus = DefaultSensorStatus.STOPPED,
) -> SensorDefinition:
    """A sensor that requests one run per new or re-uploaded video under `s3://<bucket>/<prefix>/`.

    Each tick lists the prefix (paginated list_objects_v2), ignores zero-byte objects and keys
    without a media extension (`MEDIA_EXTENSIONS`), adds the partition of each new video
    (`partition_key_for`) and requests a run of it with run key `<key>:<etag>`: the same upload
    never runs twice, a re-upload with new content runs again.

    `lookback_seconds` bounds the cursor: an object whose LastModified is older than that before
    the newest object seen is ignored. S3 sets LastModified when an upload *starts* (multipart
    uploads included), so keep it longer than your slowest upload.

    Uses the `sources` resource (`S3SourceResource` over dagster-aws' `S3Resource`): it reuses
    one boto3 client per process, where a sensor taking `S3Resource` itself would make a new one
    at every tick (botocore loads its service models: most of a tick's CPU).

    Examples:
        .. code-block:: python

            from dagster import AssetSelection, Definitions
            from dagster_aws.s3 import S3Resource
            from mpegflow_dagster import S3SourceResource, build_s3_upload_sensor, video_partitions

            uploads = build_s3_upload_sensor(
                spec.name, AssetSelection.groups(spec.name), video_partitions(spec.name), bucket="uploads", prefix="vod/"
            )
            defs = Definitions(
                assets=assets, sensors=[uploads], resources={"sources": S3SourceResource(s3=S3Resource())}
            )
    """
    partitions_name = partitions_def.name
    if not partitions_name:
        raise ValueError(
            "partitions_def must be a named DynamicPartitionsDefinition, e.g. video_partitions(pipeline_name)"
        )
    watched = prefix.strip("/")
    list_prefix = f"{watched}/" if watched else ""
    config_for = run_config or ingest_run_config(spec_name)

    @sensor(
        name=name or f"{spec_name}_s3_uploads",
        target=job_or_asset_selection,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=f"Runs {spec_name} for each video uploaded under s3://{bucket}/{list_prefix}",
    )
    def _upload_sensor(context: SensorEvaluationContext, sources: S3SourceResource) -> SensorResult:
        cursor = UploadCursor.load(context.cursor)
        horizon = cursor.newest - lookback_seconds
        newest = cursor.newest
        seen = dict(cursor.seen)
        new: list[tuple[float, str, str]] = []
        for obj in sources.objects(bucket, list_prefix):
            key = obj["Key"]
            if (
                obj["Size"] == 0
                or PurePosixPath(key.rsplit("/", 1)[-1]).suffix.lower() not in MEDIA_EXTENSIONS
            ):
                continue
            modified = obj["LastModified"].timestamp()
            newest = max(newest, modified)
            if modified < horizon:
                continue
            etag = obj["ETag"].strip('"')
            fingerprint = UploadCursor.fingerprint(key, etag)
            if fingerprint not in seen:
                seen[fingerprint] = modified
                new.append((modified, key, etag))
        kept = {fp: t for fp, t in seen.items() if t >= newest - lookback_seconds}
        next_cursor = UploadCursor(newest, kept).dump()
        if not new:
            return SensorResult(
                skip_reason=SkipReason(f"no new video under s3://{bucket}/{list_prefix}"),
                cursor=next_cursor,
            )
        requests = []
        for _, key, etag in sorted(new):
            uri = f"s3://{bucket}/{key}"
            requests.append(
                RunRequest(
                    run_key=f"{key}:{etag}",
                    partition_key=partition_key_for(key, watched),
                    run_config=config_for(uri),
                    tags={SOURCE_TAG: uri},
                )
            )
        partition_keys = list(dict.fromkeys(r.partition_key for r in requests))
        existing = set(context.instance.get_dynamic_partitions(partitions_name))
        missing = [k for k in partition_keys if k not in existing]
        return SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[partitions_def.build_add_request(missing)]
            if missing
            else [],
            cursor=next_cursor,
        )

    return _upload_sensor
