"""``kind: anomaly``: the tail probabilities (exact, monotone, stable at both ends of the
volume range) and the rule against a real database (a key judged by its own history)."""

from __future__ import annotations

import doctest
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts import anomaly
from alerts.anomaly import Population, evaluate, population
from alerts.evaluator import observe
from alerts.outbox import alert_annotations
from alerts.rules import AnomalyRule, load_rules, parse_rules
from tests.alerts.conftest import T0, Point, insert_points

ROOT = Path(__file__).resolve().parents[2]
DAY = timedelta(days=1)


def _rule(**fields: Any) -> AnomalyRule:
    base: dict[str, Any] = {"name": "a", "kind": "anomaly", "window": "1d", "notifiers": ["log"]}
    base.update(fields)
    rule = parse_rules({"rules": [base]}).rules[0]
    assert isinstance(rule, AnomalyRule)
    return rule


def _verdict(rule: AnomalyRule, *counts: int, exposure: float, pop: Population) -> bool:
    """Whether ``counts`` = (negative, documents, baseline_negative, baseline_documents)
    fires ``rule`` (the evaluator's judge on the figures the SQL path would compute)."""
    fig = anomaly.figures(rule, *counts, exposure=exposure, pop=pop)
    _, breach, _ = anomaly.judge(rule, fig)
    return breach


# a population of 50 names averaging 6 bearish of 30 documents a month (20 %, 0.2 a day)
NAMES = population([(6, 30)] * 50, exposure=30)


# --- the statistics ------------------------------------------------------------------------


def test_doctests_of_the_maths_hold() -> None:
    result = doctest.testmod(anomaly)
    assert result.failed == 0 and result.attempted > 0


def test_population_is_the_pooled_share_and_rate_per_key() -> None:
    assert NAMES.share == pytest.approx(0.2) and NAMES.rate == pytest.approx(0.2)


def test_first_burst_on_a_sparse_name_fires_with_default_settings() -> None:
    rule = _rule()  # negative_count, 30d baseline, p 0.001, lift 1.5, min_count 3
    ev = evaluate("negative_count", 3, 3, 0, 0, exposure=30, pop=NAMES)
    assert ev.p_value == pytest.approx((1 / 36) ** 3, rel=1e-9)  # geometric predictive
    assert ev.expected == pytest.approx(1 / 35)
    assert _verdict(rule, 3, 3, 0, 0, exposure=30, pop=NAMES)


def test_one_bearish_headline_of_one_does_not_fire_even_without_min_count() -> None:
    for metric in ("negative_count", "negative_share"):
        rule = _rule(metric=metric, min_count=1)
        ev = evaluate(metric, 1, 1, 0, 0, exposure=30, pop=NAMES)
        assert ev.p_value > 0.02, metric  # the statistic alone says "not unusual"
        assert not _verdict(rule, 1, 1, 0, 0, exposure=30, pop=NAMES)


def test_a_share_of_three_documents_is_weak_evidence_without_history() -> None:
    # 3 of 3 against a 20 % population: P = 0.8*1.8*2.8 / (4*5*6); never below 0.2^3
    ev = evaluate("negative_share", 3, 3, 0, 0, exposure=30, pop=NAMES)
    assert ev.p_value == pytest.approx(0.8 * 1.8 * 2.8 / 120)
    assert not _verdict(_rule(metric="negative_share"), 3, 3, 0, 0, exposure=30, pop=NAMES)


def test_share_burst_on_a_name_with_a_clean_history_fires() -> None:
    # 30 neutral documents last month, then 3 bearish of 3
    rule = _rule(metric="negative_share")
    assert evaluate("negative_share", 3, 3, 0, 30, exposure=30, pop=NAMES).p_value < 1e-3
    assert _verdict(rule, 3, 3, 0, 30, exposure=30, pop=NAMES)


def test_huge_key_with_a_two_point_share_change_does_not_fire() -> None:
    # 100,000 baseline documents, 20 % bearish; the window 22 % of 5,000: "significant"
    # (p < 0.001) but a lift of 1.1
    huge = population([(20_000, 100_000)], exposure=30)
    ev = evaluate("negative_share", 1_100, 5_000, 20_000, 100_000, exposure=30, pop=huge)
    assert ev.p_value < 1e-3 and ev.lift == pytest.approx(1.1, abs=0.01)
    assert not _verdict(
        _rule(metric="negative_share"), 1_100, 5_000, 20_000, 100_000, exposure=30, pop=huge
    )
    # the same as counts: 733 bearish where 667 are usual
    ev = evaluate("negative_count", 733, 3_333, 20_000, 100_000, exposure=30, pop=huge)
    assert ev.lift < 1.15
    assert not _verdict(_rule(), 733, 3_333, 20_000, 100_000, exposure=30, pop=huge)


