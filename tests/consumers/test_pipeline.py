"""Scorer + trends end to end on the real broker and PostgreSQL with the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from consumers.progress import GroupProgress
from consumers.scorer import Scorer
from consumers.trends import Trends
from pipeline.settings import Settings
from tests.consumers.helpers import (
    RoleThread,
    assert_exactly_once,
    assert_states_equal_reference,
    count,
    make_documents,
    produce,
    wait_for,
)


@pytest.fixture
def stream_settings(settings: Settings, tiny_model_dir: Path) -> Settings:
    return settings.model_copy(update={"model_dir": tiny_model_dir})


def test_two_thousand_documents_are_stored_once_and_counted_once_per_key(
    stream_settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path
) -> None:
    s = stream_settings
    docs = make_documents(2000, seed=1)
    scorer = RoleThread(Scorer(s, s.kafka_bootstrap or "", engine)).start()
    trends = RoleThread(Trends(s, s.kafka_bootstrap or "", engine)).start()
    try:
        produce(s, docs)
        produce(s, docs[:300])  # re-ingested documents are harmless
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") == 2000,
            90,
            "2,000 predictions",
        )
        with GroupProgress(s.kafka_bootstrap or "") as progress:
            assert progress.wait_caught_up(
                s.group_id("scorer"), s.kafka_topic_documents, timeout_s=30
            )
            assert progress.wait_caught_up(s.group_id("trends"), s.kafka_topic_scored, timeout_s=60)
    finally:
        scorer.close()
        trends.close()
    assert_exactly_once(engine, 2000)
    assert_states_equal_reference(engine, tiny_model_dir, s)
    with engine.connect() as conn:
        versions = (
            conn.execute(sa.text("SELECT DISTINCT model_version FROM predictions")).scalars().all()
        )
        latency = conn.execute(sa.text("SELECT min(latency_ms) FROM predictions")).scalar()
    assert versions == ["tiny-0"]
    assert latency is not None and latency > 0
