"""The console's queries on a real database: the ranking weighs evidence against each key's
own recent past, and the per-key series, headlines and alert episodes are what they say."""

from __future__ import annotations

import doctest
import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from alerts import silences
from finsent.console import pages, queries
from pipeline.labels import store_label
from tests.console import MODEL, add_documents

NOW = datetime(2026, 3, 3, 18, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _quiet(engine: sa.engine.Engine, key: str, documents: int, bearish: int) -> None:
    """``documents`` over the 30 days before the window, ``bearish`` of them bearish."""
    sentiments = ["bearish"] * bearish + ["neutral"] * (documents - bearish)
    step = timedelta(days=28) / documents
    add_documents(engine, key, NOW - timedelta(days=29), sentiments, step=step, prefix=f"{key}-q")


def test_doctests_of_the_maths_and_helpers_hold() -> None:
    for module in (queries, pages):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0


def test_fresh_turn_outranks_an_old_surge_the_memory_still_remembers(
    engine: sa.engine.Engine,
) -> None:
    # AAA: quiet (2 of 20 bearish) for a month, then 7 of 7 bearish in the last two hours.
    _quiet(engine, "entity:AAA", 20, 2)
    add_documents(engine, "entity:AAA", NOW - 2 * HOUR, ["bearish"] * 7, surge_score=0.4)
    # BBB: a big surge nine months ago (200 bearish), quiet since, memory still high.
    add_documents(
        engine, "entity:BBB", NOW - timedelta(days=270), ["bearish"] * 200, surge_score=6.0
    )
    _quiet(engine, "entity:BBB", 20, 2)
    add_documents(engine, "entity:BBB", NOW - 3 * HOUR, ["neutral"] * 3, surge_score=3.0)

    ranking = queries.top_keys(engine, since=timedelta(hours=6), now=NOW)

    keys = [k.key for k in ranking.keys]
    assert keys.index("entity:AAA") < keys.index("entity:BBB")
    aaa = ranking.keys[keys.index("entity:AAA")]
    bbb = ranking.keys[keys.index("entity:BBB")]
    assert (aaa.documents, aaa.bearish) == (7, 7)
    assert (aaa.baseline_documents, aaa.baseline_bearish) == (20, 2)
    assert aaa.evidence > 3 > bbb.evidence
    assert bbb.surge_score == 3.0 > aaa.surge_score  # type: ignore[operator]
    # the nine-month-old surge is outside the baseline, not part of BBB's normal
    assert bbb.baseline_documents == 20
    assert [h.sentiment for h in aaa.headlines] == ["bearish"] * 3
    assert aaa.headlines[0].model_version == MODEL


def test_sparse_key_does_not_outrank_strong_evidence_on_a_busy_one(
    engine: sa.engine.Engine,
) -> None:
    # CCC: 2 of 2 bearish, 3 quiet documents before: 100 % but hardly any evidence.
    _quiet(engine, "entity:CCC", 3, 0)
    add_documents(engine, "entity:CCC", NOW - HOUR, ["bearish"] * 2)
    # DDD: 40 of 50 bearish against 20 of 200 (10 %).
    _quiet(engine, "entity:DDD", 200, 20)
    add_documents(
        engine,
        "entity:DDD",
        NOW - 5 * HOUR,
        ["bearish"] * 40 + ["neutral"] * 10,
        step=timedelta(minutes=5),
    )

    ranking = queries.top_keys(engine, since=timedelta(hours=6), now=NOW)

    assert [k.key for k in ranking.keys[:2]] == ["entity:DDD", "entity:CCC"]
    ccc, ddd = ranking.keys[1], ranking.keys[0]
    assert ccc.negative_share == 1.0 > ddd.negative_share == 0.8
    assert ddd.evidence > 20 and ccc.evidence < 2
    assert abs(ddd.expected_share - 0.1) < 0.01
    assert ddd.p_value < 1e-20


def test_kind_filter_limit_and_json(engine: sa.engine.Engine) -> None:
    add_documents(engine, "entity:EEE", NOW - HOUR, ["bearish", "neutral"])
    add_documents(engine, "topic:Earnings", NOW - HOUR, ["bearish", "bearish", "neutral"])
    assert [k.key for k in queries.top_keys(engine, kind="topic", now=NOW).keys] == [
        "topic:Earnings"
    ]
    assert len(queries.top_keys(engine, now=NOW, limit=1).keys) == 1
    payload = json.loads(json.dumps(queries.top_keys(engine, now=NOW).to_json()))
    assert payload["now"] == NOW.isoformat()
    assert {k["key"] for k in payload["keys"]} == {"entity:EEE", "topic:Earnings"}
    assert all("evidence" in k and "negative_share" in k for k in payload["keys"])


def test_now_is_injectable_and_latest_is_the_newest_document(engine: sa.engine.Engine) -> None:
    add_documents(engine, "entity:FFF", NOW - 2 * HOUR, ["bearish"] * 3, step=HOUR)
    assert queries.resolve_now(engine, "latest") == NOW
    assert queries.resolve_now(engine, "2026-03-03T12:00Z") == NOW - 6 * HOUR
    # an hour before the last document: it is in the future, not counted
    earlier = queries.top_keys(
        engine, since=timedelta(hours=6), now=NOW - 30 * timedelta(minutes=1)
    )
    assert earlier.keys[0].documents == 2
    assert queries.top_keys(engine, now=NOW + timedelta(days=2)).keys == ()


def test_key_series_counts_per_bucket_with_empty_buckets(engine: sa.engine.Engine) -> None:
    add_documents(
        engine, "entity:GGG", NOW - 5 * HOUR, ["bearish", "neutral"], step=timedelta(minutes=1)
    )
    add_documents(
        engine, "entity:GGG", NOW - HOUR + timedelta(minutes=5), ["bearish"] * 3, surge_score=2.5
    )
    series = queries.key_series(engine, "entity:GGG", timedelta(hours=6), HOUR, now=NOW)
    by_start = {p.start: p for p in series.points}
    assert len(series.points) == 7  # 12:00 … 18:00, aligned to the hour
    first = by_start[NOW - 5 * HOUR]
    assert (first.documents, first.bearish, first.negative_share) == (2, 1, 0.5)
    assert by_start[NOW - 3 * HOUR].documents == 0
    assert by_start[NOW - 3 * HOUR].negative_share is None
    last = by_start[NOW - HOUR]
    assert (last.documents, last.negative_share, last.surge_score) == (3, 1.0, 2.5)


def test_key_headlines_carry_prediction_model_and_newest_label(engine: sa.engine.Engine) -> None:
    ids = add_documents(engine, "entity:HHH", NOW - HOUR, ["bearish", "neutral"])
    with engine.begin() as conn:
        store_label(conn, ids[0], sentiment="neutral", labelled_by="tester")
    lines = queries.key_headlines(engine, "entity:HHH", 10, now=NOW)
    assert [h.document_id for h in lines] == [ids[1], ids[0]]  # newest first
    assert lines[1].sentiment == "bearish" and lines[1].p_bearish > 0.8
    assert lines[1].model_version == MODEL and lines[1].label == "neutral"
    assert lines[0].label is None


def test_alert_episodes_by_state_with_silences(engine: sa.engine.Engine) -> None:
    add_documents(engine, "entity:III", NOW - HOUR, ["bearish"])
    with engine.begin() as conn:
        for fp, state, fired, resolved in (
            ("a", "firing", NOW - HOUR, None),
            ("b", "pending", None, None),
            ("c", "resolved", NOW - 10 * HOUR, NOW - 8 * HOUR),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO alerts (fingerprint, rule_name, key, labels, state, value, pending_since, "
                    "fired_at, resolved_at, annotations) VALUES (:fp, 'neg-share', 'entity:III', "
                    '\'{"key_kind": "entity"}\', :state, 0.9, :pending, :fired, :resolved, '
                    '\'{"summary": "negative share on III"}\')'
                ),
                {
                    "fp": fp,
                    "state": state,
                    "pending": (fired or NOW) - timedelta(minutes=15),
                    "fired": fired,
                    "resolved": resolved,
                },
            )
    silences.add(engine, {"key": "entity:III"}, timedelta(hours=2), comment="earnings")
    board = queries.alert_episodes(engine)
    assert [len(board.firing), len(board.pending), len(board.resolved)] == [1, 1, 1]
    assert board.firing[0].silenced and board.firing[0].summary == "negative share on III"
    assert len(board.silences) == 1 and board.silences[0].comment == "earnings"
    assert queries.alert_episodes(engine, "entity:ZZZ").all == ()
    ranking = queries.top_keys(engine, now=NOW)
    assert {a.state for a in ranking.keys[0].open_alerts} == {"firing", "pending"}


def test_a_topic_turning_because_of_one_name_is_listed_under_that_name(
    engine: sa.engine.Engine,
) -> None:
    # The topic's quiet baseline makes its evidence the larger, but every bearish document
    # of it is about JJJ: the desk reads the name first, the topic as its echo.
    _quiet(engine, "topic:Product News", 60, 0)
    _quiet(engine, "entity:JJJ", 20, 4)
    ids = add_documents(engine, "entity:JJJ", NOW - 4 * HOUR, ["bearish"] * 12 + ["neutral"] * 3)
    add_documents(engine, "entity:KKK", NOW - 4 * HOUR, ["bearish"] * 4 + ["neutral"] * 4)
    with engine.begin() as conn:  # the same documents on the topic's memory
        conn.execute(
            sa.text(
                "INSERT INTO trend_points (key, event_at, document_id, sentiment, p_bearish, "
                "expected_negative_rate, surge_score, doc_count, negative_count) "
                "SELECT 'topic:Product News', event_at, document_id, sentiment, p_bearish, 0.1, 0, 1, 0 "
                "FROM trend_points WHERE key = 'entity:JJJ' AND document_id = ANY(:ids)"
            ),
            {"ids": ids},
        )
    ranking = queries.top_keys(engine, since=timedelta(hours=6), now=NOW)
    keys = [k.key for k in ranking.keys]
    topic = ranking.keys[keys.index("topic:Product News")]
    jjj = ranking.keys[keys.index("entity:JJJ")]
    assert topic.evidence > jjj.evidence >= queries.MIN_DRIVER_EVIDENCE
    assert (topic.driver, topic.driver_bearish) == ("entity:JJJ", 12)
    assert keys[:2] == ["entity:JJJ", "topic:Product News"]
