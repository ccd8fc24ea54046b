"""S3, split like dagster-aws's `s3` package:

- `store`: `S3ArtifactStore` and the S3 helpers over a boto3 client. No Dagster.
- `resources`: `S3SourceResource` (ingest from `s3://`), `S3DeliveryResource` (CDN origin).
- `io_manager`: `S3BinaryIOManager` (artifacts in a bucket).
- `sensor`: `build_s3_upload_sensor` (a run per uploaded video).

Nothing is re-exported here, so importing `mpegflow_dagster.s3.store` does not import Dagster;
the Dagster names are also importable from `mpegflow_dagster`.
"""
