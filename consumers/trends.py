"""The trends worker (``finsent worker trends``): each key's recurrent memory, exactly once
per (key, document), in a deterministic order.

Consumer group ``finsent-trends`` (``FINSENT_KAFKA_GROUP_PREFIX``-trends) on the scored Kafka topic (keyed by memory key, so one
worker owns a key). For each micro-batch, in ONE PostgreSQL transaction:

* lock the batch's keys (``key_state`` rows, ``FOR UPDATE``, in key order), read the
  applied-documents ledger and drop every (key, document) already applied: redeliveries
  after a crash, a rebalance or a re-scored document change nothing;
* step the ONNX memory cell (:class:`pipeline.inference.MemoryCell`) over the key's new
  documents, write a trend point per document, the ledger rows and the new ``key_state``.
  Offsets are committed after the transaction; a crash before it redoes the batch, a
  crash after it finds everything in the ledger.

Event-time order. A key's memory is defined as the cell applied to the key's documents in
**canonical order** ``(order_at, document_id)``, where ``order_at`` is the document's event
time. Records reach a key out of that order all the time (documents of one key come from
several partitions of the documents topic, and a killed scorer re-sends a batch later), so
when a batch holds a document that sorts before the key's newest applied one the worker
**rewinds**: it starts from the state stored with the trend point just before the
insertion position and replays the key's later points (inputs kept in ``trend_points``)
with the new documents merged in, rewriting those points. The result is the same state as
one clean run in canonical order, whatever the arrival order was.

Rewinds are bounded by ``Settings.lateness_horizon_s``: a document older than its key's
newest by more than the horizon is not slotted into the past; it is applied at the key's
current position (``order_at`` = the key's newest ``order_at``) and logged. Within the
horizon the result is deterministic; beyond it, it depends on arrival.

Time precision. Each trend point keeps its document's ``time_precision`` (second, minute,
hour, day; the alert evaluator reads it there). A ``day`` document (a source that gives
only a date) sits at the start of its day, so a day's documents share one ``order_at``; the
gap the cell sees between two of them is the key's average inter-arrival time over its
canonical prefix, not 0 s (:func:`pipeline.memory_features.memory_gap_seconds`). That needs
the key's first ``order_at`` (the oldest trend point, one index probe per key, read only
for batches holding day documents) and its document count, both functions of the canonical
prefix: a rewind replays the same gaps.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from consumers.batching import PartitionReader
from consumers.worker import StreamWorker
from pipeline import metrics
from pipeline.db import retry_db
from pipeline.errors import InputError
from pipeline.inference import MemoryCell, read_manifest
from pipeline.json_codec import rows_text
from pipeline.memory_features import memory_gap_seconds
from pipeline.records import ScoredRecord
from pipeline.roles import Stage
from pipeline.settings import BatchPolicy, Settings

log = logging.getLogger(__name__)

ROLE_GROUP = "trends"  # consumer group: Settings.group_id(ROLE_GROUP)
ROLE = "trends"
#: Trends batches are this many times the scorer's: a scored record is a few
#: hundred bytes and cheap to apply, and one transaction per larger batch means one
#: rewind per key where several late documents arrive together, instead of one each.
BATCH_FACTOR = 32


@dataclass(frozen=True)
class Memory:
    """The memory cell a trends worker serves and the model version it came from."""

    cell: MemoryCell
    version: str


def load_memory(model_dir: Path, settings: Settings) -> Memory:
    return Memory(
        MemoryCell.load(Path(model_dir), settings), str(read_manifest(Path(model_dir))["version"])
    )


@dataclass
class ScoredItem:
    """One (key, document) to apply: the scorer's record, or a stored trend point to replay."""

    key: str
    document_id: str
    event_at: datetime
    sentiment: str
    p_bearish: float
    p_neutral: float
    p_bullish: float
    topic_confidence: float
    doc_vector: list[float]
    order_at: datetime | None = None
    stored: bool = False  # an existing trend point being replayed by a rewind
    time_precision: str = "second"

    @property
    def position(self) -> tuple[datetime, str]:
        assert self.order_at is not None
        return (self.order_at, self.document_id)

    @classmethod
    def from_record(cls, record: ScoredRecord) -> ScoredItem:
        return cls(
            key=record.key,
            document_id=record.document_id,
            event_at=record.event_at,
            sentiment=record.sentiment,
            p_bearish=record.p_bearish,
            p_neutral=record.p_neutral,
            p_bullish=record.p_bullish,
            topic_confidence=record.topic_confidence,
            doc_vector=list(record.doc_vector),
            time_precision=record.time_precision,
        )


