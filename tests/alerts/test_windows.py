"""What a point weighs in a window (``alerts/windows.py``): day-stamped documents spread over
their day, a story repeated by several outlets counted once, and a second-precision stream
without stories counted exactly as before."""

from __future__ import annotations

import doctest
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alerts.windows
from alerts.backtest import run_backtest
from alerts.evaluator import headlines, observe
from alerts.rules import parse_rules
from alerts.windows import UNIT, DocumentCount, units
from tests.alerts.conftest import T0, Point, insert_points

_S = timedelta(seconds=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
D = T0.replace(hour=0) + 3 * DAY  # a day start, three days after the fixtures' T0 day


def _rule(**fields: Any):
    base: dict[str, Any] = {"name": "r", "window": "1h", "notifiers": ["log"]}
    base.update(fields)
    return parse_rules({"rules": [base]}).rules[0]


def _observe(engine, rule, at, open_keys=()) -> dict[str, Any]:
    with engine.connect() as conn:
        return {o.key: o for o in observe(conn, rule, at, open_keys)}


def test_the_weight_helpers_hold_their_examples() -> None:
    assert doctest.testmod(alerts.windows).failed == 0


def test_a_spread_point_weighs_the_share_of_its_span_in_the_window() -> None:
    hour, day = 3_600_000_000, 86_400_000_000
    assert units(0, day, 0, hour) * 24 == UNIT  # one hour of its day
    assert units(0, day, -hour, 0) == 0  # the window ends where the day begins
    assert units(0, day, 23 * hour, 25 * hour) * 24 == UNIT  # the day's last hour only
    assert units(0, hour, -day, day) == UNIT  # the whole span inside
    assert units(5, 0, 4, 5) == UNIT and units(5, 0, 5, 6) == 0  # an instant: (lo, hi]
    # any partition of time into windows shares out exactly one document
    edges = [-hour, 7, 3 * hour + 11, 20 * hour, day + 1, 2 * day]
    assert sum(units(0, day, lo, hi) for lo, hi in zip(edges, edges[1:], strict=False)) == UNIT
    assert str(DocumentCount.of_units(UNIT // 24)) == "0.04" and f"{DocumentCount(3.0)}" == "3"


# --- (a) day-stamped documents are spread over their day -----------------------------------


def _day_burst(engine, key: str, bearish: int, precision: str = "day") -> None:
    insert_points(engine, key, [Point(D, "bearish", precision=precision) for _ in range(bearish)])


def test_an_hourly_threshold_over_a_day_stamped_burst_fires_during_the_day(engine) -> None:
    _day_burst(engine, "entity:DAYCO", 48)  # 48 bearish headlines that only say "day D"
    rule = _rule(
        kind="threshold", metric="negative_count", op=">=", value=2, select={"min_volume": 1}
    )
    assert "entity:DAYCO" not in _observe(engine, rule, D)  # at its first instant: weight 0
    half = _observe(engine, rule, D + HOUR / 2)["entity:DAYCO"]
    assert half.figures["documents"] == 1.0 and not half.breach  # half an hour of 48/24 an hour
    for at in (D + HOUR, D + 12 * HOUR, D + 24 * HOUR):
        obs = _observe(engine, rule, at)["entity:DAYCO"]
        assert obs.figures["negative"] == 2.0 and obs.value == 2.0 and obs.breach, at
    assert "entity:DAYCO" not in _observe(engine, rule, D + 25 * HOUR)
    # the hourly windows of a day (and the half windows at both ends) share out its documents
    total = 0.0
    for k in range(25):
        found = _observe(engine, rule, D + k * HOUR + HOUR / 2).get("entity:DAYCO")
        total += found.figures["documents"] if found else 0.0
    assert total == 48
    # through a backtest: an alert all day long, not an hour at midnight
    ruleset = parse_rules(
        {
            "rules": [
                {
                    "name": "hourly",
                    "kind": "threshold",
                    "metric": "negative_count",
                    "op": ">=",
                    "value": 2,
                    "window": "1h",
                    "notifiers": ["log"],
                }
            ]
        }
    )
    (episode,) = run_backtest(engine, ruleset, D - DAY, D + 2 * DAY, 300).episodes
    assert episode.fired_at == D + HOUR and episode.resolved_at == D + 24 * HOUR + 300 * _S


def _anomaly_history(engine, key: str, precision: str) -> None:
    """Ten quiet days of 24 neutral headlines, then a day of 24 neutral and 96 bearish; a
    day-stamped source gives each the start of its day."""
    points = []
    for day in range(-10, 1):
        at = D + day * DAY
        stamps = [at] * 24 if precision == "day" else [at + k * HOUR for k in range(24)]
        points += [Point(t, "neutral", precision=precision) for t in stamps]
    points += [Point(D, "bearish", precision=precision) for _ in range(96)]
    insert_points(engine, key, points)


ANOMALY_HOURLY = {
    "rules": [
        {
            "name": "hourly-anomaly",
            "kind": "anomaly",
            "select": {"key_kind": "entity"},
            "window": "1h",
            "baseline": "7d",
            "resolve": {"p_value": 0.01},
            "notifiers": ["log"],
        }
    ]
}


def test_an_hourly_anomaly_over_day_stamps_fires_through_the_day_not_at_midnight(engine) -> None:
    _anomaly_history(engine, "entity:DAYCO", "day")
    ruleset = parse_rules(ANOMALY_HOURLY)
    episodes = run_backtest(engine, ruleset, D - DAY, D + 2 * DAY, 300).fired
    (alert,) = episodes
    # 96 bearish over the day is 4 an hour: 3 whole ones after 45 minutes, until the day ends
    assert D + 45 * 60 * _S <= alert.fired_at <= D + HOUR
    assert alert.resolved_at is not None and alert.resolved_at >= D + 23 * HOUR
    f = _observe(engine, ruleset.rules[0], D + 12 * HOUR)["entity:DAYCO"].figures
    assert (f["documents"], f["negative"], f["tested_negative"]) == (5, 4, 4)
    # the 7 days before the window: 13 h of day -7, days -6..-1, and the burst day's first
    # 11 h (spread, it is history by then): 13 + 6 * 24 + 120 * 11 / 24
    assert f["baseline_documents"] == 13 + 144 + 55 and f["baseline_negative"] == 44


def test_the_same_stamps_read_as_instants_fire_at_midnight_only(engine) -> None:
    # what the previous evaluator did with day-stamped documents: all 120 in one hour
    insert_points(
        engine,
        "entity:DAYCO",
        [Point(D + day * DAY, "neutral") for day in range(-10, 1) for _ in range(24)]
        + [Point(D, "bearish") for _ in range(96)],
    )
    (alert,) = run_backtest(engine, parse_rules(ANOMALY_HOURLY), D - DAY, D + 2 * DAY, 300).fired
    assert alert.fired_at == D and alert.resolved_at is not None
    assert alert.resolved_at <= D + HOUR


def test_a_count_test_never_fires_on_a_fraction_of_a_document(engine) -> None:
    # 71 bearish day-stamped headlines: 2.96 an hour, 2 whole ones for the test
    insert_points(
        engine,
        "entity:QUIET",
        [Point(D - k * DAY, "neutral", precision="day") for k in range(1, 9)],
    )
    _day_burst(engine, "entity:QUIET", 71)
    rule = _rule(
        kind="anomaly", select={"key_kind": "entity"}, baseline="7d", p_value=0.5, min_share_lift=1
    )
    obs = _observe(engine, rule, D + 12 * HOUR)["entity:QUIET"]
    assert obs.figures["negative"] == 2.96 and obs.figures["tested_negative"] == 2
    assert obs.figures["observed"] == 2 and not obs.breach  # min_count 3 counts whole ones
    _day_burst(engine, "entity:QUIET", 1)  # 72: three an hour
    obs = _observe(engine, rule, D + 12 * HOUR)["entity:QUIET"]
    assert obs.figures["tested_negative"] == 3 and obs.breach


def test_memory_surge_reads_the_newest_point_whose_span_meets_the_window(engine) -> None:
    day = [Point(D, "bearish", surge=4.0, precision="day") for _ in range(24)]
    insert_points(engine, "topic:Energy", day)
    insert_points(engine, "topic:Energy", [Point(D + 2 * HOUR, "neutral", surge=0.5)])
    rule = _rule(kind="memory_surge", value=3.0, select={"min_volume": 1})
    late = _observe(engine, rule, D + 20 * HOUR)["topic:Energy"]  # the instant left the window
    assert late.value == 4.0 and late.breach and late.figures["documents"] == 1
    early = _observe(engine, rule, D + 2 * HOUR + HOUR / 2)["topic:Energy"]
    assert early.value == 0.5 and not early.breach  # the newer instant is in the window


# --- (b) a second-precision stream without stories counts as before -------------------------

# the evaluator's queries before time precision and stories (commit 15d2807), the reference
_PREVIOUS_THRESHOLD = """
SELECT tp.key, count(*) AS documents, count(*) FILTER (WHERE tp.sentiment = 'bearish') AS negative
FROM trend_points tp WHERE tp.event_at > :start AND tp.event_at <= :end GROUP BY tp.key"""
_PREVIOUS_SPIKE = """
SELECT key, count(*) FILTER (WHERE event_at > :cur_start) AS documents,
       count(*) FILTER (WHERE event_at > :cur_start AND sentiment = 'bearish') AS negative,
       count(*) FILTER (WHERE event_at <= :cur_start) AS ref_documents,
       count(*) FILTER (WHERE event_at <= :cur_start AND sentiment = 'bearish') AS ref_negative
FROM trend_points WHERE event_at > :ref_start AND event_at <= :end GROUP BY key"""
_PREVIOUS_MEMORY = """
SELECT DISTINCT ON (tp.key) tp.key, tp.surge_score FROM trend_points tp
WHERE tp.event_at > :start AND tp.event_at <= :end
ORDER BY tp.key, coalesce(tp.order_at, tp.event_at) DESC, tp.document_id COLLATE "C" DESC"""

_SENTIMENTS = st.sampled_from(["bearish", "neutral", "bullish"])


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    points=st.lists(
        st.tuples(st.sampled_from(["topic:A", "entity:B"]), st.integers(0, 300), _SENTIMENTS),
        max_size=40,
    ),
    window_min=st.integers(1, 120),
    at_min=st.integers(0, 320),
    own_stories=st.booleans(),
)
def test_a_second_precision_stream_without_stories_counts_as_before(
    engine, points, window_min, at_min, own_stories
) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM trend_points"))
        conn.execute(sa.text("DELETE FROM documents"))
    for n, (key, minute, sentiment) in enumerate(points):
        # grouping off (no story id) or on with every document a story of its own
        story = f"own{n}" if own_stories else None
        insert_points(
            engine, key, [Point(T0 + timedelta(minutes=minute), sentiment, surge=n, story=story)]
        )
    at = T0 + timedelta(minutes=at_min)
    window = timedelta(minutes=window_min)
    threshold = _rule(kind="threshold", value=0.5, window=f"{window_min}m")
    spike = _rule(kind="spike", ratio=2, window=f"{window_min}m", reference_window="45m")
    memory = _rule(kind="memory_surge", value=5, window=f"{window_min}m")
    with engine.connect() as conn:
        args = {"start": at - window, "end": at}
        before = {r.key: r for r in conn.execute(sa.text(_PREVIOUS_THRESHOLD), args)}
        now = {o.key: o.figures for o in observe(conn, threshold, at)}
        assert set(now) == set(before)
        for key, row in before.items():
            assert (now[key]["documents"], now[key]["negative"]) == (row.documents, row.negative)
            assert now[key]["negative_share"] == round(row.negative / row.documents, 6)
        args = {"cur_start": at - window, "ref_start": at - window - 45 * 60 * _S, "end": at}
        before = {r.key: r for r in conn.execute(sa.text(_PREVIOUS_SPIKE), args)}
        now = {o.key: o.figures for o in observe(conn, spike, at)}
        assert set(now) == set(before)
        for key, row in before.items():
            f = now[key]
            assert (
                f["documents"],
                f["negative"],
                f["reference_documents"],
                f["reference_negative"],
            ) == (row.documents, row.negative, row.ref_documents, row.ref_negative)
            assert f["ratio"] == round(
                row.negative / (window_min / 60) / max(row.ref_negative / 0.75, 0.5 / 0.75), 6
            )
        before = {
            r.key: r
            for r in conn.execute(sa.text(_PREVIOUS_MEMORY), {"start": at - window, "end": at})
        }
        now = {o.key: o for o in observe(conn, memory, at)}
        assert set(now) == set(before)
        assert all(now[k].value == before[k].surge_score for k in before)


# --- (c) one story, one count ----------------------------------------------------------------


def _stories(engine) -> None:
    """ACME: one story told by three outlets; GLOBEX: three stories."""
    at = T0 + timedelta(hours=2)
    insert_points(
        engine,
        "entity:ACME",
        [Point(at - timedelta(minutes=m), "bearish", story="acme-probe") for m in (40, 25, 5)],
    )
    insert_points(
        engine,
        "entity:GLOBEX",
        [Point(at - timedelta(minutes=m), "bearish", story=f"globex-{m}") for m in (40, 25, 5)],
    )


def test_three_copies_of_one_story_count_once_and_three_stories_three_times(engine) -> None:
    _stories(engine)
    at = T0 + timedelta(hours=2)
    rule = _rule(
        kind="threshold", metric="negative_count", op=">=", value=2, select={"min_volume": 1}
    )
    obs = _observe(engine, rule, at)
    acme, globex = obs["entity:ACME"], obs["entity:GLOBEX"]
    assert (acme.figures["documents"], acme.figures["negative"]) == (1, 1) and not acme.breach
    assert (globex.figures["documents"], globex.figures["negative"]) == (3, 3) and globex.breach
    with engine.connect() as conn:  # the evidence: one headline per story, with its copies
        (probe,) = headlines(conn, "entity:ACME", at - HOUR, at)
        three = headlines(conn, "entity:GLOBEX", at - HOUR, at)
    assert probe["copies"] == 3 and probe["published_at"] == (at - 40 * 60 * _S).isoformat()
    assert [h["copies"] for h in three] == [1, 1, 1]
    # a burst of copies on a name with no history is not a first burst of bearish news
    anomaly = _rule(kind="anomaly", select={"key_kind": "entity"}, window="1d")
    insert_points(engine, "entity:OLD", [Point(T0 - 40 * DAY)])  # 40 days of data
    obs = _observe(engine, anomaly, at)
    assert not obs["entity:ACME"].breach and obs["entity:GLOBEX"].breach


def test_a_story_counts_at_its_first_copy_with_its_sentiment(engine) -> None:
    at = T0 + timedelta(hours=2)
    insert_points(  # the wire's neutral report, then two outlets' bearish rewrites
        engine,
        "entity:ACME",
        [
            Point(at - 70 * 60 * _S, "neutral", story="s"),
            Point(at - 20 * 60 * _S, "bearish", story="s"),
            Point(at - 10 * 60 * _S, "bearish", story="s"),
        ],
    )
    rule = _rule(kind="threshold", metric="negative_count", op=">=", value=1)
    two_hours = _rule(kind="threshold", metric="negative_count", op=">=", value=1, window="2h")
    assert "entity:ACME" not in _observe(engine, rule, at)  # counted before the last hour
    f = _observe(engine, two_hours, at)["entity:ACME"].figures
    assert (f["documents"], f["negative"]) == (1, 0)  # once, read as its first copy


def test_stories_are_counted_once_in_the_anomaly_baseline_too(engine) -> None:
    # a month of one story a day, each told by three outlets, then one story told by three
    history = [
        Point(T0 - timedelta(days=d, hours=h), "neutral", story=f"day{d}")
        for d in range(2, 31)
        for h in (1, 2, 3)
    ]
    insert_points(engine, "entity:ACME", history)
    rule = _rule(
        kind="anomaly", window="1d", metric="negative_share", select={"key_kind": "entity"}
    )
    f = _observe(engine, rule, T0, open_keys={"entity:ACME"})["entity:ACME"].figures
    assert f["baseline_documents"] == 29 and f["documents"] == 0  # not 87


def test_figures_keep_their_types(engine) -> None:
    _stories(engine)
    rule = _rule(kind="threshold", metric="negative_count", op=">=", value=2)
    obs = _observe(engine, rule, T0 + timedelta(hours=2), open_keys={"entity:GONE"})
    for o in obs.values():
        assert isinstance(o.figures["documents"], float) and isinstance(
            o.figures["negative"], float
        )
    assert (
        f"{obs['entity:GLOBEX'].figures['negative']} of {obs['entity:GONE'].figures['documents']}"
        == "3 of 0"
    )


@pytest.mark.parametrize("precision", ["minute", "hour", "day"])
def test_the_window_query_reaches_back_for_spread_points(engine, precision: str) -> None:
    # a point whose stamp is long before the window still weighs there through its span
    span = {"minute": 60, "hour": 3600, "day": 86400}[precision]
    insert_points(engine, "topic:Macro", [Point(D, "bearish", precision=precision)])
    rule = _rule(kind="threshold", window="1s", value=0.5, select={"min_volume": 1})
    at = D + (span - 1) * _S
    with engine.connect() as conn:
        (obs,) = observe(conn, rule, at, open_keys={"topic:Macro"})
    assert obs.figures["documents"] == round(1 / span, 2)
