"""Dagster resources over the S3 store: source videos for ingest, the delivery bucket (CDN
origin), and the shared boto3 client they use."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

from dagster import ConfigurableResource, ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ..resources import DeliveryResource
from .store import DeliveryHeaders, S3ArtifactStore, download_source, iter_objects, parse_s3_uri

S3_CONNECTION = (
    "dagster-aws S3Resource: region, endpoint and credentials of the S3 (or S3-compatible) service."
)


def s3_client(s3: S3Resource) -> Any:
    """One boto3 client per S3 configuration in this process (clients are thread-safe); making
    one loads botocore's service models, about 0.3 s here, which every IO call would otherwise pay."""
    return _client_for(s3.model_dump_json())


@lru_cache(maxsize=16)
def _client_for(config: str) -> Any:
    return S3Resource(**json.loads(config)).get_client()


class S3SourceResource(ConfigurableResource):
    """Reads `s3://` source videos for ingest, and lists uploads for the upload sensor. The client
    is made on first use, so runs of local sources never create one (Dagster builds a client at
    step start, or sensor tick, for anything that takes an `S3Resource` directly).

    Examples:
        .. code-block:: python

            from dagster_aws.s3 import S3Resource
            from mpegflow_dagster import S3SourceResource

            sources = S3SourceResource(s3=S3Resource(region_name="eu-west-1"))
    """

    s3: ResourceDependency[S3Resource] = Field(description=S3_CONNECTION)

    def head(self, uri: str) -> dict[str, Any]:
        bucket, key = parse_s3_uri(uri)
        return s3_client(self.s3).head_object(Bucket=bucket, Key=key)

    def download(self, uri: str, dest_dir: Path, caption_extensions: Sequence[str]) -> Path:
        return download_source(s3_client(self.s3), uri, dest_dir, caption_extensions)

    def objects(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under `prefix` (list_objects_v2 entries, all pages)."""
        return iter_objects(s3_client(self.s3), bucket, prefix)


class S3DeliveryResource(DeliveryResource):
    """Publishes finished trees to an S3 CDN origin: `s3://<bucket>/<prefix>/<video>/hls/master.m3u8`, ...

    Every object gets a `Content-Type` from its extension and a `Cache-Control`: segments and
    images are immutable, playlists and manifests are short-lived and uploaded last.

    Examples:
        .. code-block:: python

            from dagster_aws.s3 import S3Resource
            from mpegflow_dagster import S3DeliveryResource

            delivery = S3DeliveryResource(s3=S3Resource(region_name="eu-west-1"), bucket="cdn-origin", prefix="vod")
    """

    s3: ResourceDependency[S3Resource] = Field(description=S3_CONNECTION)
    bucket: str = Field(description="Bucket of the delivery tree (the CDN origin).")
    prefix: str = Field(
        default="", description="Key prefix of the delivery tree inside the bucket."
    )
    playlist_cache_control: str = Field(
        default=DeliveryHeaders.playlist_cache_control,
        description="Cache-Control of everything that is not media: playlists, manifests, storyboards.",
    )
    segment_cache_control: str = Field(
        default=DeliveryHeaders.segment_cache_control,
        description="Cache-Control of media (segments, MP4, images; `s3.store.IMMUTABLE_SUFFIXES`). "
        "Keep their names unique per content.",
    )
    cache_dir: str = Field(
        default=".mpegflow/delivery-cache",
        description="Local directory for `local_path` downloads.",
    )

    def store(self) -> S3ArtifactStore:
        headers = DeliveryHeaders(self.playlist_cache_control, self.segment_cache_control)
        return S3ArtifactStore(
            s3_client(self.s3), self.bucket, self.prefix, Path(self.cache_dir), headers=headers
        )
