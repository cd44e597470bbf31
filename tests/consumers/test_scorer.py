"""The scorer hot-reloads a newly promoted champion between batches; every prediction
records the version that made it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from consumers.scorer import Scorer
from pipeline import registry
from pipeline.settings import Settings
from tests.consumers.helpers import RoleThread, count, make_documents, produce, wait_for


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.tiny import build_tiny_model_dir

    return build_tiny_model_dir(
        tmp_path_factory.mktemp("champion") / "model", seed=1, version="tiny-champion"
    )


def test_scorer_switches_to_a_new_champion_between_batches(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path, second_model_dir: Path
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir, "model_poll_s": 0.3})
    scorer = RoleThread(Scorer(s, s.kafka_bootstrap or "", engine)).start()
    try:
        produce(s, make_documents(100, seed=11, prefix="before"))
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") == 100,
            60,
            "the first 100 predictions",
        )
        with engine.begin() as conn:
            registry.register_version(conn, "tiny-champion", second_model_dir, {"note": "test"})
            registry.promote(conn, "tiny-champion")
        wait_for(lambda: scorer.role.watcher.path == second_model_dir, 20, "the reload")
        produce(s, make_documents(100, seed=12, prefix="after"))
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") == 200, 60, "200 predictions"
        )
    finally:
        scorer.close()
    with engine.connect() as conn:
        versions = dict(
            conn.execute(
                sa.text(
                    "SELECT split_part(document_id, '-', 1), string_agg(DISTINCT model_version, ',') "
                    "FROM predictions GROUP BY 1"
                )
            ).all()
        )
    assert versions == {"before": "tiny-0", "after": "tiny-champion"}
