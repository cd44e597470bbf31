"""The loop every stream worker shares: poll a micro-batch, process it, commit, repeat.

A batch is cut by :class:`pipeline.settings.BatchPolicy`: ``max_size`` records or
``max_wait_ms`` after its first record, whichever comes first. Offsets are committed only
after ``process`` returned (the worker stored and forwarded what it read), so a crash
redelivers rather than loses: at-least-once from Kafka, made exactly-once downstream by
idempotent writes (scorer) or the applied-documents ledger (trends).

Rebalances: the batch in hand is always finished and committed before the next ``poll``,
and partitions are only revoked inside ``poll``; so a revoked partition never has
processed-but-uncommitted records (records read ahead by :class:`EventTimeMerge` and not
yet processed are dropped on revocation and refetched by the new owner). When a commit
nevertheless fails (the group moved on while PostgreSQL was down for longer than
``max_poll_interval_ms``) the records are redelivered and the idempotent writes absorb them.
The lag gauge counts from the consumer position, so records read ahead count as consumed.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from pipeline import metrics
from pipeline.errors import ServiceUnavailable
from pipeline.settings import BatchPolicy

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0
#: Stream workers ask the broker to answer a fetch within this even when no record is
#: there yet. The client default (500 ms) is only harmless where the broker answers as
#: soon as data arrives; the embedded tansu holds the fetch for the full wait, which put
#: up to 0.5 s per hop on every document's end-to-end latency.
FETCH_MAX_WAIT_MS = 50


def poll_batch(consumer: Any, policy: BatchPolicy, stop: threading.Event, poll_timeout_ms: int) -> list[Any]:
    """Up to ``policy.max_size`` records, waiting at most ``policy.max_wait_ms`` once the
    first one arrived. Returns [] after one empty poll (so the caller can check ``stop``)."""
    records: list[Any] = []
    deadline: float | None = None
    while len(records) < policy.max_size:
        if deadline is None:
            timeout = poll_timeout_ms
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            timeout = max(1, int(remaining * 1000))
        polled = consumer.poll(timeout_ms=timeout, max_records=policy.max_size - len(records))
        for partition_records in polled.values():
            records.extend(partition_records)
        if not records:
            return records
        if deadline is None:
            deadline = time.monotonic() + policy.max_wait_ms / 1000.0
        if stop.is_set():
            break
    return records


class AssignmentLog(ConsumerRebalanceListener):  # type: ignore[misc]
    """Logs each partition assignment and revocation with the time since the worker
    subscribed: a worker that joined the group but never got partitions (a stuck
    rebalance) shows up in its log as "assigned" missing after "subscribed"."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.subscribed_at = time.monotonic()
        self.assignments = 0

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:  # the client also calls this, with nothing, before its first join
            log.info("%s: partitions revoked: %s", self.role, _partition_names(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assignments += 1
        log.info("%s: partitions assigned %.1f s after subscribing (assignment %d): %s", self.role,
                 time.monotonic() - self.subscribed_at, self.assignments, _partition_names(assigned))


def _partition_names(partitions: Any) -> str:
    return ", ".join(sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)) or "none"


class EventTimeMerge(AssignmentLog):
    """Reads ahead on every assigned partition and hands records out in event-time order.

    kafka-python returns everything it buffered for one partition before the next one, and
    the embedded broker answers a fetch with whole producer batches whatever the size
    limit: a scorer with a backlog would score hundreds of one partition's documents, then
    hundreds of the other's, and every key would see its documents far out of order (the
    trends worker then rewinds and rewrites stored points, which cost as much CPU as the
    model). Merging the partitions' heads by event time keeps each key nearly in order.

    Offsets: only records handed out and processed are committed (explicit offsets per
    partition, each partition's records leave in offset order); read-ahead records are
    refetched after a restart or a rebalance (their buffers are dropped on revocation).
    """

    def __init__(self, consumer: Any, sort_key: Callable[[Any], str], read_ahead: int, role: str = "scorer") -> None:
        super().__init__(role)
        self.consumer = consumer
        self.sort_key = sort_key
        self.read_ahead = read_ahead
        self.buffers: dict[Any, deque[tuple[str, Any]]] = {}
        self.total = 0

    def on_partitions_revoked(self, revoked: Any) -> None:
        super().on_partitions_revoked(revoked)
        for tp in revoked:
            self.total -= len(self.buffers.pop(tp, ()))

    def _poll(self, timeout_ms: int) -> int:
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max(1, self.read_ahead - self.total))
        got = 0
        for tp, records in polled.items():
            buffer = self.buffers.setdefault(tp, deque())
            for record in records:
                buffer.append((self.sort_key(record), record))
            got += len(records)
        self.total += got
        return got

    def _all_partitions_buffered(self) -> bool:
        assigned = self.consumer.assignment()
        return bool(assigned) and all(self.buffers.get(tp) for tp in assigned)

    def poll_batch(self, policy: BatchPolicy, stop: threading.Event, poll_timeout_ms: int) -> list[Any]:
        """Like :func:`poll_batch`, the records merged across partitions by event time."""
        if self.total == 0 and self._poll(poll_timeout_ms) == 0:
            return []
        deadline = time.monotonic() + policy.max_wait_ms / 1000.0
        while not stop.is_set() and self.total < self.read_ahead:
            if self.total >= policy.max_size and self._all_partitions_buffered():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 and self.total >= 1:
                break
            if self._poll(max(1, min(int(remaining * 1000), 50))) == 0 and self.total >= policy.max_size:
                break  # the other partitions have nothing right now
        return self._take(policy.max_size)

    def _take(self, n: int) -> list[Any]:
        heads = [(buf[0][0], buf[0][1].offset, i, tp) for i, (tp, buf) in enumerate(self.buffers.items()) if buf]
        heapq.heapify(heads)
        out: list[Any] = []
        while heads and len(out) < n:
            _, _, i, tp = heapq.heappop(heads)
            buffer = self.buffers[tp]
            out.append(buffer.popleft()[1])
            if buffer:
                heapq.heappush(heads, (buffer[0][0], buffer[0][1].offset, i, tp))
        self.total -= len(out)
        return out

    def commit(self, records: list[Any], role: str) -> bool:
        """Commit the offsets just past ``records`` (per partition), not the read-ahead."""
        offsets: dict[Any, Any] = {}
        for record in records:
            tp = _partition_of(record)
            if tp not in offsets or offsets[tp].offset <= record.offset:
                offsets[tp] = OffsetAndMetadata(record.offset + 1, None, -1)
        return commit(self.consumer, role, offsets)


