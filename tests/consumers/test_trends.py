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
    with engine.connect() as conn:  # both surge scores of a three-output cell are stored
        nulls = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE volume_surge_score IS NULL), "
                "(SELECT count(*) FROM key_state WHERE volume_surge_score IS NULL) FROM trend_points"
            )
        ).one()
    assert tuple(nulls) == (0, 0)


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


# --- day-precision documents ---------------------------------------------------------------

DAY_START = datetime(2021, 3, 4, 5, tzinfo=UTC)  # midnight in New York, as replay stores it


def day_items(days: int, per_day: int, seed: int = 0) -> list[ScoredItem]:
    """``per_day`` day-stamped documents on each of ``days`` days, plus one timed document a
    day at 15:00 (second precision), for one key."""
    out = items(days * (per_day + 1), seed=seed)
    for n, item in enumerate(out):
        day, slot = divmod(n, per_day + 1)
        if slot < per_day:
            item.event_at = DAY_START + timedelta(days=day)
            item.time_precision = "day"
        else:
            item.event_at = DAY_START + timedelta(days=day, hours=10)
    return out


def reference_state(memory: object, docs: list[ScoredItem], gaps: str) -> np.ndarray:
    """The state after a clean run in canonical order; ``gaps="raw"`` feeds the plain
    event-time differences (0 s between same-day documents), ``"spread"`` the rule's."""
    from pipeline.memory_features import memory_gap_seconds

    cell = memory.cell  # type: ignore[attr-defined]
    state = cell.initial_state()
    canonical = sorted(docs, key=lambda i: (i.event_at, i.document_id))
    prev = None
    for n, item in enumerate(canonical):
        if gaps == "raw":
            dt = None if prev is None else (item.event_at - prev).total_seconds()
        else:
            dt = memory_gap_seconds(
                item.event_at,
                prev,
                item.time_precision,
                first_at=canonical[0].event_at,
                documents_before=n,
            )
            assert dt is None or dt > 0
        feats = cell.features(
            item.p_bearish,
            item.p_neutral,
            item.p_bullish,
            item.topic_confidence,
            item.doc_vector,
            dt,
        )
        state = cell.update(state[None, :], feats[None, :])[0][0]
        prev = item.event_at
    return state


def test_day_documents_land_with_their_precision_and_are_spread_over_their_day(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir})
    memory = load_memory(tiny_model_dir, s)
    trends = Trends(s, "", engine)
    docs = day_items(days=3, per_day=8, seed=5)
    canonical = sorted(docs, key=lambda i: (i.event_at, i.document_id))
    apply_in_batches(trends, engine, memory, [canonical[i : i + 5] for i in range(0, 27, 5)])
    with engine.connect() as conn:
        stored = dict(
            conn.execute(sa.text("SELECT document_id, time_precision FROM trend_points")).all()
        )
    assert stored == {i.document_id: i.time_precision for i in docs}
    assert sum(p == "day" for p in stored.values()) == 24

    got, count, points = state(engine)
    assert (count, points) == (27, 27)
    spread = reference_state(memory, docs, gaps="spread")
    raw = reference_state(memory, docs, gaps="raw")
    assert float(np.max(np.abs(got - spread))) < 1e-5
    # the same-day documents did not reach the cell 0 s apart
    assert float(np.max(np.abs(got - raw))) > 1e-3


@pytest.mark.parametrize("seed", [6, 7])
def test_day_documents_give_the_canonical_state_in_any_arrival_order(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path, seed: int
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir})
    memory = load_memory(tiny_model_dir, s)
    trends = Trends(s, "", engine)
    docs = day_items(days=4, per_day=6, seed=seed)
    rng = random.Random(seed)
    shuffled = docs[:]
    rng.shuffle(shuffled)
    batches = [shuffled[i : i + 4] for i in range(0, len(shuffled), 4)]
    redelivered = [shuffled[rng.randrange(len(shuffled))] for _ in range(5)]
    assert apply_in_batches(trends, engine, memory, batches + [redelivered]) == len(docs)
    got, count, points = state(engine)
    assert (count, points) == (len(docs), len(docs))
    assert trends.rewinds > 0
    assert float(np.max(np.abs(got - reference_state(memory, docs, gaps="spread")))) < 1e-5
