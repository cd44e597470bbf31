"""The alert role: an APScheduler interval job that evaluates the rules, and a second
one that dispatches the outbox. ``finsent run`` starts it with the other roles;
``finsent alerts run`` starts it alone. Several instances may run at once (the database
keeps one alert per fingerprint and episode, and one sender per delivery).

Evaluation instants are grid-aligned (``alerts.evaluator.grid_instant``) and every grid
instant since the last evaluation is evaluated (a slow tick skips none), so what runs live
is what ``finsent alerts backtest`` replays. ``FINSENT_ALERT_CLOCK=data`` makes the
instants follow the newest event time in ``trend_points`` instead of the wall clock: a
history replayed through the stream then raises the alerts it would have raised live.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Engine

from alerts.dispatcher import Dispatcher, DispatchSummary
from alerts.evaluator import grid_instant, grid_instants
from alerts.lifecycle import EvaluationSummary, LiveEvaluator
from alerts.rules import RuleSet, load_rules
from pipeline import db
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

#: at most this many missed grid instants are caught up in one tick
MAX_CATCH_UP = 2000


def rules_from_settings(settings: Settings, *, will_notify: bool = True) -> RuleSet:
    """The rules at FINSENT_RULES; with ``will_notify`` the built-in notifiers they use
    must be configured (a backtest notifies nobody, so it skips that check)."""
    if settings.rules is None:
        raise ConfigurationError(
            "no alert rules: set FINSENT_RULES to a rules YAML file "
            "(see examples/rules.yaml) or pass --rules FILE"
        )
    return load_rules(settings.rules, settings if will_notify else None)


class AlertService:
    """Implements ``pipeline.roles.Role``: ``run(stop)`` blocks until ``stop`` is set."""

    name = "alerts"

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        ruleset: RuleSet | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.ruleset = ruleset or rules_from_settings(settings)
        self._own_engine = engine is None
        self.engine = engine or db.make_engine(db.database_url(settings))
        self.clock = clock or (lambda: datetime.now(UTC))
        self.evaluator = LiveEvaluator(self.engine, self.ruleset, settings)
        self.dispatcher = Dispatcher(self.engine, settings, self.ruleset)
        self._ready = False
        self._stop = threading.Event()
        self._last_at: datetime | None = None

    def _now(self) -> datetime | None:
        """The instant to evaluate up to: the wall clock, or the newest event time (data clock)."""
        if self.settings.alert_clock == "wall":
            return self.clock()
        with self.engine.connect() as conn:
            newest = conn.execute(sa.text("SELECT max(event_at) FROM trend_points")).scalar()
        return newest.astimezone(UTC) if newest is not None else None

    def due_instants(self) -> list[datetime]:
        """Grid instants to evaluate now: every one since the last evaluated (so a slow tick
        or a data-clock replay that jumped ahead skips nothing, as a backtest would not),
        at most ``MAX_CATCH_UP`` of the newest."""
        now = self._now()
        if now is None:
            return []
        interval = self.settings.alert_interval_s
        target = grid_instant(now, interval)
        if self._last_at is None:
            first = target
            if self.settings.alert_clock == "data":
                with self.engine.connect() as conn:
                    oldest = conn.execute(
                        sa.text("SELECT min(event_at) FROM trend_points")
                    ).scalar()
                first = (
                    grid_instant(oldest.astimezone(UTC), interval) if oldest is not None else target
                )
            return grid_instants(first, target, interval)[-MAX_CATCH_UP:]
        return grid_instants(self._last_at + timedelta(seconds=interval), target, interval)[
            -MAX_CATCH_UP:
        ]

    def evaluate_now(self) -> EvaluationSummary:
        """Evaluate every rule at each due grid instant; returns the sum of the passes."""
        total = EvaluationSummary(
            at=self._last_at or grid_instant(self.clock(), self.settings.alert_interval_s)
        )
        for at in self.due_instants():
            summary = self.evaluator.evaluate(at)
            self._last_at = at
            total.at = at
            for name in ("observed", "opened", "fired", "resolved", "notifications", "skipped"):
                setattr(total, name, getattr(total, name) + getattr(summary, name))
        self._ready = True
        if total.fired or total.resolved:
            log.info(
                "alerts up to %s: %d fired, %d resolved, %d notifications queued",
                total.at.isoformat(),
                total.fired,
                total.resolved,
                total.notifications,
            )
        return total

    def dispatch_now(self) -> DispatchSummary:
        return self.dispatcher.dispatch_once(stop=self._stop)

    def _job(self, fn: Callable[[], object], what: str) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception:
                self._ready = False
                log.exception("alert %s failed; retrying at the next interval", what)

        return run

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        log.info(
            "alert service: %d rules from %s, evaluating every %gs, dispatching every %gs",
            len(self.ruleset.rules),
            self.ruleset.source,
            self.settings.alert_interval_s,
            self.settings.delivery.poll_interval_s,
        )
        scheduler = BackgroundScheduler(timezone=UTC)
        now = datetime.now(UTC)
        scheduler.add_job(
            self._job(self.evaluate_now, "evaluation"),
            "interval",
            seconds=self.settings.alert_interval_s,
            next_run_time=now,
            id="evaluate",
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(
            self._job(self.dispatch_now, "dispatch"),
            "interval",
            seconds=self.settings.delivery.poll_interval_s,
            next_run_time=now,
            id="dispatch",
            max_instances=1,
            coalesce=True,
        )
        scheduler.start()
        try:
            stop.wait()
        finally:
            scheduler.shutdown(wait=True)
            self.dispatcher.close()
            if self._own_engine:
                self.engine.dispose()
            self._ready = False

    def ready(self) -> bool:
        return self._ready