def test_real_three_fold_surge_on_a_huge_key_fires() -> None:
    huge = population([(10_000, 100_000)], exposure=30)
    share = evaluate("negative_share", 1_500, 5_000, 10_000, 100_000, exposure=30, pop=huge)
    assert share.evidence > 100 and share.lift == pytest.approx(3.0, abs=0.01)
    assert _verdict(
        _rule(metric="negative_share"), 1_500, 5_000, 10_000, 100_000, exposure=30, pop=huge
    )
    # as counts: 1,000 bearish of the usual 3,333 documents where 333 are usual
    count = evaluate("negative_count", 1_000, 3_333, 10_000, 100_000, exposure=30, pop=huge)
    assert count.lift == pytest.approx(3.0, abs=0.01) and count.share_lift > 2.9
    assert _verdict(_rule(), 1_000, 3_333, 10_000, 100_000, exposure=30, pop=huge)


def test_a_busy_day_of_ordinary_news_on_a_huge_key_does_not_fire() -> None:
    # three times the volume, the usual 20 % bearish: the count triples, the share does not
    huge = population([(20_000, 100_000)], exposure=30)
    ev = evaluate("negative_count", 2_000, 10_000, 20_000, 100_000, exposure=30, pop=huge)
    assert ev.p_value < 1e-100 and ev.lift > 2.9 and ev.share_lift == pytest.approx(1.0, abs=0.01)
    assert not _verdict(_rule(), 2_000, 10_000, 20_000, 100_000, exposure=30, pop=huge)


def test_extreme_evidence_stays_finite_and_ordered() -> None:
    a, b = anomaly.share_posterior(100, 10_000, 0.01)
    logs = [anomaly.beta_binomial_log_sf(k, 2_000, a, b) for k in (1_000, 1_500, 2_000)]
    assert all(math.isfinite(x) for x in logs) and logs[0] > logs[1] > logs[2]
    assert logs[2] < -2_000 * math.log(10)  # far below the smallest double
    fig = anomaly.figures(_rule(metric="negative_share"), 2_000, 2_000, 100, 10_000, 30, NAMES)
    assert fig["p_value"] == 0.0 and fig["evidence"] > 2_000


def test_no_history_in_the_database_gives_no_verdict() -> None:
    fig = anomaly.figures(_rule(), 5, 5, 0, 0, exposure=0.5, pop=NAMES)
    assert fig["p_value"] is None
    assert anomaly.judge(_rule(), fig) == (None, False, True)


def test_resolve_keeps_an_alert_open_while_the_evidence_holds() -> None:
    rule = _rule(resolve={"p_value": 0.01})
    fig = {"documents": 4, "negative": 2, "p_value": 0.004, "lift": 20.0, "share_lift": 3.0}
    assert anomaly.judge(rule, fig)[1:] == (False, False)  # min_count fails; not calm yet
    assert anomaly.judge(rule, {**fig, "p_value": 0.02})[1:] == (False, True)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 60),
    k_ref=st.integers(0, 200),
    extra=st.integers(0, 400),
    exposure=st.floats(1, 500),
    share=st.floats(0.0, 1.0),
    rate=st.floats(1e-4, 50),
)
def test_p_values_fall_as_the_bearish_count_rises(
    n: int, k_ref: int, extra: int, exposure: float, share: float, rate: float
) -> None:
    pop = Population(share=min(max(share, 0.01), 0.99), rate=rate)
    for metric in ("negative_share", "negative_count"):
        logs = [
            evaluate(metric, k, n, k_ref, k_ref + extra, exposure=exposure, pop=pop).log_p
            for k in range(n + 1)
        ]
        assert logs[0] == 0.0
        assert all(later <= earlier + 1e-12 for earlier, later in zip(logs, logs[1:], strict=False))
        assert all(x <= 0.0 for x in logs)


