"""The DocumentProducer and produce_documents against the real embedded broker.

``read_topic`` (reading a Kafka topic back to its end, without a consumer group) is used by
the other producer tests too.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline.documents import Document, make_document_id
from pipeline.embedded import free_port
from pipeline.entities import Watchlist
from pipeline.errors import BrokerError
from pipeline.producers import DocumentProducer, Rejected, produce_documents, run_source
from pipeline.producers.base import IterableSource
from pipeline.settings import Settings


def read_topic(
    bootstrap: str, kafka_topic: str, timeout_s: float = 15.0
) -> list[tuple[bytes | None, dict]]:
    """Every record of ``kafka_topic`` from the beginning to its current end: (key, JSON value)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(kafka_topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(kafka_topic)
        assert partitions, f"Kafka topic {kafka_topic} does not exist"
        tps = [TopicPartition(kafka_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[tuple[bytes | None, dict]] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, "timed out reading the topic back"
            for records in consumer.poll(timeout_ms=200).values():
                out.extend((r.key, json.loads(r.value)) for r in records)
        return out
    finally:
        consumer.close()


def _doc(i: int, text: str = "Boeing shares fall") -> Document:
    published = datetime(2024, 5, 1, 12, i % 60, tzinfo=UTC)
    return Document(
        id=make_document_id("unit", guid=str(i)), source="unit", published_at=published, text=text
    )


def test_documents_are_keyed_by_id_and_tagged_with_watchlist_entities(settings: Settings) -> None:
    watchlist = Watchlist.from_mapping({"BA": ["Boeing"], "AAPL": ["Apple"]})
    docs = [_doc(1), _doc(2, "Apple and $BA rally"), _doc(3, "Nothing relevant")]
    sent = produce_documents(settings, settings.kafka_bootstrap or "", docs, watchlist=watchlist)
    assert sent == 3
    records = read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)
    by_id = {value["id"]: (key, value) for key, value in records}
    assert len(records) == 3 and set(by_id) == {d.id for d in docs}
    for doc in docs:
        key, value = by_id[doc.id]
        assert key == doc.id.encode()
        assert Document.model_validate(value).text == doc.text
    assert by_id[docs[0].id][1]["entities"] == ["BA"]
    assert by_id[docs[1].id][1]["entities"] == ["AAPL", "BA"]
    assert by_id[docs[2].id][1]["entities"] == []


def test_rejected_items_reach_the_dead_letter_topic_with_reason_and_payload(
    settings: Settings,
) -> None:
    bootstrap = settings.kafka_bootstrap or ""
    items = [
        _doc(1),
        Rejected("x.csv line 2: no text", origin="x.csv line 2", payload=b"\xff\xfe bad"),
    ]
    with DocumentProducer(settings, bootstrap, stage="ingest:replay") as producer:
        counts = run_source(IterableSource(items), producer)
    assert (counts.sent, counts.dead_lettered, counts.failed) == (1, 1, 0)
    letters = [value for _, value in read_topic(bootstrap, settings.kafka_topic_dlq)]
    assert len(letters) == 1
    assert letters[0]["reason"] == "x.csv line 2: no text"
    assert letters[0]["stage"] == "ingest:replay"
    assert letters[0]["origin"] == "x.csv line 2"
    assert letters[0]["payload_base64"]  # not UTF-8: kept as base64, not lost


def test_unreachable_broker_is_a_broker_error_that_says_what_to_check(settings: Settings) -> None:
    dead = f"127.0.0.1:{free_port()}"
    quick = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"request_timeout_ms": 1000})}
    )
    started = time.monotonic()
    with pytest.raises(BrokerError, match="FINSENT_KAFKA_BOOTSTRAP"):
        DocumentProducer(quick, dead)
    assert time.monotonic() - started < 10
