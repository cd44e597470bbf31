"""The scorer (``finsent worker scorer``): documents in, predictions stored, one scored
record per key out.

Per micro-batch (``Settings.batch``) read from the documents Kafka topic by the consumer
group ``finsent-scorer`` (``FINSENT_KAFKA_GROUP_PREFIX``-scorer):

1. parse each record into a :class:`~pipeline.documents.Document`; a record that is not
   one goes to the dead-letter topic with the reason and its Kafka topic/partition/offset;
2. classify the batch with the ONNX classifier (:mod:`pipeline.inference`);
3. in ONE transaction, upsert the documents and their predictions (model version, batch
   latency). Both inserts are ``ON CONFLICT DO NOTHING``: a redelivered document keeps
   the prediction stored first, and the stored values (read back in the same
   transaction) are what is forwarded, so every copy of a document's scored records
   carries the same numbers whatever batch it was re-scored in; last in that transaction,
   each new document gets its ``story_id`` (:func:`pipeline.stories.assign_stories`);
4. produce one record per key (``topic:<name>``, ``entity:<TICKER>``) to the scored Kafka
   topic, keyed by the key so one trends worker owns each key; flush;
5. only then commit the offsets of the records processed.

Partitions are merged by event time (:class:`consumers.batching.PartitionReader`) so that
a scorer working off a backlog forwards each key's documents in event-time order, and the
reader keeps the resume rule of :mod:`consumers.batching` across rebalances.

Delivery: at-least-once from Kafka plus idempotent writes, so a crash at any step either
redoes the batch harmlessly or finds it done. PostgreSQL down: the transaction is retried
with capped backoff (:func:`pipeline.db.retry_db`) until it is back. A row PostgreSQL
refuses (e.g. a NUL byte in an author field) is found by retrying the batch one document
at a time and goes to the dead-letter topic; the rest are stored.

Between batches the worker checks ``model_versions`` every ``Settings.model_poll_s`` and
hot-reloads a new champion (:mod:`consumers.model_watch`).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from consumers.alignment import GroupClock
from consumers.batching import PartitionReader
from consumers.worker import StreamWorker
from pipeline import metrics
from pipeline.db import retry_db
from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.inference import Classifier, Prediction
from pipeline.json_codec import rows_text
from pipeline.records import ScoredRecord, keys_of
from pipeline.roles import Stage
from pipeline.stories import assign_stories

log = logging.getLogger(__name__)

ROLE_GROUP = "scorer"  # consumer group: Settings.group_id(ROLE_GROUP)
ROLE = "scorer"
#: Bytes fetched per partition per request. Above the 1 MiB client default, so a record
#: near the broker's 1 MB limit never stalls the partition (tansu does not return an
#: oversized first batch the way Apache Kafka does since KIP-74).
MAX_PARTITION_FETCH_BYTES = 8 * 1024 * 1024

# Rows travel as one JSON document per statement: executemany costs a round trip per row.
INSERT_DOCUMENTS = sa.text("""
    INSERT INTO documents (id, source, kind, published_at, title, text, url, author, language, entities,
                           time_precision, story_id)
    SELECT id, source, kind, published_at, title, text, url, author, language, entities, time_precision,
           story_id
    FROM jsonb_to_recordset(cast(:rows AS jsonb)) AS r(id text, source text, kind text, published_at timestamptz,
         title text, text text, url text, author text, language text, entities text[], time_precision text,
         story_id text)
    ON CONFLICT (id) DO NOTHING
""")
INSERT_PREDICTIONS = sa.text("""
    INSERT INTO predictions (document_id, model_version, topic_id, topic, topic_confidence, sentiment,
                             p_bearish, p_neutral, p_bullish, doc_vector, latency_ms)
    SELECT document_id, model_version, topic_id, topic, topic_confidence, sentiment, p_bearish, p_neutral,
           p_bullish, doc_vector, latency_ms
    FROM jsonb_to_recordset(cast(:rows AS jsonb)) AS r(document_id text, model_version text, topic_id smallint,
         topic text, topic_confidence real, sentiment text, p_bearish real, p_neutral real, p_bullish real,
         doc_vector real[], latency_ms real)
    ON CONFLICT (document_id, model_version) DO NOTHING
    RETURNING document_id, topic_id, topic, topic_confidence, sentiment, p_bearish, p_neutral, p_bullish, doc_vector
""")
STORED_PREDICTIONS = sa.text("""
    SELECT document_id, topic_id, topic, topic_confidence, sentiment, p_bearish, p_neutral, p_bullish,
           doc_vector
    FROM predictions WHERE model_version = :model_version AND document_id = ANY(:ids)