def _partition_of(record: Any) -> Any:
    from kafka.structs import TopicPartition

    return TopicPartition(record.topic, record.partition)


def commit(consumer: Any, role: str, offsets: dict[Any, Any] | None = None) -> bool:
    """Commit ``offsets`` (default: the consumer's positions, i.e. everything polled).

    False when the group rebalanced under us: the records will be redelivered to their
    new owner, which is harmless because every write downstream is idempotent."""
    try:
        if offsets is None:
            consumer.commit()
        else:
            consumer.commit(offsets=offsets)
        return True
    except CommitFailedError as exc:
        log.warning("%s: offset commit refused after a rebalance (%s); the batch will be "
                    "redelivered and absorbed by idempotent writes", role, exc)
        return False
    except KafkaError as exc:
        log.warning("%s: offset commit failed (%s); the batch may be redelivered", role, exc)
        return False


class LagReporter:
    """Updates the consumer-lag gauge (records behind the end of each assigned partition)
    at most every ``LAG_EVERY_S`` seconds. The end is the high watermark of the latest
    fetch response: the embedded broker's ListOffsets answer undercounts (see
    consumers/progress.py)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self._last = 0.0
        self.total: int | None = None

    def maybe_update(self, consumer: Any, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < LAG_EVERY_S:
            return
        self._last = now
        try:
            total = 0
            for tp in list(consumer.assignment()):
                end = consumer.highwater(tp)
                if end is None:
                    continue
                lag = max(0, int(end) - int(consumer.position(tp)))
                total += lag
                metrics.CONSUMER_LAG.labels(role=self.role, partition=f"{tp.topic}:{tp.partition}").set(lag)
            self.total = total
        except (KafkaError, AssertionError, ValueError) as exc:  # a rebalance in progress
            log.debug("%s: lag not measured this time: %s", self.role, exc)


def run_consumer_loop(*, role: str, consumer: Any, policy: BatchPolicy, poll_timeout_ms: int,
                      stop: threading.Event, process: Callable[[list[Any]], None],
                      between_batches: Callable[[], None] | None = None,
                      merge: EventTimeMerge | None = None) -> None:
    """Poll, process, commit until ``stop`` is set; then return (the caller closes the
    consumer). ``process`` raising ``ServiceUnavailable`` while stopping means the batch
    was not stored: it is left uncommitted for redelivery."""
    lag = LagReporter(role)
    while not stop.is_set():
        if between_batches is not None:
            between_batches()
        if merge is not None:
            records = merge.poll_batch(policy, stop, poll_timeout_ms)
        else:
            records = poll_batch(consumer, policy, stop, poll_timeout_ms)
        if not records:
            lag.maybe_update(consumer)
            continue
        started = time.perf_counter()
        try:
            process(records)
        except ServiceUnavailable as exc:
            if stop.is_set():
                log.warning("%s: stopping with a batch not stored (%s); it stays uncommitted "
                            "and will be redelivered", role, exc)
                return
            raise
        if merge is not None:
            merge.commit(records, role)
        else:
            commit(consumer, role)
        metrics.BATCHES.labels(role=role).inc()
        metrics.BATCH_LATENCY.labels(role=role).observe(time.perf_counter() - started)
        lag.maybe_update(consumer)
