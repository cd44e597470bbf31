"""The dead-letter topic: bad input never crashes a worker and is never dropped silently.

A dead letter carries the reason, where the record came from (Kafka topic, partition,
offset, or the producer and its input position) and the original payload (as text when
it decodes, else base64), so an operator can see what was wrong and replay it.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from pipeline.json_codec import record_bytes

MAX_PAYLOAD_BYTES = 64 * 1024


class DeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str
    stage: str  # "ingest:replay", "ingest:rss", "ingest:http", "scorer", "trends", ...
    source_kafka_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    origin: str | None = None  # e.g. "file.csv line 12" or a feed URL
    payload_text: str | None = None
    payload_base64: str | None = None
    payload_truncated: bool = False
    failed_at: datetime

    @classmethod
    def build(
        cls, reason: str, stage: str, payload: bytes | str | None = None, **where: Any
    ) -> DeadLetter:
        raw = (
            payload.encode("utf-8", "surrogateescape")
            if isinstance(payload, str)
            else (payload or b"")
        )
        truncated = len(raw) > MAX_PAYLOAD_BYTES
        raw = raw[:MAX_PAYLOAD_BYTES]
        try:
            text, b64 = raw.decode("utf-8"), None
        except UnicodeDecodeError:
            text, b64 = None, base64.b64encode(raw).decode("ascii")
        return cls(
            reason=reason,
            stage=stage,
            payload_text=text,
            payload_base64=b64,
            payload_truncated=truncated,
            failed_at=datetime.now(UTC),
            **where,
        )

    def to_json_bytes(self) -> bytes:
        return record_bytes(self.model_dump(mode="json"))


def send_dead_letter(
    producer: Any, dlq_kafka_topic: str, letter: DeadLetter, key: bytes | None = None
) -> Any:
    """Produce ``letter`` to the dead-letter Kafka topic; returns the send future."""
    return producer.send(dlq_kafka_topic, key=key, value=letter.to_json_bytes())
