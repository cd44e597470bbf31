"""The outbox dispatcher against real HTTP and SMTP servers: retries with backoff,
Retry-After, bounded attempts then dead, independent channels, and kill -9 mid-send."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from alerts.dispatcher import Dispatcher
from alerts.lifecycle import LiveEvaluator
from alerts.notifiers.webhook import parse_retry_after, verify
from alerts.outbox import backoff_s
from pipeline.embedded import free_port
from pipeline.settings import DeliveryPolicy
from tests.alerts.conftest import (
    SECRET,
    T0,
    Point,
    alert_settings,
    insert_points,
    surge_rules,
    surge_stream,
)

ROOT = Path(__file__).resolve().parents[2]


def _fire(engine, settings, notifiers=("webhook",)):
    """One firing alert on topic:Earnings with deliveries queued for ``notifiers``."""
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    ruleset = surge_rules(notifiers=notifiers, extra={"for": "0s"})
    summary = LiveEvaluator(engine, ruleset, settings).evaluate(T0 + timedelta(minutes=80))
    assert summary.fired == 1
    return ruleset


def _deliveries(engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM alert_deliveries ORDER BY id")).all()


def _drain(dispatcher: Dispatcher, engine, *, timeout_s: float = 20.0) -> None:
    """Dispatch until nothing is pending or sending."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        dispatcher.dispatch_once()
        if all(d.status not in ("pending", "sending") for d in _deliveries(engine)):
            return
        time.sleep(0.02)
    raise AssertionError(
        f"deliveries still open: {[(d.channel, d.status) for d in _deliveries(engine)]}"
    )


def test_receiver_500_three_times_then_200_is_delivered_once(
    engine, database_url, http_receiver
) -> None:
    settings = alert_settings(database_url, webhook_url=http_receiver.url)
    ruleset = _fire(engine, settings)
    http_receiver.respond_with(500, 500, 500)
    dispatcher = Dispatcher(engine, settings, ruleset)
    _drain(dispatcher, engine)
    for _ in range(5):
        dispatcher.dispatch_once()
    (delivery,) = _deliveries(engine)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 4, None)
    requests = http_receiver.requests
    assert len(requests) == 4
    keys = {r.headers["Idempotency-Key"] for r in requests}
    assert keys == {delivery.idempotency_key}
    assert len({r.body for r in requests}) == 1  # every retry sends the same body


def test_429_retry_after_is_honoured(engine, database_url, http_receiver) -> None:
    settings = alert_settings(
        database_url, webhook_url=http_receiver.url, base_delay_s=0.01, max_delay_s=0.02
    )
    ruleset = _fire(engine, settings)
    http_receiver.respond_with((429, {"Retry-After": "2"}))
    dispatcher = Dispatcher(engine, settings, ruleset)
    dispatcher.dispatch_once()
    refused_at = time.monotonic()
    (delivery,) = _deliveries(engine)
    assert delivery.status == "pending" and "429" in delivery.last_error
    while len(http_receiver.requests) < 2 and time.monotonic() - refused_at < 10:
        dispatcher.dispatch_once()
        time.sleep(0.02)
    waited = time.monotonic() - refused_at
    assert len(http_receiver.requests) == 2
    assert 1.8 <= waited < 5, waited
    assert _deliveries(engine)[0].status == "delivered"


def test_receiver_down_for_the_whole_test_is_bounded_and_dead_while_email_is_sent_once(
    engine, database_url, smtp_server
) -> None:
    settings = alert_settings(
        database_url,
        smtp_port=smtp_server.port,
        webhook_url=f"http://127.0.0.1:{free_port()}/hook",
        max_attempts=4,
    )
    ruleset = _fire(engine, settings, notifiers=("email", "webhook"))
    _drain(Dispatcher(engine, settings, ruleset), engine)
    by_channel = {d.channel: d for d in _deliveries(engine)}
    hook = by_channel["webhook"]
    assert (hook.status, hook.attempts) == ("dead", 4)
    assert "gave up after 4 attempts" in hook.last_error and "ConnectError" in hook.last_error
    mail = by_channel["email"]
    assert (mail.status, mail.attempts) == ("delivered", 1)
    assert len(smtp_server.messages) == 1


