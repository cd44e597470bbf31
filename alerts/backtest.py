"""Backtest: run the rules over stored data as if live, without notifying anyone.

A backtest steps a grid of instants in ``[start, end]`` (multiples of ``step_s`` since the
epoch, as the live evaluator's grid, see ``alerts.evaluator.grid_instant``) and feeds each
observation through the same ``alerts.lifecycle.decide`` as the live evaluator, keeping
episodes in memory. With ``store`` the result goes to ``alert_backtests`` (never to
``alerts``, so a replay neither notifies nor blocks a live episode).

**Only the instants that can change something are evaluated.** Rules and keys are
independent state machines (one per fingerprint). The window sums of a key (weights of
``alerts.windows``: a day-stamped point spread over its day, a story counted at its first
copy) are piecewise affine in the instant ``T``: they change slope only where a point's
span starts or ends at a window boundary (``e + o`` and ``e + o + span`` for each boundary
``o``: 0, ``window``, a spike's ``window + reference_window``, an anomaly's baseline or
weekly slots; anomaly rules: of every point of the key's kind, whose population and
exposure the test reads, and where the exposure's growth starts or ends). Between two such
instants a *segment* is either **constant** (only instants in its windows: the observation
is the same throughout, one evaluation covers it) or a **ramp** (a spread point partly in a
window, or the exposure growing: the figures move with ``T``). In a ramp the verdict is
found over a range of instants at once -- threshold, memory_surge and spike-count verdicts
are monotone in ``T`` there, so equal verdicts at both ends settle the range; the anomaly
tails are bounded from the range's ends (each is monotone in each of its inputs); others
(spike shares) go instant by instant -- and ranges that are not settled are halved. So
each key asks for the next instant at which its episode (or the absence of one) *may*
change: an instant where, from the key's window sums, it may breach (no episode; anomaly
rules only where ``min_count`` whole bearish documents can be in the window), may stop
breaching (pending) or may be calm (firing); ``pending_since + for``; ``resolved_at +
cooldown``; ``last_notified + renotify``; the next instant after a change of state when the
same observation may move it again; the last instant while an episode is open (its figures
are the last instant's, as in a live run). The rule is evaluated with the SQL evaluator
(``alerts.evaluator.observe``, as live) at the earliest instant some key asks for. The
mirror only rules instants out: it computes the evaluator's figures from the same integer
weight units through the same figure functions (``alerts.evaluator.threshold_figures``,
``spike_figures``, ``verdict``; ``alerts.anomaly.figures`` and ``judge``), exact but for the
mean sentiment and the surge score, which it brackets, so the result is exactly that of
evaluating every grid instant -- ``exhaustive=True`` does that, and the tests compare the
two. The cost follows the data and the alerts, not the length of the grid. A rule kind
this module has no mirror for is evaluated at every grid instant: exact, only slower.

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
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alerts import anomaly, windows
from alerts.evaluator import AnyRule, grid_instant, observe, spike_figures, threshold_figures
from alerts.evaluator import verdict as evaluator_verdict
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
from alerts.windows import UNIT, DocumentCount

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


def _window_offsets(rule: AnyRule) -> tuple[int, ...] | None:
    """The boundaries of the rule's windows in microseconds before ``T`` (a window
    ``(T - a, T - b]`` has the boundaries ``a`` and ``b``), or None for a kind whose windows
    this module does not know (evaluated at every instant). Exact types on purpose: a new
    kind deriving from one of these may read other windows."""
    window = rule.window // _US
    if type(rule) is SpikeRule:
        return (0, window, window + rule.reference // _US)
    if type(rule) in (ThresholdRule, MemorySurgeRule):
        return (0, window)
    if type(rule) is AnomalyRule:
        ends, baseline = _anomaly_slots(rule)
        if baseline:
            return (0, window, window + baseline)
        return tuple(sorted({e for e in ends} | {e + window for e in ends}))
    return None


def _change_offsets(rule: AnyRule) -> tuple[timedelta, ...] | None:
    """How long before ``T`` the rule's windows reach (their boundaries), or None for a
    kind evaluated at every instant."""
    offsets = _window_offsets(rule)
    return None if offsets is None else tuple(timedelta(microseconds=o) for o in offsets)


# --- window sums over the loaded points (the mirror of alerts.windows) ------------------------

#: fixed-point scale of the mean_sentiment terms (exact integer sums; 5e-10 per term)
_SENTIMENT_SCALE = 1 << 30


class _SpanClass:
    """Points of one span (microseconds; 0: instants): sorted event times and prefix sums,
    so that the weight units of all of them in a window cost four bisections. For a span
    ``s``, ``G(x) = sum clamp(x - e, 0, s)`` and a window ``(lo, hi]`` holds
    ``(UNIT / s) * (G(hi) - G(lo))`` units (``alerts.windows.units`` summed)."""

    __slots__ = ("span", "scale", "events", "esum", "ssum", "sesum")

    def __init__(self, span: int, events: list[int], sentiments: list[int] | None) -> None:
        self.span = span
        self.scale = UNIT // span if span else UNIT
        self.events = events
        self.esum = list(itertools.accumulate(events, initial=0)) if span else []
        self.ssum: list[int] = []
        self.sesum: list[int] = []
        if sentiments is not None:
            self.ssum = list(itertools.accumulate(sentiments, initial=0))
            if span:
                self.sesum = list(
                    itertools.accumulate(
                        (s * e for s, e in zip(sentiments, events, strict=True)), initial=0
                    )
                )

    def _g(self, x: int) -> int:
        events, span = self.events, self.span
        if not span:
            return bisect.bisect_right(events, x)
        i = bisect.bisect_right(events, x - span)
        j = bisect.bisect_left(events, x)
        return span * i + x * (j - i) - (self.esum[j] - self.esum[i])

    def units(self, lo: int, hi: int) -> int:
        return self.scale * (self._g(hi) - self._g(lo))

    def _h(self, x: int) -> int:
        events, span, ssum = self.events, self.span, self.ssum
        if not span:
            return ssum[bisect.bisect_right(events, x)]
        i = bisect.bisect_right(events, x - span)
        j = bisect.bisect_left(events, x)
        return span * ssum[i] + x * (ssum[j] - ssum[i]) - (self.sesum[j] - self.sesum[i])

    def sentiment(self, lo: int, hi: int) -> int:
        """Sum of units times fixed-point sentiment over the window."""
        return self.scale * (self._h(hi) - self._h(lo))

    def partial(self, x: int) -> bool:
        """Whether a boundary at ``x`` cuts a point's span (``e <= x < e + s``): the
        window sums then change with ``T``."""
        if not self.span:
            return False
        events = self.events
        return bisect.bisect_right(events, x) > bisect.bisect_right(events, x - self.span)

    def meets(self, lo: int, hi: int) -> bool:
        """Whether a point has positive weight in ``(lo, hi]``."""
        events = self.events
        if not self.span:
            return bisect.bisect_right(events, hi) > bisect.bisect_right(events, lo)
        return bisect.bisect_left(events, hi) > bisect.bisect_right(events, lo - self.span)


class _Points:
    """A set of points (event time, span[, fixed-point sentiment]) by span class."""

    def __init__(self, points: list[tuple[int, int, int]], sentiment: bool = False) -> None:
        by_span: dict[int, list[tuple[int, int]]] = {}
        for e, s, v in points:
            by_span.setdefault(s, []).append((e, v))
        self.classes = [
            _SpanClass(
                s,
                [e for e, _ in sorted(items)],
                [v for _, v in sorted(items)] if sentiment else None,
            )
            for s, items in sorted(by_span.items())
        ]
        self.spread = [c for c in self.classes if c.span]
        if len(self.classes) == 1:  # the usual case: one precision per key
            self.units = self.classes[0].units  # type: ignore[method-assign]

    def units(self, lo: int, hi: int) -> int:
        total = 0
        for c in self.classes:
            total += c.units(lo, hi)
        return total

    def sentiment(self, lo: int, hi: int) -> int:
        return sum(c.sentiment(lo, hi) for c in self.classes)

    def partial(self, x: int) -> bool:
        for c in self.spread:
            if c.partial(x):
                return True
        return False

    def meets(self, lo: int, hi: int) -> bool:
        return any(c.meets(lo, hi) for c in self.classes)


@dataclass
class _KeyData:
    """One key's trend points in the backtest's span, in the evaluator's event order:
    event times (microseconds from the first grid instant), spans, whether each is its
    story's first copy on the key (what the window counts), and whether the evaluator's
    "newest point" (by order_at, document id) is the last one."""

    events: list[int] = field(default_factory=list)
    spans: list[int] = field(default_factory=list)
    bearish: list[bool] = field(default_factory=list)
    first: list[bool] = field(default_factory=list)
    sentiment: list[int] = field(default_factory=list)  # fixed-point mean_sentiment terms
    surge: list[float | None] = field(default_factory=list)
    volume: list[float | None] = field(default_factory=list)
    newest_is_last: bool = True
    _sums: tuple[_Points, _Points] | None = None

    def sums(self) -> tuple[_Points, _Points]:
        """(every first copy, the bearish first copies): window sums in units."""
        if self._sums is None:
            firsts = [
                (e, s, v)
                for e, s, v, f in zip(
                    self.events,
                    self.spans,
                    self.sentiment or [0] * len(self.events),
                    self.first,
                    strict=True,
                )
                if f
            ]
            bearish = [
                (e, s, 0)
                for e, s, b, f in zip(
                    self.events, self.spans, self.bearish, self.first, strict=True
                )
                if f and b
            ]
            self._sums = (_Points(firsts, sentiment=bool(self.sentiment)), _Points(bearish))
        return self._sums

    def counted(self) -> list[tuple[int, int]]:
        """(event, span) of the first copies."""
        return [(e, s) for e, s, f in zip(self.events, self.spans, self.first, strict=True) if f]


def _breakpoints(points: list[tuple[int, int]], offsets: tuple[int, ...], grid: _Grid) -> set[int]:
    """Grid indices where a window sum of ``points`` may stop being affine in ``T``: where
    a point enters, leaves, or stops being cut by a window boundary (``e + o`` and
    ``e + o + s`` for each boundary ``o``), and right after a spread point's weight leaves
    or reaches zero (so that which points a window *meets* is the same across a segment)."""
    out = {0}
    index = grid.index_from_us
    for e, s in points:
        for o in offsets:
            k = e + o
            out.add(index(k))
            if s:
                out.update((index(k + 1), index(k + s), index(k + s + 1)))
    return out


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


def _exact(breach: bool, calm: bool) -> Verdict:
    return breach, not breach, calm, not calm


def _union(a: Verdict, b: Verdict) -> Verdict:
    return a[0] or b[0], a[1] or b[1], a[2] or b[2], a[3] or b[3]


VerdictAt = Callable[[int], Verdict]  # of a grid index
# a verdict and its signature: booleans that are monotone in T across a segment and
# determine the verdict there (None: not monotone, the verdict must be found instant by
# instant)
Signed = tuple[Verdict, tuple[bool, ...] | None]
# over grid indices [lo, hi) of one segment, for a state: a verdict holding at every one of
# them (a superset of what they may give) and whether it is the same at all of them
RangeVerdict = Callable[[int, int, str], tuple[Verdict, bool]]


def _signed(rule: AnyRule, d: _KeyData, step_us: int) -> Callable[[int], Signed] | None:
    """What ``alerts.evaluator.verdict`` finds for the key at a grid index, from the same
    weight units the SQL sums (``alerts.windows``): exact for counts, shares and spike
    ratios (the same integers through the same figure functions), within a tolerance for
    mean sentiment (floats summed in another order) and the memory's surge score (rounded
    by the evaluator). None: no mirror for the kind."""
    firsts, bearish = d.sums()
    window = rule.window // _US
    if type(rule) is ThresholdRule:
        threshold = rule
        volume = threshold.select.min_volume

        def threshold_at(index: int) -> Signed:
            t = index * step_us
            docs = firsts.units(t - window, t)
            if not DocumentCount.of_units(docs) >= volume:  # the evaluator's min_volume
                return _QUIET, (False,)
            neg = bearish.units(t - window, t)
            enough = True
            if threshold.metric != "mean_sentiment":
                fig = threshold_figures(threshold, docs, neg)
                _, breach, calm = evaluator_verdict(threshold, fig)
                return _exact(breach, calm), (enough,)
            mean = firsts.sentiment(t - window, t) / (docs * _SENTIMENT_SCALE)
            out: Verdict = (False, False, False, False)
            for m in (mean - 1e-8, mean + 1e-8):  # each flag is monotone in the mean
                _, breach, calm = evaluator_verdict(
                    threshold, threshold_figures(threshold, docs, neg, m)
                )
                out = _union(out, _exact(breach, calm))
            return out, (enough,)

        return threshold_at
    if type(rule) is SpikeRule:
        spike = rule
        reference = spike.reference // _US
        volume = spike.select.min_volume
        share = spike.metric == "negative_share"

        def spike_at(index: int) -> Signed:
            t = index * step_us
            m = t - window
            fig = spike_figures(
                spike,
                firsts.units(m, t),
                bearish.units(m, t),
                firsts.units(m - reference, m),
                rneg := bearish.units(m - reference, m),
            )
            _, breach, calm = evaluator_verdict(spike, fig)
            if share:  # a product of ratios of the four sums: not monotone, no signature
                return _exact(breach, calm), None
            return _exact(breach, calm), (
                fig["documents"] >= volume,
                fig["reference_events"] >= spike.min_reference_count,
                2 * rneg >= UNIT,  # the reference rate above its floor of half an event
            )

        return spike_at
    if type(rule) is MemorySurgeRule:
        memory = rule
        volume = memory.select.min_volume
        resolve = memory.resolve.value if memory.resolve else None
        scores = d.surge if memory.score == "negativity" else d.volume
        point = [
            _QUIET if s is None else _value_verdict(memory.op, s, memory.value, resolve)
            for s in scores
        ]
        # per span class: load positions and running counts of points whose verdict may be ...
        classes: list[tuple[int, list[int], list[int], list[list[int]]]] = []
        for span in sorted(set(d.spans)):
            at = [j for j, s in enumerate(d.spans) if s == span]
            sums = [
                list(itertools.accumulate((point[j][n] for j in at), initial=0)) for n in range(4)
            ]
            classes.append((span, [d.events[j] for j in at], at, sums))

        def memory_at(index: int) -> Signed:
            t = index * step_us
            docs = firsts.units(t - window, t)
            enough = DocumentCount.of_units(docs) >= volume
            if not enough:
                return _QUIET, (False,)
            newest = -1
            verdict: Verdict = (False, False, False, False)
            for span, events, at, sums in classes:  # the points whose span meets the window
                if span:
                    a = bisect.bisect_right(events, t - window - span)
                    b = bisect.bisect_left(events, t)
                else:
                    a, b = bisect.bisect_right(events, t - window), bisect.bisect_right(events, t)
                if b > a:
                    newest = max(newest, at[b - 1])
                    b_true, b_false, c_true, c_false = (sums[n][b] > sums[n][a] for n in range(4))
                    verdict = _union(verdict, (b_true, b_false, c_true, c_false))
            if d.newest_is_last and newest >= 0:
                return point[newest], (True,)
            return verdict, (True,)

        return memory_at
    return None


def _monotone_range(signed_at: Callable[[int], Signed]) -> RangeVerdict:
    """Over a segment every window sum is affine in ``T``, so each component of a
    signature is monotone there: equal signatures at both ends mean the same verdict
    throughout."""

    def range_verdict(lo: int, hi: int, state: str) -> tuple[Verdict, bool]:
        first, sig_a = signed_at(lo)
        last, sig_b = signed_at(hi - 1)
        if sig_a is not None and sig_a == sig_b and first == last:
            return first, True
        return _UNKNOWN, False

    return range_verdict


def _matters(state: str, verdict: Verdict) -> bool:
    """Whether an observation with ``verdict`` may change an episode in ``state`` (time
    alone moves it too: ``for``, ``cooldown`` and ``renotify`` are scheduled apart)."""
    if state == "pending":
        return verdict[1]  # may stop breaching: cancel
    if state == "firing":
        return verdict[2]  # may be calm: resolve
    return verdict[0]  # none: may breach


@dataclass
class _Segments:
    """Grid indices split where any window sum of the keys involved may stop being affine
    in ``T``: between two ``bounds`` the observation is either the same at every instant
    (a *constant* segment, which one evaluation covers) or it moves with ``T`` (a *ramp*:
    a day-stamped point partly in a window, the anomaly's exposure growing), where it is
    judged instant by instant, or over a range at once when the verdict is monotone."""

    bounds: list[int]
    count: int
    is_ramp: Callable[[int], bool]  # of a grid index that starts a segment
    ramps: dict[int, bool] = field(default_factory=dict)

    def of(self, index: int) -> int:
        """The segment holding ``index``."""
        return bisect.bisect_right(self.bounds, index) - 1

    def end(self, k: int) -> int:
        return self.bounds[k + 1] if k + 1 < len(self.bounds) else self.count

    def ramp(self, k: int) -> bool:
        found = self.ramps.get(k)
        if found is None:
            found = self.ramps[k] = self.is_ramp(self.bounds[k])
        return found


@dataclass
class _KeyPlan:
    """One key's instants for one rule: its segments, its (mirrored) verdicts, and where a
    breach is possible at all (``candidates``: sorted disjoint index ranges; None:
    anywhere). Scans for the next instant that may move an episode go forward, segment by
    segment, and are cached per state (episodes move forward in time)."""

    verdict_of: VerdictAt
    segments: _Segments
    range_verdict: RangeVerdict | None = None
    candidates: list[tuple[int, int]] | None = None
    cache: dict[int, Verdict] = field(default_factory=dict)
    scans: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    _ends: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ends = [hi for _, hi in self.candidates or ()]

    def verdict(self, index: int) -> Verdict:
        found = self.cache.get(index)
        if found is None:
            found = self.cache[index] = self.verdict_of(index)
        return found

    def next_mattering(self, state: str, index: int) -> int | None:
        """The first instant after ``index`` that may move a key in ``state``, the key
        having been judged at ``index`` (the rest of a constant segment is the same)."""
        scanned = self.scans.get(state)  # answers every later index up to its result
        if (
            scanned is not None
            and scanned[0] <= index
            and (scanned[1] is None or scanned[1] > index)
        ):
            return scanned[1]
        segments = self.segments
        k = segments.of(index)
        start = index + 1 if k < 0 or segments.ramp(k) else segments.end(k)
        result = self.first_mattering(state, start)
        self.scans[state] = (index, result)
        return result

    def first_mattering(self, state: str, pos: int) -> int | None:
        """The first instant at or after ``pos`` that may move a key in ``state``."""
        segments, count = self.segments, self.segments.count
        candidates = self.candidates if state == "none" else None
        c = bisect.bisect_right(self._ends, pos) if candidates is not None else 0
        while pos < count:
            limit = count
            if candidates is not None:
                while c < len(candidates) and candidates[c][1] <= pos:
                    c += 1
                if c >= len(candidates):
                    return None
                pos = max(pos, candidates[c][0])
                limit = candidates[c][1]
                if pos >= count:
                    return None
            k = segments.of(pos)
            hi = min(segments.end(k), limit)
            if not segments.ramp(k):
                if _matters(state, self.verdict(segments.bounds[k])):
                    return pos
            else:
                found = self._search(state, pos, hi)
                if found is not None:
                    return found
            pos = hi
        return None

    def _search(self, state: str, lo: int, hi: int) -> int | None:
        """The first instant in ``[lo, hi)`` (within one ramp segment) that may move a key
        in ``state``: ranges whose verdict is settled are decided at once, the others
        halved."""
        if hi - lo == 1:
            return lo if _matters(state, self.verdict(lo)) else None
        if self.range_verdict is not None:
            verdict, settled = self.range_verdict(lo, hi, state)
            if not _matters(state, verdict):
                return None
            if settled:
                return lo
        mid = (lo + hi) // 2
        found = self._search(state, lo, mid)
        return found if found is not None else self._search(state, mid, hi)


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
    """Every trend point that can fall in a rule's window, per key, with its span and
    whether it is its story's first copy on the key (``alerts.windows``: the same SQL as
    the evaluator's). ``mean_sentiment``: also each point's term of the evaluator's mean
    (the newest prediction's p_bullish - p_bearish, else -p_bearish)."""
    mean_join, mean_col = "", "0.0"
    if mean_sentiment:
        mean_join = """LEFT JOIN LATERAL (
                SELECT pr.p_bullish - pr.p_bearish AS s FROM predictions pr
                WHERE pr.document_id = p.document_id ORDER BY pr.scored_at DESC LIMIT 1) lp ON true"""
        mean_col = "coalesce(lp.s, -p.p_bearish)"
    points = windows.points_sql(
        "tp.surge_score, tp.volume_surge_score, tp.p_bearish, "
        "coalesce(tp.order_at, tp.event_at) AS order_at",
        "tp.event_at > :lo AND tp.event_at <= :hi",
    )
    rows = conn.execute(
        sa.text(f"""
        SELECT p.key, p.event_at, p.s_us, p.bearish, p.surge_score, p.volume_surge_score,
               p.order_at, p.document_id,
               {windows.first_copy_sql()} AS first, {mean_col} AS s
        FROM ({points}) p {mean_join}
        ORDER BY p.key, p.event_at, p.order_at, p.document_id COLLATE "C"
        """),
        {"lo": grid.first - lookback - windows.MAX_SPAN, "hi": end},
    )
    origin = windows.epoch_us(grid.first)
    data: dict[str, _KeyData] = {}
    last: dict[str, tuple[datetime, str]] = {}
    for key, event_at, s_us, bearish, surge, volume, order_at, document_id, first, s in rows:
        d = data.get(key)
        if d is None:
            d = data[key] = _KeyData()
        d.events.append(windows.epoch_us(event_at) - origin)
        d.spans.append(int(s_us))
        d.bearish.append(bool(bearish))
        d.first.append(bool(first))
        d.surge.append(None if surge is None else float(surge))
        d.volume.append(None if volume is None else float(volume))
        if mean_sentiment:
            d.sentiment.append(round(float(s) * _SENTIMENT_SCALE))
        # the evaluator's newest point sorts by (order_at, document id); when that order
        # agrees with event order, it is the last point of any window
        order = (order_at, document_id)
        if key in last and not last[key] < order:
            d.newest_is_last = False
        last[key] = order
    return data


class _Cached:
    """A function of a grid index, remembered."""

    def __init__(self, fn: Callable[[int], Signed]) -> None:
        self.fn = fn
        self.seen: dict[int, Signed] = {}

    def __call__(self, index: int) -> Signed:
        found = self.seen.get(index)
        if found is None:
            found = self.seen[index] = self.fn(index)
        return found


def _plan(
    rule: AnyRule,
    grid: _Grid,
    data: dict[str, _KeyData],
    exhaustive: bool,
    data_start: datetime | None = None,
) -> _Plan:
    offsets = None if exhaustive else _window_offsets(rule)
    if offsets is None:
        return _Plan(rule, grid, dense=True)
    if type(rule) is AnomalyRule:
        return _anomaly_plan(rule, grid, data, data_start)
    plan = _Plan(rule, grid, dense=False)
    step_us = grid.step_us
    for key, d in data.items():
        if not rule.select.matches(key):
            continue
        signed = _signed(rule, d, step_us)
        if signed is None:
            return _Plan(rule, grid, dense=True)
        signed_at = _Cached(signed)
        # the newest point of a memory_surge rule may be any copy; the counts are stories'
        points = (
            list(zip(d.events, d.spans, strict=True))
            if type(rule) is MemorySurgeRule
            else d.counted()
        )
        bounds = sorted(i for i in _breakpoints(points, offsets, grid) if i < grid.count)
        firsts, _ = d.sums()

        def is_ramp(index: int, firsts: _Points = firsts) -> bool:
            if not firsts.spread:
                return False
            t = index * step_us
            return any(firsts.partial(t - o) for o in offsets)

        key_plan = _KeyPlan(
            lambda i, s=signed_at: s(i)[0],  # type: ignore[misc]
            _Segments(bounds, grid.count, is_ramp),
            _monotone_range(signed_at),
        )
        plan.keys[key] = key_plan
        plan.want(key, key_plan.first_mattering("none", 0))
    return plan


def _anomaly_slots(rule: AnomalyRule) -> tuple[list[int], int]:
    """Where an anomaly rule's windows end, in microseconds before T (the window first),
    and the length of the continuous baseline before the window (0 when weekly)."""
    if rule.seasonality == "weekly":  # the window and the same window 1, 2, ... weeks before
        weeks = rule.baseline // WEEK
        return [j * (WEEK // _US) for j in range(weeks + 1)], 0
    return [0], rule.baseline // _US  # the window, then the baseline right before it


_EPS = 1e-9  # relative margin of the anomaly bounds against rounding in their inputs


def _anomaly_plan(
    rule: AnomalyRule, grid: _Grid, data: dict[str, _KeyData], data_start: datetime | None
) -> _Plan:
    """An anomaly rule judges a key against the population of its kind and an exposure
    that grows with the data's age, so a key's observation changes whenever any key of
    its kind changes, and at every instant while the exposure grows or a day-stamped
    point is partly in a window. Its verdicts at an instant are the evaluator's own
    (``alerts.anomaly.figures`` and ``judge`` on the same weight units), exact. Over a
    range of instants of one segment (where every sum is affine in ``T``) the tails are
    bounded from the ends of the range (each tail is monotone in each of its inputs), so a
    ramp is searched by halving, not instant by instant."""
    plan = _Plan(rule, grid, dense=False)
    window = rule.window // _US
    ends, baseline = _anomaly_slots(rule)
    weekly = rule.seasonality == "weekly"
    offsets = _window_offsets(rule)
    assert offsets is not None
    prefix = rule.select.sql_prefix()
    population = {
        k: d for k, d in data.items() if prefix == "%" or k.startswith(prefix.rstrip("%"))
    }
    step_us = grid.step_us
    m = rule.min_count
    origin_ds = grid.us(data_start) if data_start is not None else None

    def counts(sums: tuple[_Points, _Points], t: int) -> tuple[int, int, int, int]:
        """(documents, negative, baseline documents, baseline negative) units at ``t``."""
        firsts, bearish = sums
        lo = t - window
        docs, neg = firsts.units(lo, t), bearish.units(lo, t)
        if weekly:
            bdocs = bneg = 0
            for e in ends[1:]:
                bdocs += firsts.units(lo - e, t - e)
                bneg += bearish.units(lo - e, t - e)
            return docs, neg, bdocs, bneg
        return docs, neg, firsts.units(lo - baseline, lo), bearish.units(lo - baseline, lo)

    def present(sums: tuple[_Points, _Points], t: int) -> bool:
        """Whether the key has weight in the window or the baseline (is in the population)."""
        firsts = sums[0]
        if weekly:
            return any(firsts.meets(t - e - window, t - e) for e in ends)
        return firsts.meets(t - window - baseline, t)

    exposures: dict[int, float] = {}

    def exposure_at(index: int) -> float:
        found = exposures.get(index)
        if found is None:
            found = exposures[index] = anomaly.exposure_windows(rule, grid.at(index), data_start)
        return found

    def growing(t: int) -> bool:
        if origin_ds is None:
            return False
        if weekly:
            return any(origin_ds + e <= t < origin_ds + e + window for e in ends[1:])
        return origin_ds + window <= t < origin_ds + window + baseline

    growth_kinks: list[int] = []
    if origin_ds is not None:
        if weekly:
            growth_kinks = [origin_ds + e + x for e in ends[1:] for x in (0, window)]
        else:
            growth_kinks = [origin_ds + window, origin_ds + window + baseline]

    kinds: dict[str, list[str]] = {}
    for key in population:
        kinds.setdefault(key_kind_of(key), []).append(key)
    for keys in kinds.values():
        sums = {key: population[key].sums() for key in keys}
        counted = [p for key in keys for p in population[key].counted()]
        every = _Points([(e, s, 0) for e, s in counted])
        every_bearish = _Points(
            [
                (e, s, 0)
                for key in keys
                for e, s, b, f in zip(
                    population[key].events,
                    population[key].spans,
                    population[key].bearish,
                    population[key].first,
                    strict=True,
                )
                if f and b
            ]
        )
        bounds_set = _breakpoints(counted, offsets, grid)
        bounds_set.update(grid.index_from_us(k) for k in growth_kinks)
        bounds = sorted(i for i in bounds_set if i < grid.count)

        def is_ramp(index: int, every: _Points = every) -> bool:
            t = index * step_us
            return growing(t) or (bool(every.spread) and any(every.partial(t - o) for o in offsets))

        segments = _Segments(bounds, grid.count, is_ramp)
        members: dict[int, int] = {}  # segment -> keys of the kind in the population there
        populations: dict[int, anomaly.Population] = {}

        def members_at(
            index: int,
            segments: _Segments = segments,
            members: dict[int, int] = members,
            sums: dict[str, tuple[_Points, _Points]] = sums,
        ) -> int:
            k = segments.of(index)
            found = members.get(k)
            if found is None:
                t = segments.bounds[k] * step_us
                found = members[k] = sum(present(s, t) for s in sums.values())
            return found

        def pop_sums(
            t: int, every: _Points = every, bearish: _Points = every_bearish
        ) -> tuple[int, int]:
            """(bearish, documents) units of the kind's baselines at ``t``."""
            lo = t - window
            if weekly:
                return (
                    sum(bearish.units(lo - e, t - e) for e in ends[1:]),
                    sum(every.units(lo - e, t - e) for e in ends[1:]),
                )
            return bearish.units(lo - baseline, lo), every.units(lo - baseline, lo)

        def population_at(
            index: int,
            exposure: float,
            populations: dict[int, anomaly.Population] = populations,
            pop_sums: Callable[[int], tuple[int, int]] = pop_sums,
            members_at: Callable[[int], int] = members_at,
        ) -> anomaly.Population:
            found = populations.get(index)
            if found is None:
                neg, docs = pop_sums(index * step_us)
                found = populations[index] = anomaly.population(
                    [(neg, docs)], exposure, keys=members_at(index), unit=UNIT
                )
            return found

        for key in keys:
            if not rule.select.matches(key):
                continue
            key_sums = sums[key]
            plan.keys[key] = key_plan = _KeyPlan(
                _anomaly_verdict(rule, key_sums, counts, exposure_at, population_at, step_us),
                segments,
                _anomaly_range(
                    rule,
                    key_sums,
                    counts,
                    exposure_at,
                    pop_sums,
                    members_at,
                    step_us,
                ),
                _anomaly_candidates(population[key], window, m, grid),
            )
            plan.want(key, key_plan.first_mattering("none", 0))
    return plan


def _anomaly_candidates(d: _KeyData, window: int, m: int, grid: _Grid) -> list[tuple[int, int]]:
    """Index ranges where the window may hold ``m`` whole bearish documents: ``m`` points
    whose spans meet the window, the earliest ``b_j`` and the latest ``b_{j+m-1}``, are all
    in it only for ``b_{j+m-1} <= T < b_j + window + span``."""
    bearish = sorted(
        (e, s) for e, s, b, f in zip(d.events, d.spans, d.bearish, d.first, strict=True) if f and b
    )
    widest = max((s for _, s in bearish), default=0)
    out: list[tuple[int, int]] = []
    for j in range(len(bearish) - m + 1):
        lo = grid.index_from_us(bearish[j + m - 1][0])
        hi = min(grid.count, grid.index_from_us(bearish[j][0] + window + widest))
        if lo >= hi:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


Counts = Callable[[tuple[_Points, _Points], int], tuple[int, int, int, int]]


def _anomaly_verdict(
    rule: AnomalyRule,
    sums: tuple[_Points, _Points],
    counts: Counts,
    exposure_at: Callable[[int], float],
    population_at: Callable[[int, float], anomaly.Population],
    step_us: int,
) -> VerdictAt:
    def anomaly_verdict(index: int) -> Verdict:
        exposure = exposure_at(index)
        if exposure < 1.0:
            return _QUIET  # no verdict yet: calm
        docs, neg, bdocs, bneg = counts(sums, index * step_us)
        k = neg // UNIT
        if not DocumentCount.of_units(docs) or (
            k < rule.min_count and (rule.resolve is None or k == 0)
        ):
            return _QUIET  # cannot fire; p = 1 (or no resolve level): calm
        pop = population_at(index, exposure)
        fig = anomaly.figures(rule, neg, docs, bneg, bdocs, exposure, pop, unit=UNIT)
        _, breach, calm = anomaly.judge(rule, fig)
        return _exact(breach, calm)

    return anomaly_verdict


def _clamp_share(share: float) -> float:
    return min(max(share, anomaly.PRIOR_SHARE_CLAMP), 1.0 - anomaly.PRIOR_SHARE_CLAMP)


def _anomaly_range(
    rule: AnomalyRule,
    sums: tuple[_Points, _Points],
    counts: Counts,
    exposure_at: Callable[[int], float],
    pop_sums: Callable[[int], tuple[int, int]],
    members_at: Callable[[int], int],
    step_us: int,
) -> RangeVerdict:
    """Bounds of the anomaly verdict over the instants ``[lo, hi)`` of one segment. There
    every weight sum is affine in ``T`` (so between its values at the two ends), the
    exposure grows, and the keys in the population stay the same. Both tails fall with
    the window's count and rise with the baseline's (gamma-Poisson: with the shape
    ``1 + k_ref``, falling with the rate ``beta0 + E``; beta-binomial: rising with ``n``
    and ``a``, falling with ``b``), and the figures round monotonically, so the extreme
    inputs bound every figure the evaluator can compute in between."""
    m = rule.min_count
    window = rule.window // _US
    share_metric = rule.metric == "negative_share"
    sig = anomaly._sig
    pvf = anomaly.p_value_figure
    lo_f, hi_f = 1.0 - _EPS, 1.0 + _EPS

    def span(a: int, b: int) -> tuple[float, float]:
        return (a / UNIT, b / UNIT) if a <= b else (b / UNIT, a / UNIT)

    def range_verdict(lo: int, hi: int, state: str) -> tuple[Verdict, bool]:
        ia, ib = lo, hi - 1
        ea, eb = exposure_at(ia), exposure_at(ib)
        if eb < 1.0:
            return _QUIET, True
        if ea < 1.0:
            return _UNKNOWN, False
        ta, tb = ia * step_us, ib * step_us
        bearish = sums[1]
        k_a = bearish.units(ta - window, ta) // UNIT
        k_b = bearish.units(tb - window, tb) // UNIT
        if max(k_a, k_b) < m and state != "firing":  # cannot fire (cheap: one sum per end)
            return (False, True, True, True), True
        ca, cb = counts(sums, ta), counts(sums, tb)
        zero_a, zero_b = not DocumentCount.of_units(ca[0]), not DocumentCount.of_units(cb[0])
        if zero_a and zero_b:
            return _QUIET, True
        if zero_a or zero_b:
            return _UNKNOWN, False
        k_lo, k_hi = sorted((ca[1] // UNIT, cb[1] // UNIT))
        n_lo, n_hi = sorted((ca[0] // UNIT, cb[0] // UNIT))
        if k_hi < m and (rule.resolve is None or k_hi == 0):
            return _QUIET, True
        bdocs_lo, bdocs_hi = span(ca[2], cb[2])
        bneg_lo, bneg_hi = span(ca[3], cb[3])
        nb_lo, nb_hi = span(ca[2] - ca[3], cb[2] - cb[3])
        (sn_a, sd_a), (sn_b, sd_b) = pop_sums(ta), pop_sums(tb)
        keys = max(members_at(ia), 1)
        if sd_a and sd_b:  # a ratio of affine sums is monotone
            p0_lo, p0_hi = sorted((_clamp_share(sn_a / sd_a), _clamp_share(sn_b / sd_b)))
        elif not sd_a and not sd_b:
            p0_lo = p0_hi = _clamp_share(anomaly.DEFAULT_PRIOR_SHARE)
        else:
            p0_lo, p0_hi = _clamp_share(0.0), _clamp_share(1.0)
        prior = anomaly.SHARE_PRIOR_DOCUMENTS
        bs_lo = (prior * p0_lo + bneg_lo) / (prior + bdocs_hi) * lo_f
        bs_hi = (prior * p0_hi + bneg_hi) / (prior + bdocs_lo) * hi_f
        share_lo = k_lo / n_hi if n_hi else 0.0
        share_hi = k_hi / max(n_lo, 1)
        if share_metric:
            a_lo, a_hi = (prior * p0_lo + bneg_lo) * lo_f, (prior * p0_hi + bneg_hi) * hi_f
            b_lo = (prior * (1 - p0_hi) + nb_lo) * lo_f
            b_hi = (prior * (1 - p0_lo) + nb_hi) * hi_f
            lp_lo = anomaly.beta_binomial_log_sf(k_hi, n_lo, a_lo, b_hi)
            lp_hi = anomaly.beta_binomial_log_sf(k_lo, n_hi, a_hi, b_lo)
            lift_lo, lift_hi = share_lo / bs_hi, share_hi / bs_lo
            sl_ok_lo = sl_ok_hi = True
        else:
            events = [max(x / UNIT, 0.5) for x in (sn_a, sn_b)]
            rate_lo = ea * (keys / max(events) + 1.0) * lo_f
            rate_hi = eb * (keys / min(events) + 1.0) * hi_f
            shape_lo, shape_hi = (1.0 + bneg_lo) * lo_f, (1.0 + bneg_hi) * hi_f
            lp_lo = anomaly.gamma_poisson_log_sf(k_hi, shape_lo, rate_hi)
            lp_hi = anomaly.gamma_poisson_log_sf(k_lo, shape_hi, rate_lo)
            lift_lo, lift_hi = k_lo * rate_lo / shape_hi, k_hi * rate_hi / shape_lo
            sl_lo, sl_hi = share_lo / bs_hi, share_hi / bs_lo
            sl_ok_hi = n_hi >= 1 and (sig(sl_hi) or 0.0) >= rule.min_share_lift
            sl_ok_lo = n_lo >= 1 and (sig(sl_lo) or 0.0) >= rule.min_share_lift
        lp_lo -= 1e-9 * (1.0 + abs(lp_lo)) if math.isfinite(lp_lo) else 0.0
        lp_hi = min(0.0, lp_hi + 1e-9 * (1.0 + abs(lp_hi)))
        p_lo, p_hi = pvf(lp_lo), pvf(lp_hi)
        can_breach = (
            k_hi >= m
            and p_lo < rule.p_value
            and (sig(lift_hi) or 0.0) >= rule.min_lift
            and sl_ok_hi
        )
        must_breach = (
            k_lo >= m
            and p_hi < rule.p_value
            and (sig(lift_lo) or 0.0) >= rule.min_lift
            and sl_ok_lo
        )
        if rule.resolve is not None:
            can_calm, must_calm = p_hi > rule.resolve.p_value, p_lo > rule.resolve.p_value
        else:
            can_calm, must_calm = not must_breach, not can_breach
        verdict = (can_breach, not must_breach, can_calm, not must_calm)
        if state == "firing":
            return verdict, can_calm == must_calm
        return verdict, can_breach == must_breach

    return range_verdict


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
