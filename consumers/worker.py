"""The base every stream worker stands on: poll, batch, process, commit, repeat, and the
things that must be the same in every worker so that none of them loses a record.

A worker (the scorer, the trends worker, a future one) says only what is its own:

* ``name`` / ``stage`` / ``role_group`` (its consumer group is
  ``Settings.group_id(role_group)``) and :meth:`input_topic`;
* :meth:`load_model`, the model artefact it serves from a model directory (hot-reloaded
  between batches when a new champion is promoted, :mod:`consumers.model_watch`);
* :meth:`make_reader` / :meth:`batch_policy` / :meth:`consumer_options`: how it reads;
* :meth:`prepare` (CPU work on a batch: parse, classify) and :meth:`finish` (store in
  one transaction, forward, flush; it raises when the batch is not stored).

The base owns the rest: the consumer and producer, readiness for ``/healthz``, the
shutdown drain of the embedded broker (:mod:`consumers.drain`), fencing of a duplicate
static member, dead letters (:meth:`dead_letter`, with the record's Kafka coordinates),
flushing what a batch produced (:meth:`flush`), and the loop. The loop keeps **the resume
rule** of :mod:`consumers.batching`: it reads through a :class:`PartitionReader`, and it
commits a batch's offsets only after ``finish`` returned, naming explicit offsets one
past the records processed (sent without waiting for the answer, which the next commit
and every idle poll await first: :meth:`PartitionReader.commit_soon`). With ``pipelined``
(the scorer) ``prepare`` of batch n+1 runs while a helper thread finishes batch n; batch n
is still committed, on the loop's thread (the consumer is not thread-safe), before batch
n+1 is finished, so commits stay in order.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy.engine import Engine

from consumers.batching import (
    FETCH_MAX_WAIT_MS,
    LagReporter,
    PartitionReader,
    fenced_as_configuration_error,
)
from consumers.drain import DrainingStop
from consumers.model_watch import ModelWatcher
from pipeline import metrics
from pipeline.db import retry_db
from pipeline.dlq import DeadLetter, send_dead_letter
from pipeline.errors import BrokerError, ServiceUnavailable
from pipeline.kafka_io import make_consumer, make_producer
from pipeline.roles import Stage
from pipeline.settings import BatchPolicy, Settings

log = logging.getLogger(__name__)

M = TypeVar("M")  # the model artefact the worker serves
B = TypeVar("B")  # a prepared batch


class StoppedUnstored(Exception):
    """Stopping while a batch could not be stored: it stays uncommitted (redelivered)."""


@dataclass
class _InFlight(Generic[B]):
    records: list[Any]
    batch: B
    started: float
    future: Future[None] | None = None


class StreamWorker(ABC, Generic[M, B]):
    """A stream role. ``run(stop)`` serves until ``stop`` is set, then finishes the batch
    in hand, commits and returns. With ``drain`` (the embedded broker, whose log dies with
    the process) it first consumes its input topic to its end, within the stop's deadline;
    ``left_behind`` then says what it could not."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    role_group: ClassVar[str]
    #: Overlap ``prepare`` of the next batch with ``finish`` of the current one.
    pipelined: ClassVar[bool] = False

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        engine: Engine,
        *,
        group_id: str | None = None,
        drain: bool = False,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.engine = engine
        self.drain = drain
        self.left_behind: str | None = None
        self.group_id = group_id or settings.group_id(self.role_group)
        self.watcher: ModelWatcher[M] = ModelWatcher(settings, engine, self.load_model, self.name)
        self._ready = False
        self._producer: Any = None

    # -- what a worker says ----------------------------------------------------------------

    @abstractmethod
    def input_topic(self) -> str:
        """The Kafka topic this worker consumes."""

    @abstractmethod
    def load_model(self, model_dir: Path) -> M:
        """Load what this worker serves from a model directory (also on hot reload)."""

    @abstractmethod
    def make_reader(self) -> PartitionReader:
        """The reader (merge or not) that keeps the resume rule for this worker."""

    def batch_policy(self) -> BatchPolicy:
        return self.settings.batch

    def consumer_options(self) -> dict[str, Any]:
        """Extra kafka-python consumer settings."""
        return {}

    def describe(self, model: M) -> str:
        """The start-up log line's tail: what is served, from where."""
        return f"on {self.input_topic()}"

    def on_model_change(self, old: M | None, new: M) -> None:
        """Called between batches after a hot reload."""

    @abstractmethod
    def prepare(self, records: list[Any]) -> B:
        """Parse and compute (CPU-bound; dead letters may be sent, not yet flushed)."""

    @abstractmethod
    def finish(self, batch: B, stop: threading.Event) -> None:
        """Store (one transaction), forward and flush. Raises ``ServiceUnavailable`` when
        stopping with the batch not stored, ``BrokerError`` when a send was not acknowledged:
        either way the batch stays uncommitted and is redelivered."""

    def process(self, records: list[Any], stop: threading.Event) -> None:
        """Prepare and finish one batch (tests and tools call it directly)."""
        self.finish(self.prepare(records), stop)

    # -- shared by every worker ----------------------------------------------------------

    def ready(self) -> bool:
        return self._ready

    def dead_letter(
        self,
        reason: str,
        kafka_topic: str,
        partition: int,
        offset: int,
        payload: bytes | None,
        key: bytes | None,
    ) -> Any:
        """Send one input record to the dead-letter topic with the reason and where it was;
        returns the send future (flush it with the batch)."""
        log.warning(
            "%s: dead letter from %s[%d]@%d: %s",
            self.name,
            kafka_topic,
            partition,
            offset,
            reason[:300],
        )
        metrics.DEAD_LETTERS.labels(stage=self.name).inc()
        letter = DeadLetter.build(
            reason,
            self.name,
            payload,
            source_kafka_topic=kafka_topic,
            partition=partition,
            offset=offset,
        )
        return send_dead_letter(self._producer, self.settings.kafka_topic_dlq, letter, key=key)

    def dead_letter_record(self, reason: str, record: Any) -> Any:
        return self.dead_letter(
            reason, record.topic, record.partition, record.offset, record.value, record.key
        )

    def flush(self, futures: list[Any]) -> None:
        """Wait until every record a batch produced is acknowledged; BrokerError otherwise."""
        if not futures:
            return
        timeout = self.settings.kafka.request_timeout_ms / 1000.0
        self._producer.flush(timeout=timeout)
        for future in futures:
            try:
                future.get(timeout=timeout)
            except Exception as exc:
                raise BrokerError(
                    f"{self.name}: the broker did not acknowledge a record ({exc}); "
                    "check FINSENT_KAFKA_BOOTSTRAP"
                ) from exc

    def run(self, stop: threading.Event) -> None:
        model = retry_db(
            lambda: self.watcher.load_initial(), what=f"{self.name}: model lookup", stop=stop.is_set
        )
        self.on_model_change(None, model)
        self._producer = make_producer(self.settings, self.bootstrap)
        reader = self.make_reader()
        consumer = make_consumer(
            self.settings,
            self.bootstrap,
            self.group_id,
            [self.input_topic()],
            listener=reader,
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            **self.consumer_options(),
        )
        reader.consumer = consumer  # rebalance callbacks come from poll(), which starts below
        loop_stop = DrainingStop(
            stop,
            role=self.name,
            kafka_topic=self.input_topic(),
            enabled=self.drain,
            grace_s=self.settings.shutdown_grace_s,
        )
        loop_stop.attach(reader)
        self._ready = True
        log.info("%s: serving model %s", self.name, self.describe(model))
        try:
            with fenced_as_configuration_error(self.settings, self.group_id):
                self._loop(reader, loop_stop)
            self.left_behind = loop_stop.report()
        finally:
            self._ready = False
            consumer.close(autocommit=False)
            self._producer.close(timeout=self.settings.shutdown_grace_s)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self, reader: PartitionReader, stop: DrainingStop) -> None:
        lag = LagReporter(self.name)
        policy = self.batch_policy()
        pending: _InFlight[B] | None = None
        with ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"finsent-{self.name}-store"
        ) as helper:
            try:
                while not stop.is_set():
                    self._between_batches()
                    records = reader.poll_batch(policy, stop, self.settings.kafka.poll_timeout_ms)
                    if not records:
                        if pending is not None:
                            self._complete(pending, reader, stop)
                            pending = None
                        # idle: the group's committed offsets are current
                        reader.settle_commits(self._commit_timeout_s())
                        lag.maybe_update(reader.consumer)
                        stop.idle()
                        continue
                    started = time.perf_counter()
                    in_flight = _InFlight(records, self.prepare(records), started)
                    if pending is not None:
                        self._complete(pending, reader, stop)
                        pending = None
                    if self.pipelined:
                        in_flight.future = helper.submit(self.finish, in_flight.batch, stop)
                        pending = in_flight
                    else:
                        self._complete(in_flight, reader, stop)
                    lag.maybe_update(reader.consumer)
                if pending is not None:
                    self._complete(pending, reader, stop)
            except StoppedUnstored:
                return
            finally:
                reader.settle_commits(self._commit_timeout_s())

    def _complete(
        self, in_flight: _InFlight[B], reader: PartitionReader, stop: threading.Event
    ) -> None:
        """Finish (or wait for the helper's finish of) one batch, then commit its offsets."""
        try:
            if in_flight.future is not None:
                in_flight.future.result()
            else:
                self.finish(in_flight.batch, stop)
        except ServiceUnavailable as exc:
            if stop.is_set():
                log.warning(
                    "%s: stopping with a batch not stored (%s); it stays uncommitted and will be "
                    "redelivered",
                    self.name,
                    exc,
                )
                raise StoppedUnstored() from exc
            raise
        reader.commit_soon(in_flight.records, self.name)
        metrics.BATCHES.labels(role=self.name).inc()
        metrics.BATCH_LATENCY.labels(role=self.name).observe(
            time.perf_counter() - in_flight.started
        )

    def _commit_timeout_s(self) -> float:
        return self.settings.kafka.request_timeout_ms / 1000.0

    def _between_batches(self) -> None:
        old = self.watcher.model
        if self.watcher.maybe_reload() and self.watcher.model is not None:
            self.on_model_change(old, self.watcher.model)
