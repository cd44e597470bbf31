"""The alert state machine: pending -> firing -> resolved, one row per fingerprint and
episode.

``decide`` is a pure function of (rule, observation, open episode, when the last fired
episode resolved); the live evaluator (:class:`LiveEvaluator`, rows in ``alerts``) and the
backtest (``alerts.backtest``, episodes in memory) both call it, which is why a backtest
reproduces the live run.

Rules of the machine, per fingerprint (rule + key + the rule's labels):

* no open episode and the firing condition holds -> a new episode, ``pending`` (or straight
  to ``firing`` when ``for`` is 0) -- unless the previous fired episode resolved less than
  ``cooldown`` ago;
* ``pending`` and still breaching for ``for`` -> ``firing`` (notify "firing"); no longer
  breaching -> the pending episode is dropped (it notified nobody, so it leaves no row);
* ``firing`` and the separate resolve condition holds -> ``resolved`` (notify "resolved"
  when the rule says so); otherwise it stays firing whatever the value does inside the
  hysteresis band, re-notifying every ``renotify`` if set.

Several evaluators at once: each fingerprint is decided under a transaction-scoped
advisory lock, and an evaluation at an instant not newer than the fingerprint's last one
is skipped, so two processes evaluating the same instant make one alert and one set of
notifications; the partial unique index ``alerts_one_open_episode`` backs this up.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts import outbox
from alerts.evaluator import AnyRule, Observation, observe
from alerts.rules import RuleSet
from pipeline import metrics
from pipeline.settings import Settings

log = logging.getLogger(__name__)

Action = Literal["none", "open_pending", "open_firing", "fire", "update", "resolve", "cancel"]
OPEN_STATES = ("pending", "firing")


@dataclass(frozen=True)
class Episode:
    """One alert episode of a fingerprint, as the state machine sees it."""

    fingerprint: str
    rule_name: str
    key: str
    state: str
    pending_since: datetime
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    value: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    last_evaluated_at: datetime | None = None
    last_notified_at: datetime | None = None
    id: int | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    notify: Literal["firing", "resolved", "renotify"] | None = None


def decide(
    rule: AnyRule, obs: Observation, current: Episode | None, last_resolved_at: datetime | None
) -> Decision:
    """What to do with a fingerprint at ``obs.at``. Pure; see the module docstring."""
    at = obs.at
    if current is None:
        if not obs.breach:
            return Decision("none")
        if last_resolved_at is not None and at < last_resolved_at + rule.cooldown:
            return Decision("none")
        if rule.for_.total_seconds() == 0:
            return Decision("open_firing", "firing")
        return Decision("open_pending")
    if current.state == "pending":
        if not obs.breach:
            return Decision("cancel")
        if at - current.pending_since >= rule.for_:
            return Decision("fire", "firing")
        return Decision("update")
    # firing
    if obs.calm:
        return Decision("resolve", "resolved" if rule.notify_resolved else None)
    if (
        rule.renotify is not None
        and current.last_notified_at is not None
        and at - current.last_notified_at >= rule.renotify
    ):
        return Decision("update", "renotify")
    return Decision("update")


def apply(
    rule: AnyRule, obs: Observation, current: Episode | None, decision: Decision
) -> Episode | None:
    """The episode after ``decision`` (None: no open episode remains and none is kept)."""
    at = obs.at
    fp = rule.fingerprint(obs.key)
    notified = at if decision.notify in ("firing", "renotify") else None
    if decision.action == "none":
        return current
    if decision.action in ("open_pending", "open_firing"):
        firing = decision.action == "open_firing"
        return Episode(
            fp,
            rule.name,
            obs.key,
            "firing" if firing else "pending",
            pending_since=at,
            fired_at=at if firing else None,
            value=obs.value,
            figures=obs.figures,
            last_evaluated_at=at,
            last_notified_at=notified,
        )
    assert current is not None
    if decision.action == "cancel":
        return None
    if decision.action == "fire":
        return replace(
            current,
            state="firing",
            fired_at=at,
            value=obs.value,
            figures=obs.figures,
            last_evaluated_at=at,
            last_notified_at=at,
        )
    if decision.action == "resolve":
        return replace(
            current,
            state="resolved",
            resolved_at=at,
            value=obs.value,
            figures=obs.figures,
            last_evaluated_at=at,
        )
    return replace(
        current,
        value=obs.value,
        figures=obs.figures,
        last_evaluated_at=at,
        last_notified_at=notified or current.last_notified_at,
    )


def _episode(row: Any) -> Episode:
    return Episode(
        fingerprint=row.fingerprint,
        rule_name=row.rule_name,
        key=row.key,
        state=row.state,
        pending_since=row.pending_since,
        fired_at=row.fired_at,
        resolved_at=row.resolved_at,
        value=row.value,
        figures=dict(row.figures or {}),
        last_evaluated_at=row.last_evaluated_at,
        last_notified_at=row.last_notified_at,
        id=row.id,
    )


@dataclass
class EvaluationSummary:
    """What one evaluation pass did (for logs and tests)."""

    at: datetime
    observed: int = 0
    opened: int = 0
    fired: int = 0
    resolved: int = 0
    notifications: int = 0
    skipped: int = 0


class LiveEvaluator:
    """Evaluates every rule at an instant and records the outcome in ``alerts`` and the
    delivery outbox, in one transaction per fingerprint."""

    def __init__(self, engine: Engine, ruleset: RuleSet, settings: Settings) -> None:
        self.engine = engine
        self.ruleset = ruleset
        self.settings = settings

    def evaluate(self, at: datetime) -> EvaluationSummary:
        """Evaluate at ``at`` (timezone-aware; callers pass a grid instant)."""
        at = at.astimezone(UTC)
        summary = EvaluationSummary(at=at)
        for rule in self.ruleset.rules:
            with self.engine.connect() as conn:
                open_rows = conn.execute(
                    sa.text(
                        "SELECT key, fingerprint FROM alerts WHERE rule_name = :r AND state IN ('pending', 'firing')"
                    ),
                    {"r": rule.name},
                ).all()
                open_keys = {r.key for r in open_rows if r.fingerprint == rule.fingerprint(r.key)}
                observations = observe(conn, rule, at, open_keys)
            summary.observed += len(observations)
            for obs in observations:
                if not obs.breach and obs.key not in open_keys:
                    continue
                self._process(rule, obs, summary)
            for row in open_rows:  # the rule's labels changed: the old fingerprint is orphaned
                if row.fingerprint != rule.fingerprint(row.key):
                    self._close_orphan(
                        row.fingerprint, at, f"rule {rule.name!r} changed its labels"
                    )
        self._close_removed_rules(at)
        with self.engine.connect() as conn:
            metrics.ALERTS_OPEN.set(
                conn.execute(
                    sa.text("SELECT count(*) FROM alerts WHERE state IN ('pending', 'firing')")
                ).scalar_one()
            )
        return summary

    def _process(self, rule: AnyRule, obs: Observation, summary: EvaluationSummary) -> None:
        fp = rule.fingerprint(obs.key)
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:fp, 0))"), {"fp": fp}
            )
            last = conn.execute(
                sa.text("""
                SELECT max(last_evaluated_at) AS evaluated,
                       max(resolved_at) FILTER (WHERE fired_at IS NOT NULL) AS resolved
                FROM alerts WHERE fingerprint = :fp"""),
                {"fp": fp},
            ).one()
            if last.evaluated is not None and last.evaluated >= obs.at:
                summary.skipped += 1  # another evaluator already judged this instant
                return
            row = conn.execute(
                sa.text(
                    "SELECT * FROM alerts WHERE fingerprint = :fp AND state IN ('pending', 'firing')"
                ),
                {"fp": fp},
            ).first()
            current = _episode(row) if row is not None else None
            decision = decide(rule, obs, current, last.resolved)
            after = apply(rule, obs, current, decision)
            alert_id = self._write(conn, rule, obs, current, decision, after)
            if decision.action in ("open_pending", "open_firing"):
                summary.opened += 1
            if decision.notify == "firing":
                summary.fired += 1
                metrics.ALERTS_FIRED.labels(rule=rule.name).inc()
            if decision.action == "resolve":
                summary.resolved += 1
            if decision.notify is not None and alert_id is not None:
                summary.notifications += outbox.enqueue(
                    conn,
                    alert_id=alert_id,
                    event=decision.notify,
                    rule=rule,
                    ruleset=self.ruleset,
                    settings=self.settings,
                    at=obs.at,
                )

    def _write(
        self,
        conn: Connection,
        rule: AnyRule,
        obs: Observation,
        current: Episode | None,
        decision: Decision,
        after: Episode | None,
    ) -> int | None:
        if decision.action == "none":
            return None
        if decision.action == "cancel":
            assert current is not None
            conn.execute(sa.text("DELETE FROM alerts WHERE id = :id"), {"id": current.id})
            return None
        assert after is not None
        if current is None:
            return int(
                conn.execute(
                    sa.text("""
                INSERT INTO alerts (fingerprint, rule_name, key, labels, annotations, severity, group_key,
                                    state, value, figures, pending_since, fired_at, last_evaluated_at,
                                    last_notified_at)
                VALUES (:fp, :rule, :key, CAST(:labels AS jsonb), CAST(:ann AS jsonb), :sev, :gk, :state,
                        :value, CAST(:figures AS jsonb), :pending, :fired, :evaluated, :notified)
                RETURNING id"""),
                    {
                        "fp": after.fingerprint,
                        "rule": rule.name,
                        "key": obs.key,
                        "labels": json.dumps(rule.alert_labels(obs.key)),
                        "ann": json.dumps(
                            outbox.alert_annotations(rule, obs.key, obs.value, obs.figures)
                        ),
                        "sev": rule.severity,
                        "gk": rule.group_key(obs.key),
                        "state": after.state,
                        "value": after.value,
                        "figures": json.dumps(after.figures),
                        "pending": after.pending_since,
                        "fired": after.fired_at,
                        "evaluated": after.last_evaluated_at,
                        "notified": after.last_notified_at,
                    },
                ).scalar_one()
            )
        conn.execute(
            sa.text("""
            UPDATE alerts SET state = :state, value = :value, figures = CAST(:figures AS jsonb),
                   fired_at = :fired, resolved_at = :resolved, last_evaluated_at = :evaluated,
                   last_notified_at = :notified, annotations = CAST(:ann AS jsonb)
            WHERE id = :id"""),
            {
                "id": current.id,
                "state": after.state,
                "value": after.value,
                "figures": json.dumps(after.figures),
                "fired": after.fired_at,
                "resolved": after.resolved_at,
                "evaluated": after.last_evaluated_at,
                "notified": after.last_notified_at,
                "ann": json.dumps(outbox.alert_annotations(rule, obs.key, obs.value, obs.figures)),
            },
        )
        return current.id

    def _close_orphan(self, fingerprint: str, at: datetime, why: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:fp, 0))"),
                {"fp": fingerprint},
            )
            conn.execute(
                sa.text("DELETE FROM alerts WHERE fingerprint = :fp AND state = 'pending'"),
                {"fp": fingerprint},
            )
            done = conn.execute(
                sa.text("""
                UPDATE alerts SET state = 'resolved', resolved_at = :at, last_evaluated_at = :at,
                       annotations = annotations || jsonb_build_object('resolved_because', CAST(:why AS text))
                WHERE fingerprint = :fp AND state = 'firing'"""),
                {"fp": fingerprint, "at": at, "why": why},
            )
            if done.rowcount:
                log.warning("alert %s resolved without notification: %s", fingerprint, why)

    def _close_removed_rules(self, at: datetime) -> None:
        names = [r.name for r in self.ruleset.rules]
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT DISTINCT fingerprint, rule_name FROM alerts WHERE state IN ('pending', 'firing') "
                    "AND NOT (rule_name = ANY(:names))"
                ),
                {"names": names},
            ).all()
        for row in rows:
            self._close_orphan(
                row.fingerprint, at, f"rule {row.rule_name!r} is no longer in the rules file"
            )