""")


@dataclass(frozen=True)
class ParsedRecord:
    document: Document
    kafka_topic: str
    partition: int
    offset: int
    raw: bytes


@dataclass
class ScoredBatch:
    """One micro-batch between classification and storage."""

    records: list[Any]
    version: str
    items: list[ParsedRecord] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    latency_ms: float = 0.0
    futures: list[Any] = field(default_factory=list)


class Scorer(StreamWorker[Classifier, "ScoredBatch"]):
    """The scorer role (see the module docstring); the loop, commits, dead letters and hot
    reload come from :class:`consumers.worker.StreamWorker`."""

    name: ClassVar[str] = ROLE
    stage: ClassVar[Stage] = Stage.SCORE
    role_group: ClassVar[str] = ROLE_GROUP
    pipelined: ClassVar[bool] = True  # classify batch n+1 while batch n is stored and forwarded

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.documents_scored = 0

    def input_topic(self) -> str:
        return self.settings.kafka_topic_documents

    def load_model(self, model_dir: Path) -> Classifier:
        return Classifier.load(Path(model_dir), self.settings)

    def make_reader(self) -> PartitionReader:
        clock = GroupClock(
            self.engine,
            self.group_id,
            self.input_topic(),
            role=ROLE,
            max_drift_s=self.settings.scorer_max_drift_s,
            missing_wait_s=self.settings.scorer_align_wait_s,
        )
        return PartitionReader(None, _event_time_key, role=ROLE, clock=clock)

    def consumer_options(self) -> dict[str, Any]:
        return {"max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES}

    def describe(self, model: Classifier) -> str:
        return f"{model.version} ({model.provider}) on {self.input_topic()}"

    def on_model_change(self, old: Classifier | None, new: Classifier) -> None:
        if old is not None:
            metrics.MODEL_INFO.labels(version=old.version).set(0)
        metrics.MODEL_INFO.labels(version=new.version).set(1)

    # -- one batch -----------------------------------------------------------------------

    def prepare(self, records: list[Any]) -> ScoredBatch:
        """Parse and classify (dead letters are sent, not yet flushed). CPU-bound: the
        loop runs it while the previous batch is being stored and forwarded."""
        classifier = self.watcher.model
        assert classifier is not None
        batch = ScoredBatch(records=records, version=classifier.version)
        parsed: dict[str, ParsedRecord] = {}
        for record in records:
            try:
                if record.value is None:
                    raise InputError("record has no value (tombstone)")
                document = Document.from_json_bytes(record.value)
            except InputError as exc:
                batch.futures.append(self.dead_letter_record(str(exc), record))
                continue
            if "\x00" in document.id or "\x00" in document.source:
                batch.futures.append(
                    self.dead_letter_record(
                        "document id or source contains a NUL character", record
                    )
                )
                continue
            document = _without_nul(document)
            # A document twice in one batch is scored once (ids are stable).
            parsed[document.id] = ParsedRecord(
                document, record.topic, record.partition, record.offset, record.value
            )
        if parsed:
            batch.items = list(parsed.values())
            started = time.perf_counter()
            batch.predictions = classifier.classify([p.document.content for p in batch.items])
            batch.latency_ms = (time.perf_counter() - started) * 1000.0
        return batch

    def finish(self, batch: ScoredBatch, stop: threading.Event) -> None:
        """Store (one transaction), forward one record per key, flush. Raises
        ServiceUnavailable when stopping with the batch not stored."""
        if batch.items:
            stored = self._store(
                batch.items, batch.predictions, batch.version, batch.latency_ms, stop, batch.futures
            )
            for item in batch.items:
                row = stored.get(item.document.id)
                if row is not None:
                    batch.futures.extend(self._forward(item.document, row, batch.version))
            self.documents_scored += len(stored)
            metrics.DOCUMENTS_SCORED.inc(len(stored))
        self.flush(batch.futures)

    def _store(
        self,
        items: list[ParsedRecord],
        predictions: list[Prediction],
        version: str,
        latency_ms: float,
        stop: threading.Event,
        futures: list[Any],
    ) -> dict[str, Any]:
        """Upsert documents + predictions in one transaction; returns the stored prediction
        row per document id. Rows PostgreSQL refuses go to the dead-letter topic."""
        pairs = list(zip(items, predictions, strict=True))

        def write(batch: list[tuple[ParsedRecord, Prediction]]) -> dict[str, Any]:
            with self.engine.begin() as conn:
                try:
                    return _write_batch(
                        conn, batch, version, latency_ms, stories=self.settings.story_grouping
                    )
                except sa.exc.DBAPIError:
                    # A refused statement can leave psycopg's pipeline in a state where the
                    # pool's reset blocks: drop the connection instead of reusing it.
                    conn.invalidate()
                    raise

        try:
            return retry_db(lambda: write(pairs), what="scorer: storing a batch", stop=stop.is_set)
        except (sa.exc.DataError, sa.exc.IntegrityError, sa.exc.ProgrammingError) as exc:
            log.warning(
                "scorer: PostgreSQL refused a batch (%s); storing its documents one at a time",
                getattr(exc, "orig", exc),
            )
        stored: dict[str, Any] = {}
        for pair in pairs:
            try:
                stored.update(
                    retry_db(
                        functools.partial(write, [pair]),
                        what="scorer: storing a document",
                        stop=stop.is_set,
                    )
                )
            except (sa.exc.DataError, sa.exc.IntegrityError, sa.exc.ProgrammingError) as exc:
                item = pair[0]
                futures.append(
                    self.dead_letter(
                        f"PostgreSQL refused the document: {getattr(exc, 'orig', exc)}",
                        item.kafka_topic,
                        item.partition,
                        item.offset,
                        item.raw,
                        item.document.id.encode("utf-8"),
                    )
                )
        return stored

    def _forward(self, document: Document, row: Any, version: str) -> list[Any]:
        """One scored record per key the document moves, keyed by the key (one trends
        worker owns each key); the values are the stored prediction's."""
        sends = []
        for key in keys_of(row.topic, document.entities):
            record = ScoredRecord(
                key=key,
                document_id=document.id,
                event_at=document.published_at,
                source=document.source,
                model_version=version,
                topic_id=row.topic_id,
                topic=row.topic,
                topic_confidence=row.topic_confidence,
                sentiment=row.sentiment,
                p_bearish=row.p_bearish,
                p_neutral=row.p_neutral,
                p_bullish=row.p_bullish,
                doc_vector=tuple(row.doc_vector or ()),
                time_precision=document.time_precision,
            )
            sends.append(
                self._producer.send(
                    self.settings.kafka_topic_scored,
                    key=key.encode("utf-8"),
                    value=record.to_bytes(),
                )
            )
        return sends


