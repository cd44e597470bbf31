"""The alert role: an APScheduler interval job that evaluates the rules, and a second
one that dispatches the outbox. ``finsent run`` starts it with the other roles;
``finsent alerts run`` starts it alone. Several instances may run at once (the database
keeps one alert per fingerprint and episode, and one sender per delivery).

Evaluation instants are grid-aligned (``alerts.evaluator.grid_instant``), so what runs
live is what ``finsent alerts backtest`` replays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import Engine

from alerts.dispatcher import Dispatcher, DispatchSummary
from alerts.evaluator import grid_instant
from alerts.lifecycle import EvaluationSummary, LiveEvaluator
from alerts.rules import RuleSet, load_rules
from pipeline import db
from pipeline.errors import ConfigurationError
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def rules_from_settings(settings: Settings, *, will_notify: bool = True) -> RuleSet:
    """The rules at FINSENT_RULES; with ``will_notify`` the built-in notifiers they use
    must be configured (a backtest notifies nobody, so it skips that check)."""
    if settings.rules is None:
        raise ConfigurationError("no alert rules: set FINSENT_RULES to a rules YAML file "
                                 "(see examples/rules.yaml) or pass --rules FILE")
    return load_rules(settings.rules, settings if will_notify else None)


class AlertService:
    """Implements ``pipeline.roles.Role``: ``run(stop)`` blocks until ``stop`` is set."""

    name = "alerts"

    def __init__(self, settings: Settings, *, engine: Engine | None = None, ruleset: RuleSet | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.ruleset = ruleset or rules_from_settings(settings)
        self._own_engine = engine is None
        self.engine = engine or db.make_engine(db.database_url(settings))
        self.clock = clock or (lambda: datetime.now(UTC))
        self.evaluator = LiveEvaluator(self.engine, self.ruleset, settings)
        self.dispatcher = Dispatcher(self.engine, settings, self.ruleset)
        self._ready = False
        self._stop = threading.Event()

    def evaluate_now(self) -> EvaluationSummary:
        """Evaluate every rule at the current grid instant."""
        summary = self.evaluator.evaluate(grid_instant(self.clock(), self.settings.alert_interval_s))
        self._ready = True
        if summary.fired or summary.resolved:
            log.info("alerts at %s: %d fired, %d resolved, %d notifications queued", summary.at.isoformat(),
                     summary.fired, summary.resolved, summary.notifications)
        return summary

    def dispatch_now(self) -> DispatchSummary:
        return self.dispatcher.dispatch_once(stop=self._stop)

    def _job(self, fn: Callable[[], object], what: str) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - the next tick retries; the scheduler must live
                self._ready = False
                log.exception("alert %s failed; retrying at the next interval", what)
        return run

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        log.info("alert service: %d rules from %s, evaluating every %gs, dispatching every %gs",
                 len(self.ruleset.rules), self.ruleset.source, self.settings.alert_interval_s,
                 self.settings.delivery.poll_interval_s)
        scheduler = BackgroundScheduler(timezone=UTC)
        now = datetime.now(UTC)
        scheduler.add_job(self._job(self.evaluate_now, "evaluation"), "interval",
                          seconds=self.settings.alert_interval_s, next_run_time=now, id="evaluate",
                          max_instances=1, coalesce=True)
        scheduler.add_job(self._job(self.dispatch_now, "dispatch"), "interval",
                          seconds=self.settings.delivery.poll_interval_s, next_run_time=now, id="dispatch",
                          max_instances=1, coalesce=True)
        scheduler.start()
        try:
            stop.wait()
        finally:
            scheduler.shutdown(wait=True)
            if self._own_engine:
                self.engine.dispose()
            self._ready = False

    def ready(self) -> bool:
        return self._ready
