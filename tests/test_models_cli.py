"""``finsent models list | promote V | rollback`` for people."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from finsent.cli import main
from pipeline import registry
from tests.pipeline.test_registry import register


def test_models_list_promote_rollback(
    engine: sa.Engine, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--database-url", database_url]
    assert main([*db, "models", "list"]) == 0
    assert "no model versions registered" in capsys.readouterr().out
    register(engine, tmp_path, "v1", f1=0.61)
    register(engine, tmp_path, "v2", f1=0.72)
    assert main([*db, "models", "promote", "v1"]) == 0
    assert main([*db, "models", "promote", "v2"]) == 0
    assert "v2 is now the champion" in capsys.readouterr().out
    assert main([*db, "models", "list"]) == 0
    out = capsys.readouterr().out
    assert "v2" in out and "champion" in out and "0.7200" in out and "retired" in out
    assert main([*db, "models", "rollback"]) == 0
    assert "v1 is the champion again" in capsys.readouterr().out
    assert registry.current_champion(engine).version == "v1"  # type: ignore[union-attr]


def test_models_errors_say_what_to_do(
    engine: sa.Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--database-url", database_url]
    assert main([*db, "models", "promote"]) == 2
    assert "needs the version" in capsys.readouterr().err
    assert main([*db, "models", "promote", "ghost"]) == 2
    assert "finsent models list" in capsys.readouterr().err
    assert main([*db, "models", "rollback"]) == 2
    assert "nothing to roll back" in capsys.readouterr().err
