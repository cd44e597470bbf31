"""The loop every stream worker shares: read a micro-batch, process it, commit, repeat,
and **the rule that keeps a rebalance from losing records**.

A batch is cut by :class:`pipeline.settings.BatchPolicy`: ``max_size`` records or
``max_wait_ms`` after its first record, whichever comes first. Offsets are committed only
after ``process`` returned (the worker stored and forwarded what it read), so a crash
redelivers rather than loses: at-least-once from Kafka, made exactly-once downstream by
idempotent writes (scorer) or the applied-documents ledger (trends).

THE RESUME RULE (every worker that reads ahead must keep it)
-------------------------------------------------------------
1. After any assignment, every assigned partition resumes at the first record this worker
   has not handed to ``process`` -- whatever the Kafka client kept. kafka-python (3.x)
   keeps the fetch position of a partition that a rebalance hands back to the same member;
   a worker that dropped its read-ahead on revocation and trusted that position would skip
   the dropped records, and its next commit would pass them: lost for good (issue 11).
   :class:`PartitionReader` remembers the first dropped offset per revoked partition and
   seeks back to it in ``on_partitions_assigned``; a partition that comes back after
   belonging to someone else starts fresh from its committed offset.
2. A commit names explicit offsets: one past the last record *processed*, per partition
   still assigned -- never the client's position (which includes read-ahead).
3. A poll that finds nothing returns within the poll timeout; nothing loops without
   waiting on the network.

Rebalances happen only inside ``poll``. The batch in hand is finished before the next
commit; when a commit fails (the group moved on) its records are redelivered and the
idempotent writes absorb them. The lag gauge counts from the fetch position, so records
read ahead count as consumed.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, FencedInstanceIdError, KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumers.alignment import UNKNOWN, GroupClock, parse_event_time
from pipeline import metrics
from pipeline.errors import ConfigurationError
from pipeline.settings import BatchPolicy, Settings

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0
#: Stream workers ask the broker to answer a fetch within this even when no record is
#: there yet. The client default (500 ms) is only harmless where the broker answers as
#: soon as data arrives; the embedded tansu holds the fetch for the full wait, which put
#: up to 0.5 s per hop on every document's end-to-end latency.
FETCH_MAX_WAIT_MS = 50
#: Records a :class:`PartitionReader` holds across partitions at most (about 20 MB of
#: documents): the bound on waiting for a lagging partition during a backlog.
MAX_BUFFERED = 20_000
#: Longest a batch waits for a lagging partition to answer before the merge gives up on
#: strict order for that batch (logged).
MERGE_WAIT_S = 5.0
#: Poll timeout while a batch is filling or a merge waits (no busy loop, see rule 3).
MERGE_POLL_MS = 50
#: A reader serving batches from its read-ahead still calls ``poll`` at least this often:
#: kafka-python counts ``max_poll_interval_ms`` between poll() calls, and a scorer working
#: through 20,000 buffered records (40 s at 500 docs/s) without one was dropped from its
#: group mid-backlog (its commits refused, its partitions re-joined a minute later).
KEEPALIVE_POLL_S = 1.0


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
        log.info(
            "%s: partitions assigned %.1f s after subscribing (assignment %d): %s",
            self.role,
            time.monotonic() - self.subscribed_at,
            self.assignments,
            _partition_names(assigned),
        )


def _partition_names(partitions: Any) -> str:
    return ", ".join(sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)) or "none"


class PartitionReader(AssignmentLog):
    """Reads ahead on every assigned partition, hands records out in event-time order, and
    keeps **the resume rule** (see the module docstring) across every rebalance.

    Merge: kafka-python returns everything it buffered for one partition before the next
    one, and the embedded broker answers a fetch with whole producer batches whatever the
    size limit: a scorer with a backlog would score one partition's documents, then the
    next's, and every key would see its documents far out of event-time order. So the
    reader buffers each partition's records and hands out the smallest head (by
    ``sort_key``, then offset), and it **never hands out a record while a partition that
    still has records on the broker (fetched position below its high watermark) has none
    buffered**: that partition's next record could sort first. This is a watermark merge:
    a backlog leaves in event-time order across partitions, so trend state does not depend
    on how the client happens to walk the partitions. Two bounds keep it live:
    ``max_buffered`` records in memory and ``merge_wait_s`` waiting for a lagging partition
    (both logged when they cut in). With ``sort_key=None`` there is no merge (trends: a
    key lives in one partition, so cross-partition order does not matter there).

    Group alignment: with a ``clock`` (:class:`consumers.alignment.GroupClock`, the scorers)
    the merge extends across the group: a record later than the group's slowest partition
    plus the allowed drift is held back, and while nothing can be released the reader keeps
    polling (pausing its fetches once ``max_buffered`` records are held) without spinning.
    A stop releases everything (draining matters more than order then).

    Offsets: :meth:`commit` commits, per partition still assigned, the offset just past
    the records handed out and processed, never the read-ahead.
    """

    def __init__(
        self,
        consumer: Any,
        sort_key: Callable[[Any], str] | None,
        *,
        role: str,
        max_buffered: int = MAX_BUFFERED,
        merge_wait_s: float = MERGE_WAIT_S,
        clock: GroupClock | None = None,
    ) -> None:
        super().__init__(role)
        self.consumer = consumer
        self.sort_key = sort_key
        self.clock = clock
        self.max_buffered = max_buffered
        self.merge_wait_s = merge_wait_s
        self.buffers: dict[Any, deque[tuple[str, Any]]] = {}
        self.total = 0
        #: Per partition: one past the last record the client gave us (our fetch position).
        self.next_offset: dict[Any, int] = {}
        #: Per revoked partition: the first record dropped from its buffer (not processed).
        self.resume_at: dict[Any, int] = {}
        self.seeks = 0
        #: when ``consumer.poll`` was last called (see :data:`KEEPALIVE_POLL_S`)
        self.polled_at = time.monotonic()
        #: the last :meth:`commit_soon`: its future, set when answered, and the role
        self._commit_in_flight: tuple[Any, threading.Event, str] | None = None

    # -- the resume rule ---------------------------------------------------------------

    def on_partitions_revoked(self, revoked: Any) -> None:
        super().on_partitions_revoked(revoked)
        if self.clock is not None:
            self.clock.forget({tp.partition for tp in revoked})
        for tp in revoked:
            buffer = self.buffers.pop(tp, None)
            if buffer:
                self.total -= len(buffer)
                first = buffer[0][1].offset
                self.resume_at[tp] = min(first, self.resume_at.get(tp, first))

    def on_partitions_assigned(self, assigned: Any) -> None:
        super().on_partitions_assigned(assigned)
        for tp in assigned:
            stale = self.buffers.pop(tp, None)
            if stale:  # cannot happen with eager rebalancing; kept safe all the same
                self.total -= len(stale)
                self.resume_at[tp] = min(
                    stale[0][1].offset, self.resume_at.get(tp, stale[0][1].offset)
                )
            offset = self.resume_at.pop(tp, None)
            if offset is not None:
                # kafka-python kept this partition's fetch position (past what we dropped):
                # go back to the first record not handed out. A seek only sets local state.
                self.consumer.seek(tp, offset)
                self.next_offset[tp] = offset
                self.seeks += 1
                log.info(
                    "%s: %s resumes at offset %d (records read ahead before the rebalance)",
                    self.role,
                    f"{tp.topic}:{tp.partition}",
                    offset,
                )
        # A partition that went elsewhere gets fresh state from its committed offset if it
        # ever comes back: forget where we were.
        self.resume_at.clear()
        self.next_offset = {tp: offset for tp, offset in self.next_offset.items() if tp in assigned}

    # -- reading -------------------------------------------------------------------------

    def _poll(self, timeout_ms: int) -> int:
        self.polled_at = time.monotonic()
        room = max(1, self.max_buffered - self.total)
        polled = self.consumer.poll(timeout_ms=max(0, timeout_ms), max_records=room)
        got = 0
        for tp, records in polled.items():
            if not records:
                continue
            buffer = self.buffers.setdefault(tp, deque())
            key = self.sort_key
            for record in records:
                buffer.append((key(record) if key is not None else "", record))
            self.next_offset[tp] = records[-1].offset + 1
            got += len(records)
        self.total += got
        return got

    def _lagging_empty(self) -> list[Any]:
        """Assigned partitions with nothing buffered that still have records on the broker
        (or have not answered a fetch yet): a merge must wait for them."""
        if self.sort_key is None:
            return []
        lagging = []
        for tp in self.consumer.assignment():
            if self.buffers.get(tp):
                continue
            end = self.consumer.highwater(tp)
            if end is None:
                lagging.append(tp)  # no fetch answered since the assignment
                continue
            position = self.next_offset.get(tp)
            if position is not None and position < end:
                lagging.append(tp)
        return lagging

    def poll_batch(
        self, policy: BatchPolicy, stop: threading.Event, poll_timeout_ms: int
    ) -> list[Any]:
        """Up to ``policy.max_size`` records: waits at most ``poll_timeout_ms`` for a first
        record (then returns [] so the caller can check ``stop``; never spins), and at most
        ``policy.max_wait_ms`` after it for more, longer only while a lagging partition has
        nothing buffered (bounded by ``merge_wait_s``)."""
        started = time.monotonic()
        if self.total and started - self.polled_at >= KEEPALIVE_POLL_S:
            self._poll(0)  # stay in the group while serving from the read-ahead
        first_at = started if self.total else None
        forced = False
        while not stop.is_set():
            now = time.monotonic()
            if self.total and self._held():
                # the group is behind: wait for it, still polling (no spin, rule 3)
                if (now - started) * 1000.0 >= poll_timeout_ms:
                    return []
                self._hold_poll(MERGE_POLL_MS)
                first_at = None
                continue
            if first_at is None:
                if self.total:  # released after a hold
                    first_at = now
                    continue
                remaining_ms = poll_timeout_ms - (now - started) * 1000.0
                if remaining_ms <= 0:
                    return []
                if self._poll(int(min(remaining_ms, poll_timeout_ms)) or 1):
                    first_at = time.monotonic()
                continue
            lagging = self._lagging_empty()
            if self.total >= self.max_buffered:
                forced = bool(lagging)
                break
            if self.total >= policy.max_size and not lagging:
                break
            waited = now - first_at
            if waited >= policy.max_wait_ms / 1000.0 and not lagging:
                break
            if waited >= max(self.merge_wait_s, policy.max_wait_ms / 1000.0):
                forced = bool(lagging)
                break
            self._poll(MERGE_POLL_MS)
        if forced:
            log.info(
                "%s: handing out records before partitions %s answered (read-ahead %d records, "
                "waited %.1fs): event-time order across partitions is not guaranteed here",
                self.role,
                _partition_names(self._lagging_empty()),
                self.total,
                time.monotonic() - started,
            )
        return self._take(policy.max_size, forced or stop.is_set())

    # -- group alignment -----------------------------------------------------------------

    def _own_watermarks(self) -> dict[int, object]:
        """Per assigned partition: the event time of its next record, None when it is caught
        up (nothing buffered, fetched to its high watermark), ``UNKNOWN`` otherwise."""
        own: dict[int, object] = {}
        for tp in self.consumer.assignment():
            buffer = self.buffers.get(tp)
            if buffer:
                own[tp.partition] = parse_event_time(buffer[0][0])
                continue
            end = self.consumer.highwater(tp)
            position = self.next_offset.get(tp)
            if end is not None and (end == 0 or (position is not None and position >= end)):
                own[tp.partition] = None
            else:
                own[tp.partition] = UNKNOWN
        return own

    def _limit(self) -> datetime | None | object:
        """The latest event time that may be handed out now (see :class:`GroupClock`)."""
        if self.clock is None:
            return None
        own = self._own_watermarks()
        partitions = self.consumer.partitions_for_topic(self.clock.kafka_topic) or set(own)
        return self.clock.limit(own, set(partitions))

    @staticmethod
    def _releasable(key: str, limit: datetime | None | object) -> bool:
        if limit is None:
            return True
        at = parse_event_time(key)
        if at is None:
            return True  # not a document: it goes to the dead letters at once
        return isinstance(limit, datetime) and at <= limit

    def _held(self) -> bool:
        """True when the earliest buffered record is beyond the group's limit."""
        if self.clock is None:
            return False
        heads = [buf[0][0] for buf in self.buffers.values() if buf]
        if not heads:
            return False
        head = min(heads)
        limit = self._limit()
        if self._releasable(head, limit):
            return False
        at = parse_event_time(head)
        if at is not None:
            self.clock.held(at, limit, self.total)
        return True

    def _hold_poll(self, timeout_ms: int) -> None:
        """Poll while held: keeps the group membership alive and fills the read-ahead, with
        every fetch paused once ``max_buffered`` records are held."""
        if self.total < self.max_buffered:
            self._poll(timeout_ms)
            return
        paused = list(self.consumer.assignment())
        self.consumer.pause(*paused)
        try:
            self._poll(timeout_ms)
        finally:
            still = self.consumer.assignment()
            self.consumer.resume(*[tp for tp in paused if tp in still])

    def _take(self, n: int, force: bool) -> list[Any]:
        heads = [
            (buf[0][0], buf[0][1].offset, i, tp)
            for i, (tp, buf) in enumerate(self.buffers.items())
            if buf
        ]
        heapq.heapify(heads)
        lagging = set() if force else set(self._lagging_empty())
        limit = None if force else self._limit()
        out: list[Any] = []
        while heads and len(out) < n and not lagging:
            if not self._releasable(heads[0][0], limit):
                break  # the group is behind: the rest waits (see GroupClock)
            _, _, i, tp = heapq.heappop(heads)
            buffer = self.buffers[tp]
            out.append(buffer.popleft()[1])
            if buffer:
                heapq.heappush(heads, (buffer[0][0], buffer[0][1].offset, i, tp))
            elif not force and self.sort_key is not None and tp in set(self._lagging_empty()):
                break  # its next record, still on the broker, may sort before the other heads
        self.total -= len(out)
        return out

    def commit_soon(self, records: list[Any], role: str) -> None:
        """Commit like :meth:`commit`, without waiting for the broker's answer: the scorer
        waited ~2 ms per batch for it, 3 % of its thread on the serial path. The previous
        commit is awaited first (normally long done), so commits stay in order, and its
        failure is logged as :meth:`commit` logs one. Safe because every offset named is
        one past records already stored and forwarded: a commit that lands late or not at
        all only redelivers them (absorbed downstream, see the module docstring); call
        :meth:`settle_commits` before going idle or closing, so the group's committed
        offsets are current whenever the worker has nothing in hand."""
        self.settle_commits()
        offsets = self._offsets(records)
        if not offsets:
            return
        done = threading.Event()
        future = self.consumer.commit_async(offsets=offsets)
        future.add_both(lambda _: done.set())
        self._commit_in_flight = (future, done, role)

    def settle_commits(self, timeout_s: float = 30.0) -> bool:
        """Wait for the commit :meth:`commit_soon` sent last; False when it failed or
        did not finish within ``timeout_s`` (the records will be redelivered)."""
        if self._commit_in_flight is None:
            return True
        future, done, role = self._commit_in_flight
        self._commit_in_flight = None
        if not done.wait(timeout_s):
            log.warning(
                "%s: offset commit not acknowledged within %.0f s; the batch may be redelivered",
                role,
                timeout_s,
            )
            return False
        if future.failed():
            _log_commit_failure(role, future.exception)
            return False
        return True

    def _offsets(self, records: list[Any]) -> dict[Any, Any]:
        """Per partition still assigned: the offset just past ``records`` in it."""
        assigned = self.consumer.assignment()
        offsets: dict[Any, Any] = {}
        for record in records:
            tp = _partition_of(record)
            if tp in assigned and (tp not in offsets or offsets[tp].offset <= record.offset):
                offsets[tp] = OffsetAndMetadata(record.offset + 1, None, -1)
        return offsets

    def commit(self, records: list[Any], role: str) -> bool:
        """Commit, per partition still assigned, the offset just past ``records`` (not the
        read-ahead). A partition revoked meanwhile is left to its new owner, which resumes
        from the last commit: at worst it redoes records we stored (idempotent downstream)."""
        self.settle_commits()
        offsets = self._offsets(records)
        if not offsets:
            return True
        return commit(self.consumer, role, offsets)


