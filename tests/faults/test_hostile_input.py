"""Hostile records on the documents topic go to the dead-letter topic with their reason
and origin; the scorer keeps running and stores everything valid around them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import sqlalchemy as sa
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from consumers.scorer import Scorer
from pipeline.settings import Settings
from tests.consumers.helpers import RoleThread, count, make_documents, produce, send_raw, wait_for

WHEN = "2026-03-02T10:00:00Z"


def doc(**fields: object) -> bytes:
    base: dict[str, object] = {"id": "h", "source": "hostile", "published_at": WHEN, "text": "fine"}
    base.update(fields)
    return json.dumps(base).encode()


HOSTILE: list[tuple[bytes | None, str]] = [
    (b"", "not JSON"),
    (None, "tombstone"),
    (b"\xff\xfe\x00\x81 not utf-8", "not UTF-8"),
    (b"[1, 2, 3]", "JSON object"),
    (b'"just a string"', "JSON object"),
    (doc(id=5, text=7, published_at="yesterday-ish"), "invalid document"),
    (doc(id="h-empty", text=" \t\n \u0007 "), "text"),
    (doc(id="h-extra", surprise=True), "surprise"),
    (doc(id="h-nul-source", source="bad\u0000source"), "NUL"),
    (doc(id="h-surrogate", author="lone \ud800 surrogate"), "author"),
]
VALID = [
    doc(id="h-html", text="<b>Shares &amp; bonds</b> rally <script>alert(1)</script>"),
    doc(id="h-big", text="megabyte " * 100_000),  # ~1 MB: the broker default record limit
    doc(id="h-nul", text="null\u0000bytes and \u0007 bells", author="bad\u0000name"),
]


def read_topic(
    bootstrap: str, kafka_topic: str, expected: int, timeout_s: float = 30.0
) -> list[dict[str, object]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [
        TopicPartition(kafka_topic, p)
        for p in sorted(consumer.partitions_for_topic(kafka_topic) or [])
    ]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out: list[dict[str, object]] = []
    wait_for(
        lambda: (
            out.extend(json.loads(r.value) for rs in consumer.poll(200).values() for r in rs)
            or len(out) >= expected
        ),
        timeout_s,
        f"{expected} records on {kafka_topic}",
    )
    consumer.close()
    return out


def test_hostile_records_are_dead_lettered_with_reasons_and_the_scorer_keeps_going(
    settings: Settings, engine: sa.engine.Engine, tiny_model_dir: Path
) -> None:
    s = settings.model_copy(update={"model_dir": tiny_model_dir})
    rng = random.Random(3)
    garbage = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))) for _ in range(20)]
    scorer = RoleThread(Scorer(s, s.kafka_bootstrap or "", engine)).start()
    try:
        send_raw(s, [value for value, _ in HOSTILE] + VALID + garbage)
        produce(s, make_documents(50, seed=2))
        wait_for(
            lambda: count(engine, "SELECT count(*) FROM predictions") == 53,
            60,
            "the valid documents",
        )
        letters = read_topic(
            s.kafka_bootstrap or "", s.kafka_topic_dlq, len(HOSTILE) + len(garbage)
        )
        assert scorer.thread.is_alive()
    finally:
        scorer.close()
    assert len(letters) == len(HOSTILE) + len(garbage)
    for letter in letters:
        assert letter["stage"] == "scorer"
        assert letter["source_kafka_topic"] == s.kafka_topic_documents
        assert isinstance(letter["partition"], int) and isinstance(letter["offset"], int)
        assert letter["reason"]
    reasons = " | ".join(str(letter["reason"]) for letter in letters)
    for _, expected in HOSTILE:
        assert expected in reasons
    with engine.connect() as conn:
        big = conn.execute(
            sa.text("SELECT length(text) FROM documents WHERE id = 'h-big'")
        ).scalar()
        html = conn.execute(sa.text("SELECT text FROM documents WHERE id = 'h-html'")).scalar()
        nul = conn.execute(sa.text("SELECT text FROM documents WHERE id = 'h-nul'")).scalar()
    assert big is not None and big <= s.max_text_chars
    assert html is not None and "<" not in html and "&amp;" not in html
    assert nul is not None and "\x00" not in nul
