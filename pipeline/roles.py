"""What a role is: the unit ``finsent run`` starts in one process and ``finsent worker``
starts alone.

A role's ``run(stop)`` blocks until ``stop`` is set, then finishes the batch in hand,
commits, releases what it holds and returns. It must survive ``kill -9`` at any point
(state lives in Kafka offsets and PostgreSQL transactions, never only in memory).
``ready()`` tells ``/healthz`` whether it is serving (model loaded, connected).

Two optional attributes, read with ``getattr`` so that any object with ``name``, ``run``
and ``ready`` stays a role:

* ``stage`` (a :class:`Stage`): where the role sits in the data flow. The daemon stops
  the stages in order (ingest, then scoring, then trends, then the rest) so that what an
  earlier stage forwards in its last moments still has a consumer running. Default:
  :attr:`Stage.DOWNSTREAM`.
* ``left_behind`` (``str | None``, set by the role while stopping): what it could not
  process within the grace and that will be lost (records in the embedded broker's
  in-memory log). The daemon's last log line and exit code account for it.

The ``stop`` a daemon hands a role is a :class:`StopRequest`: a ``threading.Event`` that
also carries the monotonic deadline by which the role must have returned.
"""

from __future__ import annotations

import threading
from enum import IntEnum
from typing import Any, Protocol, runtime_checkable


class Stage(IntEnum):
    """Shutdown order: lower stages are stopped (and waited for) first."""

    INGEST = 0  # producers and HTTP ingest: nothing new enters once they stop
    SCORE = 1  # scorer: documents -> predictions + scored records
    TREND = 2  # trends: scored records -> key memory
    DOWNSTREAM = 3  # alerts and everything that only reads what the stream stored


@runtime_checkable
class Role(Protocol):
    @property
    def name(self) -> str:
        """The role's name in logs, metrics and ``/healthz``."""

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then drain, commit and return."""

    def ready(self) -> bool:
        """True while the role is connected and able to do its work."""


class StopRequest(threading.Event):
    """A role's own stop event. ``deadline`` (``time.monotonic()`` seconds) is set with it:
    a role that drains after its stop (the stream workers on the embedded broker) must
    give up in time to return before it."""

    def __init__(self) -> None:
        super().__init__()
        self.deadline: float | None = None

    def stop_by(self, deadline: float) -> None:
        self.deadline = deadline
        self.set()


def stage_of(role: Any) -> Stage:
    """The role's :class:`Stage`; :attr:`Stage.DOWNSTREAM` when it declares none."""
    stage = getattr(role, "stage", None)
    return Stage(stage) if isinstance(stage, int) and stage in set(Stage) else Stage.DOWNSTREAM
