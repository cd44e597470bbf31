"""`finsent demo` replays the shipped sample stream end to end and prints its summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from finsent.commands.demo import SAMPLE_STREAM, SAMPLE_WATCHLIST, run_demo
from pipeline.entities import load_watchlist
from pipeline.settings import Settings


def test_sample_stream_has_a_negative_surge_on_a_watched_ticker() -> None:
    rows = [json.loads(line) for line in SAMPLE_STREAM.read_text().splitlines()]
    assert 300 <= len(rows) <= 600
    watchlist = load_watchlist(SAMPLE_WATCHLIST)
    assert watchlist is not None
    nvlx = [r for r in rows if "NVLX" in watchlist.match(r["text"])]
    day2 = [r for r in nvlx if r["published_at"].startswith("2026-03-03T1")]
    assert len(day2) >= 30


def test_demo_scores_every_sample_document_and_prints_the_summary(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path
) -> None:
    out = io.StringIO()
    s = settings.model_copy(update={"model_dir": tiny_model_dir})
    assert run_demo(s, timeout_s=100, out=out) == 0
    text = out.getvalue()
    n = len(SAMPLE_STREAM.read_text().splitlines())
    assert f"documents scored: {n} of {n}" in text
    assert "top negative keys" in text and "entity:NVLX" in text
    assert "SELECT" in text
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM predictions")).scalar() == n
        assert (
            conn.execute(
                sa.text("SELECT doc_count FROM key_state WHERE key = 'entity:NVLX'")
            ).scalar()
            >= 70
        )


def test_demo_without_a_model_says_where_to_get_one(settings: Settings, tmp_path: Path) -> None:
    from pipeline.errors import ModelError

    with pytest.raises(ModelError, match="FINSENT_MODEL_DIR"):
        run_demo(settings.model_copy(update={"model_dir": tmp_path}), out=io.StringIO())
