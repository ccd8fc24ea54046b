"""Webhook delivery from the outbox against a real HTTP receiver on 127.0.0.1 (no mocked HTTP),
and with real Dagster runs and sensors."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    EnvVar,
    SkipReason,
    asset,
    build_sensor_context,
    materialize,
)
from http_receiver import Receiver, Reply, free_port

from mpegflow_dagster.events import Event, FanoutSink, JsonlEventSink
from mpegflow_dagster.webhooks.delivery import BackgroundDrain, WebhookDelivery
from mpegflow_dagster.webhooks.outbox import WebhookOutbox
from mpegflow_dagster.webhooks.resources import WebhookResource
from mpegflow_dagster.webhooks.sensor import build_webhook_delivery_sensor
from mpegflow_dagster.webhooks.signing import event_body, verify_signature

SECRET = "whsec_test"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours proxy variables; requests to the local receiver must go direct.
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def make_event(video: str = "intro", type: str = "rendition.ready", **kw) -> Event:
    return Event(
        type=type,
        pipeline="vod",
        video=video,
        run_id="run-1",
        message="720p ready",
        subject="720p",
        **kw,
    )


def make_delivery(url: str, outbox_dir: Path, **kw) -> WebhookDelivery:
    """backoff_s=0: a failed event may be tried again at once, so a test drains again right away."""
    options = dict(timeout_s=2.0, backoff_s=0.0)
    return WebhookDelivery(url, SECRET, WebhookOutbox(outbox_dir), **{**options, **kw})


def statuses(results) -> list[tuple[str, str]]:
    return [(r.event_id, r.status) for r in results]


def ids(receiver: Receiver) -> list[str]:
    return [r.headers["X-Mpegflow-Event-Id"] for r in receiver.requests]


def signed(request) -> bool:
    h = request.headers
    return verify_signature(
        SECRET, h["X-Mpegflow-Timestamp"], request.body, h["X-Mpegflow-Signature"]
    )


def test_body_and_headers_are_signed_and_verifiable(receiver: Receiver, tmp_path: Path) -> None:
    event = make_event(data={"height": 720, "note": "é"})
    delivery = make_delivery(receiver.url, tmp_path)
    delivery.outbox.send(event)
    assert statuses(delivery.drain()) == [(event.id, "delivered")]

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
    assert not verify_signature(
        SECRET, int(ts) + 1, req.body, sig
    )  # timestamp is part of the signature
    assert not verify_signature(
        SECRET, ts, req.body, sig, now=int(ts) + 301
    )  # stale: replay rejected
    assert verify_signature(SECRET, ts, req.body, sig, now=int(ts) + 299)
    assert not verify_signature(SECRET, "not-a-number", req.body, sig)
    assert not verify_signature(SECRET, ts, req.body, "v1=ünïcode")


def test_event_id_header_is_stable_across_reemission(receiver: Receiver, tmp_path: Path) -> None:
    first = make_event()
    again = make_event(time=first.time + 60, data={"retry": True})  # same fact, later emission
    for outbox_dir, event in (
        (tmp_path / "a", first),
        (tmp_path / "b", again),
    ):  # separate outboxes: no dedupe
        delivery = make_delivery(receiver.url, outbox_dir)
        delivery.outbox.send(event)
        delivery.drain()

    assert ids(receiver) == [first.id, first.id]
    assert json.loads(receiver.requests[1].body)["id"] == first.id
    assert make_event(video="other").id != first.id


@pytest.mark.parametrize("status", [503, 500, 429])
def test_transient_errors_are_retried_then_delivered_once(
    receiver: Receiver, tmp_path: Path, status: int
) -> None:
    receiver.script(status, status, 200)
    delivery = make_delivery(receiver.url, tmp_path)
    event = make_event()
    delivery.outbox.send(event)

    results = [r for _ in range(3) for r in delivery.drain()]  # a transient failure ends a drain

    assert [(r.status, r.attempts, r.http_status) for r in results] == [
        ("deferred", 1, status),
        ("deferred", 2, status),
        ("delivered", 3, 200),
    ]
    assert [r.status for r in receiver.requests] == [status, status, 200]
    assert set(ids(receiver)) == {event.id}
    assert delivery.outbox.pending() == []
    delivery.outbox.send(event)  # delivered ids are remembered: not queued again
    assert delivery.drain() == [] and len(receiver.requests) == 3


def test_backoff_doubles_and_retry_after_is_honoured(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script(503, 503, Reply(429, headers=(("Retry-After", "0.6"),)), 200)
    delivery = make_delivery(receiver.url, tmp_path, backoff_s=0.2)
    delivery.outbox.send(make_event())
    holds = []
    for _ in range(3):
        [result] = delivery.drain()
        assert result.status == "deferred"
        holds.append(delivery.outbox.next_attempt_at() - time.time())
        assert delivery.drain() == []  # held back: not tried again before its time
        time.sleep(max(0.0, holds[-1]) + 0.02)
    # jitter in [delay/2, delay]: 0.2 s then 0.4 s; Retry-After 0.6 s beats the 0.8 s backoff's lower half
    assert 0.05 < holds[0] <= 0.2 and 0.15 < holds[1] <= 0.4 and 0.55 < holds[2] <= 0.8
    assert [r.status for r in delivery.drain()] == ["delivered"]
    assert [r.status for r in receiver.requests] == [503, 503, 429, 200]


def test_client_error_is_not_retried_and_recorded_as_rejected(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.script(400)
    delivery = make_delivery(receiver.url, tmp_path)
    event = make_event()
    delivery.outbox.send(event)

    assert [(r.status, r.http_status) for r in delivery.drain()] == [("rejected", 400)]

    assert [r.status for r in receiver.requests] == [400]
    [rejected] = delivery.outbox.rejected()
    assert (rejected["event_id"], rejected["http_status"]) == (event.id, 400)
    assert "HTTP 400" in rejected["error"]
    assert delivery.outbox.pending() == []
    assert delivery.drain() == []
    assert len(receiver.requests) == 1


def test_a_rejected_event_does_not_hold_back_the_next(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script(422, 200)
    delivery = make_delivery(receiver.url, tmp_path)
    bad, good = make_event("bad"), make_event("good")
    delivery.outbox.send(bad)
    delivery.outbox.send(good)
    assert statuses(delivery.drain()) == [(bad.id, "rejected"), (good.id, "delivered")]


def test_redirect_is_not_followed(receiver: Receiver, tmp_path: Path) -> None:
    # urllib would re-send a redirected POST as a bodiless GET and report success.
    receiver.script(Reply(302, headers=(("Location", "/elsewhere"),)))
    delivery = make_delivery(receiver.url, tmp_path)
    delivery.outbox.send(make_event())
    [result] = delivery.drain()
    assert (result.status, result.http_status) == ("rejected", 302)
    assert "/elsewhere" in (result.error or "")
    assert [(r.method, r.path) for r in receiver.requests] == [("POST", "/hooks")]


def test_endpoint_down_keeps_events_queued_in_order_until_it_comes_back(tmp_path: Path) -> None:
    port = free_port()
    delivery = make_delivery(f"http://127.0.0.1:{port}/hooks", tmp_path)
    lost, later = make_event("a"), make_event("b")
    delivery.outbox.send(lost)
    delivery.outbox.send(later)

    # Connection refused; must not raise. The drain stops there: `later` waits behind `lost`.
    assert statuses(delivery.drain()) == [(lost.id, "deferred")]
    assert statuses(delivery.drain()) == [(lost.id, "deferred")]
    pending = delivery.outbox.pending()
    assert [p["event_id"] for p in pending] == [lost.id, later.id]
    assert [p["attempts"] for p in pending] == [2, 0] and "Connection" in pending[0]["last_error"]
    assert json.loads(pending[0]["body"]) == lost.to_dict()

    with Receiver(port=port) as receiver:
        assert statuses(delivery.drain()) == [(lost.id, "delivered"), (later.id, "delivered")]
        assert delivery.drain() == []
        delivery.outbox.send(lost)
        delivery.outbox.send(later)
        assert delivery.drain() == []
        assert ids(receiver) == [lost.id, later.id]
        assert all(signed(r) for r in receiver.requests)
    assert delivery.outbox.pending() == []


def test_same_event_twice_is_queued_and_delivered_once(receiver: Receiver, tmp_path: Path) -> None:
    event = make_event()
    outbox = WebhookOutbox(tmp_path)
    outbox.send(event)
    WebhookOutbox(tmp_path).send(event)  # another process, same outbox
    assert len(outbox.pending()) == 1
    assert statuses(make_delivery(receiver.url, tmp_path).drain()) == [(event.id, "delivered")]
    assert len(receiver.requests) == 1


def test_timeout_is_retried(receiver: Receiver, tmp_path: Path) -> None:
    receiver.script(Reply(200, delay_s=1.0), 200)
    event = make_event()
    delivery = make_delivery(receiver.url, tmp_path, timeout_s=0.3)
    delivery.outbox.send(event)
    [timed_out] = delivery.drain()
    assert timed_out.status == "deferred" and "timed out" in (timed_out.error or "")
    assert [(r.status, r.attempts) for r in delivery.drain()] == [("delivered", 2)]
    # The slow first request did arrive: receivers dedupe on the id header.
    assert ids(receiver) == [event.id, event.id]


def test_delivered_ids_are_bounded(receiver: Receiver, tmp_path: Path) -> None:
    delivery = make_delivery(receiver.url, tmp_path)
    delivery.outbox.max_delivered_ids = 2
    events = [make_event(f"v{i}") for i in range(3)]
    for event in events:
        delivery.outbox.send(event)
        delivery.drain()
    assert [delivery.outbox.is_delivered(e.id) for e in events] == [False, True, True]


def test_drain_waits_behind_an_event_another_process_is_sending(
    receiver: Receiver, tmp_path: Path
) -> None:
    delivery = make_delivery(receiver.url, tmp_path)
    first, second = make_event("first"), make_event("second")
    delivery.outbox.send(first)
    delivery.outbox.send(second)
    other_process = WebhookOutbox(tmp_path)
    assert other_process.claim_next(lease_s=60)["event_id"] == first.id

    assert (
        delivery.drain() == []
    )  # neither the claimed event nor, to keep the order, the one behind it
    assert receiver.requests == [] and other_process.claim_next(lease_s=60) is None
    other_process.retry_later(first.id, "other process timed out", delay_s=0)  # its claim ends
    assert statuses(delivery.drain()) == [(first.id, "delivered"), (second.id, "delivered")]
    assert ids(receiver) == [first.id, second.id]


def test_a_dead_deliverers_claim_lapses(receiver: Receiver, tmp_path: Path) -> None:
    delivery = make_delivery(receiver.url, tmp_path)
    event = make_event()
    delivery.outbox.send(event)
    assert WebhookOutbox(tmp_path).claim_next(lease_s=0.3) is not None  # and then that process dies
    assert delivery.drain() == []
    time.sleep(0.35)
    assert statuses(delivery.drain()) == [(event.id, "delivered")]


def test_background_drain_delivers_while_the_process_works(
    receiver: Receiver, tmp_path: Path
) -> None:
    delivery = make_delivery(receiver.url, tmp_path)
    events = [make_event(f"v{i}") for i in range(3)]
    with BackgroundDrain(delivery) as drain:
        for event in events:
            delivery.outbox.send(event)
        deadline = time.monotonic() + 5
        while len(receiver.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ids(receiver) == [e.id for e in events]  # delivered before finish, in order
        assert drain.finish(wait_s=5) == []


def test_background_drain_final_wait_is_bounded(tmp_path: Path) -> None:
    delivery = make_delivery(f"http://127.0.0.1:{free_port()}/hooks", tmp_path, backoff_s=0.1)
    event = make_event()
    with BackgroundDrain(delivery) as drain:
        delivery.outbox.send(event)
        started = time.monotonic()
        left = drain.finish(wait_s=1.0)
    assert time.monotonic() - started < 3.0  # the wait, plus at most one attempt in flight
    assert [p["event_id"] for p in left] == [event.id] and left[0]["attempts"] >= 2

    # The next attempt is due after the wait: finish returns at once instead of waiting for nothing.
    slow = make_delivery(delivery.url, tmp_path, backoff_s=60)
    with BackgroundDrain(slow) as drain:
        time.sleep(0.3)  # one failed attempt; the next in 30-60 s
        started = time.monotonic()
        assert len(drain.finish(wait_s=10)) == 1
    assert time.monotonic() - started < 2.0


def test_resource_writes_jsonl_at_once_and_queues_the_webhook(
    receiver: Receiver, tmp_path: Path
) -> None:
    resource = WebhookResource(
        url=receiver.url,
        secret=SECRET,
        outbox_dir=str(tmp_path / "outbox"),
        events_path=str(tmp_path / "events.jsonl"),
        backoff_s=0.01,
    )
    event = make_event()
    resource.sink().send(event)
    resource.sink().send(event)

    assert JsonlEventSink(tmp_path / "events.jsonl").read() == [json.loads(event_body(event))]
    assert receiver.requests == [] and [p["event_id"] for p in resource.outbox().pending()] == [
        event.id
    ]
    assert statuses(resource.drain()) == [(event.id, "delivered")]
    assert len(receiver.requests) == 1 and resource.drain() == []


def test_resource_without_url_only_writes_jsonl(tmp_path: Path) -> None:
    resource = WebhookResource(
        events_path=str(tmp_path / "events.jsonl"), outbox_dir=str(tmp_path / "outbox")
    )
    resource.sink().send(make_event())
    assert len(JsonlEventSink(tmp_path / "events.jsonl").read()) == 1
    assert resource.delivery() is None and resource.drain() == []
    assert not (tmp_path / "outbox").exists()


def test_resource_with_url_needs_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        WebhookResource(
            url="https://example.invalid/hooks", outbox_dir=str(tmp_path / "a")
        ).delivery()

    @asset
    def published(events: WebhookResource) -> None:
        events.sink().send(make_event())

    resource = WebhookResource(
        url="https://example.invalid/hooks",
        outbox_dir=str(tmp_path / "run"),
        events_path=str(tmp_path / "events.jsonl"),
    )
    result = materialize([published], resources={"events": resource}, raise_on_error=False)
    assert not result.success  # at resource setup, before any event is queued
    assert not (tmp_path / "run").exists() and not (tmp_path / "events.jsonl").exists()
    with pytest.raises(ValueError, match="https://"):
        make_delivery("file:///etc/passwd", tmp_path)


def test_fanout_sends_to_every_sink_then_reraises(tmp_path: Path) -> None:
    class Broken:
        def send(self, event: Event) -> None:
            raise OSError("disk full")

    jsonl = JsonlEventSink(tmp_path / "events.jsonl")
    with pytest.raises(OSError, match="disk full"):
        FanoutSink([Broken(), jsonl]).send(make_event())
    assert len(jsonl.read()) == 1


def test_resource_in_a_dagster_run(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    event = make_event()

    @asset
    def published(events: WebhookResource) -> None:
        events.sink().send(event)

    resource = WebhookResource(
        url=receiver.url,
        secret=EnvVar("TEST_WEBHOOK_SECRET"),
        outbox_dir=str(tmp_path / "outbox"),
        events_path=str(tmp_path / "events.jsonl"),
    )
    assert materialize([published], resources={"events": resource}).success
    assert receiver.requests == []  # the step only queued it
    delivery = WebhookDelivery(receiver.url, SECRET, WebhookOutbox(tmp_path / "outbox"))
    assert statuses(delivery.drain()) == [(event.id, "delivered")]
    [req] = receiver.requests
    assert signed(req)


def test_a_slow_endpoint_does_not_hold_the_step(receiver: Receiver, tmp_path: Path) -> None:
    """Before the outbox, a step POSTed its events itself: an endpoint that answers after 10 s held
    the step 10 s (and a silent one about 45 s: 4 attempts of 10 s, plus backoff). Here it
    answers after 4 s: the step must still take under 2 s."""
    receiver.script(Reply(200, delay_s=4.0))
    events = [make_event("v", type="rendition.ready"), make_event("v", type="package.ready")]

    @asset
    def encode(events_resource: WebhookResource) -> None:
        for event in events:
            events_resource.sink().send(event)

    resource = WebhookResource(
        url=receiver.url,
        secret=SECRET,
        outbox_dir=str(tmp_path / "outbox"),
        events_path=str(tmp_path / "events.jsonl"),
        timeout_s=20.0,
    )
    delivery = resource.delivery()
    assert delivery is not None
    with BackgroundDrain(delivery) as drain:  # as `mpegflow run` does
        result = materialize([encode], resources={"events_resource": resource})
        [success] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_SUCCESS]
        assert success.step_success_data.duration_ms < 2000
        assert (
            len(JsonlEventSink(tmp_path / "events.jsonl").read()) == 2
        )  # the local record is synchronous
        left = drain.finish(wait_s=20)
    assert left == []
    assert ids(receiver) == [e.id for e in events]  # delivered after the step, in order
    assert [r.status for r in receiver.requests] == [200, 200] and all(
        signed(r) for r in receiver.requests
    )


def test_delivery_sensor_drains_the_outbox(tmp_path: Path) -> None:
    port = free_port()
    resource = WebhookResource(
        url=f"http://127.0.0.1:{port}/hooks",
        secret=SECRET,
        backoff_s=0.0,
        outbox_dir=str(tmp_path / "outbox"),
        events_path=str(tmp_path / "events.jsonl"),
    )
    first, second = make_event("a"), make_event("b")
    resource.sink().send(first)
    resource.sink().send(second)
    sensor_def = build_webhook_delivery_sensor()
    assert sensor_def.minimum_interval_seconds == 15

    def tick() -> SkipReason:
        with (
            DagsterInstance.ephemeral() as instance,
            build_sensor_context(instance=instance, resources={"events": resource}) as context,
        ):
            result = sensor_def(context)
        assert isinstance(result, SkipReason)
        return result

    down = tick()
    assert "delivered 0, rejected 0, 2 still queued" in (down.skip_message or "")
    assert "Connection" in (down.skip_message or "")
    with Receiver(port=port) as receiver:
        receiver.script(200, 410)
        assert tick().skip_message == "delivered 1, rejected 1, 0 still queued"
        assert ids(receiver) == [first.id, second.id] and all(signed(r) for r in receiver.requests)
        assert tick().skip_message == "delivered 0, rejected 0, 0 still queued"
        assert len(receiver.requests) == 2
    [rejected] = resource.outbox().rejected()
    assert (rejected["event_id"], rejected["http_status"]) == (second.id, 410)
