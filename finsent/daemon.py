"""Run roles in threads of one process, and stop them in data-flow order.

``finsent run`` hands every role (producers, HTTP ingest, scorer, trends, alerts) to one
:class:`Daemon`; ``finsent worker ROLE`` hands it one. Each role gets its own
:class:`~pipeline.roles.StopRequest`. SIGTERM or SIGINT (or ``stop`` being set, or a role
failing) starts a **staged shutdown**: the roles of one :class:`~pipeline.roles.Stage`
are stopped, then waited for, before the next stage is stopped -- producers and HTTP
ingest first, then the scorer, then trends, then alerts and the rest -- all within one
``shutdown_grace_s``. Stopping everything at once let the scorer forward records that
trends, already gone, never read; with the embedded broker (log in memory) they were lost
while the log said every role stopped cleanly (issue #11). The stream workers drain their
input before returning when the broker is embedded (:mod:`consumers.drain`).

Exit code 0 when every role stopped in time and left nothing behind; 1 when a role
crashed, overran the grace, or reported records it could not process (``left_behind``).
With a durable Kafka log whatever was not committed is redelivered on the next start;
with the embedded broker it is lost, and the last log line says so.

A role that raises stops the whole process (exit 1) rather than leaving a half-working
daemon: the supervisor (systemd, Kubernetes) restarts it, and every role resumes from its
committed Kafka offsets and PostgreSQL state.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from pipeline.roles import Role, Stage, StopRequest, stage_of
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Running:
    role: Role
    thread: threading.Thread
    stop: StopRequest


def tune_interpreter(settings: Settings) -> None:
    """Process-wide interpreter settings for a process that runs stream roles: a short GIL
    switch interval (``FINSENT_GIL_SWITCH_INTERVAL_S``), so the scorer's thread gets the GIL
    back soon after each onnxruntime call instead of waiting out other threads' 5 ms; and
    tokenisation in the calling thread (``TOKENIZERS_PARALLELISM=false`` unless the
    environment says otherwise): the tokenizers library's own thread pool saved nothing on
    a 32-document batch but competed with trends, the broker and PostgreSQL for the cores,
    and the scorer waited for it (0.09 ms of wall time per document in ``bench/pipeline.py``
    against 0.03 in the thread)."""
    sys.setswitchinterval(settings.gil_switch_interval_s)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Daemon:
    """Runs ``roles`` until a signal, ``stop`` being set, or a role failing; then stops
    them stage by stage (see the module docstring).

    ``durable_log`` says whether the broker keeps its log across a restart (Apache Kafka)
    or not (the embedded broker): it decides what the shutdown log says about records a
    late role did not commit.
    """

    def __init__(
        self,
        roles: Sequence[Role],
        *,
        shutdown_grace_s: float,
        stop: threading.Event | None = None,
        durable_log: bool = True,
    ) -> None:
        self.roles = list(roles)
        self.grace_s = shutdown_grace_s
        self.stop = stop or threading.Event()
        self.durable_log = durable_log
        self.failed: dict[str, BaseException] = {}
        #: Per role name, what it reported it left behind while stopping.
        self.left_behind: dict[str, str] = {}
        self._running: list[_Running] = []

    def ready(self) -> bool:
        """Every role connected and serving (for /healthz readiness)."""
        return bool(self.roles) and all(role.ready() for role in self.roles)

    def alive(self) -> bool:
        """No role has crashed and no stop was requested (for /healthz liveness)."""
        return not self.failed and not self.stop.is_set()

    def _run_role(self, role: Role, stop: StopRequest) -> None:
        try:
            role.run(stop)
        except BaseException as exc:
            log.exception("role %s failed: %s; stopping every role", role.name, exc)
            self.failed[role.name] = exc
            self.stop.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            log.warning(
                "second %s: still draining; send SIGKILL to stop at once",
                signal.Signals(signum).name,
            )
            return
        log.info(
            "%s received: stopping roles in data-flow order (grace %.0fs)",
            signal.Signals(signum).name,
            self.grace_s,
        )
        self.stop.set()

    def run(self, *, install_signals: bool = True) -> int:
        """Start every role, wait for the stop, stop the stages in order; returns the exit code."""
        previous: dict[signal.Signals, object] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            for role in self.roles:
                stop = StopRequest()
                thread = threading.Thread(
                    target=self._run_role,
                    args=(role, stop),
                    name=f"finsent-{role.name}",
                    daemon=True,
                )
                thread.start()
                self._running.append(_Running(role, thread, stop))
            log.info("running roles: %s", ", ".join(role.name for role in self.roles))
            while not self.stop.wait(0.5):
                if not any(r.thread.is_alive() for r in self._running):
                    log.info("every role finished")
                    self.stop.set()
            return self._shutdown()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]

    def _shutdown(self) -> int:
        """Stop each stage and wait for it before stopping the next, within one grace."""
        deadline = time.monotonic() + self.grace_s
        for stage in sorted({stage_of(r.role) for r in self._running}):
            members = [r for r in self._running if stage_of(r.role) == stage]
            log.info(
                "stopping %s (%s)",
                ", ".join(r.role.name for r in members),
                Stage(stage).name.lower(),
            )
            for running in members:
                running.stop.stop_by(deadline)
            for running in members:
                running.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for running in self._running:
            left = getattr(running.role, "left_behind", None)
            if left:
                self.left_behind[running.role.name] = str(left)
        late = [r.role.name for r in self._running if r.thread.is_alive()]
        if late:
            fate = (
                "their uncommitted records are redelivered on the next start"
                if self.durable_log
                else "the embedded broker keeps its log in memory: what they had not processed is lost"
            )
            log.error(
                "roles still busy after the %.0fs grace: %s; exiting anyway (%s)",
                self.grace_s,
                ", ".join(late),
                fate,
            )
            return 1
        if self.failed:
            return 1
        if self.left_behind:
            log.error(
                "every role stopped, but %s left records unprocessed (see the warnings above)",
                ", ".join(self.left_behind),
            )
            return 1
        log.info("every role stopped cleanly")
        return 0
