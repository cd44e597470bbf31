"""Alembic owns the schema: upgrade creates every table and view, downgrade removes them."""

from __future__ import annotations

import sqlalchemy as sa

from pipeline import db

TABLES = {
    "documents",
    "predictions",
    "key_state",
    "trend_points",
    "applied_documents",
    "alerts",
    "alert_deliveries",
    "silences",
    "labels",
    "model_versions",
    "training_runs",
    "feed_cursors",
}
VIEWS = {"latest_predictions", "topic_sentiment_hourly", "entity_sentiment_hourly", "open_alerts"}


def _schema(url: str) -> tuple[set[str], set[str]]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return set(inspector.get_table_names()), set(inspector.get_view_names())
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_view_and_downgrade_removes_them(
    empty_database_url: str,
) -> None:
    db.upgrade(empty_database_url)
    tables, views = _schema(empty_database_url)
    assert TABLES <= tables
    assert VIEWS <= views
    db.downgrade(empty_database_url, "base")
    tables, views = _schema(empty_database_url)
    assert tables <= {"alembic_version"}
    assert views == set()
    db.upgrade(empty_database_url)  # and back up again: downgrade left nothing behind
    assert TABLES <= _schema(empty_database_url)[0]


def test_timestamps_are_timestamptz(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        naive = (
            conn.execute(
                sa.text(
                    "select table_name || '.' || column_name from information_schema.columns "
                    "where table_schema = 'public' and data_type = 'timestamp without time zone'"
                )
            )
            .scalars()
            .all()
        )
    engine.dispose()
    assert naive == []


def test_views_answer_queries_on_scored_documents(engine: sa.engine.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "insert into documents (id, source, published_at, text, entities) values "
                "('d1', 'test', '2026-01-01T10:15:00Z', 'Boeing falls', '{BA}'),"
                "('d2', 'test', '2026-01-01T10:45:00Z', 'Boeing rises', '{BA}')"
            )
        )
        conn.execute(
            sa.text(
                "insert into predictions (document_id, model_version, topic_id, topic, topic_confidence,"
                " sentiment, p_bearish, p_neutral, p_bullish) values "
                "('d1', 'v1', 19, 'Stock Movement', 0.9, 'bearish', 0.8, 0.1, 0.1),"
                "('d2', 'v1', 19, 'Stock Movement', 0.9, 'bullish', 0.1, 0.1, 0.8)"
            )
        )
        row = conn.execute(sa.text("select * from entity_sentiment_hourly")).one()
        assert (row.entity, row.documents, row.bearish, row.bullish) == ("BA", 2, 1, 1)
        assert float(row.negative_share) == 0.5
        topic_row = conn.execute(sa.text("select * from topic_sentiment_hourly")).one()
        assert topic_row.topic == "Stock Movement" and topic_row.hour.hour == 10


def test_one_open_alert_per_fingerprint_is_enforced(engine: sa.engine.Engine) -> None:
    insert = sa.text(
        "insert into alerts (fingerprint, rule_name, key, state, pending_since) "
        "values ('fp', 'r', 'entity:BA', 'firing', now())"
    )
    with engine.begin() as conn:
        conn.execute(insert)
    with engine.begin() as conn:
        try:
            conn.execute(insert)
        except sa.exc.IntegrityError:
            pass
        else:
            raise AssertionError("a second open episode of one fingerprint was accepted")
