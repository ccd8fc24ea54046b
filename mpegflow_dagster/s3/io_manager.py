"""The binary IO manager on S3: every asset output is an object (or a tree of objects) in a bucket."""

from pathlib import Path

from dagster import ResourceDependency
from dagster_aws.s3 import S3Resource
from pydantic import Field

from ..io_manager import ArtifactIOManager
from .resources import S3_CONNECTION, s3_client
from .store import S3ArtifactStore


class S3BinaryIOManager(ArtifactIOManager):
    """`BinaryIOManager` over S3: each output is published to
    `s3://<bucket>/<prefix>/<asset key path>/<partition>/<name>`, and inputs are downloaded into
    `cache_dir` (skipping files already cached).

    Examples:
        .. code-block:: python

            from dagster import Definitions, EnvVar
            from dagster_aws.s3 import S3Resource
            from mpegflow_dagster import S3BinaryIOManager

            s3 = S3Resource(endpoint_url=EnvVar("MPEGFLOW_S3_ENDPOINT_URL"))
            defs = Definitions(
                assets=[...],
                resources={"media_io_manager": S3BinaryIOManager(s3=s3, bucket="media", prefix="artifacts")},
            )
    """

    s3: ResourceDependency[S3Resource] = Field(description=S3_CONNECTION)
    bucket: str = Field(description="Bucket that holds every published artifact.")
    prefix: str = Field(
        default="mpegflow/storage", description="Key prefix of the artifacts inside the bucket."
    )
    cache_dir: str = Field(
        default=".mpegflow/s3-cache",
        description="Local directory where inputs are downloaded; safe to delete.",
    )

    def store(self) -> S3ArtifactStore:
        return S3ArtifactStore(s3_client(self.s3), self.bucket, self.prefix, Path(self.cache_dir))
