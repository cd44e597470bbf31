"""The loop every stream worker shares: poll a micro-batch, process it, commit, repeat.

A batch is cut by :class:`pipeline.settings.BatchPolicy`: ``max_size`` records or
``max_wait_ms`` after its first record, whichever comes first. Offsets are committed only
after ``process`` returned (the worker stored and forwarded what it read), so a crash
redelivers rather than loses: at-least-once from Kafka, made exactly-once downstream by
idempotent writes (scorer) or the applied-documents ledger (trends).

Rebalances: the batch in hand is always finished and committed before the next ``poll``,
and partitions are only revoked inside ``poll``; so a revoked partition never has
processed-but-uncommitted records. When a commit nevertheless fails (the group moved on
while PostgreSQL was down for longer than ``max_poll_interval_ms``) the records are
redelivered to the new owner and the idempotent writes absorb them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka.errors import CommitFailedError, KafkaError

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


def commit(consumer: Any, role: str) -> bool:
    """Commit the consumer's positions (everything polled has been processed).

    False when the group rebalanced under us: the records will be redelivered to their
    new owner, which is harmless because every write downstream is idempotent."""
    try:
        consumer.commit()
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
                      between_batches: Callable[[], None] | None = None) -> None:
    """Poll, process, commit until ``stop`` is set; then return (the caller closes the
    consumer). ``process`` raising ``ServiceUnavailable`` while stopping means the batch
    was not stored: it is left uncommitted for redelivery."""
    lag = LagReporter(role)
    while not stop.is_set():
        if between_batches is not None:
            between_batches()
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
        commit(consumer, role)
        metrics.BATCHES.labels(role=role).inc()
        metrics.BATCH_LATENCY.labels(role=role).observe(time.perf_counter() - started)
        lag.maybe_update(consumer)
