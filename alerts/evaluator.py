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

What a point weighs in a window -- its time precision spreads it over its span, and a
story repeated by several outlets counts once -- is defined once, in ``alerts/windows.py``,
and every query here and in ``alerts/anomaly.py`` is built from its helpers. Counts are
therefore weights (``documents`` 0.04 is one day-stamped story in an hourly window); the
figures show them rounded to 2 decimals (:class:`alerts.windows.DocumentCount`).

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

from alerts import anomaly, windows
from alerts.rules import (
    AnomalyRule,
    AnyRule,
    MemorySurgeRule,
    SpikeRule,
    ThresholdRule,
    compare,
    format_duration,
)
from alerts.windows import DocumentCount

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


def _bounds(at: datetime, window: timedelta) -> dict[str, Any]:
    """Query parameters of the window ``(at - window, at]``: its ends ``lo`` and ``end``,
    and ``reach``, the earliest ``event_at`` a point in it can have."""
    return {"lo": at - window, "end": at, "reach": at - window - windows.MAX_SPAN}


def threshold_figures(
    rule: ThresholdRule, documents: int, negative: int, mean_sentiment: float | None = None
) -> dict[str, Any]:
    """A key's threshold figures from its window's weight units (``documents`` stories,
    ``negative`` bearish ones; see ``alerts.windows``)."""
    figures: dict[str, Any] = {
        "documents": DocumentCount.of_units(documents),
        "negative": DocumentCount.of_units(negative),
        "negative_share": _round(negative / documents) if documents else None,
    }
    if rule.metric == "mean_sentiment":
        figures["mean_sentiment"] = _round(mean_sentiment)
    return figures


def _threshold(conn: Connection, rule: ThresholdRule, at: datetime) -> dict[str, dict[str, Any]]:
    mean_join = ""
    mean_col = "NULL::double precision"
    if rule.metric == "mean_sentiment":
        # the newest prediction of the document; without one, -p_bearish stands in
        mean_join = """LEFT JOIN LATERAL (
                SELECT pr.p_bullish - pr.p_bearish AS s FROM predictions pr
                WHERE pr.document_id = p.document_id ORDER BY pr.scored_at DESC LIMIT 1) lp ON true"""
        mean_col = "sum(CAST(p.u AS double precision) * coalesce(lp.s, -p.p_bearish)) / sum(p.u)"
    units = windows.units_sql(":lo", ":end", "q")
    points = windows.points_sql(
        "tp.p_bearish",
        "tp.event_at > :reach AND tp.event_at <= :end AND tp.key LIKE :prefix",
    )
    rows = conn.execute(
        sa.text(f"""
        SELECT p.key, sum(p.u) AS documents, sum(p.u) FILTER (WHERE p.bearish) AS negative,
               {mean_col} AS mean_sentiment
        FROM (SELECT q.*, {units} AS u FROM ({points}) q) p {mean_join}
        WHERE p.u > 0 AND {windows.first_copy_sql()}
        GROUP BY p.key"""),
        {**_bounds(at, rule.window), "prefix": rule.select.sql_prefix()},
    )
    return {
        row.key: threshold_figures(
            rule,
            windows.as_units(row.documents),
            windows.as_units(row.negative),
            row.mean_sentiment,
        )
        for row in rows
    }


