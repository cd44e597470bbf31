"""What a role is: the unit ``finsent run`` starts in one process and ``finsent worker``
starts alone.

A role's ``run(stop)`` blocks until ``stop`` is set, then finishes the batch in hand,
commits, releases what it holds and returns. It must survive ``kill -9`` at any point
(state lives in Kafka offsets and PostgreSQL transactions, never only in memory).
``ready()`` tells ``/healthz`` whether it is serving (model loaded, connected).
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable


@runtime_checkable
class Role(Protocol):
    name: str

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; then drain, commit and return."""

    def ready(self) -> bool:
        """True while the role is connected and able to do its work."""
