"""How far a consumer group is behind its Kafka topic, from the outside.

The demo, the benchmark and the tests wait on this ("everything replayed is scored and
applied") instead of sleeping: a group has caught up when its committed offset equals the
end offset on every partition of the topic.

End offsets are read from a fetch response's high watermark, not from ListOffsets: the
embedded tansu broker (0.6.0) answers ListOffsets "latest" with the base offset of the
newest record batch plus one, which undercounts whenever a batch holds several records.
"""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import TopicPartition


class GroupProgress:
    """Committed-offset lag of consumer groups on topics of one cluster. Close it after use."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin = KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","), request_timeout_ms=10_000
        )
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","), enable_auto_commit=False
        )

    def end_offsets(self, kafka_topic: str, timeout_s: float = 10.0) -> dict[TopicPartition, int]:
        """Each partition's high watermark, from a fetch at the partition's end."""
        partitions = self._consumer.partitions_for_topic(kafka_topic) or set()
        tps = [TopicPartition(kafka_topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        self._consumer.assign(tps)
        deadline = time.monotonic() + timeout_s
        while True:
            self._consumer.poll(timeout_ms=100, max_records=500)
            marks = {tp: self._consumer.highwater(tp) for tp in tps}
            if all(mark is not None for mark in marks.values()):
                # seek to the mark so the next call fetches the newest high watermark
                for tp, mark in marks.items():
                    self._consumer.seek(tp, mark)
                self._consumer.poll(timeout_ms=100, max_records=1)
                return {tp: int(self._consumer.highwater(tp) or mark) for tp, mark in marks.items()}
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fetch response for {kafka_topic} within {timeout_s:.0f}s")

    def lag(self, group_id: str, kafka_topic: str) -> int:
        """Records of ``kafka_topic`` the group has not committed yet (all of them when the
        group never committed)."""
        ends = self.end_offsets(kafka_topic)
        committed: dict[Any, Any] = self._admin.list_group_offsets(group_id).get(group_id, {})
        total = 0
        for tp, end in ends.items():
            meta = committed.get(tp)
            done = (
                meta.offset
                if meta is not None and meta.offset is not None and meta.offset >= 0
                else 0
            )
            total += max(0, int(end) - int(done))
        return total

    def total(self, kafka_topic: str) -> int:
        return sum(self.end_offsets(kafka_topic).values())

    def wait_caught_up(
        self,
        group_id: str,
        kafka_topic: str,
        *,
        timeout_s: float,
        min_records: int = 0,
        poll_s: float = 0.25,
    ) -> bool:
        """Block until the group's lag is 0 (and the topic holds at least ``min_records``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.total(kafka_topic) >= min_records and self.lag(group_id, kafka_topic) == 0:
                    return True
            except Exception:  # noqa: BLE001 - the group may be (re)joining; ask again
                pass
            time.sleep(poll_s)
        return False

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()

    def __enter__(self) -> GroupProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
