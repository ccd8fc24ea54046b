"""Webhook delivery against a real HTTP receiver on 127.0.0.1 (no mocked HTTP)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from mpegflow_dagster.events import Event, FanoutSink, JsonlEventSink
from mpegflow_dagster.webhooks.delivery import WebhookSink
from mpegflow_dagster.webhooks.resources import WebhookResource
from mpegflow_dagster.webhooks.signing import event_body, verify_signature

from http_receiver import Receiver, Reply, free_port

SECRET = "whsec_test"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours proxy variables; requests to the local receiver must go direct.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def make_event(video: str = "intro", type: str = "rendition.ready", **kw) -> Event:
    return Event(type=type, pipeline="vod", video=video, run_id="run-1", message="720p ready", subject="720p", **kw)


def make_sink(url: str, outbox: Path, **kw) -> WebhookSink:
    options = dict(timeout_s=2.0, max_attempts=3, backoff_s=0.01)
    return WebhookSink(url, SECRET, outbox, **{**options, **kw})


def test_body_and_headers_are_signed_and_verifiable(receiver: Receiver, tmp_path: Path) -> None:
    event = make_event(data={"height": 720, "note": "é"})
    make_sink(receiver.url, tmp_path).send(event)

    [req] = receiver.requests
    h = req.headers
    assert (req.method, req.path) == ("POST", "/hooks")
    assert h["Content-Type"] == "application/json"
    assert h["X-Mpegflow-Event"] == "rendition.ready"
    assert req.body == json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    ts, sig = h["X-Mpegflow-Timestamp"], h["X-Mpegflow-Signature"]
    assert sig.startswith("v1=") and len(sig) == 3 + 64
    assert verify_signature(SECRET, ts, req.body, sig)
    assert not verify_signature(SECRET, ts, req.body.replace(b"720", b"1080"), sig)
    assert not verify_signature("other-secret", ts, req.body, sig)
    assert not verify_signature(SECRET, int(ts) + 1, req.body, sig)  # timestamp is part of the signature
    assert not verify_signature(SECRET, ts, req.body, sig, now=int(ts) + 301)  # stale: replay rejected
    assert verify_signature(SECRET, ts, req.body, sig, now=int(ts) + 299)
    assert not verify_signature(SECRET, "not-a-number", req.body, sig)
    assert not verify_signature(SECRET, ts, req.body, "v1=ünïcode")


def test_event_id_header_is_stable_across_reemission(receiver: Receiver, tmp_path: Path) -> None:
    first = make_event()
    again = make_event(time=first.time + 60, data={"retry": True})  # same fact, later emission
    make_sink(receiver.url, tmp_path / "a").send(first)
    make_sink(receiver.url, tmp_path / "b").send(again)  # separate outboxes, so no dedupe

    ids = [r.headers["X-Mpegflow-Event-Id"] for r in receiver.requests]
    assert ids == [first.id, first.id]
    assert json.loads(receiver.requests[1].body)["id"] == first.id
    assert make_event(video="other").id != first.id


@pytest.mark.parametrize("status", [503, 500, 429])
def test_transient_errors_are_retried_then_delivered_once(receiver: Receiver, tmp_path: Path, status: int) -> None:
    receiver.script(status, status, 200)
    sink = make_sink(receiver.url, tmp_path)
    event = make_event()

    result = sink.deliver(event)

    assert (result.status, result.attempts, result.http_status) == ("delivered", 3, 200)
    assert [r.status for r in receiver.requests] == [status, status, 200]
    assert {r.headers["X-Mpegflow-Event-Id"] for r in receiver.requests} == {event.id}
    assert sink.outbox.pending() == []
    sink.send(event)
    assert len(receiver.requests) == 3  # delivered ids are remembered


def test_retry_after_is_honoured(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script(Reply(429, headers=(("Retry-After", "0.4"),)), 200)
    started = time.monotonic()
    make_sink(receiver.url, tmp_path, max_backoff_s=1.0).send(make_event())
    assert [r.status for r in receiver.requests] == [429, 200]
    assert time.monotonic() - started >= 0.2  # 0.4 s with jitter in [0.5, 1]; backoff_s alone is 0.01


def test_client_error_is_not_retried_and_recorded_as_rejected(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script(400)
    sink = make_sink(receiver.url, tmp_path)
    event = make_event()

    sink.send(event)  # does not raise

    assert [r.status for r in receiver.requests] == [400]
    [rejected] = sink.outbox.rejected()
    assert (rejected["event_id"], rejected["http_status"]) == (event.id, 400)
    assert "HTTP 400" in rejected["error"]
    assert sink.outbox.pending() == []
    assert sink.flush_outbox() == []
    assert len(receiver.requests) == 1


def test_redirect_is_not_followed(receiver: Receiver, tmp_path: Path) -> None:
    # urllib would re-send a redirected POST as a bodiless GET and report success.
    receiver.script(Reply(302, headers=(("Location", "/elsewhere"),)))
    result = make_sink(receiver.url, tmp_path).deliver(make_event())
    assert (result.status, result.http_status) == ("rejected", 302)
    assert "/elsewhere" in (result.error or "")
    assert [(r.method, r.path) for r in receiver.requests] == [("POST", "/hooks")]


def test_endpoint_down_keeps_event_in_outbox_until_it_comes_back(tmp_path: Path) -> None:
    port = free_port()
    sink = make_sink(f"http://127.0.0.1:{port}/hooks", tmp_path, max_attempts=2)
    lost, later = make_event("a"), make_event("b")

    result = sink.deliver(lost)  # connection refused on every attempt; must not raise
    assert (result.status, result.attempts) == ("deferred", 2)
    # Still down: the next event is queued after one flush attempt instead of its own retries.
    assert sink.deliver(later).attempts == 0
    assert [(r.event_id, r.status) for r in sink.flush_outbox()] == [(lost.id, "deferred")]  # stops at first failure
    pending = sink.outbox.pending()
    assert [p["event_id"] for p in pending] == [lost.id, later.id]
    assert [p["attempts"] for p in pending] == [4, 0] and "Connection" in pending[0]["last_error"]
    assert json.loads(pending[0]["body"]) == lost.to_dict()

    with Receiver(port=port) as receiver:
        delivered = sink.flush_outbox()
        assert [(r.event_id, r.status) for r in delivered] == [(lost.id, "delivered"), (later.id, "delivered")]
        assert sink.flush_outbox() == []
        sink.send(lost)
        sink.send(later)
        assert [r.headers["X-Mpegflow-Event-Id"] for r in receiver.requests] == [lost.id, later.id]
        assert all(verify_signature(SECRET, r.headers["X-Mpegflow-Timestamp"], r.body,
                                    r.headers["X-Mpegflow-Signature"]) for r in receiver.requests)
    assert sink.outbox.pending() == []


def test_send_flushes_the_outbox_first(tmp_path: Path) -> None:
    port = free_port()
    sink = make_sink(f"http://127.0.0.1:{port}/hooks", tmp_path, max_attempts=1)
    old, new = make_event("old"), make_event("new")
    sink.send(old)
    assert [p["event_id"] for p in sink.outbox.pending()] == [old.id]

    with Receiver(port=port) as receiver:
        sink.send(new)
    assert [r.headers["X-Mpegflow-Event-Id"] for r in receiver.requests] == [old.id, new.id]
    assert sink.outbox.pending() == []


def test_same_event_twice_is_delivered_once(receiver: Receiver, tmp_path: Path) -> None:
    event = make_event()
    make_sink(receiver.url, tmp_path).send(event)
    result = make_sink(receiver.url, tmp_path).deliver(event)  # a new sink on the same outbox
    assert result.status == "duplicate"
    assert len(receiver.requests) == 1


def test_timeout_is_retried(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script(Reply(200, delay_s=1.0), 200)
    event = make_event()
    result = make_sink(receiver.url, tmp_path, timeout_s=0.3).deliver(event)
    assert (result.status, result.attempts) == ("delivered", 2)
    # The slow first request did arrive: receivers dedupe on the id header.
    assert [r.headers["X-Mpegflow-Event-Id"] for r in receiver.requests] == [event.id, event.id]


def test_delivered_ids_are_bounded(receiver: Receiver, tmp_path: Path) -> None:
    sink = make_sink(receiver.url, tmp_path)
    sink.outbox.max_delivered_ids = 2
    events = [make_event(f"v{i}") for i in range(3)]
    for event in events:
        sink.send(event)
    assert [sink.outbox.is_delivered(e.id) for e in events] == [False, True, True]


def test_resource_writes_jsonl_and_webhook(receiver: Receiver, tmp_path: Path) -> None:
    resource = WebhookResource(
        url=receiver.url, secret=SECRET, outbox_dir=str(tmp_path / "outbox"),
        events_path=str(tmp_path / "events.jsonl"), backoff_s=0.01,
    )
    sink = resource.sink()
    assert isinstance(sink, FanoutSink)
    event = make_event()
    sink.send(event)
    sink.send(event)

    assert JsonlEventSink(tmp_path / "events.jsonl").read() == [json.loads(event_body(event))]
    assert len(receiver.requests) == 1
    assert resource.flush_outbox() == []


def test_resource_without_url_only_writes_jsonl(tmp_path: Path) -> None:
    resource = WebhookResource(events_path=str(tmp_path / "events.jsonl"), outbox_dir=str(tmp_path / "outbox"))
    resource.sink().send(make_event())
    assert len(JsonlEventSink(tmp_path / "events.jsonl").read()) == 1
    assert resource.flush_outbox() == []
    assert not (tmp_path / "outbox").exists()


def test_resource_with_url_needs_a_secret(tmp_path: Path) -> None:
    resource = WebhookResource(url="https://example.invalid/hooks", outbox_dir=str(tmp_path))
    with pytest.raises(ValueError, match="secret is empty"):
        resource.sink()
    with pytest.raises(ValueError, match="https://"):
        WebhookSink("file:///etc/passwd", SECRET, tmp_path)


def test_fanout_sends_to_every_sink_then_reraises(tmp_path: Path) -> None:
    class Broken:
        def send(self, event: Event) -> None:
            raise OSError("disk full")

    jsonl = JsonlEventSink(tmp_path / "events.jsonl")
    with pytest.raises(OSError, match="disk full"):
        FanoutSink([Broken(), jsonl]).send(make_event())
    assert len(jsonl.read()) == 1


def test_flush_skips_an_event_another_process_is_sending(tmp_path: Path) -> None:
    port = free_port()
    sink = make_sink(f"http://127.0.0.1:{port}/hooks", tmp_path, max_attempts=1)
    event = make_event()
    sink.send(event)
    other_process = make_sink(f"http://127.0.0.1:{port}/hooks", tmp_path).outbox
    assert other_process.claim(event.id, lease_s=60)

    with Receiver(port=port) as receiver:
        assert sink.flush_outbox() == []
        assert receiver.requests == []
        assert other_process.claim(event.id, lease_s=60) is False  # still leased
        sink.outbox.defer(event.id, event.type, event_body(event), 1, "other process timed out")  # lease released
        assert [r.status for r in sink.flush_outbox()] == ["delivered"]
        assert len(receiver.requests) == 1


def test_resource_in_a_dagster_run(receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster import EnvVar, asset, materialize

    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    event = make_event()

    @asset
    def published(events: WebhookResource) -> None:
        events.sink().send(event)

    resource = WebhookResource(
        url=receiver.url, secret=EnvVar("TEST_WEBHOOK_SECRET"), outbox_dir=str(tmp_path / "outbox"),
        events_path=str(tmp_path / "events.jsonl"),
    )
    assert materialize([published], resources={"events": resource}).success
    [req] = receiver.requests
    assert verify_signature(SECRET, req.headers["X-Mpegflow-Timestamp"], req.body, req.headers["X-Mpegflow-Signature"])