def test_a_permanent_http_error_is_dead_at_once(engine, database_url, http_receiver) -> None:
    settings = alert_settings(database_url, webhook_url=http_receiver.url)
    ruleset = _fire(engine, settings)
    http_receiver.respond_with(404)
    _drain(Dispatcher(engine, settings, ruleset), engine)
    (delivery,) = _deliveries(engine)
    assert (delivery.status, delivery.attempts) == ("dead", 1)
    assert "HTTP 404" in delivery.last_error and "not retried" in delivery.last_error


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    import random

    policy = DeliveryPolicy(base_delay_s=1.0, max_delay_s=30.0)
    rng = random.Random(7)
    for attempts in range(1, 12):
        full = min(30.0, 2 ** (attempts - 1))
        delays = [backoff_s(attempts, policy, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Fri, 20 Nov 2026 09:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    assert parse_retry_after("99999999") == 86_400.0


class HoldingReceiver:
    """A webhook receiver that honours Idempotency-Key (it processes a key once and
    acknowledges duplicates without processing them) and can hold the first request open
    after processing it, as a slow receiver would."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []
        self.processed: list[str] = []
        self.got_first = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers)
                key = headers["Idempotency-Key"]
                with receiver.lock:
                    receiver.requests.append((key, body, headers))
                    first = len(receiver.requests) == 1
                    duplicate = key in receiver.processed
                    if not duplicate:
                        receiver.processed.append(key)
                if first:
                    receiver.got_first.set()
                    receiver.release.wait(60)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the sender is gone

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _start_alerts_run(database_url: str, rules: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env.update(
        {
            "FINSENT_DATABASE_URL": database_url,
            "FINSENT_RULES": str(rules),
            "FINSENT_ALERT_INTERVAL_S": "1",
            "FINSENT_DELIVERY__LEASE_S": "2",
            "FINSENT_DELIVERY__POLL_INTERVAL_S": "0.1",
            "FINSENT_DELIVERY__BASE_DELAY_S": "0.05",
            "FINSENT_DELIVERY__MAX_DELAY_S": "0.2",
        }
    )
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "finsent.cli", "alerts", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_status(engine, status: str, timeout_s: float) -> sa.Row:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = _deliveries(engine)
        if rows and rows[0].status == status:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(
        f"delivery never became {status}: {[(r.status, r.attempts) for r in _deliveries(engine)]}"
    )


def test_dispatcher_killed_mid_send_delivers_after_restart_and_never_twice(
    engine, database_url, tmp_path: Path
) -> None:
    receiver = HoldingReceiver()
    now = datetime.now(UTC)
    insert_points(
        engine,
        "topic:Earnings",
        [Point(now - timedelta(minutes=m), "bearish") for m in range(1, 11)],
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "notifiers:\n"
        f"  hook: {{type: webhook, url: '{receiver.url}', secret: '{SECRET}', timeout_s: 60}}\n"
        "rules:\n"
        "  - {name: negative-share, kind: threshold, window: 20m, value: 0.6, for: 0s,\n"
        "     select: {min_volume: 5}, notifiers: [hook]}\n"
    )
    log = tmp_path / "alerts.log"
    first = _start_alerts_run(database_url, rules, log)
    second = None
    try:
        assert receiver.got_first.wait(60), log.read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        held = _deliveries(engine)[0]
        assert (held.status, held.attempts) == ("sending", 1)
        receiver.release.set()

        second = _start_alerts_run(database_url, rules, log)
        delivered = _wait_status(engine, "delivered", 60)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        receiver.close()
    assert delivered.attempts == 2
    assert len(receiver.requests) == 2
    assert {key for key, _, _ in receiver.requests} == {delivered.idempotency_key}
    assert receiver.processed == [
        delivered.idempotency_key
    ]  # processed once: the retry was a duplicate
    for key, body, headers in receiver.requests:
        assert verify(
            SECRET, headers["X-Finsent-Timestamp"], key, body, headers["X-Finsent-Signature"]
        )
        assert json.loads(body)["alerts"][0]["labels"]["key"] == "topic:Earnings"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar_one() == 1


@pytest.mark.parametrize("status", [503])
def test_503_without_retry_after_uses_backoff(
    engine, database_url, http_receiver, status: int
) -> None:
    settings = alert_settings(database_url, webhook_url=http_receiver.url)
    ruleset = _fire(engine, settings)
    http_receiver.respond_with(status)
    _drain(Dispatcher(engine, settings, ruleset), engine)
    (delivery,) = _deliveries(engine)
    assert (delivery.status, delivery.attempts) == ("delivered", 2)


def test_the_readme_verification_snippet_accepts_our_requests(
    engine, database_url, http_receiver
) -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.S)
    assert snippet, "README lost its webhook verification snippet"
    namespace: dict = {}
    exec(snippet.group(1), namespace)
    settings = alert_settings(database_url, webhook_url=http_receiver.url)
    _drain(Dispatcher(engine, settings, _fire(engine, settings)), engine)
    (request,) = http_receiver.requests
    assert namespace["verify_finsent"](SECRET, request.headers, request.body)
    assert not namespace["verify_finsent"](SECRET, request.headers, request.body + b" ")


def test_several_dispatchers_at_once_send_each_delivery_once(
    engine, database_url, http_receiver
) -> None:
    keys = [f"topic:K{i}" for i in range(12)]
    for key in keys:
        insert_points(engine, key, surge_stream(T0))
    settings = alert_settings(database_url, webhook_url=http_receiver.url)
    ruleset = surge_rules(notifiers=("webhook",), extra={"for": "0s"})
    assert LiveEvaluator(engine, ruleset, settings).evaluate(
        T0 + timedelta(minutes=80)
    ).fired == len(keys)
    http_receiver.respond_with(
        *([500] * 6)
    )  # some first attempts fail and are retried by whoever is free
    errors: list[BaseException] = []

    def dispatch() -> None:
        try:
            _drain(Dispatcher(engine, settings, ruleset), engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=dispatch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert all(d.status == "delivered" for d in _deliveries(engine))
    ok_keys = [r.headers["Idempotency-Key"] for r in http_receiver.requests]
    assert len(ok_keys) == len(keys) + 6
    assert len(set(ok_keys)) == len(keys)
