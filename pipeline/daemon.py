"""Run roles in threads of one process, and stop them cleanly.

``finsent run`` hands every role (producers, HTTP ingest, scorer, trends, alerts) to one
:class:`Daemon`; ``finsent worker ROLE`` hands it one. SIGTERM or SIGINT sets the shared
stop event: each role finishes the batch in hand, commits and returns. The daemon waits at
most ``shutdown_grace_s`` for them; exit code 0 when every role stopped in time, 1 when a
role crashed or overran the grace (whatever it had not committed is redelivered on the
next start, so even then nothing is lost).

A role that raises stops the whole process (exit 1) rather than leaving a half-working
daemon: the supervisor (systemd, Kubernetes) restarts it, and every role resumes from its
committed Kafka offsets and PostgreSQL state.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType

from pipeline.roles import Role

log = logging.getLogger(__name__)


class Daemon:
    """Runs ``roles`` until a signal, ``stop`` being set, or a role failing."""

    def __init__(self, roles: Sequence[Role], *, shutdown_grace_s: float, stop: threading.Event | None = None) -> None:
        self.roles = list(roles)
        self.grace_s = shutdown_grace_s
        self.stop = stop or threading.Event()
        self.failed: dict[str, BaseException] = {}
        self._threads: list[threading.Thread] = []

    def ready(self) -> bool:
        """Every role connected and serving (for /healthz readiness)."""
        return bool(self.roles) and all(role.ready() for role in self.roles)

    def alive(self) -> bool:
        """No role has crashed and no stop was requested (for /healthz liveness)."""
        return not self.failed and not self.stop.is_set()

    def _run_role(self, role: Role) -> None:
        try:
            role.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - reported, then the whole process stops
            log.exception("role %s failed: %s; stopping every role", role.name, exc)
            self.failed[role.name] = exc
            self.stop.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            log.warning("second %s: still draining; send SIGKILL to stop at once", signal.Signals(signum).name)
            return
        log.info("%s received: finishing the batches in hand (grace %.0fs)", signal.Signals(signum).name, self.grace_s)
        self.stop.set()

    def run(self, *, install_signals: bool = True) -> int:
        """Start every role, wait for the stop, join them; returns the exit code."""
        previous: dict[signal.Signals, object] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            for role in self.roles:
                thread = threading.Thread(target=self._run_role, args=(role,), name=f"finsent-{role.name}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
            log.info("running roles: %s", ", ".join(role.name for role in self.roles))
            while not self.stop.wait(0.5):
                if not any(t.is_alive() for t in self._threads):
                    log.info("every role finished")
                    self.stop.set()
            return self._join()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]

    def _join(self) -> int:
        deadline = time.monotonic() + self.grace_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        late = [t.name for t in self._threads if t.is_alive()]
        if late:
            log.error("roles still busy after the %.0fs grace: %s; exiting anyway (their uncommitted "
                      "records are redelivered on the next start)", self.grace_s, ", ".join(late))
            return 1
        if self.failed:
            return 1
        log.info("every role stopped cleanly")
        return 0
