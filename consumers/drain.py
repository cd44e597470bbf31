"""Draining a stream worker's input before it stops, when the broker forgets.

The embedded broker (tansu) keeps its log in memory: whatever a worker has not consumed
when the process exits is gone (issue #11: SIGTERM shortly after start left documents
scored but never trended). So on the embedded broker a stream worker asked to stop keeps
consuming until its input Kafka topic has nothing left for its assigned partitions, and
only then finishes like a normal stop. The daemon stops the stages in data-flow order
(:mod:`finsent.daemon`), so when trends drains, the scorer has already forwarded its
last record.

Drained means: after the stop was seen, a poll returned nothing that *started* after an
earlier empty poll (so its fetches reflect what upstream wrote before it stopped), nothing
is read ahead, at least one partition is assigned (a worker stopped before its group join
finished has not even started), and every assigned partition's fetch position has reached
the high watermark of the latest fetch response (the lag :class:`consumers.batching.LagReporter`
reports; tansu's ListOffsets answer undercounts, see consumers/progress.py).

The drain is bounded by the stop's deadline (:class:`pipeline.roles.StopRequest`) less a
margin for finishing the batch in hand and closing. When it runs out, the worker logs ONE
warning naming the Kafka topic and how many records were not committed, and sets the
role's ``left_behind`` so the daemon does not claim a clean stop.

With an external Kafka cluster (``FINSENT_KAFKA_BOOTSTRAP``) the log is durable: no drain,
the worker stops after the batch in hand and the rest is read on the next start.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kafka.errors import KafkaError

log = logging.getLogger(__name__)

#: Most of the grace a drain leaves for finishing the batch in hand, committing and
#: closing the consumer and producer (a quarter of the grace when that is less).
MAX_CLOSE_MARGIN_S = 2.0
#: Longest the left-behind count waits for the broker to tell the committed offsets.
COMMITTED_TIMEOUT_MS = 500


class DrainingStop(threading.Event):
    """The stop a stream worker's loop watches. ``is_set()`` is true once the role's own
    ``stop`` is set and, when draining, the input is drained or the drain's deadline has
    passed. Without draining it is ``stop`` itself.

    The loop calls :meth:`idle` after every poll that returned nothing, and the worker
    calls :meth:`report` before closing its consumer. Only ``is_set()`` is meaningful to
    the loop (``wait()`` does not follow the role's stop).
    """

    def __init__(
        self, stop: threading.Event, *, role: str, kafka_topic: str, enabled: bool, grace_s: float
    ) -> None:
        super().__init__()
        self.role_stop = stop
        self.role = role
        self.kafka_topic = kafka_topic
        self.enabled = enabled
        self.grace_s = grace_s
        self.reader: Any = None  # the PartitionReader, attached once the consumer exists
        self.drained = False
        self.deadline: float | None = None  # time.monotonic() when the drain gives up
        self._armed = False  # an empty poll ended after the stop was seen

    def attach(self, reader: Any) -> None:
        """The worker's :class:`consumers.batching.PartitionReader` (its ``consumer`` and
        read-ahead count tell whether anything is left)."""
        self.reader = reader

    # -- the loop's view -------------------------------------------------------------------

    def is_set(self) -> bool:
        if super().is_set():
            return True
        if not self.role_stop.is_set():
            return False
        if not self.enabled:
            self.set()
            return True
        now = time.monotonic()
        if self.deadline is None:
            stop_by = getattr(self.role_stop, "deadline", None)
            stop_by = float(stop_by) if stop_by is not None else now + self.grace_s
            margin = min(MAX_CLOSE_MARGIN_S, max(0.0, stop_by - now) / 4.0)
            self.deadline = stop_by - margin
            log.info(
                "%s: stop requested; draining %s before stopping (up to %.1fs)",
                self.role,
                self.kafka_topic,
                max(0.0, self.deadline - now),
            )
        if now >= self.deadline:
            self.set()
            return True
        return False

    def idle(self) -> None:
        """After a poll that returned nothing: finish the drain when nothing is left."""
        if not self.enabled or self.drained or not self.role_stop.is_set() or self.reader is None:
            return
        if not self._armed:
            # This poll may have begun before the stop (and before upstream's last write):
            # only a poll that starts from here on can prove the input empty.
            self._armed = True
            return
        if self._caught_up():
            self.drained = True
            log.info("%s: drained %s; stopping", self.role, self.kafka_topic)
            self.set()

    def _caught_up(self) -> bool:
        reader = self.reader
        if reader.total:
            return False
        consumer = reader.consumer
        try:
            assigned = list(consumer.assignment())
            if not assigned:
                return False
            for tp in assigned:
                end = consumer.highwater(tp)
                position = consumer.position(tp, timeout_ms=0) if end is not None else None
                if end is None or position is None or position < end:
                    return False
        except (KafkaError, AssertionError, TypeError, ValueError):  # a rebalance in progress
            return False
        return True

    # -- what is left behind -----------------------------------------------------------------

    def report(self) -> str | None:
        """When the drain ran out of time: log ONE warning saying how many records of the
        input Kafka topic were not consumed and that the embedded broker loses them; return
        that text (the role's ``left_behind``). None when drained, not draining, or
        nothing is left."""
        if not self.enabled or self.drained or not self.role_stop.is_set():
            return None
        counted = self._not_committed() if self.reader is not None else None
        if counted is None:
            what = (
                f"an unknown number of records of Kafka topic {self.kafka_topic} were not consumed "
                "(no partition of it was assigned yet)"
            )
        else:
            total, exact, per_partition = counted
            if total == 0 and exact:
                return None
            what = (
                f"{'' if exact else 'at least '}{total} records of Kafka topic {self.kafka_topic} were not "
                f"consumed ({per_partition})"
            )
        message = (
            f"{self.role}: the shutdown grace ran out while draining: {what}; the embedded broker keeps "
            "its log in memory, so they are lost when this process exits"
        )
        log.warning(message)
        return message

    def _not_committed(self) -> tuple[int, bool, str] | None:
        """(records, exact, per-partition text) not committed on the assigned partitions,
        or None without an assignment. Exact: the high watermark of the latest fetch less
        the committed offset (this includes a batch in hand that could not be stored).
        When the broker does not tell the committed offsets in time: the high watermark
        less the fetch position, plus the read-ahead -- a lower bound."""
        consumer = self.reader.consumer
        try:
            assigned = sorted(consumer.assignment())
            ends = {tp: consumer.highwater(tp) for tp in assigned}
        except (KafkaError, AssertionError):
            return None
        if not assigned:
            return None
        try:
            done = {
                tp: consumer.committed(tp, timeout_ms=COMMITTED_TIMEOUT_MS) or 0 for tp in assigned
            }
            from_positions = False
        except (KafkaError, AssertionError, ValueError):
            from_positions = True
            done = {}
            for tp in assigned:
                try:
                    done[tp] = consumer.position(tp, timeout_ms=0) or 0
                except (KafkaError, AssertionError, TypeError, ValueError):
                    done[tp] = ends[tp] or 0  # unknown: count nothing (the total is a lower bound)
        exact = not from_positions
        parts: list[str] = []
        total = 0
        for tp in assigned:
            end = ends[tp]
            if end is None:
                exact = False
                parts.append(f"partition {tp.partition}: not fetched yet")
                continue
            left = max(0, int(end) - int(done[tp]))
            total += left
            parts.append(f"partition {tp.partition}: {left}")
        if from_positions and self.reader.total:
            total += int(self.reader.total)
            parts.append(f"read ahead: {self.reader.total}")
        return total, exact, ", ".join(parts)
