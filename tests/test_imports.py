"""The FFmpeg layer, the S3 store and the webhook outbox and signing import without Dagster, and
the package's public names still import from the top."""

import subprocess
import sys

from pipeline_helpers import ROOT

import mpegflow_dagster

DAGSTER_FREE = (
    "mpegflow_dagster.media",
    "mpegflow_dagster.media.stills",
    "mpegflow_dagster.media.cmaf",
    "mpegflow_dagster.media.codecs",
    "mpegflow_dagster.media.package_qc",
    "mpegflow_dagster.media.languages",
    "mpegflow_dagster.media.sidecars",
    "mpegflow_dagster.previews",
    "mpegflow_dagster.s3.store",
    "mpegflow_dagster.webhooks.outbox",
    "mpegflow_dagster.webhooks.signing",
    "mpegflow_dagster.webhooks.delivery",
)


def test_dagster_free_modules_do_not_import_dagster():
    code = (
        f"import {', '.join(DAGSTER_FREE)}; import sys; "
        "found = sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_aws')); "
        "assert not found, found"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_public_names_import_from_the_package():
    from mpegflow_dagster import WebhookResource, build_video_assets, verify_signature  # noqa: F401

    assert sorted(mpegflow_dagster.__all__) == sorted(set(mpegflow_dagster.__all__))
    missing = [
        name for name in mpegflow_dagster.__all__ if getattr(mpegflow_dagster, name, None) is None
    ]
    assert missing == []
    assert WebhookResource.__module__ == "mpegflow_dagster.webhooks.resources"
    assert set(mpegflow_dagster.__all__) <= set(dir(mpegflow_dagster))
