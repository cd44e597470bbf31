"""End to end over real PostgreSQL, SMTP (aiosmtpd) and HTTP: a negative surge fires one
alert with one e-mail and one signed webhook, resolves when it ends; flapping inside the
hysteresis band or the cooldown does not re-fire; two evaluators make one alert; silences
stop notifications, not evaluation; the service runs as a Role on a real scheduler."""

from __future__ import annotations

import email
import json
import threading
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from alerts import silences
from alerts.dispatcher import Dispatcher
from alerts.lifecycle import LiveEvaluator
from alerts.notifiers.webhook import verify
from alerts.rules import parse_rules
from alerts.service import AlertService
from pipeline import db
from tests.alerts.conftest import (
    SECRET,
    T0,
    Point,
    alert_settings,
    insert_points,
    instants,
    surge_rules,
    surge_stream,
)


def _run_live(engine, ruleset, settings, times, *, dispatch: bool = True) -> None:
    evaluator = LiveEvaluator(engine, ruleset, settings)
    dispatcher = Dispatcher(engine, settings, ruleset)
    for at in times:
        evaluator.evaluate(at)
        if dispatch:
            dispatcher.dispatch_once()


def _alerts(engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM alerts ORDER BY id")).all()


def _deliveries(engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM alert_deliveries ORDER BY id")).all()


def test_negative_surge_fires_one_alert_one_email_one_signed_webhook_then_resolves(
    engine, database_url, smtp_server, http_receiver
) -> None:
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    insert_points(
        engine, "topic:Dividend", [Point(T0 + timedelta(minutes=m)) for m in range(0, 150, 3)]
    )
    settings = alert_settings(
        database_url, smtp_port=smtp_server.port, webhook_url=http_receiver.url + "/hook"
    )
    ruleset = surge_rules()

    _run_live(engine, ruleset, settings, instants(T0, T0 + timedelta(minutes=150)))

    alerts = _alerts(engine)
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert.key, alert.state, alert.severity) == ("topic:Earnings", "resolved", "critical")
    assert (
        T0 + timedelta(minutes=60) < alert.fired_at < T0 + timedelta(minutes=90) < alert.resolved_at
    )
    assert alert.fired_at - alert.pending_since >= timedelta(minutes=4)
    assert alert.labels["team"] == "risk"

    deliveries = _deliveries(engine)
    assert sorted((d.event, d.channel, d.status) for d in deliveries) == [
        ("firing", "email", "delivered"),
        ("firing", "webhook", "delivered"),
        ("resolved", "email", "delivered"),
        ("resolved", "webhook", "delivered"),
    ]

    messages = smtp_server.wait_for(2)
    assert len(messages) == 2
    firing_mail = email.message_from_string(str(messages[0]["data"]))
    assert "FIRING" in firing_mail["Subject"] and "topic:Earnings" in firing_mail["Subject"]
    assert messages[0]["to"] == ["risk@example.com"]
    parts = {
        p.get_content_type(): p.get_payload(decode=True).decode()
        for p in firing_mail.walk()
        if p.get_content_type().startswith("text/")
    }
    assert (
        "negative_share" in parts["text/plain"] and "https://news.example/" in parts["text/plain"]
    )
    assert (
        '<a href="https://news.example/' in parts["text/html"] and "(bearish)" in parts["text/html"]
    )
    assert "RESOLVED" in email.message_from_string(str(messages[1]["data"]))["Subject"]

    requests = http_receiver.wait_for(2)
    assert len(requests) == 2
    bodies = []
    for req in requests:
        assert req.path == "/hook"
        headers = {k.lower(): v for k, v in req.headers.items()}
        assert verify(
            SECRET,
            headers["x-finsent-timestamp"],
            headers["idempotency-key"],
            req.body,
            headers["x-finsent-signature"],
        )
        assert not verify(
            "wrong-secret",
            headers["x-finsent-timestamp"],
            headers["idempotency-key"],
            req.body,
            headers["x-finsent-signature"],
        )
        assert headers["idempotency-key"].startswith("finsent-")
        bodies.append(json.loads(req.body))
    assert [b["status"] for b in bodies] == ["firing", "resolved"]
    first = bodies[0]
    assert first["groupKey"] == '{rule="negative-share"}'
    item = first["alerts"][0]
    assert item["fingerprint"] == alert.fingerprint and item["labels"]["key"] == "topic:Earnings"
    assert (
        item["endsAt"] == "0001-01-01T00:00:00Z"
        and bodies[1]["alerts"][0]["endsAt"] != item["endsAt"]
    )
    assert item["figures"]["negative_share"] > 0.6 and item["figures"]["documents"] >= 5
    assert item["headlines"] and all(
        h["url"].startswith("https://news.example/") for h in item["headlines"]
    )
    assert item["headlines"][0]["p_bearish"] >= item["headlines"][-1]["p_bearish"]


def test_re_evaluating_the_same_instants_changes_nothing(engine, database_url) -> None:
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    settings = alert_settings(database_url)
    ruleset = surge_rules(notifiers=("webhook",))
    times = instants(T0 + timedelta(minutes=60), T0 + timedelta(minutes=100))
    _run_live(engine, ruleset, settings, times, dispatch=False)
    before = [(a.id, a.state, a.fired_at, a.resolved_at) for a in _alerts(engine)]
    _run_live(engine, ruleset, settings, times, dispatch=False)
    assert [(a.id, a.state, a.fired_at, a.resolved_at) for a in _alerts(engine)] == before
    assert len(_deliveries(engine)) == 1


def _memory_rules(**extra: object) -> object:
    rule = {
        "name": "memory",
        "kind": "memory_surge",
        "window": "10m",
        "value": 3.0,
        "notifiers": ["webhook"],
    }
    rule.update(extra)
    return parse_rules({"rules": [rule]}, source="test")


def test_flapping_inside_the_hysteresis_band_does_not_refire(engine, database_url) -> None:
    # surge score per minute: calm, above 3 (fire), then 2.0 / 3.5 alternating (inside the
    # band between resolve 1.0 and fire 3.0), then calm (resolve)
    scores = [0.2] * 5 + [3.5] * 3 + [2.0, 3.5] * 10 + [0.5] * 5
    insert_points(
        engine,
        "entity:ACME",
        [Point(T0 + timedelta(minutes=i, seconds=10), surge=s) for i, s in enumerate(scores)],
    )
    ruleset = _memory_rules(resolve={"value": 1.0})
    settings = alert_settings(database_url, webhook_url="http://127.0.0.1:9/unused")
    _run_live(
        engine, ruleset, settings, instants(T0, T0 + timedelta(minutes=len(scores))), dispatch=False
    )
    alerts = _alerts(engine)
    assert len(alerts) == 1
    assert alerts[0].fired_at == T0 + timedelta(minutes=6)
    assert alerts[0].resolved_at == T0 + timedelta(minutes=29)
    assert sorted(d.event for d in _deliveries(engine)) == ["firing", "resolved"]


def test_flapping_inside_the_cooldown_does_not_refire(engine, database_url) -> None:
    # no band: 3.5 / 0.5 alternating every minute; cooldown 15m allows one re-fire in 30m
    scores = [3.5, 0.5] * 15
    insert_points(
        engine,
        "entity:ACME",
        [Point(T0 + timedelta(minutes=i, seconds=10), surge=s) for i, s in enumerate(scores)],
    )
    ruleset = _memory_rules(cooldown="15m", notify_resolved=False)
    settings = alert_settings(database_url, webhook_url="http://127.0.0.1:9/unused")
    _run_live(engine, ruleset, settings, instants(T0, T0 + timedelta(minutes=30)), dispatch=False)
    fired = [a.fired_at for a in _alerts(engine)]
    assert fired == [T0 + timedelta(minutes=1), T0 + timedelta(minutes=17)]
    assert [d.event for d in _deliveries(engine)] == ["firing", "firing"]


def test_renotify_repeats_while_firing(engine, database_url) -> None:
    insert_points(
        engine,
        "entity:ACME",
        [Point(T0 + timedelta(minutes=i, seconds=10), surge=5.0) for i in range(30)],
    )
    ruleset = _memory_rules(renotify="10m")
    settings = alert_settings(database_url, webhook_url="http://127.0.0.1:9/unused")
    _run_live(engine, ruleset, settings, instants(T0, T0 + timedelta(minutes=25)), dispatch=False)
    assert [d.event for d in _deliveries(engine)] == ["firing", "renotify", "renotify"]


def test_two_evaluators_at_once_make_one_alert(engine, database_url) -> None:
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    settings = alert_settings(database_url, webhook_url="http://127.0.0.1:9/unused")
    ruleset = surge_rules(notifiers=("webhook", "email"), extra={"for": "0s"})
    times = instants(T0 + timedelta(minutes=60), T0 + timedelta(minutes=120))
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def evaluator() -> None:
        eng = db.make_engine(database_url)
        try:
            live = LiveEvaluator(eng, ruleset, settings)
            for at in times:
                barrier.wait(timeout=30)
                live.evaluate(at)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()
        finally:
            eng.dispose()

    threads = [threading.Thread(target=evaluator) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    alerts = _alerts(engine)
    assert len(alerts) == 1 and alerts[0].state == "resolved"
    assert sorted((d.event, d.channel) for d in _deliveries(engine)) == [
        ("firing", "email"),
        ("firing", "webhook"),
        ("resolved", "email"),
        ("resolved", "webhook"),
    ]


def test_silence_stops_notifications_not_evaluation(engine, database_url, http_receiver) -> None:
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    insert_points(engine, "topic:Markets", surge_stream(T0))
    settings = alert_settings(database_url, webhook_url=http_receiver.url)
    ruleset = surge_rules(notifiers=("webhook",))
    silence_id = silences.add(
        engine, {"key": "topic:Earnings", "team": "risk"}, timedelta(hours=2), comment="known story"
    )
    _run_live(engine, ruleset, settings, instants(T0, T0 + timedelta(minutes=150)))
    alerts = {a.key: a for a in _alerts(engine)}
    assert set(alerts) == {"topic:Earnings", "topic:Markets"}
    assert all(a.state == "resolved" and a.fired_at is not None for a in alerts.values())
    by_key = {}
    for d in _deliveries(engine):
        by_key.setdefault(next(k for k, a in alerts.items() if a.id == d.alert_id), []).append(
            d.status
        )
    assert by_key == {
        "topic:Earnings": ["silenced", "silenced"],
        "topic:Markets": ["delivered", "delivered"],
    }
    keys = {json.loads(r.body)["alerts"][0]["labels"]["key"] for r in http_receiver.requests}
    assert keys == {"topic:Markets"}
    assert [s.id for s in silences.list_silences(engine)] == [silence_id]
    assert silences.expire(engine, silence_id) and silences.list_silences(engine) == []
    assert not silences.expire(engine, silence_id)


def test_silence_added_after_queueing_stops_the_pending_delivery(
    engine, database_url, http_receiver
) -> None:
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    settings = alert_settings(database_url, webhook_url=http_receiver.url)
    ruleset = surge_rules(notifiers=("webhook",))
    _run_live(engine, ruleset, settings, instants(T0, T0 + timedelta(minutes=85)), dispatch=False)
    silences.add(engine, {"rule": "negative-share"}, timedelta(minutes=30))
    Dispatcher(engine, settings, ruleset).dispatch_once()
    assert [d.status for d in _deliveries(engine)] == ["silenced"]
    assert http_receiver.requests == []


def test_alert_service_runs_as_a_role_on_its_scheduler(engine, database_url, http_receiver) -> None:
    now = datetime.now(UTC)
    insert_points(
        engine,
        "topic:Earnings",
        [Point(now - timedelta(minutes=m), "bearish") for m in range(1, 11)],
    )
    settings = alert_settings(database_url, webhook_url=http_receiver.url).model_copy(
        update={"alert_interval_s": 0.2}
    )
    service = AlertService(
        settings, ruleset=surge_rules(notifiers=("webhook",), extra={"for": "0s"})
    )
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,))
    thread.start()
    try:
        assert len(http_receiver.wait_for(1, timeout_s=20)) == 1
        assert service.ready()
    finally:
        stop.set()
        thread.join(timeout=20)
    assert not thread.is_alive() and not service.ready()
    assert [(a.key, a.state) for a in _alerts(engine)] == [("topic:Earnings", "firing")]


def test_log_notifier_writes_a_line_and_queues_nothing(engine, database_url, caplog) -> None:
    import logging

    insert_points(engine, "topic:Earnings", surge_stream(T0))
    ruleset = surge_rules(notifiers=("log",))
    with caplog.at_level(logging.WARNING, logger="alerts.outbox"):
        _run_live(
            engine, ruleset, alert_settings(database_url), instants(T0, T0 + timedelta(minutes=150))
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "alerts.outbox"]
    assert len(lines) == 2 and lines[0].startswith(
        "ALERT FIRING [critical] negative-share on topic:Earnings"
    )
    assert lines[1].startswith("ALERT RESOLVED")
    assert _deliveries(engine) == [] and len(_alerts(engine)) == 1


def test_demo_rules_load_without_any_notification_settings() -> None:
    from pathlib import Path

    from alerts.rules import load_rules
    from pipeline.settings import load_settings

    ruleset = load_rules(
        Path(__file__).resolve().parents[2] / "finsent" / "demo" / "rules.yaml", load_settings()
    )
    assert {r.name for r in ruleset.rules} == {"ticker-negative-share", "ticker-negative-spike"}
