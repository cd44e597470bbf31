"""``finsent alerts check | silence | run --once | evaluate`` through the real CLI entry point."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from finsent.cli import main
from tests.alerts.conftest import T0, Point, insert_points

ROOT = Path(__file__).resolve().parents[2]


def test_check_lists_the_example_rules(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINSENT_WEBHOOK__URL", "https://hooks.example.com/x")
    example = ROOT / "examples" / "rules.yaml"
    assert main(["alerts", "check", "--rules", str(example)]) == 0
    out = capsys.readouterr().out
    count = len(yaml.safe_load(example.read_text())["rules"])
    assert f"{count} rules" in out and "topic-negative-share" in out and "memory_surge" in out


def test_check_with_a_bad_file_exits_2_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  - {name: x, kind: threshold, window: -1h, value: 1, notifiers: [email]}\n"
    )
    assert main(["alerts", "check", "--rules", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "rule 'x'" in err and "field 'window'" in err


def test_run_without_rules_says_how_to_give_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "run", "--once"]) == 2
    assert "FINSENT_RULES" in capsys.readouterr().err


def test_silence_add_list_expire(
    database_url: str, engine: sa.engine.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--database-url", database_url, "alerts", "silence"]
    assert (
        main(
            [
                *base,
                "add",
                "--match",
                "rule=negative-share",
                "--match",
                "key=entity:AAPL",
                "--for",
                "2h",
                "--comment",
                "earnings call",
                "--by",
                "alice",
            ]
        )
        == 0
    )
    assert "silence 1 added" in capsys.readouterr().out
    assert main([*base, "list"]) == 0
    out = capsys.readouterr().out
    assert "active" in out and '"key": "entity:AAPL"' in out and "alice: earnings call" in out
    assert main([*base, "expire", "1"]) == 0
    assert main([*base, "list"]) == 0
    assert "no silences" in capsys.readouterr().out
    assert main([*base, "expire", "1"]) == 2
    assert main([*base, "add", "--match", "rule", "--for", "2h"]) == 2
    assert main([*base, "add", "--match", "rule=x", "--for=-2h"]) == 2
    err = capsys.readouterr().err
    assert (
        "does not exist or has already ended" in err and "label=value" in err and "negative" in err
    )


def test_run_once_evaluates_and_dispatches(
    database_url: str,
    engine: sa.engine.Engine,
    tmp_path: Path,
    http_receiver,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = datetime.now(UTC)
    insert_points(
        engine,
        "topic:Earnings",
        [Point(now - timedelta(minutes=m), "bearish") for m in range(1, 8)],
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - {name: n, kind: threshold, window: 20m, value: 0.6, notifiers: [webhook]}\n"
    )
    monkeypatch.setenv("FINSENT_WEBHOOK__URL", http_receiver.url)
    monkeypatch.setenv("FINSENT_WEBHOOK__SECRET", "x")
    assert (
        main(["--database-url", database_url, "alerts", "run", "--once", "--rules", str(rules)])
        == 0
    )
    out = capsys.readouterr().out
    assert "1 fired" in out and "1 delivered" in out
    assert len(http_receiver.requests) == 1


def test_evaluate_scores_the_rules_against_known_incidents(
    database_url: str, engine: sa.engine.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onset = T0 + timedelta(days=5, hours=1)  # 2026-11-25 10:00 UTC
    calm = [Point(T0 + timedelta(hours=h)) for h in range(0, 20 * 24, 2)]
    burst = [timedelta(hours=2, minutes=10 * i) for i in range(6)]  # bearish, 10 min apart
    insert_points(engine, "entity:ACME", calm)
    insert_points(engine, "entity:ACME", [Point(onset + d, "bearish") for d in burst])
    false_alarm = T0 + timedelta(days=15)  # no incident: a false alert
    insert_points(engine, "entity:ACME", [Point(false_alarm + d, "bearish") for d in burst])
    insert_points(engine, "entity:GLOBEX", calm)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - {name: bearish-burst, kind: threshold, metric: negative_count, op: '>=',\n"
        "     value: 4, window: 1h, select: {key_kind: entity}, notifiers: [log]}\n"
    )
    incidents = tmp_path / "incidents.yaml"
    incidents.write_text(
        "incidents:\n"
        f"  - {{key: entity:ACME, onset: '{onset:%Y-%m-%dT%H:%M}', name: ACME probe}}\n"
        "  - {key: entity:GLOBEX, onset: 2026-11-28}\n"
    )
    args = [
        "--database-url",
        database_url,
        "alerts",
        "evaluate",
        "--rules",
        str(rules),
        "--incidents",
        str(incidents),
        "--from",
        T0.isoformat(),
        "--to",
        (T0 + timedelta(days=20)).isoformat(),
    ]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert "instants every 15m" in captured.err and "(100.0%)" in captured.err  # progress
    report = json.loads(captured.out)
    acme, globex = report["incidents"]
    assert acme["status"] == "detected" and acme["rule"] == "bearish-burst"
    # the 4th bearish document (2 h 30 m after the onset) puts 4 in the 1 h window
    assert acme["delay_s"] == 2.5 * 3600
    assert acme["fired_at"] == (onset + timedelta(hours=2, minutes=30)).isoformat()
    assert globex["status"] == "missed" and globex["fired_at"] is None
    keys = {k["key"]: k for k in report["keys"]}
    assert (keys["entity:ACME"]["alerts"], keys["entity:ACME"]["false_alerts"]) == (2, 1)
    assert keys["entity:ACME"]["false_per_30d"] == 1.5  # 1 false alert in 20 days
    assert keys["entity:GLOBEX"]["false_alerts"] == 0
    totals = report["totals"]
    assert (totals["incidents"], totals["detected"], totals["missed"]) == (2, 1, 1)
    assert totals["worst_false_per_30d"]["entity"] == {"key": "entity:ACME", "per_30d": 1.5}
    assert totals["worst_false_per_30d"]["topic"] is None
    assert report["backtest"]["alerts_fired"] == 2

    assert main([*args, "--tolerance", "1h", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    text = captured.out
    assert "ACME probe" in text and "+2h30m" in text and "detected" in text and "missed" in text
    assert "[onset - 1h, onset + 7d]" in text
    assert "totals: 1/2 incidents detected within 24h (0 late, 1 missed)" in text
    assert "entity 1.50 (entity:ACME)" in text and "2 alerts fired" in text


def test_evaluate_with_a_bad_incidents_file_fails_before_the_backtest(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - {name: n, kind: threshold, window: 1h, value: 0.6, notifiers: [log]}\n"
    )
    incidents = tmp_path / "incidents.yaml"
    incidents.write_text("incidents:\n  - {key: ACME, onset: 2026-11-28, name: probe}\n")
    base = ["--database-url", database_url, "alerts", "evaluate", "--rules", str(rules)]
    span = ["--from", T0.isoformat(), "--to", (T0 + timedelta(days=1)).isoformat()]
    assert main([*base, "--incidents", str(incidents), *span]) == 2
    err = capsys.readouterr().err
    assert str(incidents) in err and "incident 'probe' (incidents[0]), field 'key'" in err
    assert "instants every" not in err  # no backtest ran
    assert main([*base, "--incidents", str(tmp_path / "none.yaml"), *span]) == 2
    assert "incidents file not found" in capsys.readouterr().err
    incidents.write_text("- {key: entity:ACME, onset: 2026-11-28}\n")
    assert main([*base, "--incidents", str(incidents), *span, "--tolerance", "soon"]) == 2
    assert "--tolerance 'soon'" in capsys.readouterr().err
