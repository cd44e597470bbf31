"""The delivery outbox (``alert_deliveries``): one row per alert event, channel and target.

Rows are written in the same transaction as the alert transition that causes them, so an
alert that fired always has its notifications queued, and a crash never queues them twice
(``idempotency_key`` is unique). A row moves::

    pending --claim--> sending --ack--> delivered
       ^                  |--retryable failure--> pending (next_attempt_at = backoff)
       |                  |--attempts used up / permanent failure--> dead (last_error)
       +-- lease expired (the dispatcher died mid-send) --+

``claim`` marks rows ``sending`` with a lease (``next_attempt_at = now + lease``) in its own
committed transaction *before* anything is sent, using ``FOR UPDATE SKIP LOCKED`` so
several dispatchers share the work without sending a row twice at once. A dispatcher
killed mid-send leaves the row ``sending``; once the lease expires another (or the
restarted) dispatcher claims it again and resends with the **same** ``Idempotency-Key``,
so a receiver that honours the key sees the notification once. Exactly-once to an
acknowledging receiver therefore needs the receiver to dedupe on that key; without it the
guarantee is at-least-once.

A row whose alert matches an active silence when it is queued or claimed becomes
``silenced``: recorded, never sent. Silences stop notifications, not evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts.evaluator import AnyRule, headlines
from alerts.rules import EmailNotifierConfig, RuleSet, WebhookNotifierConfig, key_name_of
from pipeline.settings import DeliveryPolicy, Settings

log = logging.getLogger(__name__)


class _Keep(dict[str, Any]):
    def __missing__(self, name: str) -> str:
        return "{" + name + "}"


def alert_annotations(
    rule: AnyRule, key: str, value: float | None, figures: dict[str, Any]
) -> dict[str, str]:
    """The alert's annotations: the rule's own (``{key}``, ``{name}``, ``{value}`` and any
    figure may be used as placeholders) plus a generated ``summary``/``description``."""
    shown = "n/a" if value is None else f"{value:.3g}"
    if rule.kind == "spike":
        what = f"{getattr(rule, 'metric', '')} spike ratio"
    else:
        what = getattr(rule, "metric", "surge_score")
    ctx = _Keep(figures, key=key, name=key_name_of(key), value=shown, rule=rule.name)
    out = {
        "summary": f"{rule.kind} {rule.name} on {key}: {what} {shown}",
        "description": rule.description
        or f"{what} over {figures.get('window', '?')} on {figures.get('documents', 0)} documents",
    }
    for name, template in rule.annotations.items():
        try:
            out[name] = template.format_map(ctx)
        except (ValueError, IndexError, AttributeError):
            out[name] = template
    return out


def resolve_target(name: str, ruleset: RuleSet, settings: Settings) -> tuple[str, str, str | None]:
    """(channel, target, error) of a notifier name; error says why it cannot be sent."""
    config = ruleset.notifiers.get(name)
    if isinstance(config, EmailNotifierConfig):
        return "email", ",".join(config.to), None
    if isinstance(config, WebhookNotifierConfig):
        return "webhook", config.url, None
    if name == "email":
        recipients = ",".join(settings.smtp.recipients)
        return (
            "email",
            recipients or "(none)",
            None if recipients else "FINSENT_SMTP__RECIPIENTS is not set",
        )
    if name == "webhook":
        url = settings.webhook.url
        return "webhook", url or "(none)", None if url else "FINSENT_WEBHOOK__URL is not set"
    return "webhook", "(none)", f"notifier {name!r} is not defined in the rules file"


def active_silence(conn: Connection, labels: dict[str, Any]) -> int | None:
    """The id of an active silence whose matchers all equal the alert's labels, if any."""
    return conn.execute(
        sa.text("""
        SELECT id FROM silences
        WHERE starts_at <= now() AND ends_at > now() AND CAST(:labels AS jsonb) @> matchers
        ORDER BY id LIMIT 1"""),
        {"labels": json.dumps(labels)},
    ).scalar()


def idempotency_key(alert_id: int, event: str, at: datetime, notifier: str) -> str:
    basis = f"{alert_id}|{event}|{at.astimezone(UTC).isoformat()}|{notifier}"
    return "finsent-" + hashlib.sha256(basis.encode()).hexdigest()[:32]


