"""Event-time alignment across the members of one consumer group (the scorers).

One scorer merges its own partitions by event time (:class:`consumers.batching.PartitionReader`),
but several scorers sharing a backlog each sweep their share at their own pace: a member
with two partitions is still at day 30 of a 60-day backfill when the others have finished,
so the trends worker receives a key's documents from day 60, then from day 30 -- beyond its
lateness horizon, where it can no longer rewind the key's memory, and the trend state and
alerts then depend on how the partitions happened to be spread over the group.

So each member publishes, per partition it owns, the event time of the next record it will
hand out (``partition_watermarks``, NULL once the partition is caught up), reads the others'
rows, and holds back every record later than the group's lowest watermark plus
``FINSENT_SCORER_MAX_DRIFT_S``. The member that owns the lowest partition is never held by
it, so the group always makes progress; members wait only while a backlog is being swept
(live traffic is caught up and publishes NULL). A partition whose watermark nobody has
published yet (its owner has not fetched it, or runs a finsent without alignment) holds the
others for at most ``FINSENT_SCORER_ALIGN_WAIT_S``, then it is ignored and that is logged.
A partition whose owner died keeps its last row until the new owner resumes it (one session
timeout): the row is a lower bound, so holding on it is safe.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.db import driver_reason

log = logging.getLogger(__name__)

#: How often a member re-reads the group's rows and publishes its own changes.
REFRESH_S = 0.2
#: How often a member that is held says so in the log.
HELD_LOG_EVERY_S = 10.0

_UPSERT = sa.text("""
    INSERT INTO partition_watermarks (group_id, kafka_topic, partition, next_event_at, updated_at)
    VALUES (:group_id, :kafka_topic, :partition, :next_event_at, now())
    ON CONFLICT (group_id, kafka_topic, partition)
    DO UPDATE SET next_event_at = EXCLUDED.next_event_at, updated_at = now()""")
_READ = sa.text("""
    SELECT partition, next_event_at FROM partition_watermarks
    WHERE group_id = :group_id AND kafka_topic = :kafka_topic""")

#: A partition's watermark as its owner knows it: the next record's event time, None when
#: the partition is caught up, ``UNKNOWN`` when it has not been fetched yet.
UNKNOWN = object()


def parse_event_time(key: str) -> datetime | None:
    """The datetime of a sort key written by the producers (UTC ISO 8601); None for a
    record that is not a document (it is released at once, to go to the dead letters)."""
    if not key:
        return None
    try:
        return datetime.fromisoformat(key)
    except ValueError:
        return None


class GroupClock:
    """The group's event-time limit for one member (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        group_id: str,
        kafka_topic: str,
        *,
        max_drift_s: float,
        missing_wait_s: float,
        role: str,
    ) -> None:
        self.engine = engine
        self.group_id = group_id
        self.kafka_topic = kafka_topic
        self.max_drift = timedelta(seconds=max_drift_s)
        self.missing_wait_s = missing_wait_s
        self.role = role
        self._published: dict[int, datetime | None] = {}
        self._others: dict[int, datetime | None] = {}
        self._refreshed_at = float("-inf")
        self._missing_since: dict[int, float] = {}
        self._given_up: set[int] = set()
        self._held_logged_at = float("-inf")
        self._db_warned_at = float("-inf")

    def forget(self, partitions: set[int]) -> None:
        """Partitions this member no longer owns: their rows are the new owner's now."""
        for partition in partitions:
            self._published.pop(partition, None)

    def limit(self, own: dict[int, object], all_partitions: set[int]) -> datetime | None | object:
        """The latest event time this member may hand out now: a datetime, None (no limit:
        nothing of the group is behind), or ``UNKNOWN`` (hold everything: a partition of
        the topic has no watermark yet and the wait for it has not run out).

        ``own``: this member's partitions and their watermarks (see :data:`UNKNOWN`)."""
        now = time.monotonic()
        alone = bool(own) and all_partitions <= set(own)
        if now - self._refreshed_at >= REFRESH_S and not alone:
            # Owning every partition, the member needs no one's rows and no one needs its
            # own (a member that joins triggers a rebalance first; our last rows are lower
            # bounds meanwhile): the exchange, a transaction on the scorer's serial path
            # (2 % of its time at 5 a second), is skipped.
            self._refresh(own)
            self._refreshed_at = now
        lows: list[datetime] = []
        missing = False
        for partition in sorted(all_partitions):
            if partition in own and own[partition] is not UNKNOWN:
                value: object = own[partition]
            elif partition in self._others and partition not in own:
                value = self._others[partition]
            else:
                value = UNKNOWN
            if value is UNKNOWN:
                if partition in own:
                    # our own partition not fetched yet: the reader's merge waits for it
                    continue
                first = self._missing_since.setdefault(partition, now)
                if partition in self._given_up:
                    continue
                if now - first >= self.missing_wait_s:
                    self._given_up.add(partition)
                    log.warning(
                        "%s: no member of %s has published an event-time watermark for %s:%d in %.0fs "
                        "(its owner has not fetched it, or runs a finsent without alignment); no longer "
                        "waiting for it, so keys may see that partition's documents out of order",
                        self.role,
                        self.group_id,
                        self.kafka_topic,
                        partition,
                        self.missing_wait_s,
                    )
                    continue
                missing = True
                continue
            self._missing_since.pop(partition, None)
            self._given_up.discard(partition)
            if isinstance(value, datetime):
                lows.append(value)
        if missing:
            return UNKNOWN
        return min(lows) + self.max_drift if lows else None

    def held(self, head: datetime, limit: datetime | object, buffered: int) -> None:
        """Log, at most every :data:`HELD_LOG_EVERY_S`, that the member waits for the group."""
        now = time.monotonic()
        if now - self._held_logged_at < HELD_LOG_EVERY_S:
            return
        self._held_logged_at = now
        if isinstance(limit, datetime):
            behind = f"the group's slowest partition (at {limit - self.max_drift:%Y-%m-%d %H:%M})"
        else:
            behind = "a partition whose watermark is not published yet"
        log.info(
            "%s: holding %d read-ahead records from event time %s until %s of %s catches up "
            "(FINSENT_SCORER_MAX_DRIFT_S=%.0f)",
            self.role,
            buffered,
            f"{head:%Y-%m-%d %H:%M}",
            behind,
            self.group_id,
            self.max_drift.total_seconds(),
        )

    def _refresh(self, own: dict[int, object]) -> None:
        changed = {
            p: v
            for p, v in own.items()
            if v is not UNKNOWN and (p not in self._published or self._published[p] != v)
        }

        def exchange() -> list[tuple[int, datetime | None]]:
            with self.engine.begin() as conn:
                if changed:
                    conn.execute(
                        _UPSERT,
                        [
                            {
                                "group_id": self.group_id,
                                "kafka_topic": self.kafka_topic,
                                "partition": p,
                                "next_event_at": v,
                            }
                            for p, v in changed.items()
                        ],
                    )
                return [
                    (int(r.partition), r.next_event_at)
                    for r in conn.execute(
                        _READ, {"group_id": self.group_id, "kafka_topic": self.kafka_topic}
                    )
                ]

        try:
            rows = exchange()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            # Never block the poll loop on the database (a stop must still be seen): keep
            # the rows last read, which only hold this member back more than needed.
            now = time.monotonic()
            if now - self._db_warned_at >= HELD_LOG_EVERY_S:
                self._db_warned_at = now
                log.warning(
                    "%s: cannot exchange event-time watermarks with the database (%s); using the last "
                    "ones read",
                    self.role,
                    driver_reason(exc),
                )
            return
        for p, v in changed.items():
            self._published[p] = v if isinstance(v, datetime) else None
        self._others = dict(rows)
