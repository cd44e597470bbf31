"""The finsent CLI: help, status, db upgrade, and clear errors for unlanded commands."""

from __future__ import annotations

import pytest

from pipeline.cli import main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("db", "run", "demo", "worker", "ingest", "classify", "train", "export",
                    "models", "retrain", "alerts", "label", "status"):
        assert command in out


def test_db_upgrade_then_status_reports_revision_and_no_champion(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", empty_database_url, "db", "upgrade"]) == 0
    assert main(["--database-url", empty_database_url, "db", "status"]) == 0
    assert main(["--database-url", empty_database_url, "status"]) == 0
    out = capsys.readouterr().out
    assert "0001_initial" in out
    assert "champion_model" in out and "none registered" in out


def test_bad_setting_exits_2_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FINSENT_DATABASE_URL", "sqlite:///x.db")
    assert main(["status"]) == 2
    assert "FINSENT_DATABASE_URL" in capsys.readouterr().err