def enqueue(
    conn: Connection,
    *,
    alert_id: int,
    event: str,
    rule: AnyRule,
    ruleset: RuleSet,
    settings: Settings,
    at: datetime,
) -> int:
    """Queue one delivery per notifier of ``rule`` for ``event`` of alert ``alert_id``
    (inside the caller's transaction). Returns how many rows were queued to be sent."""
    alert = conn.execute(sa.text("SELECT * FROM alerts WHERE id = :id"), {"id": alert_id}).one()
    window_start = at - rule.window
    payload_alert = {
        "id": alert.id,
        "fingerprint": alert.fingerprint,
        "rule": alert.rule_name,
        "kind": rule.kind,
        "key": alert.key,
        "status": "resolved" if event == "resolved" else "firing",
        "severity": alert.severity,
        "labels": alert.labels,
        "annotations": alert.annotations,
        "group_key": alert.group_key,
        "group_labels": {n: alert.labels.get(n, "") for n in rule.group_by},
        "value": alert.value,
        "figures": alert.figures,
        "starts_at": (alert.fired_at or alert.pending_since).astimezone(UTC).isoformat(),
        "ends_at": alert.resolved_at.astimezone(UTC).isoformat() if alert.resolved_at else None,
    }
    news = headlines(conn, alert.key, window_start, at)
    silence = active_silence(conn, dict(alert.labels))
    queued = 0
    for name in rule.notifiers:
        if name == "log" and name not in ruleset.notifiers:
            _log_notification(event, payload_alert, silence)
            continue
        channel, target, error = resolve_target(name, ruleset, settings)
        payload = {
            "event": event,
            "notifier": name,
            "evaluated_at": at.astimezone(UTC).isoformat(),
            "alert": payload_alert,
            "headlines": news,
        }
        status, last_error = "pending", None
        if silence is not None:
            status, last_error = "silenced", f"silenced by silence {silence}"
        elif error is not None:
            status, last_error = "dead", f"cannot deliver: {error}"
        result = conn.execute(
            sa.text("""
            INSERT INTO alert_deliveries (alert_id, event, channel, target, idempotency_key, payload,
                                          status, last_error)
            VALUES (:alert_id, :event, :channel, :target, :key, CAST(:payload AS jsonb), :status, :error)
            ON CONFLICT (idempotency_key) DO NOTHING"""),
            {
                "alert_id": alert_id,
                "event": event,
                "channel": channel,
                "target": target,
                "key": idempotency_key(alert_id, event, at, name),
                "payload": json.dumps(payload),
                "status": status,
                "error": last_error,
            },
        )
        queued += int(result.rowcount == 1 and status == "pending")
    return queued


def _log_notification(event: str, alert: dict[str, Any], silence: int | None) -> None:
    """The built-in 'log' notifier: one log line, no outbox row (nothing to retry)."""
    if silence is not None:
        log.info(
            "alert %s %s on %s silenced by silence %s", alert["rule"], event, alert["key"], silence
        )
        return
    log.warning(
        "ALERT %s [%s] %s on %s: %s (value %s)",
        event.upper(),
        alert["severity"],
        alert["rule"],
        alert["key"],
        alert["annotations"].get("summary", ""),
        alert["value"],
    )


@dataclass(frozen=True)
class Delivery:
    """A claimed outbox row."""

    id: int
    alert_id: int
    event: str
    channel: str
    target: str
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int


def claim(engine: Engine, *, limit: int, lease_s: float) -> list[Delivery]:
    """Claim due rows (pending and due, or 'sending' with an expired lease) and commit them
    as 'sending' before anything is sent. Rows whose alert is now silenced are marked
    'silenced' instead of being returned."""
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text("""
            SELECT d.id, d.alert_id, d.event, d.channel, d.target, d.idempotency_key, d.payload,
                   d.attempts, a.labels
            FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
            WHERE d.status IN ('pending', 'sending') AND d.next_attempt_at <= now()
            ORDER BY d.next_attempt_at, d.id
            LIMIT :limit
            FOR UPDATE OF d SKIP LOCKED"""),
            {"limit": limit},
        ).all()
        claimed = []
        for row in rows:
            silence = active_silence(conn, dict(row.labels))
            if silence is not None:
                conn.execute(
                    sa.text(
                        "UPDATE alert_deliveries SET status = 'silenced', last_error = :e WHERE id = :id"
                    ),
                    {"id": row.id, "e": f"silenced by silence {silence}"},
                )
                continue
            conn.execute(
                sa.text("""
                UPDATE alert_deliveries
                SET status = 'sending', attempts = attempts + 1,
                    next_attempt_at = now() + make_interval(secs => :lease)
                WHERE id = :id"""),
                {"id": row.id, "lease": lease_s},
            )
            claimed.append(
                Delivery(
                    row.id,
                    row.alert_id,
                    row.event,
                    row.channel,
                    row.target,
                    row.idempotency_key,
                    dict(row.payload),
                    row.attempts + 1,
                )
            )
    return claimed


def mark_delivered(engine: Engine, delivery_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("""
            UPDATE alert_deliveries SET status = 'delivered', delivered_at = now(), last_error = NULL
            WHERE id = :id AND status = 'sending'"""),
            {"id": delivery_id},
        )


def mark_failed(
    engine: Engine, delivery: Delivery, error: str, *, delay_s: float | None, dead: bool
) -> None:
    """A failed attempt: back to pending after ``delay_s``, or dead with ``error``."""
    with engine.begin() as conn:
        if dead:
            conn.execute(
                sa.text("""
                UPDATE alert_deliveries SET status = 'dead', last_error = :e
                WHERE id = :id AND status = 'sending'"""),
                {"id": delivery.id, "e": error[:2000]},
            )
        else:
            conn.execute(
                sa.text("""
                UPDATE alert_deliveries SET status = 'pending', last_error = :e,
                       next_attempt_at = now() + make_interval(secs => :delay)
                WHERE id = :id AND status = 'sending'"""),
                {"id": delivery.id, "e": error[:2000], "delay": delay_s or 0.0},
            )


def backoff_s(attempts: int, policy: DeliveryPolicy, rng: random.Random | None = None) -> float:
    """Exponential backoff with "equal jitter": half the exponential delay fixed, half
    random, so retries of many deliveries spread out but never come back too soon."""
    delay = min(policy.max_delay_s, policy.base_delay_s * (2 ** max(0, attempts - 1)))
    jitter = (rng or random.Random()).uniform(0, delay / 2)
    return delay / 2 + jitter
