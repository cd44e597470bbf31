"""Evaluate rules over PostgreSQL at an instant ``T``, in event time.

Windows are half-open in **event time**: ``(T - window, T]`` over ``trend_points.event_at``,
which the trends worker sets to the document's ``published_at``. Evaluation at ``T``
reads only points with ``event_at <= T``, so replaying history (``finsent alerts
backtest``) sees at each ``T`` exactly what a live evaluator saw at ``T`` -- except data
that arrived late (ingested after ``T`` with an event time before it), which a backtest
counts and the live run could not have.

Live instants are aligned to a grid (multiples of the evaluation interval since the Unix
epoch, :func:`grid_instant`), and backtests step over the same grid, so the two make the
same decisions from the same data.

``kind: anomaly`` rules compare the window with the key's own trailing baseline; their
query and statistics live in ``alerts/anomaly.py``.

The evaluator only *observes*: it turns a rule and ``T`` into one :class:`Observation`
per key (breaching? calm enough to resolve?). What happens to alerts is decided by
``alerts.lifecycle``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alerts import anomaly
from alerts.rules import (
    AnomalyRule,
    AnyRule,
    MemorySurgeRule,
    SpikeRule,
    ThresholdRule,
    compare,
    format_duration,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def grid_instant(now: datetime, interval_s: float) -> datetime:
    """The newest grid instant at or before ``now`` (grid: multiples of ``interval_s``
    seconds since the epoch, UTC). Live and backtest evaluations both use grid instants."""
    micro = round(interval_s * 1_000_000)
    since = (now.astimezone(UTC) - EPOCH) // timedelta(microseconds=1)
    return EPOCH + timedelta(microseconds=(since // micro) * micro)


def grid_instants(start: datetime, end: datetime, interval_s: float) -> list[datetime]:
    """Every grid instant in ``[start, end]``, oldest first."""
    first = grid_instant(start, interval_s)
    if first < start:
        first += timedelta(seconds=interval_s)
    step = timedelta(seconds=interval_s)
    out = []
    t = first
    while t <= end:
        out.append(t)
        t += step
    return out


@dataclass(frozen=True)
class Observation:
    """What a rule sees for one key at ``at``.

    ``breach``: the firing condition holds (with enough volume). ``calm``: the separate
    resolve condition holds (or there is too little data to judge) -- a firing alert
    resolves only on ``calm``, so values between the two levels change nothing.
    """

    key: str
    at: datetime
    value: float | None
    breach: bool
    calm: bool
    figures: dict[str, Any] = field(default_factory=dict)


def _window_figures(rule: AnyRule, at: datetime) -> dict[str, Any]:
    return {
        "window": format_duration(rule.window),
        "window_start": (at - rule.window).isoformat(),
        "window_end": at.isoformat(),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _threshold(conn: Connection, rule: ThresholdRule, at: datetime) -> dict[str, dict[str, Any]]:
    mean_join = ""
    mean_col = "NULL::double precision"
    if rule.metric == "mean_sentiment":
        # the newest prediction of the document; without one, -p_bearish stands in
        mean_join = """LEFT JOIN LATERAL (
                SELECT p.p_bullish - p.p_bearish AS s FROM predictions p
                WHERE p.document_id = tp.document_id ORDER BY p.scored_at DESC LIMIT 1) lp ON true"""
        mean_col = "avg(coalesce(lp.s, -tp.p_bearish))"
    rows = conn.execute(
        sa.text(f"""
        SELECT tp.key, count(*) AS documents,
               count(*) FILTER (WHERE tp.sentiment = 'bearish') AS negative,
               {mean_col} AS mean_sentiment
        FROM trend_points tp {mean_join}
        WHERE tp.event_at > :start AND tp.event_at <= :end AND tp.key LIKE :prefix
        GROUP BY tp.key"""),
        {"start": at - rule.window, "end": at, "prefix": rule.select.sql_prefix()},
    )
    out = {}
    for row in rows:
        figures = {
            "documents": int(row.documents),
            "negative": int(row.negative),
            "negative_share": _round(row.negative / row.documents) if row.documents else None,
        }
        if rule.metric == "mean_sentiment":
            figures["mean_sentiment"] = _round(row.mean_sentiment)
        out[row.key] = figures
    return out


def _spike(conn: Connection, rule: SpikeRule, at: datetime) -> dict[str, dict[str, Any]]:
    cur_start = at - rule.window
    ref_start = cur_start - rule.reference
    rows = conn.execute(
        sa.text("""
        SELECT key,
               count(*) FILTER (WHERE event_at > :cur_start) AS documents,
               count(*) FILTER (WHERE event_at > :cur_start AND sentiment = 'bearish') AS negative,
               count(*) FILTER (WHERE event_at <= :cur_start) AS ref_documents,
               count(*) FILTER (WHERE event_at <= :cur_start AND sentiment = 'bearish') AS ref_negative
        FROM trend_points
        WHERE event_at > :ref_start AND event_at <= :end AND key LIKE :prefix
        GROUP BY key"""),
        {
            "cur_start": cur_start,
            "ref_start": ref_start,
            "end": at,
            "prefix": rule.select.sql_prefix(),
        },
    )
    cur_h = rule.window.total_seconds() / 3600
    ref_h = rule.reference.total_seconds() / 3600
    out = {}
    for row in rows:
        docs, neg, rdocs, rneg = (
            int(row.documents),
            int(row.negative),
            int(row.ref_documents),
            int(row.ref_negative),
        )
        if rule.metric == "negative_count":
            current, reference, ref_events = neg / cur_h, rneg / ref_h, rneg
            floor = 0.5 / ref_h  # half an event: a reference of zero is "rarer than one"
        else:
            current = neg / docs if docs else 0.0
            reference = rneg / rdocs if rdocs else 0.0
            ref_events = rdocs
            floor = 0.5 / rdocs if rdocs else math.inf
        ratio = current / max(reference, floor) if math.isfinite(floor) else None
        out[row.key] = {
            "documents": docs,
            "negative": neg,
            "negative_share": _round(neg / docs) if docs else None,
            "reference_window": format_duration(rule.reference),
            "reference_documents": rdocs,
            "reference_negative": rneg,
            "reference_events": ref_events,
            "current_rate": _round(current),
            "reference_rate": _round(reference),
            "ratio": _round(ratio),
        }
    return out


def _memory(conn: Connection, rule: MemorySurgeRule, at: datetime) -> dict[str, dict[str, Any]]:
    rows = conn.execute(
        sa.text("""
        SELECT DISTINCT ON (tp.key) tp.key, tp.surge_score, tp.expected_negative_rate, tp.event_at,
               c.documents, c.negative
        FROM trend_points tp
        JOIN (SELECT key, count(*) AS documents, count(*) FILTER (WHERE sentiment = 'bearish') AS negative
              FROM trend_points WHERE event_at > :start AND event_at <= :end AND key LIKE :prefix
              GROUP BY key) c ON c.key = tp.key
        WHERE tp.event_at > :start AND tp.event_at <= :end
        ORDER BY tp.key, coalesce(tp.order_at, tp.event_at) DESC, tp.document_id COLLATE "C" DESC"""),
        {"start": at - rule.window, "end": at, "prefix": rule.select.sql_prefix()},
    )
    return {
        row.key: {
            "documents": int(row.documents),
            "negative": int(row.negative),
            "negative_share": _round(row.negative / row.documents) if row.documents else None,
            "surge_score": _round(row.surge_score),
            "expected_negative_rate": _round(row.expected_negative_rate),
            "memory_at": row.event_at.astimezone(UTC).isoformat(),
        }
        for row in rows
    }


def observe(
    conn: Connection, rule: AnyRule, at: datetime, open_keys: Iterable[str] = ()
) -> list[Observation]:
    """One observation per key the rule selects that has data in the window, plus every
    key in ``open_keys`` (keys with an open alert must be observed to resolve, even when
    their data has gone)."""
    if isinstance(rule, ThresholdRule):
        stats = _threshold(conn, rule, at)
    elif isinstance(rule, SpikeRule):
        stats = _spike(conn, rule, at)
    elif isinstance(rule, AnomalyRule):
        stats = anomaly.window_stats(conn, rule, at, open_keys)
    else:
        stats = _memory(conn, rule, at)
    keys = {k for k in stats if rule.select.matches(k)} | set(open_keys)
    return [judge(rule, key, at, stats.get(key)) for key in sorted(keys)]


def judge(rule: AnyRule, key: str, at: datetime, stats: dict[str, Any] | None) -> Observation:
    """Turn a key's window figures into breach / calm, applying volume and hysteresis."""
    figures = _window_figures(rule, at)
    figures.update(stats or {"documents": 0, "negative": 0})
    value: float | None
    if isinstance(rule, AnomalyRule):  # no min_volume: the test weighs its own evidence
        value, breach, calm = anomaly.judge(rule, figures)
        return Observation(key, at, value, breach=breach, calm=calm, figures=figures)
    enough = figures["documents"] >= rule.select.min_volume
    if isinstance(rule, ThresholdRule):
        value = figures.get(rule.metric) if rule.metric != "negative_count" else figures["negative"]
        value = None if value is None else float(value)
        if not enough or value is None:
            return Observation(key, at, value, breach=False, calm=True, figures=figures)
        breach = compare(rule.op, value, rule.value)
        still = compare(rule.op, value, rule.resolve.value) if rule.resolve else breach
        return Observation(key, at, value, breach=breach, calm=not still, figures=figures)
    if isinstance(rule, SpikeRule):
        value = figures.get("ratio")
        if (
            not enough
            or value is None
            or figures.get("reference_events", 0) < rule.min_reference_count
        ):
            return Observation(key, at, value, breach=False, calm=True, figures=figures)
        breach = value >= rule.ratio
        calm = value <= rule.resolve.ratio if rule.resolve else not breach
        return Observation(key, at, value, breach=breach, calm=calm, figures=figures)
    value = figures.get("surge_score")
    if not enough or value is None:
        return Observation(key, at, value, breach=False, calm=True, figures=figures)
    breach = compare(rule.op, value, rule.value)
    still = compare(rule.op, value, rule.resolve.value) if rule.resolve else breach
    return Observation(key, at, value, breach=breach, calm=not still, figures=figures)


def headlines(
    conn: Connection, key: str, start: datetime, end: datetime, limit: int = 5
) -> list[dict[str, Any]]:
    """The most negative documents of ``key`` in ``(start, end]``: what a reader of the
    alert wants to click first."""
    rows = conn.execute(
        sa.text("""
        SELECT tp.document_id, tp.p_bearish, tp.event_at, d.title, d.url, d.source, left(d.text, 200) AS text
        FROM trend_points tp LEFT JOIN documents d ON d.id = tp.document_id
        WHERE tp.key = :key AND tp.event_at > :start AND tp.event_at <= :end
        ORDER BY tp.p_bearish DESC, tp.event_at DESC, tp.document_id
        LIMIT :limit"""),
        {"key": key, "start": start, "end": end, "limit": limit},
    )
    return [
        {
            "document_id": r.document_id,
            "title": r.title or (r.text or r.document_id)[:140],
            "url": r.url,
            "source": r.source,
            "published_at": r.event_at.astimezone(UTC).isoformat(),
            "p_bearish": _round(r.p_bearish),
        }
        for r in rows
    ]
