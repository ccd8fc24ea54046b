"""The whole deployment on S3 (issue #5): an upload to a real (moto) S3 server over HTTP, the
project's upload sensor, real Dagster runs on real FFmpeg, artifacts in a storage bucket, a CDN
tree in a delivery bucket, and signed webhooks to a real HTTP receiver."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest
from botocore.exceptions import EndpointConnectionError
from dagster import (
    AssetKey,
    DagsterEventType,
    SensorResult,
    SkipReason,
    build_resources,
    build_sensor_context,
    instance_for_test,
    materialize,
)
from http_receiver import Receiver
from moto.server import ThreadedMotoServer
from pipeline_helpers import ROOT, decode_errors
from s3_server import bucket, free_port, list_keys, moto_endpoint, s3, s3_resource  # noqa: F401  (fixtures)

from mpegflow_dagster.events import Event
from mpegflow_dagster.project import Project, S3Settings, Settings
from mpegflow_dagster.runs import materialize_video
from mpegflow_dagster.spec import PipelineSpec
from mpegflow_dagster.webhooks.sensor import DELIVERY_SENSOR
from mpegflow_dagster.webhooks.signing import verify_signature

pytestmark = pytest.mark.pipeline  # every test reads or makes pipeline runs on S3

SECRET = "whsec-s3-pipeline-test"
STORAGE_PREFIX = "mpegflow/storage"
RUNGS = ("240p", "480p", "720p", "1080p")
PACKAGED = RUNGS[:3]  # of a 720p source (1080p is above it)
SAFE_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
PLAYLIST = "application/vnd.apple.mpegurl"
SHORT_CACHE = "public, max-age=10"
IMMUTABLE_CACHE = "public, max-age=31536000, immutable"


# -- helpers ------------------------------------------------------------------------------------


def aws_env(mp: pytest.MonkeyPatch) -> None:
    """The project's S3Resource uses the default credential chain: give it moto's test keys."""
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("MPEGFLOW_WEBHOOK_SECRET", SECRET)
    for name in (
        "MPEGFLOW_S3_ENDPOINT_URL",
        "MPEGFLOW_S3_BUCKET",
        "MPEGFLOW_DELIVERY_BUCKET",
        "MPEGFLOW_UPLOAD_BUCKET",
        "MPEGFLOW_S3_PREFIX",
        "MPEGFLOW_DELIVERY_PREFIX",
        "MPEGFLOW_UPLOAD_PREFIX",
        "MPEGFLOW_WEBHOOK_URL",
    ):
        mp.delenv(name, raising=False)


def new_bucket(client: Any, role: str) -> str:
    name = f"{role}-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


def s3_project(
    base: Path, endpoint: str, *, webhook_url: str | None = None, **buckets: str
) -> Project:
    """The repository's specs and presets; S3 buckets for the given roles, local dirs under `base`."""
    repo = Project.load(ROOT)
    settings = Settings(
        storage_dir="storage",
        work_dir="work",
        delivery_dir="delivery",
        events_path="events/events.jsonl",
        webhook_url=webhook_url,
        s3=S3Settings(endpoint_url=endpoint, **buckets),
    )
    return Project(root=ROOT, specs=repo.specs, settings=settings.resolved(base))


def project_sensor(project: Project, name: str = "vod_s3_uploads"):
    return next(s for s in project.definitions().sensors if s.name == name)


def tick(project: Project, instance, cursor: str | None) -> SensorResult:
    # A context manager: some of the project's resources are generator resources.
    with build_sensor_context(
        instance=instance, cursor=cursor, resources=project.resources()
    ) as context:
        result = project_sensor(project)(context)
    assert isinstance(result, SensorResult) and result.cursor
    return result


def deliver_webhooks(project: Project, instance) -> str:
    """One tick of the project's webhook delivery sensor, as the daemon runs it: its skip reason."""
    with build_sensor_context(instance=instance, resources=project.resources()) as context:
        result = project_sensor(project, DELIVERY_SENSOR)(context)
    assert isinstance(result, SkipReason) and result.skip_message
    return result.skip_message