def _event_time_key(record: Any) -> str:
    """The document's published time as written by the producers (UTC ISO 8601, which
    sorts as text); "" for a record that is not a document (it goes out first, to the DLQ)."""
    try:
        value = json.loads(record.value)
        return str(value.get("published_at") or "") if isinstance(value, dict) else ""
    except (TypeError, ValueError):
        return ""


def _without_nul(document: Document) -> Document:
    """PostgreSQL text cannot hold NUL: drop it from the free-text fields the document
    model does not normalise (author, url, language, entities)."""
    fields = {name: getattr(document, name) for name in ("author", "url", "language")}
    changes: dict[str, Any] = {
        k: v.replace("\x00", "") for k, v in fields.items() if v and "\x00" in v
    }
    if any("\x00" in e for e in document.entities):
        changes["entities"] = tuple(e.replace("\x00", "") for e in document.entities)
    return document.model_copy(update=changes) if changes else document


def _write_batch(
    conn: Connection,
    batch: list[tuple[ParsedRecord, Prediction]],
    version: str,
    latency_ms: float,
    *,
    stories: bool = False,
) -> dict[str, Any]:
    # Stories first, in the same transaction: a new document's row is written once, with its
    # story id (no UPDATE, so no dead tuple per document), and commits with it (exactly once).
    story_of = assign_stories(conn, [item.document for item, _ in batch]) if stories else {}
    conn.execute(
        INSERT_DOCUMENTS,
        {
            "rows": rows_text(
                [
                    {
                        "id": d.id,
                        "source": d.source,
                        "kind": d.kind,
                        "published_at": d.published_at.isoformat(),
                        "title": d.title,
                        "text": d.text,
                        "url": d.url,
                        "author": d.author,
                        "language": d.language,
                        "entities": [str(e).strip().upper() for e in d.entities],
                        "time_precision": d.time_precision,
                        "story_id": story_of.get(d.id),
                    }
                    for d in (item.document for item, _ in batch)
                ]
            )
        },
    )
    inserted = conn.execute(
        INSERT_PREDICTIONS,
        {
            "rows": rows_text(
                [
                    {
                        "document_id": item.document.id,
                        "model_version": version,
                        "topic_id": p.topic_id,
                        "topic": p.topic,
                        "topic_confidence": min(max(p.topic_confidence, 0.0), 1.0),
                        "sentiment": p.sentiment,
                        "p_bearish": p.p_bearish,
                        "p_neutral": p.p_neutral,
                        "p_bullish": p.p_bullish,
                        "doc_vector": list(p.doc_vector),
                        "latency_ms": latency_ms,
                    }
                    for item, p in batch
                ]
            )
        },
    ).all()
    # Returned rows are the stored values; documents scored before (a redelivery) are
    # read back so that what is forwarded is always what is stored.
    stored = {row.document_id: row for row in inserted}
    missing = [item.document.id for item, _ in batch if item.document.id not in stored]
    if missing:
        rows = conn.execute(STORED_PREDICTIONS, {"model_version": version, "ids": missing}).all()
        stored.update({row.document_id: row for row in rows})
    return stored
