"""The webhook notifier against real local HTTP servers: the signature covers the
Idempotency-Key (a captured request cannot be replayed under a new key), and one send has a
total deadline shorter than the delivery lease, even against a receiver that drips its answer
one byte at a time."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from alerts.dispatcher import Dispatcher
from alerts.errors import DeliveryError, PermanentDeliveryError
from alerts.notifiers import build_notifier
from alerts.notifiers.webhook import WebhookClient, WebhookNotifier, verify
from tests.alerts.conftest import SECRET, alert_settings
from tests.alerts.test_dispatcher import _deliveries, _fire

ROOT = Path(__file__).resolve().parents[2]
KEY = "finsent-0123456789abcdef0123456789abcdef"


def payload() -> dict[str, Any]:
    alert = {
        "labels": {"alertname": "negative-share", "key": "topic:Earnings"},
        "annotations": {},
        "starts_at": "2026-11-20T09:00:00Z",
        "ends_at": None,
        "fingerprint": "abc",
        "value": 0.8,
        "figures": {},
        "group_key": '{rule="negative-share"}',
    }
    return {"event": "firing", "notifier": "hook", "alert": alert, "headlines": []}


def readme_verify() -> Any:
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.S)
    assert snippet, "README lost its webhook verification snippet"
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    return namespace["verify_finsent"]


def test_a_captured_request_does_not_verify_under_another_idempotency_key(http_receiver) -> None:
    WebhookNotifier(http_receiver.url, secret=SECRET, timeout_s=5).send(payload(), KEY)
    (request,) = http_receiver.requests
    headers = request.headers
    ts, sig = headers["X-Finsent-Timestamp"], headers["X-Finsent-Signature"]
    assert headers["Idempotency-Key"] == KEY
    assert verify(SECRET, ts, KEY, request.body, sig)
    replayed_key = "finsent-ffffffffffffffffffffffffffffffff"
    assert not verify(SECRET, ts, replayed_key, request.body, sig)

    readme = readme_verify()
    assert readme(SECRET, headers, request.body)
    assert not readme(SECRET, {**headers, "Idempotency-Key": replayed_key}, request.body)


class DrippingReceiver:
    """A raw TCP receiver that reads the request, then answers one byte every ``interval_s``
    seconds: its status line and headers (``where="headers"``) or, after complete headers,
    its body (``where="body"``). It stops when the client hangs up."""

    def __init__(self, where: str, interval_s: float = 0.5) -> None:
        self.where = where
        self.interval_s = interval_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.hung_up = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += conn.recv(65536)
            answer_body = b"x" * 200
            headers = (
                b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\nX-Padding: " + b"p" * 100 + b"\r\n\r\n"
            )
            try:
                if self.where == "body":
                    conn.sendall(headers)
                    drip = answer_body
                else:
                    drip = headers + answer_body
                for i in range(len(drip)):
                    conn.sendall(drip[i : i + 1])
                    time.sleep(self.interval_s)
            except OSError:
                self.hung_up.set()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["headers", "body"])
def dripping_receiver(request: pytest.FixtureRequest) -> Iterator[DrippingReceiver]:
    receiver = DrippingReceiver(request.param)
    yield receiver
    receiver.close()


def test_a_dripping_receiver_fails_the_send_within_its_total_deadline(dripping_receiver) -> None:
    notifier = WebhookNotifier(dripping_receiver.url, secret=SECRET, timeout_s=1.5)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="did not complete within 1.5 s") as caught:
        notifier.send(payload(), KEY)
    elapsed = time.monotonic() - started
    assert not isinstance(caught.value, PermanentDeliveryError)  # retried later, same key
    assert 1.4 <= elapsed < 2.5, elapsed
    assert dripping_receiver.hung_up.wait(5), "the timed-out connection was left open"


def test_a_pooled_client_stays_usable_after_a_timed_out_send(http_receiver) -> None:
    drip = DrippingReceiver("headers")
    try:
        with WebhookClient() as client:
            with pytest.raises(DeliveryError):
                WebhookNotifier(drip.url, secret=SECRET, timeout_s=0.5, client=client).send(
                    payload(), KEY
                )
            WebhookNotifier(http_receiver.url, secret=SECRET, timeout_s=5, client=client).send(
                payload(), KEY
            )
    finally:
        drip.close()
    assert len(http_receiver.requests) == 1


def test_the_send_deadline_is_capped_below_the_delivery_lease(database_url: str) -> None:
    settings = alert_settings(database_url, webhook_url="http://127.0.0.1:9/hook", lease_s=4.0)
    assert settings.webhook.timeout_s == 5  # longer than the lease: capped
    notifier = build_notifier("webhook", "http://127.0.0.1:9/hook", "webhook", None, settings)
    assert isinstance(notifier, WebhookNotifier) and notifier.timeout_s == 2.0


def test_a_dripping_receiver_releases_the_delivery_for_retry_before_its_lease_ends(
    engine: sa.Engine, database_url: str
) -> None:
    drip = DrippingReceiver("headers")
    settings = alert_settings(database_url, webhook_url=drip.url, lease_s=3.0)
    ruleset = _fire(engine, settings)
    dispatcher = Dispatcher(engine, settings, ruleset)
    try:
        started = time.monotonic()
        summary = dispatcher.dispatch_once(max_deliveries=1)
        elapsed = time.monotonic() - started
    finally:
        dispatcher.close()
        drip.close()
    assert summary.retried == 1
    assert elapsed < settings.delivery.lease_s, elapsed
    (delivery,) = _deliveries(engine)
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert "total deadline" in delivery.last_error