def playlist_uris(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def get_text(client: Any, bucket: str, key: str) -> str:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def hls_tree_problems(client: Any, bucket: str, root: str) -> tuple[list[str], int]:
    """(keys listed by the master and variant playlists under `root` that are missing, segments listed)."""
    keys = set(list_keys(client, bucket, root + "/"))
    missing, segments = [], 0
    master = f"{root}/master.m3u8"
    if master not in keys:
        return [master], 0
    for variant in playlist_uris(get_text(client, bucket, master)):
        vkey = f"{root}/{variant}"
        if vkey not in keys:
            missing.append(vkey)
            continue
        vdir = vkey.rsplit("/", 1)[0]
        for seg in playlist_uris(get_text(client, bucket, vkey)):
            segments += 1
            if f"{vdir}/{seg}" not in keys:
                missing.append(f"{vdir}/{seg}")
    return missing, segments


def staging_keys(client: Any, *buckets: str) -> list[str]:
    return [f"{b}/{k}" for b in buckets for k in list_keys(client, b) if ".staging" in k.split("/")]


# -- 1. upload -> sensor -> run -> delivery bucket ----------------------------------------------


@pytest.fixture(scope="module")
def deployment(moto_endpoint: str, make_source, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """One upload taken through the project's sensor and a real run; everything the tests look at."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with (
        pytest.MonkeyPatch.context() as mp,
        Receiver() as receiver,
        instance_for_test() as instance,
    ):
        aws_env(mp)
        client = s3_resource(moto_endpoint).get_client()
        buckets = {
            role: new_bucket(client, role.split("_")[0])
            for role in ("storage_bucket", "delivery_bucket", "upload_bucket")
        }
        base = tmp_path_factory.mktemp("s3-deployment")
        project = s3_project(base, moto_endpoint, webhook_url=receiver.url, **buckets)
        spec = project.spec("vod")

        source = make_source("clip", duration_s=2.0, width=1280, height=720, captions=True)
        key = "uploads/vod/launch.mp4"
        client.upload_file(str(source), buckets["upload_bucket"], key)
        client.upload_file(
            str(source.with_suffix(".srt")), buckets["upload_bucket"], "uploads/vod/launch.srt"
        )

        first = tick(project, instance, None)
        for request in first.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        results = [
            materialize(
                project.assets(spec),
                instance=instance,
                partition_key=req.partition_key,
                run_config=req.run_config,
                resources=project.resources(),
                tags=req.tags,
                raise_on_error=False,
            )
            for req in first.run_requests or []
        ]
        queued_by_steps = len(receiver.requests)  # 0: steps only queue webhook events
        delivery_tick = deliver_webhooks(project, instance)
        yield {
            "project": project,
            "spec": spec,
            "instance": instance,
            "receiver": receiver,
            "client": client,
            "buckets": buckets,
            "base": base,
            "key": key,
            "source": source,
            "first_tick": first,
            "results": results,
            "run_requests": list(first.run_requests or []),
            "pipeline_requests": list(receiver.requests),
            "queued_by_steps": queued_by_steps,
            "delivery_tick": delivery_tick,
        }


def test_upload_is_requested_once_as_a_new_partition(deployment):
    requests = deployment["run_requests"]
    assert len(requests) == 1
    req = requests[0]
    uri = f"s3://{deployment['buckets']['upload_bucket']}/{deployment['key']}"
    assert req.partition_key == "launch"
    assert req.run_config == {"ops": {"vod__ingest": {"config": {"source_path": uri}}}}
    assert req.tags["mpegflow/source"] == uri
    [add] = deployment["first_tick"].dynamic_partitions_requests
    assert (add.partitions_def_name, list(add.partition_keys)) == ("vod_videos", ["launch"])
    assert deployment["instance"].get_dynamic_partitions("vod_videos") == ["launch"]


def test_run_succeeds_and_every_stage_materializes(deployment):
    [result] = deployment["results"]
    assert result.success
    materialized = {
        e.asset_key.path[-1]
        for e in result.all_events
        if e.event_type == DagsterEventType.ASSET_MATERIALIZATION
    }
    assert materialized == {
        "ingest",
        "probe",
        "source_qc",
        *(f"rendition_{r}" for r in RUNGS),
        "thumbnails",
        "captions",
        "hls",
        "emit",
        "emit_captions",
    }


def test_delivery_bucket_holds_a_complete_playable_hls_tree(deployment, tmp_path):
    client, delivery = deployment["client"], deployment["buckets"]["delivery_bucket"]
    master = get_text(client, delivery, "launch/hls/master.m3u8")
    assert playlist_uris(master) == [f"{r}/index.m3u8" for r in PACKAGED]
    assert master.count("#EXT-X-STREAM-INF:") == 3
    missing, segments = hls_tree_problems(client, delivery, "launch/hls")
    assert missing == [] and segments >= len(PACKAGED)  # at least one segment per variant
    seg_key = next(k for k in list_keys(client, delivery, "launch/hls/720p/") if k.endswith(".ts"))
    seg = tmp_path / "seg.ts"
    client.download_file(delivery, seg_key, str(seg))
    assert seg.stat().st_size > 1000
    assert decode_errors(seg) == ""
    keys = list_keys(client, delivery, "launch/")
    assert any(k.startswith("launch/thumbnails/") and k.endswith(".jpg") for k in keys)
    assert "launch/captioned.mp4" in keys


def test_delivery_objects_have_cdn_content_type_and_cache_control(deployment):
    client, delivery = deployment["client"], deployment["buckets"]["delivery_bucket"]
    keys = list_keys(client, delivery, "launch/")
    expected = {
        ".m3u8": (PLAYLIST, SHORT_CACHE),
        ".ts": ("video/mp2t", IMMUTABLE_CACHE),
        ".jpg": ("image/jpeg", IMMUTABLE_CACHE),
    }
    seen = Counter()
    for key in keys:
        suffix = PurePosixPath(key).suffix
        if suffix in expected:
            head = client.head_object(Bucket=delivery, Key=key)
            assert (head["ContentType"], head.get("CacheControl")) == expected[suffix], key
            seen[suffix] += 1
    assert (
        seen[".m3u8"] == 4 and seen[".ts"] >= 3 and seen[".jpg"] >= 2
    )  # master + 3 variants; frames + sprite


def test_artifacts_live_in_the_storage_bucket_and_nothing_is_staged(deployment):
    client, b = deployment["client"], deployment["buckets"]
    assert staging_keys(client, *b.values()) == []
    stored = list_keys(client, b["storage_bucket"])
    assert stored and all(k.startswith(f"{STORAGE_PREFIX}/vod/") for k in stored)
    for stage in (
        "ingest",
        "probe",
        "source_qc",
        *(f"rendition_{r}" for r in RUNGS),
        "thumbnails",
        "captions",
        "hls",
        "emit",
    ):
        assert any(k.startswith(f"{STORAGE_PREFIX}/vod/{stage}/launch/") for k in stored), stage
    assert (
        f"{STORAGE_PREFIX}/vod/ingest/launch/ingest/captions.srt" in stored
    )  # the sidecar came along
    missing, segments = hls_tree_problems(
        client, b["storage_bucket"], f"{STORAGE_PREFIX}/vod/hls/launch/hls"
    )
    assert missing == [] and segments >= len(PACKAGED)
    storage_dir = Path(deployment["project"].settings.storage_dir)
    assert not storage_dir.exists() or not any(p.is_file() for p in storage_dir.rglob("*"))


def test_pipeline_webhooks_are_signed_and_each_event_arrives_once(deployment):
    """Queued by the steps, POSTed by one tick of the delivery sensor."""
    requests = deployment["pipeline_requests"]
    assert deployment["queued_by_steps"] == 0 and requests
    assert deployment["delivery_tick"] == f"delivered {len(requests)}, rejected 0, 0 still queued"
    bodies = []
    for r in requests:
        assert r.status == 200
        assert verify_signature(
            SECRET, r.headers["X-Mpegflow-Timestamp"], r.body, r.headers["X-Mpegflow-Signature"]
        )
        body = json.loads(r.body)
        assert (
            body["id"] == r.headers["X-Mpegflow-Event-Id"]
            and body["type"] == r.headers["X-Mpegflow-Event"]
        )
        assert body["video"] == "launch" and body["run_id"] == deployment["results"][0].run_id
        bodies.append(body)
    assert [n for n in Counter(b["id"] for b in bodies).values() if n != 1] == []
    types = Counter(b["type"] for b in bodies)
    assert (
        types["video.received"] == 1
        and types["package.ready"] == 1
        and types["video.published"] >= 1
    )
    assert sorted(b["subject"] for b in bodies if b["type"] == "rendition.ready") == sorted(RUNGS)
    assert "rendition.failed" not in types


def _run_outcome(deployment) -> Event:
    """The `video.succeeded` the run sent itself (its steps queued it; no sensor, no daemon)."""
    [body] = [
        json.loads(r.body)
        for r in deployment["pipeline_requests"]
        if r.headers.get("X-Mpegflow-Event") == "video.succeeded"
    ]
    assert (body["video"], body["run_id"]) == ("launch", deployment["results"][0].run_id)
    event = Event(**{k: v for k, v in body.items() if k != "id"})
    assert event.id == body["id"]
    return event


def _outcomes_since(receiver: Receiver, mark: int) -> list:
    return [
        r
        for r in receiver.requests[mark:]
        if r.headers.get("X-Mpegflow-Event") == "video.succeeded"
    ]


def test_the_run_announces_its_own_success(deployment):
    event = _run_outcome(deployment)
    assert event.version == event.data["sha256"]  # the id names the publication, not the run
    assert event.data["published"]["hls"].endswith("launch/hls/master.m3u8")


def test_run_outcome_sent_again_is_not_delivered_again(deployment):
    """Through the events resource as Dagster initializes it: the id was delivered already."""
    receiver, event = deployment["receiver"], _run_outcome(deployment)
    mark = len(receiver.requests)
    with build_resources({"events": deployment["project"].resources()["events"]}) as resources:
        for _ in range(2):
            resources.events.sink().send(event)
            resources.events.drain()
    assert _outcomes_since(receiver, mark) == []


def test_run_outcome_sent_from_project_resources_is_signed_with_the_secret(deployment, tmp_path):
    """`Project.events()` (outside a run), on an outbox of its own: delivered once, signed."""
    receiver, event = deployment["receiver"], _run_outcome(deployment)
    project = deployment["project"]
    settings = project.settings.model_copy(
        update={"events_path": str(tmp_path / "cli-events.jsonl")}
    )
    cli_project = Project(root=project.root, specs=project.specs, settings=settings)
    mark = len(receiver.requests)
    for _ in range(2):
        with cli_project.events() as resource:
            resource.sink().send(event)
            resource.drain()
    [got] = _outcomes_since(receiver, mark)  # the outbox's dedup works on this path too
    assert json.loads(got.body)["id"] == event.id
    assert verify_signature(
        SECRET, got.headers["X-Mpegflow-Timestamp"], got.body, got.headers["X-Mpegflow-Signature"]
    )


def test_cursor_skips_a_seen_upload_and_catches_a_reupload(deployment):
    project, instance, client = deployment["project"], deployment["instance"], deployment["client"]
    upload = deployment["buckets"]["upload_bucket"]
    second = tick(project, instance, deployment["first_tick"].cursor)
    assert not second.run_requests and second.skip_reason is not None
    assert not second.dynamic_partitions_requests

    time.sleep(1.05)  # a new LastModified second, as a real re-upload would have
    changed = deployment["source"].read_bytes() + b"\0" * 16
    client.put_object(Bucket=upload, Key=deployment["key"], Body=changed)
    third = tick(project, instance, second.cursor)
    [req] = third.run_requests
    assert req.partition_key == "launch"
    assert req.run_key != deployment["run_requests"][0].run_key
    assert req.run_config == deployment["run_requests"][0].run_config
    assert not third.dynamic_partitions_requests  # the partition exists already
    assert not tick(project, instance, third.cursor).run_requests


# -- 2. S3 endpoint down mid-run ------------------------------------------------------------------


class RestartableMoto:
    """moto's threaded server on a fixed port that can be stopped and started again. moto keeps its
    state in-process, so buckets and objects survive a restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server._server.server_close()  # stop() leaves the socket listening: close it, refuse connections
            self.server = None


@pytest.fixture
def restartable_moto() -> Iterator[RestartableMoto]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = RestartableMoto()
    server.start()
    try:
        yield server
    finally:
        server.stop()


OUTAGE_S = 6.0  # > botocore's own retries (standard mode, 5 attempts: at most ~1.5 s of backoff)


def test_s3_outage_mid_run_is_retried_and_nothing_is_lost_or_half_published(
    deployment, restartable_moto, tmp_path, monkeypatch
):
    """After the deployment's full run on S3, the hls stage re-runs against an endpoint that is down
    when the run starts and comes back OUTAGE_S later. moto's backend is in-process, so the
    restartable server (its own port) serves the same buckets the full run wrote."""
    aws_env(monkeypatch)
    client = s3_resource(restartable_moto.url).get_client()
    b = deployment["buckets"]
    buckets = {"storage_bucket": b["storage_bucket"], "delivery_bucket": b["delivery_bucket"]}
    project = s3_project(tmp_path, restartable_moto.url, **buckets)
    spec = project.spec("vod")
    hls_root = f"{STORAGE_PREFIX}/vod/hls/launch/hls"
    before = list_keys(client, b["storage_bucket"])
    delivered = list_keys(client, b["delivery_bucket"])
    assert hls_tree_problems(client, b["storage_bucket"], hls_root)[0] == []

    restartable_moto.stop()
    with pytest.raises(EndpointConnectionError):
        client.list_objects_v2(Bucket=b["storage_bucket"])  # really down
    restarted: list[float] = []  # when the endpoint came back

    def restart_later() -> None:
        time.sleep(OUTAGE_S)
        restartable_moto.start()
        restarted.append(time.monotonic())

    threading.Thread(target=restart_later, daemon=True).start()
    with instance_for_test() as instance:
        started = time.monotonic()
        result = materialize_video(
            project, spec, "launch", instance=instance, stages=["hls"], force=True
        )
        ended = time.monotonic()
    # the run began while the endpoint was down and ended after it came back (measured from the
    # restart itself: a loaded machine may start the run late into the outage)
    assert restarted and started < restarted[0] < ended

    retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert result.success
    assert retries and {e.step_key for e in retries} == {"vod__hls"}
    [mat] = [e for e in result.all_events if e.event_type == DagsterEventType.ASSET_MATERIALIZATION]
    assert mat.asset_key == AssetKey(["vod", "hls"])
    assert (
        mat.step_materialization_data.materialization.metadata["reused"].value is False
    )  # forced: really re-packaged
    missing, segments = hls_tree_problems(client, b["storage_bucket"], hls_root)
    assert missing == [] and segments >= len(PACKAGED)
    assert staging_keys(client, *b.values()) == []
    assert list_keys(client, b["storage_bucket"]) == before  # nothing lost, nothing extra
    assert list_keys(client, b["delivery_bucket"]) == delivered


# -- 3. hostile upload keys -----------------------------------------------------------------------

HOSTILE = {
    "dotdot": "uploads/vod/../../x.mp4",
    "unicode": "uploads/vod/Vidéo d'été 東京 🎬.mp4",
    "spaces": "uploads/vod/my launch  clip (final) .mp4",
    "long": "uploads/vod/" + ("long-name_" * 30) + ".mp4",
}


def test_hostile_upload_keys_get_safe_partitions_and_ingest_from_s3(
    moto_endpoint, s3, bucket, make_source, tmp_path, monkeypatch
):
    aws_env(monkeypatch)
    client = s3.get_client()
    project = s3_project(tmp_path, moto_endpoint, storage_bucket=bucket, upload_bucket=bucket)
    spec = project.spec("vod")
    source = make_source("hostile", duration_s=2.0, width=640, height=360)
    assert len(PurePosixPath(HOSTILE["long"]).name) >= 300
    for key in HOSTILE.values():
        client.upload_file(str(source), bucket, key)

    with instance_for_test() as instance:
        result = tick(project, instance, None)
        by_uri = {
            r.run_config["ops"]["vod__ingest"]["config"]["source_path"]: r
            for r in result.run_requests
        }
        assert sorted(by_uri) == sorted(f"s3://{bucket}/{k}" for k in HOSTILE.values())
        keys = [r.partition_key for r in by_uri.values()]
        assert all(SAFE_KEY.fullmatch(k) for k in keys), keys
        assert len(set(keys)) == len(keys)
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        assert sorted(instance.get_dynamic_partitions("vod_videos")) == sorted(keys)

        selection = [AssetKey(["vod", "ingest"]), AssetKey(["vod", "probe"])]
        for uri, req in by_uri.items():
            run = materialize(
                project.assets(spec),
                selection=selection,
                instance=instance,
                partition_key=req.partition_key,
                run_config=req.run_config,
                resources=project.resources(),
                tags=req.tags,
                raise_on_error=False,
            )
            assert run.success, uri
            meta = {
                e.asset_key.path[-1]: e.step_materialization_data.materialization.metadata
                for e in run.all_events
                if e.event_type == DagsterEventType.ASSET_MATERIALIZATION
            }
            assert set(meta) == {"ingest", "probe"}
            assert meta["ingest"]["original_path"].value == uri
            assert (
                meta["ingest"]["path"].value
                == f"s3://{bucket}/{STORAGE_PREFIX}/vod/ingest/{req.partition_key}/ingest"
            )
            assert meta["probe"]["resolution"].value == "640x360" and meta["probe"][
                "duration_s"
            ].value == pytest.approx(2.0, abs=0.1)

    stored = [k for k in list_keys(client, bucket) if not k.startswith("uploads/")]
    assert stored and all(
        k.startswith(f"{STORAGE_PREFIX}/vod/") and ".." not in k.split("/") for k in stored
    )
    for pk in keys:  # the uploaded bytes, stored under the safe key
        stored_source = client.get_object(
            Bucket=bucket, Key=f"{STORAGE_PREFIX}/vod/ingest/{pk}/ingest/source.mp4"
        )
        assert stored_source["Body"].read() == source.read_bytes()
    assert staging_keys(client, bucket) == []
    assert (
        list_keys(client, bucket, "x.mp4") == []
        and list_keys(client, bucket, "uploads/x.mp4") == []
    )  # no escape


def test_a_cmaf_package_reaches_the_delivery_bucket_with_dash_and_segment_headers(
    moto_endpoint, s3, bucket, make_source, tmp_path, monkeypatch
):
    """A CMAF spec through S3 storage into the delivery bucket: every file either manifest names
    is there, the MPD as `application/dash+xml` cached briefly, segments and init segments cached
    for good."""
    aws_env(monkeypatch)
    client = s3.get_client()
    project = s3_project(tmp_path, moto_endpoint, storage_bucket=bucket, delivery_bucket=bucket)
    spec = PipelineSpec.model_validate(
        {
            **project.spec("vod").model_dump(),
            "ladder": [{"name": "180p", "height": 180, "video_bitrate_kbps": 300}],
            "hls": {"segment_s": 2, "segment_type": "cmaf"},
            "captions": {"enabled": False},
        }
    )
    source = make_source("clip", duration_s=4.0, width=320, height=180)
    with instance_for_test() as instance:
        assert materialize_video(project, spec, "clip", instance=instance, source=source).success
    keys = set(list_keys(client, bucket, "clip/hls/"))
    mpd = get_text(client, bucket, "clip/hls/manifest.mpd")
    named = set()
    for template in re.findall(r"<SegmentTemplate [^>]*>", mpd):
        init = re.search(r'initialization="([^"]+)"', template)
        media = re.search(r'media="([^"]+)"', template)
        assert init and media
        named |= {f"clip/hls/{init[1]}", f"clip/hls/{media[1].replace('$Number%05d$', '00001')}"}
    assert {k.split("/")[2] for k in named} == {"180p", "audio_128k_und"}
    assert named <= keys
    expected = {
        ".mpd": ("application/dash+xml", SHORT_CACHE),
        ".m3u8": (PLAYLIST, SHORT_CACHE),
        ".m4s": ("video/iso.segment", IMMUTABLE_CACHE),
        ".mp4": ("video/mp4", IMMUTABLE_CACHE),
    }
    for key in ["clip/hls/manifest.mpd", "clip/hls/master.m3u8", *sorted(named)]:
        head = client.head_object(Bucket=bucket, Key=key)
        assert (head["ContentType"], head.get("CacheControl")) == expected[
            PurePosixPath(key).suffix
        ], key