def test_tails_are_exact_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for k, n, a, b in [
        (3, 3, 0.8, 3.2),
        (0, 5, 1, 1),
        (7, 40, 2.5, 30.0),
        (480, 1000, 28.5, 124.0),
    ]:
        ref = sum(stats.betabinom.pmf(j, n, a, b) for j in range(k, n + 1))
        assert math.exp(anomaly.beta_binomial_log_sf(k, n, a, b)) == pytest.approx(ref, rel=1e-9)
    for k, shape, rate in [(3, 1.0, 35.0), (1, 0.5, 0.2), (60, 601.0, 30.0), (2, 13.0, 4.5)]:
        q = rate / (rate + 1)
        ref = stats.nbinom.sf(k - 1, shape, q)
        assert math.exp(anomaly.gamma_poisson_log_sf(k, shape, rate)) == pytest.approx(
            ref, rel=1e-8
        )


# --- against the database ------------------------------------------------------------------


def _month(key_start: int, per_day: list[str], days: int = 30) -> list[Point]:
    """``per_day`` sentiments every day of the ``days`` before the window (ending at T0 - 1d)."""
    return [
        Point(T0 - DAY - timedelta(days=d, hours=key_start + i % 12, minutes=i), s)
        for d in range(days)
        for i, s in enumerate(per_day)
    ]


@pytest.fixture
def month(engine: sa.engine.Engine) -> sa.engine.Engine:
    """A month of history, then the same burst (3 bearish headlines in the last day) on a
    quiet name, on a name that is always that bearish and on a name never seen before."""
    burst = [Point(T0 - timedelta(hours=h), "bearish") for h in (9, 5, 1)]
    insert_points(engine, "entity:QUIET", _month(2, ["neutral"]) + burst)
    insert_points(engine, "entity:GLOOMY", _month(3, ["bearish"] * 3) + burst)
    insert_points(engine, "entity:NEWCO", burst)
    big = ["bearish"] + ["neutral"] * 9  # 10 documents a day, 10 % bearish, also today
    today = [Point(T0 - timedelta(hours=2 * i + 1), s) for i, s in enumerate(big)]
    older = [Point(T0 - timedelta(days=40), "neutral")]  # the database's history goes back further
    insert_points(engine, "entity:BIG", older + _month(1, big) + today)
    return engine


def test_burst_after_a_quiet_month_fires_and_not_on_a_name_always_that_bearish(month) -> None:
    rule = _rule(select={"key_kind": "entity"})
    with month.connect() as conn:
        obs = {o.key: o for o in observe(conn, rule, T0)}
    assert set(obs) == {"entity:QUIET", "entity:GLOOMY", "entity:NEWCO", "entity:BIG"}
    quiet, gloomy, newco, big = (obs[f"entity:{k}"] for k in ("QUIET", "GLOOMY", "NEWCO", "BIG"))
    assert quiet.breach and not quiet.calm and quiet.value == 3.0
    f = quiet.figures
    assert (f["documents"], f["negative"], f["baseline_documents"], f["baseline_negative"]) == (
        3,
        3,
        30,
        0,
    )
    assert f["p_value"] < 1e-3 and f["lift"] > 10 and f["exposure_windows"] == pytest.approx(30)
    assert f["window"] == "1d" and f["baseline"] == "30d" and f["metric"] == "negative_count"
    assert newco.breach  # no history at all: thirty days without a headline are the history
    assert not gloomy.breach and gloomy.figures["p_value"] > 0.1
    # 90 bearish in 30 windows, prior 1 event at the population's 120 / (4 keys * 30) = 1
    assert gloomy.figures["expected"] == pytest.approx(91 / 31, rel=1e-5)
    assert not big.breach and big.calm


def test_share_metric_fires_on_the_quiet_name_only(month) -> None:
    rule = _rule(metric="negative_share", select={"key_kind": "entity"})
    with month.connect() as conn:
        obs = {o.key: o for o in observe(conn, rule, T0)}
    assert obs["entity:QUIET"].breach and obs["entity:QUIET"].value == 1.0
    assert not obs["entity:GLOOMY"].breach and not obs["entity:NEWCO"].breach
    # the prior is the pooled share of every entity, whatever the rule selects
    only = _rule(metric="negative_share", select={"key_kind": "entity", "names": ["quiet"]})
    with month.connect() as conn:
        (solo,) = observe(conn, only, T0)
    pooled = (0 + 90 + 30) / (30 + 90 + 300)
    assert solo.figures["population_share"] == pytest.approx(pooled, rel=1e-5)
    assert solo.figures == obs["entity:QUIET"].figures


