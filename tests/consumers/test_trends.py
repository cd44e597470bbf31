"""The trends worker's memory does not depend on arrival order (within the lateness
horizon), and a (key, document) applies once however often it arrives."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from consumers.trends import ScoredItem, Trends, load_memory
from pipeline.settings import Settings

START = datetime(2026, 3, 2, tzinfo=UTC)


def items(n: int, seed: int = 0) -> list[ScoredItem]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = [rng.random() for _ in range(3)]
        total = sum(p)
        out.append(
            ScoredItem(
                key="entity:NVLX",
                document_id=f"d{i:03d}",
                event_at=START + timedelta(minutes=rng.randint(0, 600)),
                sentiment=rng.choice(["bearish", "neutral", "bullish"]),
                p_bearish=p[0] / total,
                p_neutral=p[1] / total,
                p_bullish=p[2] / total,
                topic_confidence=rng.random(),
                doc_vector=[rng.uniform(-1, 1) for _ in range(16)],
            )
        )
    return out


def copy(item: ScoredItem) -> ScoredItem:
    return ScoredItem(**{**item.__dict__, "order_at": None, "stored": False})


def apply_in_batches(
    trends: Trends, engine: sa.engine.Engine, memory: object, batches: list[list[ScoredItem]]
) -> int:
    applied = 0
    for batch in batches:
        with engine.begin() as conn:
            applied += trends.apply(
                conn, memory, {"entity:NVLX": {i.document_id: copy(i) for i in batch}}
            )  # type: ignore[arg-type]
    return applied


def state(engine: sa.engine.Engine) -> tuple[np.ndarray, int, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT state, doc_count, negative_count FROM key_state")).one()
        points = conn.execute(sa.text("SELECT count(*) FROM trend_points")).scalar()
    return np.asarray(row.state, dtype=np.float32), int(row.doc_count), int(points or 0)


def reset(engine: sa.engine.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE key_state, trend_points, applied_documents"))


@pytest.mark.parametrize("seed", [1, 2])
def test_any_arrival_order_gives_the_canonical_state_and_counts_each_document_once(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path, seed: int
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir})
    memory = load_memory(tiny_model_dir, s)
    trends = Trends(s, "", engine)
    docs = items(60, seed=seed)
    canonical = sorted(docs, key=lambda i: (i.event_at, i.document_id))
    assert (
        apply_in_batches(trends, engine, memory, [canonical[i : i + 7] for i in range(0, 60, 7)])
        == 60
    )
    expected, count, points = state(engine)
    assert (count, points) == (60, 60)

    rng = random.Random(seed)
    shuffled = docs[:]
    rng.shuffle(shuffled)
    reset(engine)
    batches = [shuffled[i : i + 5] for i in range(0, 60, 5)]
    redelivered = [shuffled[rng.randrange(60)] for _ in range(10)]
    assert apply_in_batches(trends, engine, memory, batches + [redelivered]) == 60
    got, count, points = state(engine)
    assert (count, points) == (60, 60)
    assert trends.rewinds > 0
    assert float(np.max(np.abs(got - expected))) < 1e-5


def test_a_document_older_than_the_horizon_is_applied_at_the_current_position(
    settings: Settings,
    engine: sa.engine.Engine,
    tiny_model_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir, "lateness_horizon_s": 3600.0})
    memory = load_memory(tiny_model_dir, s)
    trends = Trends(s, "", engine)
    docs = sorted(items(10, seed=3), key=lambda i: (i.event_at, i.document_id))
    late = docs[0]
    late.event_at = docs[-1].event_at - timedelta(hours=5)
    docs = sorted(docs[1:], key=lambda i: (i.event_at, i.document_id))
    apply_in_batches(trends, engine, memory, [docs, [late]])
    assert "beyond the lateness horizon" in caplog.text
    with engine.connect() as conn:
        order_at, event_at = conn.execute(
            sa.text("SELECT order_at, event_at FROM trend_points WHERE document_id = :d"),
            {"d": late.document_id},
        ).one()
    assert order_at == docs[-1].event_at and event_at == late.event_at
