"""Backtest: run the rules over stored data as if live, without notifying anyone.

Steps ``T`` over the evaluation grid in ``[start, end]`` (the live evaluator's grid, see
``alerts.evaluator.grid_instant``) and feeds each observation through the same
``alerts.lifecycle.decide`` as the live evaluator, keeping episodes in memory. Over the
same data it therefore yields the alerts a live run evaluating at each grid instant
raised. With ``store`` the result goes to ``alert_backtests`` (never to ``alerts``, so a
replay neither notifies nor blocks a live episode).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.evaluator import grid_instants, observe
from alerts.lifecycle import Episode, apply, decide
from alerts.rules import RuleSet


@dataclass(frozen=True)
class BacktestResult:
    run_id: str
    start: datetime
    end: datetime
    instants: int
    episodes: tuple[Episode, ...]

    @property
    def fired(self) -> tuple[Episode, ...]:
        """Episodes that reached firing (what would have notified someone)."""
        return tuple(e for e in self.episodes if e.fired_at is not None)


def run_backtest(
    engine: Engine, ruleset: RuleSet, start: datetime, end: datetime, interval_s: float
) -> BacktestResult:
    """Replay ``ruleset`` over ``[start, end]`` at ``interval_s`` grid steps."""
    if end < start:
        raise ValueError("--to must not be before --from")
    open_eps: dict[str, Episode] = {}
    last_resolved: dict[str, datetime] = {}
    finished: list[Episode] = []
    instants = grid_instants(start, end, interval_s)
    with engine.connect() as conn:
        for at in instants:
            for rule in ruleset.rules:
                open_keys = {e.key for e in open_eps.values() if e.rule_name == rule.name}
                for obs in observe(conn, rule, at, open_keys):
                    fp = rule.fingerprint(obs.key)
                    current = open_eps.get(fp)
                    if current is None and not obs.breach:
                        continue
                    decision = decide(rule, obs, current, last_resolved.get(fp))
                    after = apply(rule, obs, current, decision)
                    if decision.action == "cancel":
                        open_eps.pop(fp, None)
                    elif after is not None and after.state == "resolved":
                        open_eps.pop(fp, None)
                        last_resolved[fp] = at
                        finished.append(after)
                    elif after is not None:
                        open_eps[fp] = after
    episodes = sorted(
        finished + list(open_eps.values()), key=lambda e: (e.pending_since, e.rule_name, e.key)
    )
    return BacktestResult(uuid.uuid4().hex[:12], start, end, len(instants), tuple(episodes))


def store(engine: Engine, ruleset: RuleSet, result: BacktestResult) -> int:
    """Write the episodes to ``alert_backtests`` under ``result.run_id``."""
    with engine.begin() as conn:
        for ep in result.episodes:
            rule = ruleset.rule(ep.rule_name)
            conn.execute(
                sa.text("""
                INSERT INTO alert_backtests (run_id, fingerprint, rule_name, key, labels, severity, state, value,
                                             figures, pending_since, fired_at, resolved_at)
                VALUES (:run, :fp, :rule, :key, CAST(:labels AS jsonb), :sev, :state, :value,
                        CAST(:figures AS jsonb), :pending, :fired, :resolved)"""),
                {
                    "run": result.run_id,
                    "fp": ep.fingerprint,
                    "rule": ep.rule_name,
                    "key": ep.key,
                    "labels": json.dumps(rule.alert_labels(ep.key) if rule else {}),
                    "sev": rule.severity if rule else "warning",
                    "state": ep.state,
                    "value": ep.value,
                    "figures": json.dumps(ep.figures),
                    "pending": ep.pending_since,
                    "fired": ep.fired_at,
                    "resolved": ep.resolved_at,
                },
            )
    return len(result.episodes)
