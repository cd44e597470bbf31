"""Helpers for alert tests: build a key's stream by inserting documents, predictions and
trend points directly (no model, no Kafka), and settings pointing at the test SMTP and
HTTP servers with fast retries."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from alerts.rules import RuleSet, parse_rules
from pipeline.settings import DeliveryPolicy, Settings, SmtpSettings, WebhookSettings, load_settings

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
SECRET = "s3cret-shared-with-the-receiver"
_ids = itertools.count()


@dataclass(frozen=True)
class Point:
    """One document on one key: when it was published, its sentiment, the memory's
    surge score after it; its time precision (a ``day`` document's ``at`` is the start of
    its day) and its story (documents sharing a ``story`` label are copies of one story:
    ``documents.story_id`` = ``story:<label>``; None: no story id)."""

    at: datetime
    sentiment: str = "neutral"
    surge: float = 0.0
    p_bearish: float | None = None
    precision: str = "second"
    story: str | None = None


def insert_points(engine: sa.engine.Engine, key: str, points: Iterable[Point]) -> int:
    """Insert the documents, predictions and trend points of ``points`` on ``key``."""
    rows_doc, rows_pred, rows_tp = [], [], []
    with engine.connect() as conn:
        counts = conn.execute(
            sa.text(
                "SELECT coalesce(max(doc_count), 0), coalesce(max(negative_count), 0) FROM trend_points WHERE key = :k"
            ),
            {"k": key},
        ).one()
    docs, negs = int(counts[0]), int(counts[1])
    for p in points:
        n = next(_ids)
        doc_id = f"test:{key}:{n}"
        pb = (
            p.p_bearish
            if p.p_bearish is not None
            else {"bearish": 0.9, "neutral": 0.1, "bullish": 0.05}[p.sentiment]
        )
        pbull = {"bearish": 0.02, "neutral": 0.1, "bullish": 0.9}[p.sentiment]
        docs += 1
        negs += p.sentiment == "bearish"
        name = key.split(":", 1)[1]
        rows_doc.append(
            {
                "id": doc_id,
                "published_at": p.at,
                "title": f"{name} headline {n} ({p.sentiment})",
                "text": f"{name} story {n}",
                "url": f"https://news.example/{n}",
                "story": None if p.story is None else f"story:{p.story}",
                "precision": p.precision,
            }
        )
        rows_pred.append(
            {
                "id": doc_id,
                "sentiment": p.sentiment,
                "pb": pb,
                "pn": max(0.0, 1 - pb - pbull),
                "pbull": pbull,
                "topic": name,
            }
        )
        rows_tp.append(
            {
                "key": key,
                "at": p.at,
                "id": doc_id,
                "sentiment": p.sentiment,
                "pb": pb,
                "surge": p.surge,
                "docs": docs,
                "negs": negs,
                "precision": p.precision,
            }
        )
    with engine.begin() as conn:
        if rows_doc:
            conn.execute(
                sa.text(
                    "INSERT INTO documents (id, source, published_at, title, text, url, story_id, "
                    "time_precision) VALUES (:id, 'test', :published_at, :title, :text, :url, :story, "
                    ":precision)"
                ),
                rows_doc,
            )
            conn.execute(
                sa.text(
                    "INSERT INTO predictions (document_id, model_version, topic_id, topic, topic_confidence, sentiment, "
                    "p_bearish, p_neutral, p_bullish) VALUES (:id, 'test', 5, :topic, 0.9, :sentiment, :pb, :pn, :pbull)"
                ),
                rows_pred,
            )
            conn.execute(
                sa.text(
                    "INSERT INTO trend_points (key, event_at, document_id, sentiment, p_bearish, expected_negative_rate, "
                    "surge_score, doc_count, negative_count, time_precision) "
                    "VALUES (:key, :at, :id, :sentiment, :pb, 0.2, :surge, :docs, :negs, :precision)"
                ),
                rows_tp,
            )
    return len(rows_doc)


def surge_stream(
    start: datetime,
    *,
    calm_min: int = 60,
    surge_min: int = 30,
    after_min: int = 60,
    every_min: int = 2,
) -> list[Point]:
    """A clear negative surge: 10% bearish, then 80% bearish for ``surge_min``, then calm."""
    points = []
    total = calm_min + surge_min + after_min
    for i, minute in enumerate(range(0, total, every_min)):
        in_surge = calm_min <= minute < calm_min + surge_min
        bearish = (i % 10) < (8 if in_surge else 1)
        points.append(
            Point(
                start + timedelta(minutes=minute, seconds=30), "bearish" if bearish else "neutral"
            )
        )
    return points


def surge_rules(
    *, notifiers: tuple[str, ...] = ("email", "webhook"), extra: dict | None = None
) -> RuleSet:
    rule = {
        "name": "negative-share",
        "kind": "threshold",
        "metric": "negative_share",
        "select": {"key_kind": "topic", "min_volume": 5},
        "window": "20m",
        "op": ">",
        "value": 0.6,
        "resolve": {"value": 0.3},
        "for": "4m",
        "severity": "critical",
        "labels": {"team": "risk"},
        "notifiers": list(notifiers),
    }
    rule.update(extra or {})
    return parse_rules({"rules": [rule]}, source="test-rules.yaml")


def alert_settings(
    database_url: str, *, smtp_port: int = 25, webhook_url: str | None = None, **delivery: float
) -> Settings:
    policy = {
        "max_attempts": 5,
        "base_delay_s": 0.05,
        "max_delay_s": 0.2,
        "lease_s": 2.0,
        "poll_interval_s": 0.05,
    }
    policy.update(delivery)
    return load_settings(
        database_url=database_url,
        alert_interval_s=60,
        smtp=SmtpSettings(
            host="127.0.0.1", port=smtp_port, recipients=("risk@example.com",), timeout_s=5
        ),
        webhook=WebhookSettings(url=webhook_url, secret=SECRET, timeout_s=5),
        delivery=DeliveryPolicy(**policy),
    )


def instants(start: datetime, end: datetime, step_s: float = 60) -> list[datetime]:
    out, t = [], start
    while t <= end:
        out.append(t)
        t += timedelta(seconds=step_s)
    return out


@pytest.fixture
def clean_engine(engine: sa.engine.Engine) -> sa.engine.Engine:
    """The emptied session database (alias, for readability)."""
    return engine