def spike_figures(
    rule: SpikeRule, documents: int, negative: int, ref_documents: int, ref_negative: int
) -> dict[str, Any]:
    """A key's spike figures from the weight units of its window and of the reference
    window before it."""
    cur_h = rule.window.total_seconds() / 3600
    ref_h = rule.reference.total_seconds() / 3600
    if rule.metric == "negative_count":
        current = negative / windows.UNIT / cur_h
        reference = ref_negative / windows.UNIT / ref_h
        ref_events = DocumentCount.of_units(ref_negative)
        floor = 0.5 / ref_h  # half an event: a reference of zero is "rarer than one"
    else:
        current = negative / documents if documents else 0.0
        reference = ref_negative / ref_documents if ref_documents else 0.0
        ref_events = DocumentCount.of_units(ref_documents)
        floor = 0.5 * windows.UNIT / ref_documents if ref_documents else math.inf
    ratio = current / max(reference, floor) if math.isfinite(floor) else None
    return {
        "documents": DocumentCount.of_units(documents),
        "negative": DocumentCount.of_units(negative),
        "negative_share": _round(negative / documents) if documents else None,
        "reference_window": format_duration(rule.reference),
        "reference_documents": DocumentCount.of_units(ref_documents),
        "reference_negative": DocumentCount.of_units(ref_negative),
        "reference_events": ref_events,
        "current_rate": _round(current),
        "reference_rate": _round(reference),
        "ratio": _round(ratio),
    }


def _spike(conn: Connection, rule: SpikeRule, at: datetime) -> dict[str, dict[str, Any]]:
    cur_start = at - rule.window
    params = _bounds(at, rule.window + rule.reference)
    params.update(cur=cur_start, prefix=rule.select.sql_prefix())
    cur = windows.units_sql(":cur", ":end", "q")
    ref = windows.units_sql(":lo", ":cur", "q")
    points = windows.points_sql(
        "", "tp.event_at > :reach AND tp.event_at <= :end AND tp.key LIKE :prefix"
    )
    rows = conn.execute(
        sa.text(f"""
        SELECT p.key, sum(p.cur) AS documents, sum(p.cur) FILTER (WHERE p.bearish) AS negative,
               sum(p.ref) AS ref_documents, sum(p.ref) FILTER (WHERE p.bearish) AS ref_negative
        FROM (SELECT q.*, {cur} AS cur, {ref} AS ref FROM ({points}) q) p
        WHERE p.cur + p.ref > 0 AND {windows.first_copy_sql()}
        GROUP BY p.key"""),
        params,
    )
    return {
        row.key: spike_figures(
            rule,
            windows.as_units(row.documents),
            windows.as_units(row.negative),
            windows.as_units(row.ref_documents),
            windows.as_units(row.ref_negative),
        )
        for row in rows
    }


def _memory(conn: Connection, rule: MemorySurgeRule, at: datetime) -> dict[str, dict[str, Any]]:
    # the newest point whose span meets the window (any copy: the memory's state after
    # it), its score (rule.score_column: a column name from a Literal), the window's
    # story counts
    units = windows.units_sql(":lo", ":end", "q")
    points = windows.points_sql(
        f"tp.{rule.score_column} AS surge_score, tp.expected_negative_rate, "
        "coalesce(tp.order_at, tp.event_at) AS order_at",
        "tp.event_at > :reach AND tp.event_at <= :end AND tp.key LIKE :prefix",
    )
    rows = conn.execute(
        sa.text(f"""
        SELECT DISTINCT ON (p.key) p.key, p.surge_score, p.expected_negative_rate, p.event_at,
               sum(p.u) FILTER (WHERE p.first) OVER (PARTITION BY p.key) AS documents,
               sum(p.u) FILTER (WHERE p.first AND p.bearish) OVER (PARTITION BY p.key) AS negative
        FROM (SELECT r.*, {windows.first_copy_sql("r")} AS first
              FROM (SELECT q.*, {units} AS u FROM ({points}) q) r WHERE r.u > 0) p
        ORDER BY p.key, p.order_at DESC, p.document_id COLLATE "C" DESC"""),
        {**_bounds(at, rule.window), "prefix": rule.select.sql_prefix()},
    )
    out = {}
    for row in rows:
        documents, negative = windows.as_units(row.documents), windows.as_units(row.negative)
        if not documents:
            continue  # only later copies of stories counted before: no story in the window
        out[row.key] = {
            "documents": DocumentCount.of_units(documents),
            "negative": DocumentCount.of_units(negative),
            "negative_share": _round(negative / documents),
            "score": rule.score,
            "surge_score": _round(row.surge_score),
            "expected_negative_rate": _round(row.expected_negative_rate),
            "memory_at": row.event_at.astimezone(UTC).isoformat(),
        }
    return out


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
    figures.update(stats or _NO_DATA)
    value, breach, calm = verdict(rule, figures)
    return Observation(key, at, value, breach=breach, calm=calm, figures=figures)


