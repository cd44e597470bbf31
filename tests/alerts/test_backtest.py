"""A backtest over a replayed history raises the same alerts as the live evaluator did
while the same data streamed in; the CLI prints and stores them."""

from __future__ import annotations

import doctest
import json
import random
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from alerts.backtest import choose_step, count_instants, run_backtest, store
from alerts.lifecycle import LiveEvaluator
from alerts.rules import parse_rules
from finsent.cli import main
from pipeline.producers.base import start_of_period
from tests.alerts.conftest import T0, Point, alert_settings, insert_points, instants, surge_stream

STEP_S = 120
RULES = {
    "rules": [
        {
            "name": "share",
            "kind": "threshold",
            "metric": "negative_share",
            "select": {"key_kind": "topic", "min_volume": 5},
            "window": "20m",
            "value": 0.6,
            "resolve": {"value": 0.3},
            "for": "4m",
            "notifiers": ["webhook"],
        },
        {
            "name": "spike",
            "kind": "spike",
            "metric": "negative_count",
            "select": {"min_volume": 3},
            "window": "10m",
            "reference_window": "30m",
            "ratio": 3,
            "min_reference_count": 1,
            "resolve": {"ratio": 1.5},
            "notifiers": ["webhook"],
        },
        {
            "name": "memory",
            "kind": "memory_surge",
            "select": {"key_kind": "entity"},
            "window": "10m",
            "value": 3.0,
            "resolve": {"value": 1.0},
            "cooldown": "10m",
            "notifiers": ["webhook"],
        },
    ]
}


def _history() -> dict[str, list[Point]]:
    acme = [
        Point(
            T0 + timedelta(minutes=m, seconds=20),
            "bearish" if m % 7 == 0 else "neutral",
            surge=4.0 if 30 <= m < 45 or 70 <= m < 75 or 110 <= m < 130 else 0.5,
        )
        for m in range(0, 150)
    ]
    return {
        "topic:Earnings": surge_stream(T0),
        "topic:Markets": surge_stream(
            T0 + timedelta(minutes=37), calm_min=40, surge_min=20, after_min=50
        ),
        "topic:Dividend": [Point(T0 + timedelta(minutes=m)) for m in range(0, 150, 4)],
        "entity:ACME": acme,
    }


def _episodes(rows) -> list[tuple]:
    return sorted(
        (r.rule_name, r.key, r.pending_since, r.fired_at, r.resolved_at, r.state) for r in rows
    )


