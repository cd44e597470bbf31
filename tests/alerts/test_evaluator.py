"""Window figures computed in PostgreSQL, in event time, per rule kind and selector."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.evaluator import headlines, observe
from alerts.rules import parse_rules
from tests.alerts.conftest import T0, Point, insert_points


def _rule(**fields: object):
    base = {"name": "r", "window": "30m", "notifiers": ["email"]}
    base.update(fields)
    return parse_rules({"rules": [base]}).rules[0]


@pytest.fixture
def stream(engine):
    # topic:Earnings: 6 documents in the 30 minutes before T0+60m, 4 bearish; one older
    # bearish document outside the window and one *after* the instant (future in event time)
    at = T0 + timedelta(minutes=60)
    insert_points(
        engine,
        "topic:Earnings",
        [
            Point(at - timedelta(minutes=45), "bearish"),
            *[
                Point(at - timedelta(minutes=m), s, surge=float(m))
                for m, s in [
                    (25, "bearish"),
                    (20, "bearish"),
                    (15, "neutral"),
                    (10, "bearish"),
                    (5, "bullish"),
                    (1, "bearish"),
                ]
            ],
            Point(at + timedelta(minutes=1), "bearish", surge=99.0),
        ],
    )
    insert_points(
        engine, "topic:Energy / Oil", [Point(at - timedelta(minutes=m), "bearish") for m in (3, 2)]
    )
    insert_points(
        engine,
        "entity:ACME",
        [Point(at - timedelta(minutes=m), "neutral", surge=0.1) for m in (3, 2, 1)],
    )
    return engine, at


def test_threshold_figures_use_event_time_and_ignore_the_future(stream) -> None:
    engine, at = stream
    rule = _rule(
        kind="threshold",
        metric="negative_share",
        value=0.5,
        select={"key_kind": "topic", "min_volume": 3},
    )
    with engine.connect() as conn:
        obs = {o.key: o for o in observe(conn, rule, at)}
    earnings = obs["topic:Earnings"]
    assert earnings.figures["documents"] == 6 and earnings.figures["negative"] == 4
    assert earnings.value == pytest.approx(4 / 6, abs=1e-6) and earnings.breach
    assert earnings.figures["window_end"] == at.isoformat()
    oil = obs["topic:Energy / Oil"]  # 100% bearish but under min_volume: no verdict
    assert oil.figures["documents"] == 2 and not oil.breach and oil.calm
    assert "entity:ACME" not in obs


def test_negative_count_and_mean_sentiment(stream) -> None:
    engine, at = stream
    count = _rule(
        kind="threshold", metric="negative_count", op=">=", value=4, select={"names": ["earnings"]}
    )
    mean = _rule(
        kind="threshold",
        metric="mean_sentiment",
        op="<",
        value=-0.3,
        select={"names": ["EARNINGS"]},
    )
    with engine.connect() as conn:
        (c,) = observe(conn, count, at)
        (m,) = observe(conn, mean, at)
    assert c.value == 4 and c.breach
    # bearish: 0.02 - 0.9, neutral: 0.1 - 0.1, bullish: 0.9 - 0.05
    expected = (4 * (0.02 - 0.9) + 0 + (0.9 - 0.05)) / 6
    assert m.value == pytest.approx(expected, abs=1e-5) and m.breach


def test_spike_compares_with_the_reference_window_before(engine) -> None:
    at = T0 + timedelta(hours=2)
    # reference (the hour before the last 30m): 2 bearish; current 30m: 4 bearish
    points = [Point(at - timedelta(minutes=m), "bearish") for m in (80, 50)]
    points += [Point(at - timedelta(minutes=m), "bearish") for m in (25, 20, 10, 5)]
    points += [Point(at - timedelta(minutes=m), "neutral") for m in (70, 40, 15)]
    insert_points(engine, "entity:ACME", points)
    rule = _rule(
        kind="spike", metric="negative_count", reference_window="1h", ratio=3, min_reference_count=2
    )
    with engine.connect() as conn:
        (obs,) = observe(conn, rule, at)
    f = obs.figures
    assert (f["reference_negative"], f["negative"], f["reference_documents"], f["documents"]) == (
        2,
        4,
        4,
        5,
    )
    assert (
        f["current_rate"] == 8.0 and f["reference_rate"] == 2.0 and obs.value == 4.0 and obs.breach
    )
    strict = _rule(
        kind="spike", metric="negative_count", reference_window="1h", ratio=3, min_reference_count=3
    )
    with engine.connect() as conn:
        (obs,) = observe(conn, strict, at)
    assert not obs.breach  # too few reference events to judge


def test_memory_surge_reads_the_newest_point_in_the_window(stream) -> None:
    engine, at = stream
    rule = _rule(kind="memory_surge", value=0.5, select={"globs": ["earn*", "AC*"]})
    with engine.connect() as conn:
        obs = {o.key: o for o in observe(conn, rule, at)}
    assert set(obs) == {"topic:Earnings", "entity:ACME"}
    assert (
        obs["topic:Earnings"].value == 1.0 and obs["topic:Earnings"].breach
    )  # the point 1 min before, not 99
    assert obs["entity:ACME"].value == pytest.approx(0.1) and not obs["entity:ACME"].breach


def test_keys_with_open_alerts_are_observed_even_without_data(stream) -> None:
    engine, at = stream
    rule = _rule(kind="threshold", value=0.5, select={"key_kind": "topic"})
    with engine.connect() as conn:
        obs = {o.key: o for o in observe(conn, rule, at, open_keys={"topic:Gone"})}
    assert obs["topic:Gone"].figures["documents"] == 0 and obs["topic:Gone"].calm


def test_headlines_are_the_most_negative_in_the_window_with_links(stream) -> None:
    engine, at = stream
    with engine.connect() as conn:
        found = headlines(conn, "topic:Earnings", at - timedelta(minutes=30), at, limit=3)
    assert len(found) == 3
    assert all(
        h["p_bearish"] == pytest.approx(0.9) and h["url"].startswith("https://news.example/")
        for h in found
    )
    assert found[0]["published_at"] == (at - timedelta(minutes=1)).isoformat()


_SENTIMENTS = st.sampled_from(["bearish", "neutral", "bullish"])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    points=st.lists(st.tuples(st.integers(0, 180), _SENTIMENTS), max_size=40),
    window_min=st.integers(1, 90),
    ref_min=st.integers(1, 90),
    at_min=st.integers(0, 200),
)
def test_sql_windows_match_a_python_reference(engine, points, window_min, ref_min, at_min) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM trend_points"))
        conn.execute(sa.text("DELETE FROM documents"))  # predictions cascade
    insert_points(engine, "topic:P", [Point(T0 + timedelta(minutes=m), s) for m, s in points])
    at = T0 + timedelta(minutes=at_min)
    threshold = _rule(kind="threshold", value=0.5, window=f"{window_min}m")
    spike = _rule(kind="spike", ratio=2, window=f"{window_min}m", reference_window=f"{ref_min}m")
    with engine.connect() as conn:
        t_obs = {o.key: o.figures for o in observe(conn, threshold, at)}
        s_obs = {o.key: o.figures for o in observe(conn, spike, at)}

    def count(lo: int, hi: int, bearish_only: bool = False) -> int:  # minutes in (lo, hi]
        return sum(1 for m, s in points if lo < m <= hi and (s == "bearish" or not bearish_only))

    docs, neg = count(at_min - window_min, at_min), count(at_min - window_min, at_min, True)
    if docs == 0:
        assert "topic:P" not in t_obs
    else:
        assert (t_obs["topic:P"]["documents"], t_obs["topic:P"]["negative"]) == (docs, neg)
    lo_ref = at_min - window_min - ref_min
    ref_docs, ref_neg = count(lo_ref, at_min - window_min), count(lo_ref, at_min - window_min, True)
    if docs + ref_docs:
        f = s_obs["topic:P"]
        assert (
            f["documents"],
            f["negative"],
            f["reference_documents"],
            f["reference_negative"],
        ) == (docs, neg, ref_docs, ref_neg)


def test_memory_surge_with_score_volume_reads_the_volume_column(stream) -> None:
    """``score: volume`` thresholds ``volume_surge_score``; NULL (a cell from before the
    split) never breaches, and the default negativity rule is untouched by it."""
    engine, at = stream
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE trend_points SET volume_surge_score = -surge_score"))
        conn.execute(
            sa.text("UPDATE trend_points SET volume_surge_score = NULL WHERE key = 'entity:ACME'")
        )
    volume = _rule(
        kind="memory_surge", score="volume", op="<", value=-0.5, select={"globs": ["earn*", "AC*"]}
    )
    negativity = _rule(kind="memory_surge", value=0.5, select={"globs": ["earn*", "AC*"]})
    with engine.connect() as conn:
        vol = {o.key: o for o in observe(conn, volume, at)}
        neg = {o.key: o for o in observe(conn, negativity, at)}
    assert vol["topic:Earnings"].value == -1.0 and vol["topic:Earnings"].breach
    assert vol["entity:ACME"].value is None and not vol["entity:ACME"].breach
    assert neg["topic:Earnings"].value == 1.0 and neg["topic:Earnings"].breach
