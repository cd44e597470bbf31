"""Shared by the stream tests: documents to replay, producing them, waiting, and the
reference memory of a clean single run computed straight from the stored predictions."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.documents import Document
from pipeline.inference import MemoryCell
from pipeline.kafka_io import make_producer
from pipeline.memory_features import memory_gap_seconds
from pipeline.records import keys_of
from pipeline.settings import Settings

TICKERS = ("NVLX", "BRWL", "CSTR", "HLXB", "QNTR", "MRVA")
WORDS = (
    "shares",
    "jump",
    "slide",
    "after",
    "earnings",
    "guidance",
    "downgrade",
    "upgrade",
    "probe",
    "record",
    "revenue",
    "weak",
    "strong",
    "demand",
    "cuts",
    "raises",
    "dividend",
    "deal",
)
START = datetime(2026, 3, 2, tzinfo=UTC)


def make_documents(n: int, *, seed: int = 0, prefix: str = "t") -> list[Document]:
    """``n`` documents in event-time order (a few seconds apart, some sharing a time), each
    naming zero to two tickers."""
    rng = random.Random(seed)
    docs = []
    when = START
    for i in range(n):
        if rng.random() > 0.1:  # every tenth shares its predecessor's event time
            when += timedelta(seconds=rng.randint(1, 90))
        entities = tuple(sorted(set(rng.sample(TICKERS, rng.choice((0, 1, 1, 2))))))
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
        docs.append(
            Document(
                id=f"{prefix}-{seed}-{i:05d}",
                source="test",
                published_at=when,
                text=f"{' '.join('$' + t for t in entities)} {words}".strip(),
                entities=entities,
            )
        )
    return docs


def produce(
    settings: Settings, docs: Iterable[Document], *, pace_s: float = 0.0, chunk: int = 50
) -> int:
    """Send documents to the documents topic keyed by id (as the producers do)."""
    producer = make_producer(settings, settings.kafka_bootstrap or "")
    sent = 0
    try:
        for doc in docs:
            producer.send(
                settings.kafka_topic_documents, key=doc.id.encode(), value=doc.to_json_bytes()
            )
            sent += 1
            if pace_s and sent % chunk == 0:
                producer.flush()
                time.sleep(pace_s)
        producer.flush()
    finally:
        producer.close()
    return sent


def send_raw(
    settings: Settings, values: Sequence[bytes | None], kafka_topic: str | None = None
) -> None:
    producer = make_producer(settings, settings.kafka_bootstrap or "")
    for i, value in enumerate(values):
        producer.send(
            kafka_topic or settings.kafka_topic_documents, key=f"raw-{i}".encode(), value=value
        )
    producer.flush()
    producer.close()


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar() or 0)


class RoleThread:
    """A role running in a thread of the test process, stopped like SIGTERM would."""

    def __init__(self, role: Any) -> None:
        self.role = role
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.role.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - surfaced by close()
            self.error = exc

    def start(self) -> RoleThread:
        self.thread.start()
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"{self.role.name} did not stop within {timeout_s}s"
        if self.error is not None:
            raise self.error


def expected_ledger(engine: Engine) -> set[tuple[str, str]]:
    """Every (key, document) the stored predictions and entities call for."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT d.id, p.topic, d.entities FROM documents d JOIN latest_predictions p ON p.document_id = d.id"
            )
        ).all()
    return {(key, row.id) for row in rows for key in keys_of(row.topic, row.entities)}


