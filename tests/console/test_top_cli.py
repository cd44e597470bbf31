"""``finsent top``: the console's ranking on the command line, in words and as JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from finsent.cli import main
from tests.console import add_documents

NOW = datetime(2026, 3, 3, 18, 0, tzinfo=UTC)


def _fill(engine: sa.engine.Engine) -> None:
    add_documents(
        engine,
        "entity:AAA",
        NOW - timedelta(days=20),
        ["neutral"] * 18 + ["bearish"] * 2,
        step=timedelta(days=1),
    )
    add_documents(engine, "entity:AAA", NOW - timedelta(hours=2), ["bearish"] * 7, surge_score=1.5)
    add_documents(engine, "topic:Earnings", NOW - timedelta(hours=3), ["neutral", "bearish"])


def test_top_json_ranks_the_fresh_turn_first(
    engine: sa.engine.Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(engine)
    code = main(
        ["--database-url", database_url, "top", "--json", "--now", "latest", "--since", "6h"]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["now"] == (NOW - timedelta(hours=2) + 6 * timedelta(minutes=10)).isoformat()
    first = payload["keys"][0]
    assert first["key"] == "entity:AAA"
    assert (first["bearish"], first["documents"], first["baseline_documents"]) == (7, 7, 20)
    assert first["evidence"] > 3 and first["surge_score"] == 1.5
    assert len(first["headlines"]) == 3 and first["headlines"][0]["sentiment"] == "bearish"


def test_top_in_words_and_its_kind_filter(
    engine: sa.engine.Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(engine)
    assert main(["--database-url", database_url, "top", "--now", NOW.isoformat()]) == 0
    text = capsys.readouterr().out
    assert "turning negative" in text
    assert " 1. entity:AAA: 7 of 7 bearish (100 %)" in text
    assert "AAA headline" in text
    assert (
        main(["--database-url", database_url, "top", "--now", NOW.isoformat(), "--kind", "topic"])
        == 0
    )
    text = capsys.readouterr().out
    assert "topic:Earnings" in text and "entity:AAA" not in text


def test_top_on_an_empty_window_points_at_the_newest_data(
    engine: sa.engine.Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(engine)
    assert main(["--database-url", database_url, "top", "--now", "2027-01-01T00:00Z"]) == 0
    assert "try --now latest" in capsys.readouterr().out
    assert main(["--database-url", database_url, "top", "--since", "soon"]) == 2
    assert "--since" in capsys.readouterr().err
