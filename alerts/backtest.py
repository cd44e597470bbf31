"""Backtest: run the rules over stored data as if live, without notifying anyone.

A backtest steps a grid of instants in ``[start, end]`` (multiples of ``step_s`` since the
epoch, as the live evaluator's grid, see ``alerts.evaluator.grid_instant``) and feeds each
observation through the same ``alerts.lifecycle.decide`` as the live evaluator, keeping
episodes in memory. With ``store`` the result goes to ``alert_backtests`` (never to
``alerts``, so a replay neither notifies nor blocks a live episode).

**Only the instants that can change something are evaluated.** Rules and keys are
independent state machines (one per fingerprint), and a key's observation changes only
when a trend point enters or leaves one of the rule's windows: at the first grid instant
at or after ``e``, ``e + window`` and, for spike rules, ``e + window + reference_window``
of each point ``e`` (anomaly rules: of every point of the key's kind, whose population
and exposure the test reads, and at every instant while the exposure still grows). So
each key asks for the next instant at which its episode (or the absence of one) *may*
change: a data change where, from the key's window counts, it may breach (no episode),
may stop breaching (pending) or may be calm (firing); ``pending_since + for``;
``resolved_at + cooldown``; ``last_notified + renotify``; the next instant after a change
of state when the same observation may move it again; the last instant while an episode
is open (its figures are the last instant's, as in a live run). The rule is evaluated
with the SQL evaluator (``alerts.evaluator.observe``, as live) at the earliest instant
some key asks for. The counts only rule instants out: they mirror the evaluator's
figures conservatively (for anomaly rules they feed ``alerts.anomaly``'s own functions),
so the result is exactly that of evaluating every grid instant -- ``exhaustive=True``
does that, and the tests compare the two. The cost follows the data and the alerts, not
the length of the grid. A rule kind this module has no mirror for is evaluated at every
grid instant: exact, only slower.

All reads happen in one ``REPEATABLE READ`` transaction: a backtest sees one snapshot even
while the trends worker keeps writing.

**The default step** (:func:`choose_step`): every rule's shortest duration (``window``,
``for`` when set, a spike's ``reference_window``, an anomaly's ``baseline``; not
``cooldown`` nor ``renotify``, see :func:`rule_durations`) is sampled at least
:data:`SAMPLES_PER_DURATION` times, the step is a whole multiple of the live interval
(so its instants are instants the live service evaluated too), never finer than it and
at most :data:`STEP_CAP_S`. Fire and resolve times are then late by less than one step
against a live run, and a condition that holds for less than a step can be missed; pass
the live interval as the step to reproduce a live run exactly (about as cheap, except for
rule kinds evaluated at every instant, whose cost the step divides).
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts import anomaly
from alerts.evaluator import AnyRule, grid_instant, observe
from alerts.lifecycle import Episode, apply, decide
from alerts.rules import (
    WEEK,
    AnomalyRule,
    MemorySurgeRule,
    RuleSet,
    SpikeRule,
    ThresholdRule,
    compare,
    format_duration,
    key_kind_of,
)

SAMPLES_PER_DURATION = 4
STEP_CAP_S = 900.0
_US = timedelta(microseconds=1)
_STATE_CHANGES = ("open_pending", "open_firing", "fire", "resolve", "cancel")


@dataclass(frozen=True)
class BacktestResult:
    run_id: str
    start: datetime
    end: datetime
    instants: int
    episodes: tuple[Episode, ...]
    step_s: float = 0.0
    evaluations: int = 0
    """Rule evaluations done (one SQL observation of one rule at one instant)."""
    elapsed_s: float = 0.0
    evaluations_by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def fired(self) -> tuple[Episode, ...]:
        """Episodes that reached firing (what would have notified someone)."""
        return tuple(e for e in self.episodes if e.fired_at is not None)


@dataclass(frozen=True)
class Progress:
    """Where a running backtest is: ``done`` of ``total`` grid instants covered."""

    done: int
    total: int
    evaluations: int
    elapsed_s: float
    planning_s: float = 0.0
    """Of ``elapsed_s``, the time spent reading the points and planning, before the first
    instant (not part of the rate)."""

    @property
    def rate(self) -> float:
        """Grid instants covered per second (of stepping, after planning)."""
        stepping = self.elapsed_s - self.planning_s
        return self.done / stepping if stepping > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None

    def line(self) -> str:
        """One line for stderr.

        >>> Progress(done=250_000, total=1_000_000, evaluations=4_321, elapsed_s=10).line()
        'backtest: 250,000/1,000,000 instants (25.0%), 4,321 rule evaluations, 25,000 instants/s, elapsed 0:00:10, ETA 0:00:30'
        """
        share = 100.0 * self.done / self.total if self.total else 100.0
        eta = self.eta_s
        return (
            f"backtest: {self.done:,}/{self.total:,} instants ({share:.1f}%), "
            f"{self.evaluations:,} rule evaluations, {self.rate:,.0f} instants/s, "
            f"elapsed {_clock(self.elapsed_s)}, ETA {_clock(eta) if eta is not None else '?'}"
        )


def _clock(seconds: float) -> str:
    """``h:mm:ss``.

    >>> _clock(3725.4)
    '1:02:05'
    """
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# --- the default step -------------------------------------------------------------------


_TIMERS = ("cooldown", "renotify")  # lifecycle timers, not windows: they do not set the step


def rule_durations(rule: AnyRule) -> dict[str, timedelta]:
    """The durations a rule's results are sensitive to, by field name: every positive
    duration of the rule (``window``, ``for``, a spike's ``reference_window``, the
    windows of kinds added later) and of its ``resolve``, but not ``cooldown`` and
    ``renotify``."""
    out: dict[str, timedelta] = {}
    for owner, prefix in ((rule, ""), (getattr(rule, "resolve", None), "resolve.")):
        fields = getattr(type(owner), "model_fields", {})
        for name, info in fields.items():
            value = getattr(owner, name, None)
            if name in _TIMERS or not isinstance(value, timedelta) or value <= timedelta(0):
                continue
            out[prefix + (info.alias or name)] = value
    return out


def step_for(shortest_s: float, live_interval_s: float, cap_s: float = STEP_CAP_S) -> float:
    """The default step for a shortest rule duration of ``shortest_s`` seconds: a quarter
    of it, rounded down to a whole multiple of the live interval, at least the live
    interval, at most ``cap_s`` (or the live interval, when that is longer).

    >>> step_for(1800, 30)     # a 30 min window is sampled every 7.5 min
    450.0
    >>> step_for(300, 30)      # for: 5m -> 75 s, rounded down onto the 30 s live grid
    60.0
    >>> step_for(60, 30)       # never finer than the live interval
    30.0
    >>> step_for(86400, 30)    # a one-day window is still sampled every 15 minutes
    900.0
    >>> step_for(86400, 3600)  # a live interval above the cap stays the step
    3600.0
    """
    wanted = min(cap_s, shortest_s / SAMPLES_PER_DURATION)
    return float(live_interval_s * max(1, math.floor(wanted / live_interval_s + 1e-9)))


@dataclass(frozen=True)
class StepChoice:
    step_s: float
    reason: str


def choose_step(ruleset: RuleSet, live_interval_s: float, cap_s: float = STEP_CAP_S) -> StepChoice:
    """The default backtest step for ``ruleset`` (see the module docstring), and why."""
    if not ruleset.rules:
        return StepChoice(float(live_interval_s), "no rules: the live interval")
    name, what, shortest = min(
        (
            (rule.name, field_name, value)
            for rule in ruleset.rules
            for field_name, value in rule_durations(rule).items()
        ),
        key=lambda item: item[2],
    )
    step = step_for(shortest.total_seconds(), live_interval_s, cap_s)
    return StepChoice(
        step,
        f"the shortest rule duration ({what} {format_duration(shortest)} of rule {name!r}) / "
        f"{SAMPLES_PER_DURATION}, on the {live_interval_s:g}s live grid, at most {cap_s:g}s",
    )


# --- the grid and the schedule -----------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Grid instants ``first + i * step`` for ``0 <= i < count`` (integer microseconds)."""

    first: datetime
    step_us: int
    count: int

    @classmethod
    def over(cls, start: datetime, end: datetime, step_s: float) -> _Grid:
        step_us = round(step_s * 1_000_000)
        if step_us <= 0:
            raise ValueError("the backtest step must be positive")
        first = grid_instant(start, step_s)
        if first < start:
            first += timedelta(microseconds=step_us)
        count = (end - first) // _US // step_us + 1 if first <= end else 0
        return cls(first, step_us, max(0, count))

    def at(self, index: int) -> datetime:
        return self.first + timedelta(microseconds=index * self.step_us)

    def us(self, t: datetime) -> int:
        """Microseconds from the first instant to ``t``."""
        return (t - self.first) // _US

    def index_from_us(self, offset_us: int) -> int:
        """The first grid index whose instant is at or after ``first + offset_us``."""
        return max(0, -(-offset_us // self.step_us))

    def index_at_or_after(self, t: datetime) -> int:
        return self.index_from_us(self.us(t))


def count_instants(start: datetime, end: datetime, step_s: float) -> int:
    """How many grid instants of ``step_s`` seconds ``[start, end]`` holds (as
    ``alerts.evaluator.grid_instants``, without building the list)."""
    return _Grid.over(start, end, step_s).count


def _change_offsets(rule: AnyRule) -> tuple[timedelta, ...] | None:
    """How long after a point's event time the rule's view of it changes (it enters a
    window at +0, leaves it at +window, ...), or None for a kind whose windows this
    module does not know (evaluated at every instant). Exact types on purpose: a new kind
    deriving from one of these may read other windows."""
    if type(rule) is SpikeRule:
        return (timedelta(0), rule.window, rule.window + rule.reference)
    if type(rule) in (ThresholdRule, MemorySurgeRule):
        return (timedelta(0), rule.window)
    if type(rule) is AnomalyRule:  # per population, see _anomaly_plan
        ends, baseline = _anomaly_slots(rule)
        return (timedelta(0), rule.window + timedelta(microseconds=max(ends) + baseline))
    return None


@dataclass
class _KeyData:
    """One key's trend points in the backtest's span, in event order: event times
    (microseconds from the first grid instant), running sums for window counts, and
    whether the evaluator's "newest point" (by order_at, document id) is the last one."""

    events: list[int] = field(default_factory=list)
    negative: list[int] = field(default_factory=lambda: [0])  # bearish among events[:j]
    sentiment: list[float] = field(default_factory=lambda: [0.0])  # sum of mean_sentiment terms
    surge: list[float] = field(default_factory=list)
    newest_is_last: bool = True


# A verdict on (breach, calm): for each, whether it may be True and whether it may be False.
Verdict = tuple[bool, bool, bool, bool]
_QUIET: Verdict = (False, True, True, False)  # too little data: no breach, calm (exact)
_UNKNOWN: Verdict = (True, True, True, True)


def _may(op: str, value: float, level: float) -> tuple[bool, bool]:
    """Whether ``compare(op, value, level)`` may be True / may be False for the evaluator,
    which rounds values to 6 decimals (and sums floats in another order)."""
    result = compare(op, value, level)
    near = abs(value - level) <= 1e-6 * max(1.0, abs(level))
    return result or near, (not result) or near


def _value_verdict(op: str, value: float, level: float, resolve: float | None) -> Verdict:
    """Breach = ``value op level``; calm = not ``value op resolve`` (or not breach)."""
    b_true, b_false = _may(op, value, level)
    if resolve is None:
        return b_true, b_false, b_false, b_true
    s_true, s_false = _may(op, value, resolve)
    return b_true, b_false, s_false, s_true


VerdictAt = Callable[[int], Verdict]  # of a grid index


def _verdicts(rule: AnyRule, d: _KeyData, step_us: int) -> VerdictAt | None:
    """What ``alerts.evaluator.judge`` may find for the key at a grid index, from the
    key's window counts: a conservative mirror of
    the evaluator's figures (the SQL evaluator stays the judge: this only tells which
    instants cannot change anything). Keep it in step with ``alerts.evaluator``; the tests
    compare the scheduled backtest with the exhaustive one. None: no mirror for the kind."""
    events, negative = d.events, d.negative
    volume = rule.select.min_volume
    window = rule.window // _US
    right = bisect.bisect_right
    if type(rule) is ThresholdRule:
        threshold = rule
        resolve = threshold.resolve.value if threshold.resolve else None

        def threshold_verdict(index: int) -> Verdict:
            t = index * step_us
            a, b = right(events, t - window), right(events, t)
            documents = b - a
            if documents < volume:
                return _QUIET
            if threshold.metric == "mean_sentiment":
                value = (d.sentiment[b] - d.sentiment[a]) / documents
            elif threshold.metric == "negative_share":
                value = (negative[b] - negative[a]) / documents
            else:
                value = float(negative[b] - negative[a])
            return _value_verdict(threshold.op, value, threshold.value, resolve)

        return threshold_verdict
    if type(rule) is SpikeRule:
        spike = rule
        reference = spike.reference // _US
        cur_h = spike.window.total_seconds() / 3600
        ref_h = spike.reference.total_seconds() / 3600

        def spike_verdict(index: int) -> Verdict:
            t = index * step_us
            a = right(events, t - window - reference)
            m, b = right(events, t - window), right(events, t)
            documents = b - m
            if documents < volume:
                return _QUIET
            neg, rdocs, rneg = negative[b] - negative[m], m - a, negative[m] - negative[a]
            if spike.metric == "negative_count":
                current, ref_rate, ref_events, floor = neg / cur_h, rneg / ref_h, rneg, 0.5 / ref_h
            else:
                if not rdocs:
                    return _QUIET  # no reference: no ratio
                current, ref_rate, ref_events = neg / documents, rneg / rdocs, rdocs
                floor = 0.5 / rdocs
            if ref_events < spike.min_reference_count:
                return _QUIET
            ratio = current / max(ref_rate, floor)
            b_true, b_false = _may(">=", ratio, spike.ratio)
            if spike.resolve is None:
                return b_true, b_false, b_false, b_true
            c_true, c_false = _may("<=", ratio, spike.resolve.ratio)
            return b_true, b_false, c_true, c_false

        return spike_verdict
    if type(rule) is MemorySurgeRule:
        memory = rule
        resolve = memory.resolve.value if memory.resolve else None
        point = [_value_verdict(memory.op, s, memory.value, resolve) for s in d.surge]
        # counts of points whose verdict may be ... (the newest point is one of them)
        sums = [[0] * (len(point) + 1) for _ in range(4)]
        for j, verdict in enumerate(point):
            for n in range(4):
                sums[n][j + 1] = sums[n][j] + verdict[n]

        def memory_verdict(index: int) -> Verdict:
            t = index * step_us
            a, b = right(events, t - window), right(events, t)
            if b - a < volume:
                return _QUIET
            if d.newest_is_last:
                return point[b - 1]
            b_true, b_false, c_true, c_false = (sums[n][b] > sums[n][a] for n in range(4))
            return b_true, b_false, c_true, c_false

        return memory_verdict
    return None


def _matters(state: str, verdict: Verdict) -> bool:
    """Whether an observation with ``verdict`` may change an episode in ``state`` (time
    alone moves it too: ``for``, ``cooldown`` and ``renotify`` are scheduled apart)."""
    if state == "pending":
        return verdict[1]  # may stop breaching: cancel
    if state == "firing":
        return verdict[2]  # may be calm: resolve
    return verdict[0]  # none: may breach


@dataclass
class _KeyPlan:
    """One key's instants for one rule. ``changes``: every instant its observation may
    change at (it is the same until the next one); ``may_breach``: those where it may
    breach, the only ones that matter while it has no episode. Instants that may move an
    open episode are found by scanning ``changes`` (episodes are few), verdicts cached."""

    verdict_of: VerdictAt
    changes: list[int]
    may_breach: list[int]
    cache: dict[int, Verdict] = field(default_factory=dict)
    scans: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    def verdict(self, index: int) -> Verdict:
        found = self.cache.get(index)
        if found is None:
            found = self.cache[index] = self.verdict_of(index)
        return found

    def next_mattering(self, state: str, index: int) -> int | None:
        """The first data change after ``index`` that may move a key in ``state``."""
        if state == "none":
            j = bisect.bisect_right(self.may_breach, index)
            return self.may_breach[j] if j < len(self.may_breach) else None
        scanned = self.scans.get(state)  # answers every later index up to its result
        if (
            scanned is not None
            and scanned[0] <= index
            and (scanned[1] is None or scanned[1] > index)
        ):
            return scanned[1]
        changes = self.changes
        j = bisect.bisect_right(changes, index)
        while j < len(changes) and not _matters(state, self.verdict(changes[j])):
            j += 1
        result = changes[j] if j < len(changes) else None
        self.scans[state] = (index, result)
        return result


@dataclass
class _Plan:
    """One rule's schedule and its episodes.

    Every key wants to be evaluated at the next instant its episode (or the absence of
    one) may change at: a data change of the key that may move it, ``for``, ``cooldown``,
    ``renotify``, the last instant while open. The rule is evaluated at the earliest
    instant some key still wants; every key it moves, or that wanted it, then says which
    instant it wants next. A ``dense`` plan evaluates every grid instant."""

    rule: AnyRule
    grid: _Grid
    dense: bool
    keys: dict[str, _KeyPlan] = field(default_factory=dict)
    wanted: dict[str, int] = field(default_factory=dict)  # key -> the instant it wants
    wanting: dict[int, set[str]] = field(default_factory=dict)  # instant -> keys that asked
    heap: list[int] = field(default_factory=list)
    last: int = -1
    open: dict[str, Episode] = field(default_factory=dict)
    last_resolved: dict[str, datetime] = field(default_factory=dict)
    finished: list[Episode] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)
    evaluations: int = 0

    def next_index(self) -> int | None:
        """The next instant some key still wants (None: the rule is done)."""
        if self.dense:
            return self.last + 1 if self.last + 1 < self.grid.count else None
        while self.heap:
            index = self.heap[0]
            keys = self.wanting.get(index, set())
            if index > self.last and any(self.wanted.get(k) == index for k in keys):
                return index
            heapq.heappop(self.heap)
            self.wanting.pop(index, None)
        return None

    def requesters(self, index: int) -> set[str]:
        return {k for k in self.wanting.get(index, ()) if self.wanted.get(k) == index}

    def want(self, key: str, index: int | None) -> None:
        if index is None or self.dense:
            self.wanted.pop(key, None)
            return
        self.wanted[key] = index
        if index not in self.wanting:
            self.wanting[index] = set()
            heapq.heappush(self.heap, index)
        self.wanting[index].add(key)

    def fingerprint(self, key: str) -> str:
        fp = self.fingerprints.get(key)
        if fp is None:
            fp = self.fingerprints[key] = self.rule.fingerprint(key)
        return fp

    def follow(self, key: str, index: int, changed: bool) -> None:
        """Ask for the next instant after ``index`` at which ``key`` may change, given its
        episode now and whether it changed at ``index``. Between two data changes of a key
        its observation is the same, so an instant that changed nothing for it is followed
        by nothing until its next data change or a timer."""
        if self.dense:
            return
        grid, rule = self.grid, self.rule
        episode = self.open.get(self.fingerprint(key))
        state = episode.state if episode is not None else "none"
        options: list[int | None] = []
        start_from = index
        if episode is None:
            resolved = self.last_resolved.get(self.fingerprint(key))
            if resolved is not None and rule.cooldown > timedelta(0):
                cooldown_end = grid.index_at_or_after(resolved + rule.cooldown)
                if cooldown_end > index:
                    start_from = cooldown_end
                    key_plan = self.keys.get(key)
                    if key_plan is not None and _matters("none", key_plan.verdict(cooldown_end)):
                        options.append(cooldown_end)  # it may open again right then
        elif episode.state == "pending":
            options.append(grid.index_at_or_after(episode.pending_since + rule.for_))
        elif rule.renotify is not None and episode.last_notified_at is not None:
            options.append(grid.index_at_or_after(episode.last_notified_at + rule.renotify))
        if episode is not None:
            options.append(grid.count - 1)  # an open episode's figures are the last instant's
        key_plan = self.keys.get(key)
        if key_plan is not None:
            if changed and start_from == index:
                if _matters(state, key_plan.verdict(index + 1)):
                    options.append(index + 1)
            options.append(key_plan.next_mattering(state, start_from))
        later = [i for i in options if i is not None and index < i < grid.count]
        self.want(key, min(later) if later else None)


def _load_data(
    conn: Connection, grid: _Grid, lookback: timedelta, end: datetime, mean_sentiment: bool
) -> dict[str, _KeyData]:
    """Every trend point that can fall in a rule's window, per key. ``mean_sentiment``:
    also each point's term of the evaluator's mean (the newest prediction's p_bullish -
    p_bearish, else -p_bearish)."""
    mean_join, mean_col = "", "0.0"
    if mean_sentiment:
        mean_join = """LEFT JOIN LATERAL (
                SELECT p.p_bullish - p.p_bearish AS s FROM predictions p
                WHERE p.document_id = tp.document_id ORDER BY p.scored_at DESC LIMIT 1) lp ON true"""
        mean_col = "coalesce(lp.s, -tp.p_bearish)"
    rows = conn.execute(
        sa.text(f"""
        SELECT tp.key, tp.event_at, tp.sentiment = 'bearish' AS bearish, tp.surge_score,
               coalesce(tp.order_at, tp.event_at) AS order_at, tp.document_id, {mean_col} AS s
        FROM trend_points tp {mean_join}
        WHERE tp.event_at > :lo AND tp.event_at <= :hi
        ORDER BY tp.key, tp.event_at, coalesce(tp.order_at, tp.event_at), tp.document_id COLLATE "C"
        """),
        {"lo": grid.first - lookback, "hi": end},
    )
    data: dict[str, _KeyData] = {}
    last: dict[str, tuple[datetime, str]] = {}
    for key, event_at, bearish, surge, order_at, document_id, s in rows:
        d = data.get(key)
        if d is None:
            d = data[key] = _KeyData()
        d.events.append(grid.us(event_at))
        d.negative.append(d.negative[-1] + bool(bearish))
        d.sentiment.append(d.sentiment[-1] + float(s))
        d.surge.append(float(surge))
        # the evaluator's newest point sorts by (order_at, document id); when that order
        # agrees with event order, it is the last point of any window
        order = (order_at, document_id)
        if key in last and not last[key] < order:
            d.newest_is_last = False
        last[key] = order
    return data


def _key_plan(
    verdict_of: VerdictAt, changes: list[int], candidates: list[int] | None = None
) -> _KeyPlan:
    """``candidates``: the changes where a breach is possible at all (a cheap test), when
    the verdicts are dear; default: every change."""
    plan = _KeyPlan(verdict_of, changes, [])
    plan.may_breach = [
        i for i in (changes if candidates is None else candidates) if plan.verdict(i)[0]
    ]
    plan.cache.clear()  # keep only what the scans of open episodes ask for
    return plan


def _plan(
    rule: AnyRule,
    grid: _Grid,
    data: dict[str, _KeyData],
    exhaustive: bool,
    data_start: datetime | None = None,
) -> _Plan:
    offsets = None if exhaustive else _change_offsets(rule)
    if offsets is None:
        return _Plan(rule, grid, dense=True)
    if type(rule) is AnomalyRule:
        return _anomaly_plan(rule, grid, data, data_start)
    plan = _Plan(rule, grid, dense=False)
    offsets_us = [o // _US for o in offsets]
    for key, d in data.items():
        if not rule.select.matches(key):
            continue
        verdict_at = _verdicts(rule, d, grid.step_us)
        if verdict_at is None:
            return _Plan(rule, grid, dense=True)
        indices = {0}
        for off in offsets_us:
            indices.update(grid.index_from_us(e + off) for e in d.events)
        key_plan = _key_plan(verdict_at, sorted(i for i in indices if i < grid.count))
        plan.keys[key] = key_plan
        if key_plan.may_breach:
            plan.want(key, key_plan.may_breach[0])
    return plan


def _anomaly_slots(rule: AnomalyRule) -> tuple[list[int], int]:
    """Where an anomaly rule's windows end, in microseconds before T (the window first),
    and the length of the continuous baseline before the window (0 when weekly)."""
    if rule.seasonality == "weekly":  # the window and the same window 1, 2, ... weeks before
        weeks = rule.baseline // WEEK
        return [j * (WEEK // _US) for j in range(weeks + 1)], 0
    return [0], rule.baseline // _US  # the window, then the baseline right before it


def _anomaly_plan(
    rule: AnomalyRule, grid: _Grid, data: dict[str, _KeyData], data_start: datetime | None
) -> _Plan:
    """An anomaly rule judges a key against the population of its kind and an exposure
    that grows with the data's age, so a key's observation changes whenever any key of
    its kind changes, and at every instant while the exposure grows. Its verdicts are the
    evaluator's own (``alerts.anomaly.figures`` and ``judge`` on the same counts), exact."""
    plan = _Plan(rule, grid, dense=False)
    window = rule.window // _US
    ends, baseline = _anomaly_slots(rule)
    weekly = rule.seasonality == "weekly"
    prefix = rule.select.sql_prefix()
    population = {
        k: d for k, d in data.items() if prefix == "%" or k.startswith(prefix.rstrip("%"))
    }
    right = bisect.bisect_right
    step_us = grid.step_us

    def counts(d: _KeyData, t: int) -> tuple[int, int, int, int]:
        """(documents, negative, baseline documents, baseline negative) at ``t``."""
        ev, neg = d.events, d.negative
        if weekly:
            a, b = right(ev, t - window), right(ev, t)
            bdocs = bneg = 0
            for end in ends[1:]:
                lo, hi = right(ev, t - end - window), right(ev, t - end)
                bdocs += hi - lo
                bneg += neg[hi] - neg[lo]
            return b - a, neg[b] - neg[a], bdocs, bneg
        lo, m, b = right(ev, t - window - baseline), right(ev, t - window), right(ev, t)
        return b - m, neg[b] - neg[m], m - lo, neg[m] - neg[lo]

    exposures: dict[int, float] = {}
    populations: dict[tuple[str, int], anomaly.Population] = {}

    def exposure_at(index: int) -> float:
        found = exposures.get(index)
        if found is None:
            found = exposures[index] = anomaly.exposure_windows(rule, grid.at(index), data_start)
        return found

    def population_at(kind: str, index: int, exposure: float) -> anomaly.Population:
        found = populations.get((kind, index))
        if found is None:
            t = index * step_us
            pairs = []
            for key, d in population.items():
                if key_kind_of(key) == kind:
                    docs, neg, bdocs, bneg = counts(d, t)
                    if docs or bdocs:
                        pairs.append((bneg, bdocs))
            found = populations[(kind, index)] = anomaly.population(pairs, exposure)
        return found

    def verdict_of(key: str, d: _KeyData) -> VerdictAt:
        kind = key_kind_of(key)

        def anomaly_verdict(index: int) -> Verdict:
            exposure = exposure_at(index)
            if exposure < 1.0:
                return _QUIET  # no verdict yet: calm
            docs, neg, bdocs, bneg = counts(d, index * step_us)
            if not docs or (neg < rule.min_count and (rule.resolve is None or neg == 0)):
                return _QUIET  # cannot fire; p = 1 (or no resolve level): calm
            if neg < rule.min_count:
                return False, True, True, True  # cannot fire; calm unless the p-value says
            pop = population_at(kind, index, exposure)
            fig = anomaly.figures(rule, neg, docs, bneg, bdocs, exposure, pop)
            _, breach, calm = anomaly.judge(rule, fig)
            return breach, not breach, calm, not calm

        return anomaly_verdict

    offsets = sorted({e for e in ends} | {e + window for e in ends} | {window + baseline})
    kinds: dict[str, set[int]] = {}
    for key, d in population.items():
        indices = kinds.setdefault(key_kind_of(key), {0})
        for off in offsets:
            indices.update(grid.index_from_us(e + off) for e in d.events)
    if data_start is not None:  # the exposure grows until the baseline is all history
        grows_until = max(ends) + window + baseline
        first = grid.index_at_or_after(data_start)
        last = min(grid.count, grid.index_from_us(grid.us(data_start) + grows_until) + 1)
        for indices in kinds.values():
            indices.update(range(first, last))
    for key, d in population.items():
        if not rule.select.matches(key):
            continue
        changes = sorted(i for i in kinds[key_kind_of(key)] if i < grid.count)
        # it can fire only with min_count bearish documents in the window: m consecutive
        # bearish points b_j .. b_{j+m-1} are all in it exactly for b_{j+m-1} <= t < b_j + W
        bearish = [e for j, e in enumerate(d.events) if d.negative[j + 1] > d.negative[j]]
        m = rule.min_count
        candidates: list[int] = []
        for j in range(len(bearish) - m + 1):
            lo = bisect.bisect_left(changes, grid.index_from_us(bearish[j + m - 1]))
            hi = bisect.bisect_left(changes, grid.index_from_us(bearish[j] + window))
            if candidates:
                lo = max(lo, bisect.bisect_right(changes, candidates[-1]))
            candidates.extend(changes[lo:hi])
        key_plan = _key_plan(verdict_of(key, d), changes, candidates)
        plan.keys[key] = key_plan
        if key_plan.may_breach:
            plan.want(key, key_plan.may_breach[0])
    return plan


def _evaluate(conn: Connection, plan: _Plan, index: int, at: datetime) -> None:
    """Observe ``plan.rule`` at ``at``, step its episodes, and let every key that wanted
    this instant or moved say which instant it wants next."""
    rule = plan.rule
    asked = plan.requesters(index)
    open_keys = {e.key for e in plan.open.values()}
    moved: dict[str, bool] = {}  # key -> whether its episode changed state here
    for obs in observe(conn, rule, at, open_keys):
        fp = plan.fingerprint(obs.key)
        current = plan.open.get(fp)
        if current is None and not obs.breach:
            continue
        decision = decide(rule, obs, current, plan.last_resolved.get(fp))
        after = apply(rule, obs, current, decision)
        if decision.action == "cancel":
            plan.open.pop(fp, None)
        elif after is not None and after.state == "resolved":
            plan.open.pop(fp, None)
            plan.last_resolved[fp] = at
            plan.finished.append(after)
        elif after is not None:
            plan.open[fp] = after
        moved[obs.key] = decision.action in _STATE_CHANGES
    for key in asked | set(moved):
        plan.follow(key, index, moved.get(key, False))


def run_backtest(
    engine: Engine,
    ruleset: RuleSet,
    start: datetime,
    end: datetime,
    interval_s: float,
    *,
    progress: Callable[[Progress], None] | None = None,
    progress_every_s: float = 5.0,
    exhaustive: bool = False,
) -> BacktestResult:
    """Replay ``ruleset`` over the grid of ``interval_s``-second steps in ``[start, end]``.

    ``progress`` is called at most every ``progress_every_s`` seconds and once at the end.
    ``exhaustive`` evaluates every rule at every grid instant (the reference the default
    schedule reproduces; slow over long ranges)."""
    if end < start:
        raise ValueError("--to must not be before --from")
    began = time.monotonic()
    grid = _Grid.over(start, end, interval_s)
    evaluations = 0
    last_report = began
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            lookback = max(
                (max(offs) for r in ruleset.rules if (offs := _change_offsets(r)) is not None),
                default=timedelta(0),
            )
            needs_events = not exhaustive and any(
                _change_offsets(r) is not None for r in ruleset.rules
            )
            mean = any(getattr(r, "metric", None) == "mean_sentiment" for r in ruleset.rules)
            data = (
                _load_data(conn, grid, lookback, end, mean) if needs_events and grid.count else {}
            )
            data_start = None
            if any(type(r) is AnomalyRule for r in ruleset.rules):
                oldest = conn.execute(sa.text("SELECT min(event_at) FROM trend_points")).scalar()
                data_start = oldest.astimezone(UTC) if oldest is not None else None
            plans = [_plan(rule, grid, data, exhaustive, data_start) for rule in ruleset.rules]
            # one entry per rule: (its next instant, its position); popped oldest first
            queue = [
                (nxt, pos) for pos, p in enumerate(plans) if (nxt := p.next_index()) is not None
            ]
            heapq.heapify(queue)
            planned = time.monotonic() - began
            if progress is not None and planned >= progress_every_s:  # a long read: say so
                last_report = time.monotonic()
                progress(Progress(0, grid.count, 0, planned, planned))
            while queue:
                index, pos = heapq.heappop(queue)
                plan = plans[pos]
                plan.last = index
                _evaluate(conn, plan, index, grid.at(index))
                plan.evaluations += 1
                evaluations += 1
                nxt = plan.next_index()
                if nxt is not None:
                    heapq.heappush(queue, (nxt, pos))
                if progress is not None:
                    now = time.monotonic()
                    if now - last_report >= progress_every_s:
                        last_report = now
                        progress(Progress(index + 1, grid.count, evaluations, now - began, planned))
    elapsed = time.monotonic() - began
    if progress is not None:
        progress(Progress(grid.count, grid.count, evaluations, elapsed, planned))
    finished = [e for plan in plans for e in plan.finished]
    still_open = [e for plan in plans for e in plan.open.values()]
    episodes = sorted(finished + still_open, key=lambda e: (e.pending_since, e.rule_name, e.key))
    return BacktestResult(
        uuid.uuid4().hex[:12],
        start,
        end,
        grid.count,
        tuple(episodes),
        step_s=float(interval_s),
        evaluations=evaluations,
        elapsed_s=elapsed,
        evaluations_by_rule={plan.rule.name: plan.evaluations for plan in plans},
    )


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
