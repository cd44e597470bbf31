"""Tests of the console (finsent/console/) and ``finsent top``, and the helper they share:
:func:`add_documents` writes documents, predictions and trend points straight into the
database, as the scorer and trends workers would have."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

MODEL = "test-v1"


def add_documents(
    engine: Engine,
    key: str,
    start: datetime,
    sentiments: Sequence[str],
    *,
    step: timedelta = timedelta(minutes=10),
    surge_score: float = 0.0,
    prefix: str | None = None,
) -> list[str]:
    """One document per sentiment, ``step`` apart from ``start``, each with a prediction
    and a trend point of ``key`` (surge score ``surge_score``); returns the ids."""
    kind, _, name = key.partition(":")
    prefix = prefix or f"{name.lower().replace(' ', '-')}-{start:%Y%m%d%H%M}"
    rows, preds, points = [], [], []
    for i, sentiment in enumerate(sentiments):
        doc_id = f"{prefix}-{i:04d}"
        at = start + i * step
        p_bearish = {"bearish": 0.9, "neutral": 0.1, "bullish": 0.05}[sentiment]
        rows.append(
            {
                "id": doc_id,
                "published_at": at,
                "text": f"{name} headline {i} ({sentiment})",
                "entities": [name] if kind == "entity" else [],
                "url": f"https://news.example.com/{doc_id}",
            }
        )
        preds.append({"id": doc_id, "s": sentiment, "pb": p_bearish, "topic": name})
        points.append(
            {
                "key": key,
                "at": at,
                "id": doc_id,
                "s": sentiment,
                "pb": p_bearish,
                "surge": surge_score,
                "n": i + 1,
            }
        )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO documents (id, source, published_at, text, entities, url) "
                "VALUES (:id, 'test', :published_at, :text, :entities, :url)"
            ),
            rows,
        )
        conn.execute(
            sa.text(
                "INSERT INTO predictions (document_id, model_version, topic_id, topic, topic_confidence, "
                "sentiment, p_bearish, p_neutral, p_bullish) VALUES (:id, :model, 0, :topic, 0.9, :s, :pb, "
                "(1 - :pb) / 2, (1 - :pb) / 2)"
            ),
            [{**p, "model": MODEL} for p in preds],
        )
        conn.execute(
            sa.text(
                "INSERT INTO trend_points (key, event_at, document_id, sentiment, p_bearish, "
                "expected_negative_rate, surge_score, doc_count, negative_count, order_at, model_version) "
                "VALUES (:key, :at, :id, :s, :pb, 0.2, :surge, :n, 0, :at, :model)"
            ),
            [{**p, "model": MODEL} for p in points],
        )
        conn.execute(
            sa.text("INSERT INTO applied_documents (key, document_id) VALUES (:key, :id)"),
            points,
        )
        last = points[-1]
        conn.execute(
            sa.text(
                "INSERT INTO key_state (key, key_kind, state, last_event_at, doc_count, surge_score, model_version) "
                "VALUES (:key, :kind, '{}', :at, :n, :surge, :model) ON CONFLICT (key) DO UPDATE SET "
                "last_event_at = greatest(key_state.last_event_at, excluded.last_event_at), "
                "surge_score = CASE WHEN excluded.last_event_at >= key_state.last_event_at "
                "THEN excluded.surge_score ELSE key_state.surge_score END"
            ),
            {**last, "kind": kind, "model": MODEL},
        )
    return [r["id"] for r in rows]
