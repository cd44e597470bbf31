"""A better challenger (trained with a human label) is promoted over the shipped model and
reaches a running scorer mid-stream: the scorer switches between batches, every document is
scored exactly once, each prediction names its model, and a rollback returns to the shipped
model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline import registry
from pipeline.settings import Settings
from tests.consumers.helpers import RoleThread, count, make_documents, produce, wait_for
from tests.training.test_retrain import GOOD_STEPS, retrain_settings, tiny_config, write_easy_data

pytest.importorskip("torch")


def test_promoted_challenger_is_picked_up_mid_stream_and_every_document_is_scored_once(
    engine: sa.Engine, settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from consumers.scorer import Scorer
    from pipeline.labels import store_label
    from training.retrain_run import run_retraining

    s = retrain_settings(settings, write_easy_data(tmp_path / "data"), tmp_path).model_copy(
        update={"model_dir": tiny_model_dir, "model_poll_s": 0.3}
    )
    with engine.begin() as conn:  # one human label, which the challenger trains on
        conn.execute(
            sa.text(
                "insert into documents (id, source, published_at, text) "
                "values ('labelled', 't', now(), 'shares crash and plunge')"
            )
        )
        store_label(conn, "labelled", sentiment="bearish", topic_id=19, labelled_by="desk")
    docs = make_documents(3200, seed=6, prefix="hot")
    before, during, after = docs[:200], docs[200:3100], docs[3100:]
    scorer = RoleThread(Scorer(s, s.kafka_bootstrap or "", engine)).start()
    stop_stream = threading.Event()
    streamed: list[int] = []

    def stream() -> None:  # a steady trickle while the challenger trains
        for i in range(0, len(during), 10):
            produce(s, during[i : i + 10])
            streamed.append(i + 10)
            if stop_stream.wait(0.25):
                break

    try:
        produce(s, before)
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") >= 100,
            60,
            "the first predictions",
        )
        producer = threading.Thread(target=stream, daemon=True)
        producer.start()
        outcome = run_retraining(s, config=tiny_config(GOOD_STEPS), engine=engine)
        assert outcome.status == "promoted", outcome.summary()
        assert producer.is_alive(), "the stream must still be flowing when the champion changes"
        new = outcome.challenger_version
        wait_for(
            lambda: (
                count(engine, "SELECT count(*) FROM predictions WHERE model_version = :v", v=new)
                > 0
            ),
            30,
            "the scorer to score with the new champion",
        )
        stop_stream.set()
        producer.join(timeout=30)
        sent_during = during[: min(streamed[-1], len(during))]
        produce(s, after)
        total = len(before) + len(sent_during) + len(after)
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") >= total,
            90,
            f"{total} predictions",
        )
        time.sleep(1.0)  # nothing more may arrive
    finally:
        stop_stream.set()
        scorer.close()
    old = outcome.champion_version
    with engine.connect() as conn:
        per_doc = dict(
            conn.execute(
                sa.text("SELECT document_id, count(*) FROM predictions GROUP BY document_id")
            ).all()
        )
        by_version = dict(
            conn.execute(
                sa.text("SELECT model_version, count(*) FROM predictions GROUP BY model_version")
            ).all()
        )
        after_versions = set(
            conn.execute(
                sa.text(
                    "SELECT DISTINCT model_version FROM predictions WHERE document_id = ANY(:ids)"
                ),
                {"ids": [d.id for d in after]},
            ).scalars()
        )
    per_doc.pop("labelled", None)
    assert len(per_doc) == total and set(per_doc.values()) == {1}, (
        "a document was scored twice or not at all"
    )
    assert (
        set(by_version) == {old, new} and by_version[old] >= 100 and by_version[new] >= len(after)
    )
    assert after_versions == {new}
    assert registry.current_champion(engine).version == new  # type: ignore[union-attr]
    # the shipped model was registered as the first champion, so there is one to return to
    assert old == json.loads((tiny_model_dir / "manifest.json").read_text())["version"]
    assert {v.version: v.status for v in registry.list_versions(engine)} == {
        new: "champion",
        old: "retired",
    }
    saved = json.loads((outcome.run_dir / "metrics.json").read_text())  # type: ignore[operator]
    assert saved["feedback_labels"] == {"sentiment": 1, "topic": 1}
    assert (
        saved["challenger_metrics"]["topic"]["macro_f1"]
        > saved["champion_metrics"]["topic"]["macro_f1"]
    )
    assert not list(Path(s.model_registry_dir).glob(".*.partial"))
    with engine.begin() as conn:
        demoted, restored = registry.rollback(conn)
    assert (demoted.version, restored.version) == (new, old)
