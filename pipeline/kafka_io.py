"""Kafka clients configured the one way finsent uses them.

Producers are idempotent-safe for our purposes (acks=all, retries, keyed records);
consumers use manual commits (``enable_auto_commit=False``): a worker commits offsets only
after what it read is stored and forwarded, so a crash redelivers rather than loses.
Timeouts come from ``Settings.kafka`` (short in tests and the demo: the embedded broker's
group join waits about session_timeout_ms / 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from pipeline.settings import Settings


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON, the wire format of every finsent Kafka record."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def make_producer(settings: Settings, bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A producer for finsent records (bytes in, bytes out; callers encode)."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "acks": "all",
        "retries": 10,
        "linger_ms": 10,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 1,
        "request_timeout_ms": settings.kafka.request_timeout_ms,
        "compression_type": "gzip",
    }
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(settings: Settings, bootstrap: str, group_id: str, kafka_topics: Iterable[str],
                  **overrides: Any) -> KafkaConsumer:
    """A consumer in ``group_id`` subscribed to ``kafka_topics`` with manual commits."""
    t = settings.kafka
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": t.session_timeout_ms,
        "heartbeat_interval_ms": t.heartbeat_interval_ms,
        "max_poll_interval_ms": t.max_poll_interval_ms,
        "request_timeout_ms": max(t.request_timeout_ms, t.session_timeout_ms + 5000),
        "max_poll_records": settings.batch.max_size,
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    consumer.subscribe(list(kafka_topics))
    return consumer