def test_example_annotations_fill_from_the_figures(month) -> None:
    ruleset = load_rules(ROOT / "examples" / "rules.yaml")
    rule = ruleset.rule("entity-bearish-anomaly")
    assert isinstance(rule, AnomalyRule)
    with month.connect() as conn:
        obs = {o.key: o for o in observe(conn, rule, T0)}
    quiet = obs["entity:QUIET"]
    assert quiet.breach
    text = alert_annotations(rule, quiet.key, quiet.value, quiet.figures)["summary"]
    assert text.startswith("QUIET: 3 bearish of 3 documents in 1d") and "{" not in text


def test_without_a_window_of_history_there_is_no_verdict(engine) -> None:
    insert_points(
        engine, "entity:NEWCO", [Point(T0 - timedelta(hours=h), "bearish") for h in (9, 5, 1)]
    )
    with engine.connect() as conn:
        (obs,) = observe(conn, _rule(), T0)
    assert obs.figures["exposure_windows"] == 0 and obs.figures["p_value"] is None
    assert not obs.breach and obs.calm


def test_open_keys_are_observed_on_their_baseline_or_calm_without_data(month) -> None:
    rule = _rule(select={"key_kind": "entity"})
    later = T0 + 2 * DAY  # the bursts have left the window
    with month.connect() as conn:
        obs = {
            o.key: o for o in observe(conn, rule, later, open_keys={"entity:QUIET", "entity:GONE"})
        }
    assert obs["entity:QUIET"].calm and obs["entity:QUIET"].figures["documents"] == 0
    assert obs["entity:QUIET"].figures["baseline_negative"] == 3  # the burst is history now
    assert obs["entity:GONE"].calm and obs["entity:GONE"].figures["documents"] == 0
    assert "entity:GLOOMY" not in obs  # no document in the window, no alert open: not observed


def test_weekly_seasonality_compares_with_the_same_weekday(engine) -> None:
    # one neutral headline a day; eight bearish ones on the window's weekday every week
    points = [Point(T0 - timedelta(days=d, hours=5), "neutral") for d in range(30)]
    points += [
        Point(T0 - timedelta(days=7 * j, hours=2, minutes=m), "bearish")
        for j in range(5)
        for m in range(8)
    ]
    insert_points(engine, "entity:MONDAY", points)
    continuous = _rule()
    weekly = _rule(seasonality="weekly")
    with engine.connect() as conn:
        (c,) = observe(conn, continuous, T0)
        (w,) = observe(conn, weekly, T0)
    assert c.breach  # against every day of the month, eight is a lot
    assert (w.figures["baseline_negative"], w.figures["baseline_documents"]) == (32, 36)
    assert w.figures["exposure_windows"] == 4 and w.figures["seasonality"] == "weekly"
    assert not w.breach  # against the same weekday, it is the usual


_SENTIMENTS = st.sampled_from(["bearish", "neutral", "bullish"])


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    points=st.lists(st.tuples(st.integers(0, 24 * 40), _SENTIMENTS), max_size=40),
    window_h=st.integers(1, 72),
    baseline_d=st.integers(7, 30),
    weekly=st.booleans(),
)
def test_sql_counts_match_a_python_reference(engine, points, window_h, baseline_d, weekly) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM trend_points"))
        conn.execute(sa.text("DELETE FROM documents"))
    at = T0
    insert_points(engine, "topic:P", [Point(at - timedelta(hours=h), s) for h, s in points])
    rule = _rule(
        window=f"{window_h}h", baseline=f"{baseline_d}d", seasonality="weekly" if weekly else "none"
    )
    with engine.connect() as conn:
        obs = {o.key: o.figures for o in observe(conn, rule, at, open_keys={"topic:P"})}

    def count(lo: float, hi: float, bearish_only: bool = False) -> int:  # hours ago in [lo, hi)
        return sum(1 for h, s in points if lo <= h < hi and (s == "bearish" or not bearish_only))

    ranges = (
        [(168 * j, 168 * j + window_h) for j in range(1, baseline_d // 7 + 1)]
        if weekly
        else [(window_h, window_h + 24 * baseline_d)]
    )
    f = obs["topic:P"]  # an open key: observed even without a document in the window
    assert (f["documents"], f["negative"]) == (count(0, window_h), count(0, window_h, True))
    assert f.get("baseline_documents", 0) == sum(count(lo, hi) for lo, hi in ranges)
    assert f.get("baseline_negative", 0) == sum(count(lo, hi, True) for lo, hi in ranges)