@contextlib.contextmanager
def fenced_as_configuration_error(settings: Settings, group_id: str) -> Iterator[None]:
    """Turns the broker fencing this member (another process joined ``group_id`` with
    the same static member id) into an error that says what to change."""
    try:
        yield
    except FencedInstanceIdError:
        raise ConfigurationError(
            f"another worker joined consumer group {group_id} with the same static member id "
            f"{settings.group_instance_id()!r} and took over this one's partitions: give each worker of "
            "a role on one host its own FINSENT_WORKER_ID (or set FINSENT_KAFKA_STATIC_MEMBERSHIP=false)"
        ) from None


def _partition_of(record: Any) -> TopicPartition:
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
    except KafkaError as exc:
        _log_commit_failure(role, exc)
        return False


def _log_commit_failure(role: str, exc: BaseException | None) -> None:
    if isinstance(exc, CommitFailedError):
        log.warning(
            "%s: offset commit refused after a rebalance (%s); the batch will be "
            "redelivered and absorbed by idempotent writes",
            role,
            exc,
        )
    else:
        log.warning("%s: offset commit failed (%s); the batch may be redelivered", role, exc)


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
                metrics.CONSUMER_LAG.labels(
                    role=self.role, partition=f"{tp.topic}:{tp.partition}"
                ).set(lag)
            self.total = total
        except (KafkaError, AssertionError, ValueError) as exc:  # a rebalance in progress
            log.debug("%s: lag not measured this time: %s", self.role, exc)