_NO_DATA: dict[str, Any] = {"documents": DocumentCount(0), "negative": DocumentCount(0)}


def verdict(rule: AnyRule, figures: dict[str, Any]) -> tuple[float | None, bool, bool]:
    """(value, breach, calm) of a key's window figures (``judge`` without the
    observation; the backtest's fast path calls it on the figures it mirrors)."""
    value: float | None
    if isinstance(rule, AnomalyRule):  # no min_volume: the test weighs its own evidence
        return anomaly.judge(rule, figures)
    enough = figures["documents"] >= rule.select.min_volume
    if isinstance(rule, ThresholdRule):
        value = figures.get(rule.metric) if rule.metric != "negative_count" else figures["negative"]
        value = None if value is None else float(value)
        if not enough or value is None:
            return value, False, True
        breach = compare(rule.op, value, rule.value)
        still = compare(rule.op, value, rule.resolve.value) if rule.resolve else breach
        return value, breach, not still
    if isinstance(rule, SpikeRule):
        value = figures.get("ratio")
        if (
            not enough
            or value is None
            or figures.get("reference_events", 0) < rule.min_reference_count
        ):
            return value, False, True
        breach = value >= rule.ratio
        calm = value <= rule.resolve.ratio if rule.resolve else not breach
        return value, breach, calm
    value = figures.get("surge_score")
    if not enough or value is None:
        return value, False, True
    breach = compare(rule.op, value, rule.value)
    still = compare(rule.op, value, rule.resolve.value) if rule.resolve else breach
    return value, breach, not still


def headlines(
    conn: Connection, key: str, start: datetime, end: datetime, limit: int = 5
) -> list[dict[str, Any]]:
    """The most negative stories of ``key`` in ``(start, end]``: what a reader of the
    alert wants to click first. One headline per story, its first copy on the key (the
    copy the window counts, see ``alerts.windows``), with ``copies``: how many documents
    of the key carried the story up to ``end``."""
    units = windows.units_sql(":lo", ":end", "q")
    points = windows.points_sql(
        "tp.p_bearish", "tp.key = :key AND tp.event_at > :reach AND tp.event_at <= :end"
    )
    story = windows.story_sql("d")
    rows = conn.execute(
        sa.text(f"""
        SELECT h.document_id, h.p_bearish, h.event_at, d.title, d.url, d.source,
               left(d.text, 200) AS text,
               (SELECT count(*) FROM documents cd
                JOIN trend_points c ON c.key = h.key AND c.document_id = cd.id
                WHERE (cd.id = {story} OR cd.story_id = {story}) AND c.event_at <= :end) AS copies
        FROM (SELECT p.* FROM (SELECT q.*, {units} AS u FROM ({points}) q) p
              WHERE p.u > 0 AND {windows.first_copy_sql()}
              ORDER BY p.p_bearish DESC, p.event_at DESC, p.document_id
              LIMIT :limit) h
        LEFT JOIN documents d ON d.id = h.document_id
        ORDER BY h.p_bearish DESC, h.event_at DESC, h.document_id"""),
        {**_bounds(end, end - start), "key": key, "limit": limit},
    )
    return [
        {
            "document_id": r.document_id,
            "title": r.title or (r.text or r.document_id)[:140],
            "url": r.url,
            "source": r.source,
            "published_at": r.event_at.astimezone(UTC).isoformat(),
            "p_bearish": _round(r.p_bearish),
            "copies": int(r.copies),
        }
        for r in rows
    ]