def reference_states(
    engine: Engine,
    model_dir: Path,
    settings: Settings,
    trace: dict[str, list[tuple[str, np.ndarray]]] | None = None,
) -> dict[str, np.ndarray]:
    """Each key's state after a clean single run: the memory cell applied to the key's
    documents one at a time in canonical order (event time, document id), from the stored
    predictions, with the gaps of :func:`pipeline.memory_features.memory_gap_seconds` (the
    plain event-time gaps, except between day documents of one day). Independent of the
    trends worker's code."""
    cell = MemoryCell.load(model_dir, settings)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT d.id, d.published_at, d.time_precision, d.entities, p.topic, p.topic_confidence, "
                "p.p_bearish, p.p_neutral, p.p_bullish, p.doc_vector "
                "FROM documents d JOIN latest_predictions p ON p.document_id = d.id"
            )
        ).all()
    per_key: dict[str, list[Any]] = {}
    for row in rows:
        for key in keys_of(row.topic, row.entities):
            per_key.setdefault(key, []).append(row)
    states = {}
    for key, docs in per_key.items():
        docs.sort(key=lambda r: (r.published_at, r.id))
        state = cell.initial_state()
        prev = None
        for n, r in enumerate(docs):
            dt = memory_gap_seconds(
                r.published_at,
                prev,
                r.time_precision,
                first_at=docs[0].published_at,
                documents_before=n,
            )
            feats = cell.features(
                r.p_bearish, r.p_neutral, r.p_bullish, r.topic_confidence, r.doc_vector, dt
            )
            new_state, _ = cell.update(state[None, :], feats[None, :])
            state = new_state[0]
            prev = r.published_at
            if trace is not None:
                trace.setdefault(key, []).append((r.id, state))
        states[key] = state
    return states


def stored_states(engine: Engine) -> dict[str, np.ndarray]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key, state FROM key_state")).all()
    return {r.key: np.asarray(r.state, dtype=np.float32) for r in rows}


def assert_states_equal_reference(engine: Engine, model_dir: Path, settings: Settings) -> None:
    trace: dict[str, list[tuple[str, np.ndarray]]] = {}
    reference = reference_states(engine, model_dir, settings, trace)
    stored = stored_states(engine)
    assert set(stored) == set(reference)
    diffs = {k: float(np.max(np.abs(stored[k] - reference[k]))) for k in reference}
    worst_key = max(diffs, key=lambda k: diffs[k])
    if diffs[worst_key] >= 1e-5:
        with engine.connect() as conn:
            points = {
                r.document_id: np.asarray(r.state, dtype=np.float32)
                for r in conn.execute(
                    sa.text("SELECT document_id, state FROM trend_points WHERE key = :k"),
                    {"k": worst_key},
                )
            }
        steps = trace[worst_key]
        first = next(
            (
                i
                for i, (doc_id, st) in enumerate(steps)
                if float(np.max(np.abs(points[doc_id] - st))) >= 1e-6
            ),
            None,
        )
        detail = [
            (i, steps[i][0], float(np.max(np.abs(points[steps[i][0]] - steps[i][1]))))
            for i in range(max(0, (first or 0) - 2), min(len(steps), (first or 0) + 5))
        ]
        raise AssertionError(
            f"key states differ from a clean single run by up to {diffs[worst_key]} on "
            f"{worst_key} ({len(steps)} documents); first step differing by 1e-6: {first}; "
            f"{detail}; keys over 1e-5: {sum(d >= 1e-5 for d in diffs.values())}/{len(diffs)}"
        )


def assert_exactly_once(engine: Engine, n_docs: int) -> None:
    assert count(engine, "SELECT count(*) FROM documents") == n_docs
    assert count(engine, "SELECT count(*) FROM predictions") == n_docs
    expected = expected_ledger(engine)
    with engine.connect() as conn:
        ledger = [
            (r.key, r.document_id)
            for r in conn.execute(sa.text("SELECT key, document_id FROM applied_documents"))
        ]
        points = count(engine, "SELECT count(*) FROM trend_points")
        doc_counts = int(
            conn.execute(sa.text("SELECT coalesce(sum(doc_count), 0) FROM key_state")).scalar() or 0
        )
    assert len(ledger) == len(set(ledger))
    assert set(ledger) == expected
    assert points == len(expected)
    assert doc_counts == len(expected)