def test_backtest_equals_live_over_the_same_data(
    engine, database_url, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ruleset = parse_rules(RULES)
    settings = alert_settings(database_url, webhook_url="http://127.0.0.1:9/unused")
    live = LiveEvaluator(engine, ruleset, settings)
    history = _history()
    start, end = T0, T0 + timedelta(minutes=160)
    previous = start - timedelta(days=1)
    for at in instants(start, end, STEP_S):  # the stream arrives as time passes
        for key, points in history.items():
            insert_points(engine, key, [p for p in points if previous < p.at <= at])
        live.evaluate(at)
        previous = at
    with engine.connect() as conn:
        live_rows = conn.execute(sa.text("SELECT * FROM alerts")).all()
    live_episodes = _episodes(live_rows)
    assert {e[0] for e in live_episodes if e[3] is not None} == {"share", "spike", "memory"}
    assert len(live_episodes) >= 5

    result = run_backtest(engine, ruleset, start, end, STEP_S)
    assert _episodes(result.episodes) == live_episodes
    assert result.instants == len(instants(start, end, STEP_S))

    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(json.dumps(RULES))  # JSON is YAML
    code = main(
        [
            "--database-url",
            database_url,
            "alerts",
            "backtest",
            "--rules",
            str(rules_file),
            "--from",
            start.isoformat(),
            "--to",
            end.replace(tzinfo=None).isoformat(),
            "--interval",
            str(STEP_S),
            "--store",
            "--json",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    printed = sorted(
        (r["rule"], r["key"], r["pending_since"], r["fired_at"], r["resolved_at"], r["state"])
        for r in lines
        if "rule" in r
    )
    as_text = [
        (n, k, p.isoformat(), f.isoformat() if f else None, r.isoformat() if r else None, s)
        for n, k, p, f, r, s in live_episodes
    ]
    assert printed == as_text
    assert "alert_backtests" in lines[-1]["summary"]
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT * FROM alert_backtests")).all()
        assert _episodes(stored) == live_episodes
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM alert_deliveries WHERE alert_id NOT IN "
                    "(SELECT id FROM alerts)"
                )
            ).scalar_one()
            == 0
        )
    assert store(engine, ruleset, result) == len(live_episodes)
    assert (
        main(
            [
                "--database-url",
                database_url,
                "alerts",
                "backtest",
                "--rules",
                str(rules_file),
                "--from",
                start.isoformat(),
                "--to",
                end.isoformat(),
                "--interval",
                str(STEP_S),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert (
        "topic:Earnings" in text
        and f"{len([e for e in live_episodes if e[3]])} alerts fired" in text
    )


def test_backtest_respects_event_time_not_later_data(engine) -> None:
    ruleset = parse_rules({"rules": [RULES["rules"][0]]})
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    early = run_backtest(engine, ruleset, T0, T0 + timedelta(minutes=70), 60)
    assert early.fired == ()  # the surge starts at minute 60 and needs more documents and `for`
    full = run_backtest(engine, ruleset, T0, T0 + timedelta(minutes=150), 60)
    assert len(full.fired) == 1 and full.fired[0].resolved_at is not None


def test_data_clock_service_catches_up_a_replayed_history_like_the_backtest(
    engine, database_url
) -> None:
    from alerts.evaluator import grid_instant
    from alerts.service import AlertService

    history = _history()
    for key, points in history.items():
        insert_points(engine, key, points)
    ruleset = parse_rules(RULES)
    settings = alert_settings(database_url, webhook_url="http://127.0.0.1:9/unused").model_copy(
        update={"alert_clock": "data", "alert_interval_s": STEP_S}
    )
    service = AlertService(settings, engine=engine, ruleset=ruleset)
    summary = service.evaluate_now()
    assert summary.fired >= 5
    assert service.evaluate_now().observed == 0  # nothing new: nothing re-evaluated
    with engine.connect() as conn:
        live = _episodes(conn.execute(sa.text("SELECT * FROM alerts")).all())
        first, last = conn.execute(
            sa.text("SELECT min(event_at), max(event_at) FROM trend_points")
        ).one()
    result = run_backtest(engine, ruleset, grid_instant(first, STEP_S), last, STEP_S)
    assert _episodes(result.episodes) == live


def test_alert_roles_give_the_daemon_an_alert_role_only_with_rules(
    database_url, engine, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from finsent.roles import alert_roles
    from pipeline.roles import Role

    settings = alert_settings(database_url, webhook_url="http://127.0.0.1:9/unused")
    assert alert_roles(settings, SimpleNamespace(engine=engine)) == []
    rules = tmp_path / "rules.yaml"
    rules.write_text(json.dumps(RULES))
    (role,) = alert_roles(
        settings.model_copy(update={"rules": rules}), SimpleNamespace(engine=engine)
    )
    assert isinstance(role, Role) and role.name == "alerts" and not role.ready()


# --- the schedule: only the instants that can change something ------------------------------

EVERY_KIND = {
    "rules": [
        {
            "name": "share",
            "kind": "threshold",
            "select": {"min_volume": 2},
            "window": "30m",
            "value": 0.5,
            "resolve": {"value": 0.2},
            "for": "6m",
            "cooldown": "10m",
            "notifiers": ["log"],
        },
        {
            "name": "count",
            "kind": "threshold",
            "metric": "negative_count",
            "select": {"key_kind": "entity"},
            "op": ">=",
            "value": 3,
            "window": "20m",
            "notifiers": ["log"],
        },
        {
            "name": "mean",
            "kind": "threshold",
            "metric": "mean_sentiment",
            "op": "<",
            "value": -0.3,
            "resolve": {"value": -0.1},
            "window": "40m",
            "renotify": "15m",
            "notifiers": ["log"],
        },
        {  # resolve.ratio == ratio: breach and calm at once, re-opens at the next instant
            "name": "spike-count",
            "kind": "spike",
            "window": "10m",
            "reference_window": "40m",
            "ratio": 2,
            "min_reference_count": 1,
            "resolve": {"ratio": 2},
            "notifiers": ["log"],
        },
        {
            "name": "spike-share",
            "kind": "spike",
            "metric": "negative_share",
            "window": "15m",
            "ratio": 1.5,
            "min_reference_count": 2,
            "notifiers": ["log"],
        },
        {
            "name": "memory",
            "kind": "memory_surge",
            "window": "15m",
            "value": 2.0,
            "resolve": {"value": 1.0},
            "for": "4m",
            "cooldown": "6m",
            "notifiers": ["log"],
        },
        {
            "name": "anomaly-count",
            "kind": "anomaly",
            "select": {"key_kind": "entity"},
            "window": "30m",
            "baseline": "3h",
            "p_value": 0.05,
            "min_lift": 1.2,
            "min_share_lift": 1.0,
            "min_count": 2,
            "resolve": {"p_value": 0.2},
            "cooldown": "20m",
            "notifiers": ["log"],
        },
        {
            "name": "anomaly-share",
            "kind": "anomaly",
            "metric": "negative_share",
            "select": {"key_kind": "topic"},
            "window": "1h",
            "baseline": "4h",
            "p_value": 0.1,
            "min_lift": 1.2,
            "min_count": 2,
            "for": "5m",
            "notifiers": ["log"],
        },
    ]
}


def _noisy_history(seed: int, hours: int) -> dict[str, list[Point]]:
    """Irregular arrivals, bearish bursts, wandering surge scores and sentiment."""
    rng = random.Random(seed)
    out: dict[str, list[Point]] = {}
    for key in ("topic:Earnings", "topic:Markets", "entity:ACME", "entity:GLOBEX"):
        points, t = [], T0 + timedelta(seconds=rng.randint(0, 300))
        bursts = [T0 + timedelta(minutes=rng.randint(60, hours * 60 - 30)) for _ in range(3)]
        while t < T0 + timedelta(hours=hours):
            hot = any(b <= t < b + timedelta(minutes=25) for b in bursts)
            bearish = rng.random() < (0.75 if hot else 0.15)
            points.append(
                Point(
                    t,
                    "bearish" if bearish else rng.choice(("neutral", "bullish")),
                    surge=round(rng.uniform(1.5, 4.0) if hot else rng.uniform(0.0, 2.2), 3),
                    p_bearish=round(
                        rng.uniform(0.55, 0.95) if bearish else rng.uniform(0.0, 0.4), 3
                    ),
                )
            )
            t += timedelta(seconds=rng.randint(20, 60 if hot else 600))
        out[key] = points
    return out


def _load(engine, history: dict[str, list[Point]]) -> None:
    for key, points in history.items():
        insert_points(engine, key, points)
    with engine.begin() as conn:  # GLOBEX's canonical order disagrees with event order
        conn.execute(
            sa.text(
                "UPDATE trend_points SET order_at = event_at - (id % 3) * INTERVAL '2 minutes' "
                "WHERE key = 'entity:GLOBEX'"
            )
        )


@pytest.mark.parametrize("step_s", [60, 300])
def test_the_scheduled_backtest_equals_evaluating_every_instant(engine, step_s: int) -> None:
    _load(engine, _noisy_history(seed=7, hours=9))
    ruleset = parse_rules(EVERY_KIND)
    start, end = T0, T0 + timedelta(hours=9, minutes=30)
    exhaustive = run_backtest(engine, ruleset, start, end, step_s, exhaustive=True)
    scheduled = run_backtest(engine, ruleset, start, end, step_s)
    assert scheduled.instants == exhaustive.instants == len(instants(start, end, step_s))
    assert exhaustive.evaluations == exhaustive.instants * len(ruleset.rules)
    # every field of every episode: states, times, values, figures, notification times
    assert scheduled.episodes == exhaustive.episodes
    # the stream exercises every rule, and renotify
    assert {e.rule_name for e in exhaustive.fired} == {r.name for r in ruleset.rules}
    assert any(
        e.fired_at and e.last_notified_at and e.last_notified_at > e.fired_at
        for e in exhaustive.episodes
    )
    assert scheduled.evaluations < exhaustive.evaluations / 2


def test_the_scheduled_backtest_equals_every_instant_for_weekly_anomalies(engine) -> None:
    rng = random.Random(3)
    for key in ("entity:ACME", "entity:GLOBEX", "topic:Markets"):
        points, t = [], T0
        while t < T0 + timedelta(days=17):
            hot = key == "entity:ACME" and T0 + timedelta(days=15) <= t < T0 + timedelta(
                days=15, hours=8
            )
            bearish = rng.random() < (0.8 if hot else 0.15)
            points.append(Point(t, "bearish" if bearish else "neutral"))
            t += timedelta(minutes=rng.randint(5, 30) if hot else rng.randint(30, 240))
        insert_points(engine, key, points)
    ruleset = parse_rules(
        {
            "rules": [
                {
                    "name": "weekly",
                    "kind": "anomaly",
                    "seasonality": "weekly",
                    "window": "12h",
                    "baseline": "2w",
                    "min_count": 2,
                    "p_value": 0.01,
                    "resolve": {"p_value": 0.05},
                    "notifiers": ["log"],
                }
            ]
        }
    )
    start, end = T0, T0 + timedelta(days=17)
    exhaustive = run_backtest(engine, ruleset, start, end, 1800, exhaustive=True)
    scheduled = run_backtest(engine, ruleset, start, end, 1800)
    assert exhaustive.fired and scheduled.episodes == exhaustive.episodes
    assert scheduled.evaluations < exhaustive.evaluations / 2


def test_progress_reaches_the_total_and_counts_evaluations(engine) -> None:
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    ruleset = parse_rules({"rules": [RULES["rules"][0]]})
    seen: list = []
    result = run_backtest(
        engine, ruleset, T0, T0 + timedelta(hours=3), 60, progress=seen.append, progress_every_s=0
    )
    assert seen and seen[-1].done == seen[-1].total == result.instants
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert seen[-1].evaluations == result.evaluations == sum(result.evaluations_by_rule.values())
    assert "100.0%" in seen[-1].line() and "ETA 0:00:00" in seen[-1].line()


def test_the_default_step_comes_from_the_rules() -> None:
    import alerts.backtest

    assert doctest.testmod(alerts.backtest).failed == 0
    ruleset = parse_rules(RULES)  # shortest: for 4m of 'share' -> 60 s
    choice = choose_step(ruleset, 30)
    assert choice.step_s == 60 and "for 4m of rule 'share'" in choice.reason
    assert choose_step(ruleset, 45).step_s == 45  # whole multiples of the live interval
    assert choose_step(ruleset, 120).step_s == 120  # never finer than live
    slow = parse_rules(
        {
            "rules": [
                {
                    "name": "d",
                    "kind": "threshold",
                    "window": "1d",
                    "value": 0.5,
                    "notifiers": ["log"],
                }
            ]
        }
    )
    assert choose_step(slow, 30).step_s == 900  # capped
    assert count_instants(T0, T0 + timedelta(hours=1), 60) == 61


def test_the_cli_picks_the_step_from_the_rules_and_reports_progress(
    engine, database_url, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, points in _history().items():
        insert_points(engine, key, points)
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(json.dumps(RULES))
    base = ["--database-url", database_url, "alerts", "backtest", "--rules", str(rules_file)]
    span = ["--from", T0.isoformat(), "--to", (T0 + timedelta(minutes=160)).isoformat()]
    assert main([*base, *span]) == 0
    captured = capsys.readouterr()
    assert (
        "161 instants every 1m (the shortest rule duration (for 4m of rule 'share')" in captured.err
    )
    assert "backtest: 161/161 instants (100.0%)" in captured.err and "ETA" in captured.err
    assert "every 1m (" in captured.out and "alerts fired" in captured.out
    assert main([*base, *span, "--step", "2m"]) == 0
    assert "81 instants every 2m (--step)" in capsys.readouterr().err
    assert main([*base, *span, "--step", "2m", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*base, *span, "--step=0s"]) == 2
    assert "--step" in capsys.readouterr().err


def test_an_episode_open_at_the_end_has_the_last_instants_figures(engine) -> None:
    insert_points(engine, "topic:Earnings", surge_stream(T0))
    ruleset = parse_rules({"rules": [RULES["rules"][0]]})
    end = T0 + timedelta(minutes=80)  # mid-surge; no point enters or leaves a window at 80m
    scheduled = run_backtest(engine, ruleset, T0, end, 60)
    assert (
        scheduled.episodes == run_backtest(engine, ruleset, T0, end, 60, exhaustive=True).episodes
    )
    (episode,) = scheduled.episodes
    assert episode.state == "firing" and episode.figures["window_end"] == end.isoformat()


def test_an_anomaly_can_fire_without_a_new_document_as_the_history_grows(engine) -> None:
    """Until the baseline is all history, the exposure (and with it the p-value) moves with
    time alone: the backtest evaluates every instant of that span."""
    insert_points(engine, "entity:GLOBEX", [Point(T0)])  # the data's first instant
    insert_points(
        engine, "entity:ACME", [Point(T0 + timedelta(minutes=m), "bearish") for m in (40, 41, 42)]
    )
    rule = {
        "name": "young",
        "kind": "anomaly",
        "select": {"key_kind": "entity"},
        "window": "30m",
        "baseline": "3h",
        "min_count": 3,
        "p_value": 0.003,
        "notifiers": ["log"],
    }
    ruleset = parse_rules({"rules": [rule]})
    end = T0 + timedelta(hours=2)
    exhaustive = run_backtest(engine, ruleset, T0, end, 60, exhaustive=True)
    (alert,) = exhaustive.fired
    assert alert.fired_at is not None
    # the window's documents arrived at 40-42 m and leave at 70-72 m: in between, only the
    # exposure (T - 30 m of history, in windows) changed
    assert T0 + timedelta(minutes=60) < alert.fired_at < T0 + timedelta(minutes=70)
    assert run_backtest(engine, ruleset, T0, end, 60).episodes == exhaustive.episodes


# --- the schedule with time precision and stories ---------------------------------------------

_PRECISION = {"topic:Earnings": "day", "entity:ACME": "hour", "topic:Markets": "minute"}


def _stamp(at, precision: str):
    return start_of_period(at, precision)  # what the producers store for such a source


def _storied(history: dict[str, list[Point]], seed: int) -> dict[str, list[Point]]:
    """``history`` with day-, hour- and minute-stamped keys (each point at the start of its
    day, hour or minute) and stories: a third of them repeated by 1-3 other outlets up to
    90 minutes later, one copy in five read differently."""
    rng = random.Random(seed)
    out: dict[str, list[Point]] = {}
    for key, points in history.items():
        precision = _PRECISION.get(key, "second")
        storied: list[Point] = []
        for i, p in enumerate(points):
            story = f"{key}-{i}"
            storied.append(replace(p, at=_stamp(p.at, precision), precision=precision, story=story))
            if rng.random() < 0.33:
                for _ in range(rng.randint(1, 3)):
                    later = p.at + timedelta(minutes=rng.randint(1, 90))
                    sentiment = (
                        rng.choice(("bearish", "neutral")) if rng.random() < 0.2 else p.sentiment
                    )
                    storied.append(
                        replace(
                            p,
                            at=_stamp(later, precision),
                            sentiment=sentiment,
                            precision=precision,
                            story=story,
                        )
                    )
        storied.sort(key=lambda p: p.at)
        out[key] = storied
    return out


@pytest.mark.parametrize("step_s", [120, 300])
def test_the_scheduled_backtest_equals_every_instant_with_day_stamps_and_stories(
    engine, step_s: int
) -> None:
    # nine hours from 20:00: the day-stamped key's documents change day at midnight
    shift = timedelta(hours=11)
    history = {
        key: [replace(p, at=p.at + shift) for p in points]
        for key, points in _noisy_history(seed=11, hours=9).items()
    }
    _load(engine, _storied(history, seed=5))
    ruleset = parse_rules(EVERY_KIND)
    start, end = T0 + shift, T0 + shift + timedelta(hours=9, minutes=30)
    exhaustive = run_backtest(engine, ruleset, start, end, step_s, exhaustive=True)
    scheduled = run_backtest(engine, ruleset, start, end, step_s)
    assert scheduled.episodes == exhaustive.episodes
    # the stream exercises the spread keys and most rules
    fired = {(e.rule_name, e.key) for e in exhaustive.fired}
    assert {k for _, k in fired} >= {"topic:Earnings", "entity:ACME", "topic:Markets"}, fired
    assert len({r for r, _ in fired}) >= 6, fired
    assert scheduled.evaluations < exhaustive.evaluations / 2


def test_the_scheduled_backtest_equals_every_instant_for_anomalies_over_day_stamped_weeks(
    engine,
) -> None:
    rng = random.Random(4)
    history: dict[str, list[Point]] = {}
    for key in ("entity:ACME", "entity:GLOBEX", "entity:INITECH", "topic:Markets"):
        points, t = [], T0
        while t < T0 + timedelta(days=17):
            hot = key in ("entity:ACME", "entity:GLOBEX") and T0 + timedelta(
                days=15 if key == "entity:ACME" else 12
            ) <= t < T0 + timedelta(days=15 if key == "entity:ACME" else 12, hours=10)
            bearish = rng.random() < (0.8 if hot else 0.15)
            points.append(Point(t, "bearish" if bearish else "neutral"))
            t += timedelta(minutes=rng.randint(5, 30) if hot else rng.randint(30, 240))
        history[key] = points
    _PRECISION.update({"entity:GLOBEX": "day", "entity:INITECH": "day"})
    try:
        _load(engine, _storied(history, seed=9))
    finally:
        for key in ("entity:GLOBEX", "entity:INITECH"):
            _PRECISION.pop(key)
    rules = [
        {
            "name": "weekly",
            "kind": "anomaly",
            "seasonality": "weekly",
            "window": "12h",
            "baseline": "2w",
            "min_count": 2,
            "p_value": 0.01,
            "resolve": {"p_value": 0.05},
            "notifiers": ["log"],
        },
        {
            "name": "daily",
            "kind": "anomaly",
            "select": {"key_kind": "entity"},
            "window": "1d",
            "baseline": "7d",
            "p_value": 0.01,
            "resolve": {"p_value": 0.05},
            "cooldown": "6h",
            "notifiers": ["log"],
        },
        {
            "name": "share",
            "kind": "anomaly",
            "metric": "negative_share",
            "window": "6h",
            "baseline": "5d",
            "p_value": 0.02,
            "min_lift": 1.2,
            "notifiers": ["log"],
        },
    ]
    ruleset = parse_rules({"rules": rules})
    start, end = T0, T0 + timedelta(days=17)
    exhaustive = run_backtest(engine, ruleset, start, end, 1800, exhaustive=True)
    scheduled = run_backtest(engine, ruleset, start, end, 1800)
    assert scheduled.episodes == exhaustive.episodes
    assert {e.key for e in exhaustive.fired} >= {"entity:ACME", "entity:GLOBEX"}
    assert scheduled.evaluations < exhaustive.evaluations / 2
