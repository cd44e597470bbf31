"""A backtest over a replayed history raises the same alerts as the live evaluator did
while the same data streamed in; the CLI prints and stores them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from alerts.backtest import run_backtest, store
from alerts.lifecycle import LiveEvaluator
from alerts.rules import parse_rules
from finsent.cli import main
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