def parse_scored(raw: bytes | None) -> ScoredItem:
    """A scored record's value; InputError with the reason when it is not one."""
    return ScoredItem.from_record(ScoredRecord.from_bytes(raw))


@dataclass
class KeyPlan:
    """What one key's memory does in this batch."""

    key: str
    start_state: np.ndarray
    prev_order_at: datetime | None
    doc_count: int
    negative_count: int
    items: list[ScoredItem] = field(default_factory=list)  # to apply, in canonical order
    states: np.ndarray | None = None  # after each item
    outputs: np.ndarray | None = None
    #: the key's first order_at before this plan (None: unknown yet, or the key starts here)
    first_order_at: datetime | None = None

    @property
    def needs_first_order_at(self) -> bool:
        """Whether the gaps need the key's first order_at from the database: it has
        history before the plan and the plan holds a day document."""
        return self.prev_order_at is not None and any(i.time_precision == "day" for i in self.items)


@dataclass
class TrendsBatch:
    """A parsed batch: per key, its documents (a document twice in a batch counts once)."""

    by_key: dict[str, dict[str, ScoredItem]]
    futures: list[Any]


class Trends(StreamWorker[Memory, TrendsBatch]):
    """The trends role (see the module docstring); the loop, commits, dead letters and hot
    reload come from :class:`consumers.worker.StreamWorker`."""

    name: ClassVar[str] = ROLE
    stage: ClassVar[Stage] = Stage.TREND
    role_group: ClassVar[str] = ROLE_GROUP

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.horizon = timedelta(seconds=self.settings.lateness_horizon_s)
        # A quarter of the scorer's wait: under a backlog batches fill at once anyway, and
        # at steady load the scorer has already waited for its batch once.
        self.policy = BatchPolicy(
            max_size=min(4096, self.settings.batch.max_size * BATCH_FACTOR),
            max_wait_ms=max(1, self.settings.batch.max_wait_ms // 4),
        )
        self.applied = 0
        self.rewinds = 0

    def input_topic(self) -> str:
        return self.settings.kafka_topic_scored

    def load_model(self, model_dir: Path) -> Memory:
        return load_memory(model_dir, self.settings)

    def make_reader(self) -> PartitionReader:
        # No merge: a key lives in one partition of the scored topic, so the order across
        # partitions does not matter here; the reader keeps the resume rule.
        return PartitionReader(None, None, role=ROLE, max_buffered=4 * self.policy.max_size)

    def batch_policy(self) -> BatchPolicy:
        return self.policy

    def consumer_options(self) -> dict[str, Any]:
        return {"max_poll_records": self.policy.max_size}

    def describe(self, model: Memory) -> str:
        return (
            f"{model.version}'s memory cell on {self.input_topic()} "
            f"(lateness horizon {self.horizon.total_seconds():.0f}s)"
        )

    # -- one batch -----------------------------------------------------------------------

    def prepare(self, records: list[Any]) -> TrendsBatch:
        batch = TrendsBatch({}, [])
        for record in records:
            try:
                item = parse_scored(record.value)
            except InputError as exc:
                batch.futures.append(self.dead_letter_record(str(exc), record))
                continue
            batch.by_key.setdefault(item.key, {})[item.document_id] = item
        return batch

    def finish(self, batch: TrendsBatch, stop: threading.Event) -> None:
        if batch.by_key:
            memory = self.watcher.model
            assert memory is not None

            def transaction() -> int:
                with self.engine.begin() as conn:
                    return self.apply(conn, memory, batch.by_key)

            applied = retry_db(transaction, what="trends: applying a batch", stop=stop.is_set)
            self.applied += applied
            metrics.TREND_UPDATES.inc(applied)
        self.flush(batch.futures)

    def apply(
        self, conn: Connection, memory: Memory, by_key: dict[str, dict[str, ScoredItem]]
    ) -> int:
        """Apply a batch in the caller's transaction; returns the (key, document) pairs applied."""
        cell = memory.cell
        keys = sorted(by_key)
        initial = cell.initial_state()
        conn.execute(
            sa.text(
                "INSERT INTO key_state (key, key_kind, state) SELECT k, split_part(k, ':', 1), cast(:state AS real[]) "
                "FROM unnest(cast(:keys AS text[])) AS k ON CONFLICT (key) DO NOTHING"
            ),
            {"keys": keys, "state": initial.tolist()},
        )
        rows = conn.execute(
            sa.text(
                "SELECT key, state, last_order_at, last_document_id, doc_count, negative_count "
                "FROM key_state WHERE key = ANY(:keys) ORDER BY key FOR UPDATE"
            ),
            {"keys": keys},
        ).all()
        key_rows = {row.key: row for row in rows}
        all_ids = sorted({doc_id for items in by_key.values() for doc_id in items})
        done = {
            (r.key, r.document_id)
            for r in conn.execute(
                sa.text(
                    "SELECT key, document_id FROM applied_documents WHERE key = ANY(:keys) AND document_id = ANY(:ids)"
                ),
                {"keys": keys, "ids": all_ids},
            )
        }

        plans: list[KeyPlan] = []
        for key in keys:
            new = [item for doc_id, item in by_key[key].items() if (key, doc_id) not in done]
            if new:
                plans.append(self._plan(conn, cell, key, key_rows[key], new))
        if not plans:
            return 0
        _read_first_order_at(conn, plans)
        _step_all(cell, plans)
        return self._write(conn, memory, plans)

    def _plan(
        self, conn: Connection, cell: MemoryCell, key: str, row: Any, new: list[ScoredItem]
    ) -> KeyPlan:
        last_order: datetime | None = row.last_order_at
        last_pos = (last_order, row.last_document_id or "") if last_order is not None else None
        for item in new:
            item.order_at = item.event_at
            if last_order is not None and item.event_at < last_order - self.horizon:
                log.warning(
                    "trends: %s is %.0fs older than key %s's newest document, beyond the lateness "
                    "horizon; applied at the key's current position",
                    item.document_id,
                    (last_order - item.event_at).total_seconds(),
                    key,
                )
                item.order_at = last_order
        new.sort(key=lambda i: i.position)
        if last_pos is None or new[0].position > last_pos:
            state = _state_or_initial(row.state, cell, key)
            return KeyPlan(key, state, last_order, int(row.doc_count), int(row.negative_count), new)
        # Rewind: replay from the point just before the first new document.
        self.rewinds += 1
        start = new[0].order_at
        before = conn.execute(
            sa.text(
                "SELECT order_at, state, doc_count, negative_count FROM trend_points "
                "WHERE key = :key AND order_at < :start "
                'ORDER BY order_at DESC, document_id COLLATE "C" DESC LIMIT 1'
            ),
            {"key": key, "start": start},
        ).first()
        tail = conn.execute(
            sa.text(
                "SELECT document_id, event_at, order_at, sentiment, p_bearish, p_neutral, p_bullish, "
                "topic_confidence, doc_vector, time_precision FROM trend_points "
                "WHERE key = :key AND order_at >= :start"
            ),
            {"key": key, "start": start},
        ).all()
        replay = [
            ScoredItem(
                key=key,
                document_id=r.document_id,
                event_at=r.event_at,
                sentiment=r.sentiment,
                p_bearish=r.p_bearish,
                p_neutral=r.p_neutral,
                p_bullish=r.p_bullish,
                topic_confidence=r.topic_confidence,
                doc_vector=list(r.doc_vector or ()),
                order_at=r.order_at,
                stored=True,
                time_precision=r.time_precision,
            )
            for r in tail
        ]
        merged = sorted(replay + new, key=lambda i: i.position)
        log.debug(
            "trends: rewinding key %s over %d stored points for %d late documents",
            key,
            len(replay),
            len(new),
        )
        if before is None:
            return KeyPlan(key, cell.initial_state(), None, 0, 0, merged)
        return KeyPlan(
            key,
            _state_or_initial(before.state, cell, key),
            before.order_at,
            int(before.doc_count),
            int(before.negative_count),
            merged,
        )

    def _write(self, conn: Connection, memory: Memory, plans: list[KeyPlan]) -> int:
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        ledger: list[dict[str, Any]] = []
        key_updates: list[dict[str, Any]] = []
        for plan in plans:
            assert plan.states is not None and plan.outputs is not None
            doc_count, negative_count = plan.doc_count, plan.negative_count
            for i, item in enumerate(plan.items):
                doc_count += 1
                negative_count += item.sentiment == "bearish"
                figures = {
                    "key": plan.key,
                    "document_id": item.document_id,
                    "expected_negative_rate": float(plan.outputs[i, 0]),
                    "surge_score": float(plan.outputs[i, 1]),
                    "volume_surge_score": _score(plan.outputs[i, 2]),
                    "doc_count": doc_count,
                    "negative_count": negative_count,
                    "state": plan.states[i].tolist(),
                    "model_version": memory.version,
                }
                if item.stored:
                    updates.append(figures)
                else:
                    inserts.append(
                        {
                            **figures,
                            "event_at": item.event_at,
                            "order_at": item.order_at,
                            "sentiment": item.sentiment,
                            "p_bearish": item.p_bearish,
                            "p_neutral": item.p_neutral,
                            "p_bullish": item.p_bullish,
                            "topic_confidence": item.topic_confidence,
                            "doc_vector": item.doc_vector,
                            "time_precision": item.time_precision,
                        }
                    )
                    ledger.append({"key": plan.key, "document_id": item.document_id})
            last = plan.items[-1]
            key_updates.append(
                {
                    "key": plan.key,
                    "state": plan.states[-1].tolist(),
                    "last_event_at": last.event_at,
                    "last_order_at": last.order_at,
                    "last_document_id": last.document_id,
                    "doc_count": doc_count,
                    "negative_count": negative_count,
                    "expected_negative_rate": float(plan.outputs[-1, 0]),
                    "surge_score": float(plan.outputs[-1, 1]),
                    "volume_surge_score": _score(plan.outputs[-1, 2]),
                    "model_version": memory.version,
                }
            )
        # One statement per table (rows as a JSON document): executemany costs a round
        # trip per row, which made the writes most of the worker's time.
        if inserts:
            conn.execute(
                sa.text(
                    "INSERT INTO trend_points (key, event_at, document_id, sentiment, p_bearish, expected_negative_rate, "
                    "surge_score, volume_surge_score, doc_count, negative_count, order_at, p_neutral, p_bullish, "
                    "topic_confidence, doc_vector, state, model_version, time_precision) SELECT key, event_at, "
                    "document_id, sentiment, p_bearish, expected_negative_rate, surge_score, volume_surge_score, "
                    "doc_count, negative_count, order_at, p_neutral, "
                    "p_bullish, topic_confidence, doc_vector, state, model_version, time_precision "
                    "FROM jsonb_to_recordset(cast(:rows AS jsonb)) "
                    "AS r(key text, event_at timestamptz, document_id text, sentiment text, p_bearish real, "
                    "expected_negative_rate real, surge_score real, volume_surge_score real, "
                    "doc_count bigint, negative_count bigint, "
                    "order_at timestamptz, p_neutral real, p_bullish real, topic_confidence real, doc_vector real[], "
                    "state real[], model_version text, time_precision text)"
                ),
                {"rows": rows_text(inserts)},
            )
        if updates:
            conn.execute(
                sa.text(
                    "UPDATE trend_points t SET expected_negative_rate = r.expected_negative_rate, "
                    "surge_score = r.surge_score, volume_surge_score = r.volume_surge_score, "
                    "doc_count = r.doc_count, negative_count = r.negative_count, "
                    "state = r.state, model_version = r.model_version "
                    "FROM jsonb_to_recordset(cast(:rows AS jsonb)) AS r(key text, document_id text, "
                    "expected_negative_rate real, surge_score real, volume_surge_score real, "
                    "doc_count bigint, negative_count bigint, "
                    "state real[], model_version text) WHERE t.key = r.key AND t.document_id = r.document_id"
                ),
                {"rows": rows_text(updates)},
            )
        if ledger:
            conn.execute(
                sa.text(
                    "INSERT INTO applied_documents (key, document_id) "
                    "SELECT * FROM unnest(cast(:keys AS text[]), cast(:ids AS text[]))"
                ),
                {"keys": [r["key"] for r in ledger], "ids": [r["document_id"] for r in ledger]},
            )
        conn.execute(
            sa.text(
                "UPDATE key_state k SET state = r.state, last_event_at = r.last_event_at, "
                "last_order_at = r.last_order_at, last_document_id = r.last_document_id, doc_count = r.doc_count, "
                "negative_count = r.negative_count, expected_negative_rate = r.expected_negative_rate, "
                "surge_score = r.surge_score, volume_surge_score = r.volume_surge_score, "
                "model_version = r.model_version, updated_at = now() "
                "FROM jsonb_to_recordset(cast(:rows AS jsonb)) AS r(key text, state real[], last_event_at timestamptz, "
                "last_order_at timestamptz, last_document_id text, doc_count bigint, negative_count bigint, "
                "expected_negative_rate real, surge_score real, volume_surge_score real, model_version text) "
                "WHERE k.key = r.key"
            ),
            {"rows": rows_text(key_updates)},
        )
        return len(ledger)


def _score(value: float) -> float | None:
    """A memory output for the database: None (NULL) where the cell has no such output (NaN)."""
    return None if math.isnan(value) else float(value)


def _state_or_initial(stored: Any, cell: MemoryCell, key: str) -> np.ndarray:
    state = np.asarray(stored if stored is not None else [], dtype=np.float32)
    if state.shape != (cell.state_dim,):
        if state.size:
            log.warning(
                "trends: key %s has a state of %d values but the memory cell has %d (new model); "
                "starting its memory afresh",
                key,
                state.size,
                cell.state_dim,
            )
        return cell.initial_state()
    return state


def _read_first_order_at(conn: Connection, plans: list[KeyPlan]) -> None:
    """Fill ``first_order_at`` of the plans whose day documents need it: the key's oldest
    trend point, which lies before the plan (a plan that starts before every stored point
    has no ``prev_order_at``). One index probe per key (``trend_points_key_order_idx``)."""
    wanted = {plan.key: plan for plan in plans if plan.needs_first_order_at}
    if not wanted:
        return
    rows = conn.execute(
        sa.text(
            "SELECT k AS key, (SELECT t.order_at FROM trend_points t WHERE t.key = k "
            "AND t.order_at IS NOT NULL ORDER BY t.order_at LIMIT 1) AS first_order_at "
            "FROM unnest(cast(:keys AS text[])) AS k"
        ),
        {"keys": sorted(wanted)},
    ).all()
    for row in rows:
        wanted[row.key].first_order_at = row.first_order_at


def _step_all(cell: MemoryCell, plans: list[KeyPlan]) -> None:
    """Run every plan's items through the cell, keys in lockstep (one onnxruntime call
    per step across all keys); fills ``plan.states`` and ``plan.outputs``."""
    feats: list[np.ndarray] = []
    for plan in plans:
        rows = []
        prev = plan.prev_order_at
        first = plan.first_order_at if prev is not None else None
        for n, item in enumerate(plan.items):
            assert item.order_at is not None
            dt = memory_gap_seconds(
                item.order_at,
                prev,
                item.time_precision,
                first_at=first,
                documents_before=plan.doc_count + n,
            )
            if first is None:
                first = item.order_at
            rows.append(
                cell.features(
                    item.p_bearish,
                    item.p_neutral,
                    item.p_bullish,
                    item.topic_confidence,
                    item.doc_vector,
                    dt,
                )
            )
            prev = item.order_at
        feats.append(np.stack(rows))
        plan.states = np.empty((len(plan.items), cell.state_dim), dtype=np.float32)
        plan.outputs = np.empty((len(plan.items), cell.OUTPUTS), dtype=np.float32)
    current = np.stack([p.start_state for p in plans]).astype(np.float32)
    steps = max(len(p.items) for p in plans)
    for step in range(steps):
        active = [i for i, p in enumerate(plans) if len(p.items) > step]
        new_states, outputs = cell.update(
            current[active], np.stack([feats[i][step] for i in active])
        )
        for row, i in enumerate(active):
            current[i] = new_states[row]
            plans[i].states[step] = new_states[row]  # type: ignore[index]
            plans[i].outputs[step] = outputs[row]  # type: ignore[index]
