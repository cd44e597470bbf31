"""``finsent alerts check | silence | run --once`` through the real CLI entry point."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from finsent.cli import main
from tests.alerts.conftest import Point, insert_points

ROOT = Path(__file__).resolve().parents[2]


def test_check_lists_the_example_rules(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINSENT_WEBHOOK__URL", "https://hooks.example.com/x")
    assert main(["alerts", "check", "--rules", str(ROOT / "examples" / "rules.yaml")]) == 0
    out = capsys.readouterr().out
    assert "4 rules" in out and "topic-negative-share" in out and "memory_surge" in out


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
