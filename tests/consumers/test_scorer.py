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


def test_with_story_grouping_each_document_row_is_written_once_with_its_story(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path
) -> None:
    """Story ids are assigned before the documents are inserted: every row carries its
    story from the start (no UPDATE per document, so no dead tuples), and one headline told
    by three outlets is one story."""
    import time
    from datetime import timedelta

    s = settings.model_copy(update={"model_dir": tiny_model_dir, "story_grouping": True})
    docs = make_documents(30, seed=21, prefix="st")
    headline = "Acme Corp recalls two million cars over faulty brakes"
    copies = [
        docs[0].model_copy(
            update={
                "id": f"st-copy-{n}",
                "source": outlet,
                "title": headline if n == 0 else f"{headline}, regulator says",
                "entities": (),
                "published_at": docs[0].published_at + timedelta(minutes=n),
            }
        )
        for n, outlet in enumerate(("wire", "paper", "blog"))
    ]
    with engine.connect() as conn:
        ins_before, before = conn.execute(
            sa.text(
                "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'documents'"
            )
        ).one()
    scorer = RoleThread(Scorer(s, s.kafka_bootstrap or "", engine)).start()
    try:
        produce(s, docs + copies)
        wait_for(lambda: count(engine, "SELECT count(*) FROM predictions") == 33, 60, "33 rows")
    finally:
        scorer.close()
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM documents WHERE story_id IS NULL")
            ).scalar_one()
            == 0
        )
        stories = conn.execute(
            sa.text("SELECT DISTINCT story_id FROM documents WHERE id LIKE 'st-copy-%'")
        ).all()
        assert len(stories) == 1
    deadline = time.monotonic() + 10  # the scorer's backend flushes its statistics within ~1 s
    while True:
        with engine.connect() as conn:
            ins, upd = conn.execute(
                sa.text(
                    "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'documents'"
                )
            ).one()
        if ins >= ins_before + 33 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # the inserts' statistics arrived, and the same transactions' updates with them
    assert ins >= ins_before + 33, "the scorer's table statistics never arrived"
    assert upd == before, "document rows were rewritten after their insert"
