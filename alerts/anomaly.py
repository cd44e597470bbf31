"""``kind: anomaly``: is a key's bearish news in the window unusual against **its own**
history? (issue #14)

Threshold and spike rules judge a key against fixed levels or against the few hours just
before the window, behind a ``min_volume`` floor. That floor hides the first hours of an
episode on a name with little coverage, a reference window holding no bearish document
cannot be compared with, and on a name with heavy coverage an ordinary burst clears any
ratio. An anomaly rule instead asks a probability question of each key, with the key's
trailing history as the reference and the evidence of the test in place of a volume floor.

Window, baseline, exposure
    At instant ``T`` the window is ``(T - window, T]`` and the baseline the ``baseline``
    (default 30 days) just before it, ``(T - window - baseline, T - window]``: the current
    window is never part of its own reference. With ``seasonality: weekly`` the baseline
    is instead the same window one, two, ... whole weeks earlier (``floor(baseline / 1w)``
    slots ``(T - j*168h - window, T - j*168h]``), so a Monday morning is compared with
    Monday mornings; the window must then be at most a week. All in event time
    (``trend_points.event_at``, the documents' ``published_at``), UTC.

    The **exposure** ``E`` is the baseline's length in windows (30 days / 1 day = 30), cut
    to the part the database holds: time before the oldest trend point of any key is not
    "a quiet history", it is no history. Until ``E`` reaches one window a rule gives no
    verdict (a backtest starting at the beginning of the data does not fire on everything).

    Per key: ``k`` bearish of ``n`` documents in the window; ``k_ref`` bearish of ``n_ref``
    in the baseline. The **population** is every key of the same kind (``topic`` or
    ``entity``) with a document in the baseline or the window, whatever the rule selects.

Counts are weights: time precision and stories
    Window and baseline count as every rule does (``alerts/windows.py``): a day-stamped
    document is spread over its day (1/24 of it in each hourly window), and a story
    repeated by several outlets counts once, at and as its first copy on the key -- in the
    window and in the baseline alike, so the two stay comparable and a story is never in
    both. ``k_ref`` and ``n_ref`` may therefore be fractional; they enter the posteriors
    below as they are (a Beta or Gamma parameter need not be whole).

    The window's ``k`` and ``n`` are the outcomes of a *count* test, whose distributions
    live on whole numbers. They enter it as their **integer parts** (``floor``, exact: the
    weights are integers of ``alerts.windows.UNIT``): the test weighs only whole documents'
    worth of evidence, so it never fires on a fraction of one document -- 2.96 bearish
    documents' worth are 2 documents' evidence, one day-stamped bearish headline weighs 0
    in an hourly window's test (and 1 in a daily one), 72 of them in a day give 3 an hour.
    Rounding half up would let 2.5 documents pass ``min_count: 3``; a continuous
    generalisation of the tails (real ``k`` through ``lgamma``) would weigh half a
    document as half an event, which neither predictive models. ``min_count`` applies to
    the same whole count. The figures ``tested_negative`` and ``tested_documents`` show
    the whole counts the test saw; ``observed``, ``lift`` and ``share_lift`` are computed
    from them, ``documents`` and ``negative`` show the weights (2 decimals).

metric negative_share: a beta-binomial test
    The key's bearish share before the window gets the posterior
    ``Beta(a, b) = Beta(a0 + k_ref, b0 + n_ref - k_ref)``. The prior is centred on the
    population's pooled baseline share ``p`` (``sum k_ref / sum n_ref``, clamped to
    [0.01, 0.99]; 0.2 while the population has no baseline) with the weight of
    ``SHARE_PRIOR_DOCUMENTS`` = 4 documents: ``a0 = 4p``, ``b0 = 4(1 - p)``. A key with no
    history gets the population's share, and its own documents outweigh the prior after a
    handful. If nothing changed, the window's bearish count follows the posterior
    predictive ``K ~ BetaBinomial(n, a, b)``, and

        ``p_value = P(K >= k)``    (exact, one-sided: "at least this many bearish")

    ``expected`` is the baseline share ``a / (a + b)``, ``observed`` the window's share
    ``k / n`` and ``lift = observed / expected``. The beta carries the baseline's own
    uncertainty: 2 bearish of 2 against 3 baseline documents is unremarkable, 40 of 50
    against 20 of 200 is overwhelming. This test cannot fire on volume alone, so it suits
    keys whose volume follows the news cycle (topics), and it cannot fire on a first
    burst either: 3 bearish of 3 on a key without history has ``p = 0.034`` when the
    population share is 20 % (``0.2^3 = 0.008`` however strong the prior) -- a share of
    three documents is weak evidence. That is the count test's job.

metric negative_count: a gamma-Poisson test
    The key's bearish documents arrive at ``lambda`` per window. Its posterior is
    ``Gamma(alpha, beta) = Gamma(alpha0 + k_ref, beta0 + E)`` (shape, rate), a baseline
    with no bearish document included: thirty quiet days *are* the evidence that the rate
    is low. The prior is worth ``COUNT_PRIOR_EVENTS`` = 1 bearish document seen at the
    population's rate per key and window ``c = max(sum k_ref, 0.5) / (M * E)`` (``M`` keys):
    ``alpha0 = 1``, ``beta0 = 1 / c``. If nothing changed, the window's bearish count is
    ``K ~ NegativeBinomial(alpha, q)`` with ``q = beta / (beta + 1)``,
    ``P(K = j) = Gamma(j + alpha) / (Gamma(alpha) j!) q^alpha (1 - q)^j``, mean
    ``alpha / beta`` (``expected``), and ``p_value = P(K >= k)``; ``observed = k`` and
    ``lift = k / expected``. A name without a bearish headline for 30 days (1-day windows,
    ``E = 30``, population rate ``c`` = 0.2 a day) has ``P(K >= k) = (1/36)^k``: 3 bearish
    headlines in a day give ``p`` = 2e-5, 1 gives 0.028 -- about ``1/(E + 1/c)``, never
    alarming unless the window is tiny next to the baseline.
    The predictive is Poisson with only the rate's uncertainty added: news arrives in
    clumps, so on keys with heavy coverage the count test overstates the evidence of a
    burst -- which is what ``min_lift`` and ``min_share_lift`` are for.

Firing (all must hold)
    * ``p_value < rule.p_value`` (default 0.001);
    * ``lift >= rule.min_lift`` (default 1.5): a relative change the reader cares about,
      whatever the volume (a 2-point share change on a name with 5,000 documents a day is
      "significant" and uninteresting). Keys whose baseline share is already above
      ``1 / min_lift`` (67 %) cannot fire a share rule, nor above ``1 / min_share_lift``
      (80 %) a count rule: names that bearish are better watched by a threshold;
    * ``k >= rule.min_count`` (default 3): one headline is an anecdote (and with story
      grouping off, two are often one story told by two outlets);
    * negative_count only: ``share_lift >= rule.min_share_lift`` (default 1.25), where
      ``share_lift`` is the window's share over the key's baseline share (the beta posterior
      above): a burst of coverage whose bearish share did not move (an earnings day) is
      news, not bearish news.

    With ``resolve: {p_value: P}`` a firing alert resolves only once its ``p_value`` is above
    ``P`` (hysteresis); otherwise as soon as the firing condition fails.

Numbers
    Both tails are summed in log space from ``lgamma`` and the pmf recurrence, starting from
    the short side (no cancellation, no underflow to 0: ``evidence = -log10 p_value`` stays
    finite and ordered), and exactly: the sum stops only when a bound on the remaining terms
    is below e^-40 (4e-18) of the total. Small counts are exact; a window of 100,000 documents costs
    a few thousand terms. (scipy would do, but the runtime does not depend on it.)

Figures (window figures, usable as ``{name}`` in annotations)
    ``documents``, ``negative``, ``tested_documents``, ``tested_negative``,
    ``negative_share``, ``metric``, ``baseline``,
    ``seasonality``, ``exposure_windows``, ``baseline_documents``, ``baseline_negative``,
    ``baseline_share`` (the posterior mean share), ``baseline_rate`` (bearish documents per
    hour, posterior mean; counts only), ``population_share``, ``expected``, ``observed``,
    ``lift``, ``share_lift``, ``p_value``, ``evidence``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alerts import windows
from alerts.rules import AnomalyRule, format_duration, key_kind_of
from alerts.windows import DocumentCount

#: weight of the population prior on a key's bearish share, in documents
SHARE_PRIOR_DOCUMENTS = 4.0
#: the prior share while no key of the kind has a baseline document
DEFAULT_PRIOR_SHARE = 0.2
#: the population share is clamped to [PRIOR_SHARE_CLAMP, 1 - PRIOR_SHARE_CLAMP]
PRIOR_SHARE_CLAMP = 0.01
#: weight of the population prior on a key's bearish rate, in bearish documents
COUNT_PRIOR_EVENTS = 1.0
WEEK = timedelta(days=7)
_LOG10 = math.log(10.0)
#: stop summing once a bound on the rest is below e^-40 (4e-18) of the sum
_LOG_EPS = -40.0


# --- the tails -----------------------------------------------------------------------------


def _log_add(x: float, y: float) -> float:
    if x == -math.inf:
        return y
    if y == -math.inf:
        return x
    high, low = (x, y) if x >= y else (y, x)
    return high + math.log1p(math.exp(low - high))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_binomial_log_pmf(k: int, n: int, a: float, b: float) -> float:
    """ln P(K = k) for K ~ BetaBinomial(n, a, b).

    >>> round(math.exp(beta_binomial_log_pmf(1, 2, 1.0, 1.0)), 6)  # uniform on 0..n
    0.333333
    """
    if k < 0 or k > n:
        return -math.inf
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + _log_beta(k + a, n - k + b)
        - _log_beta(a, b)
    )


def _bb_log_ratio(j: int, n: int, a: float, b: float) -> float:
    """ln P(K = j + 1) / P(K = j)."""
    return math.log((n - j) * (j + a)) - math.log((j + 1) * (n - j - 1 + b))


def _bb_log_upper(k: int, n: int, a: float, b: float) -> float:
    """ln sum_{j >= k} pmf(j), summed upwards. For a + b >= 2 the pmf is unimodal (its
    ratio minus one changes sign once, linearly in j), so once the terms fall the rest is
    at most (n - j) times the current term."""
    term = beta_binomial_log_pmf(k, n, a, b)
    total = term
    unimodal = a + b >= 2.0
    for j in range(k, n):
        ratio = _bb_log_ratio(j, n, a, b)
        term += ratio
        total = _log_add(total, term)
        if unimodal and ratio < 0 and term + math.log(n - j) < total + _LOG_EPS:
            break
    return total


def _bb_log_lower(k: int, n: int, a: float, b: float) -> float:
    """ln sum_{j <= k} pmf(j), summed downwards (the mirror of :func:`_bb_log_upper`)."""
    term = beta_binomial_log_pmf(k, n, a, b)
    total = term
    unimodal = a + b >= 2.0
    for j in range(k, 0, -1):
        ratio = -_bb_log_ratio(j - 1, n, a, b)  # ln pmf(j - 1) / pmf(j)
        term += ratio
        total = _log_add(total, term)
        if unimodal and ratio < 0 and term + math.log(j) < total + _LOG_EPS:
            break
    return total


def beta_binomial_log_sf(k: int, n: int, a: float, b: float) -> float:
    """ln P(K >= k) for K ~ BetaBinomial(n, a, b), a, b > 0, exact and in log space.

    >>> round(math.exp(beta_binomial_log_sf(2, 2, 1.0, 1.0)), 6)
    0.333333
    >>> round(math.exp(beta_binomial_log_sf(1, 1, 2.0, 8.0)), 6)  # one draw: the mean
    0.2
    >>> beta_binomial_log_sf(0, 5, 1.0, 1.0)
    0.0
    >>> beta_binomial_log_sf(45, 50, 21.0, 181.0) < -27 * math.log(10)  # 90 % vs ~10 %
    True
    """
    if k <= 0:
        return 0.0
    if k > n:
        return -math.inf
    if k > n * a / (a + b):
        return min(0.0, _bb_log_upper(k, n, a, b))
    below = _bb_log_lower(k - 1, n, a, b)
    if below < -1e-6:  # P(K >= k) > 1e-6: the complement is accurate
        return math.log1p(-math.exp(below))
    return min(0.0, _bb_log_upper(k, n, a, b))


def gamma_poisson_log_pmf(k: int, shape: float, rate: float) -> float:
    """ln P(K = k) for K ~ Poisson(lambda), lambda ~ Gamma(shape, rate), over one unit of
    exposure: the negative binomial with ``q = rate / (rate + 1)``.

    >>> round(math.exp(gamma_poisson_log_pmf(0, 1.0, 1.0)), 6)  # geometric(1/2)
    0.5
    """
    if k < 0:
        return -math.inf
    log_q = math.log(rate) - math.log1p(rate)
    log_1mq = -math.log1p(rate)
    return (
        math.lgamma(k + shape)
        - math.lgamma(shape)
        - math.lgamma(k + 1)
        + shape * log_q
        + k * log_1mq
    )


def gamma_poisson_log_sf(k: int, shape: float, rate: float) -> float:
    """ln P(K >= k) for the gamma-Poisson (negative binomial) predictive of one unit of
    exposure, exact and in log space.

    >>> round(math.exp(gamma_poisson_log_sf(3, 1.0, 1.0)), 6)  # geometric: (1/2)^3
    0.125
    >>> gamma_poisson_log_sf(0, 2.0, 3.0)
    0.0
    >>> gamma_poisson_log_sf(60, 601.0, 30.0) < -10 * math.log(10)  # 60 where 20 is usual
    True
    """
    if k <= 0:
        return 0.0
    if k > shape / rate:  # above the mean: the short side is the upper tail
        return _gp_log_upper(k, shape, rate)
    # sum_{j < k} pmf(j) downwards from k - 1; the pmf is unimodal, so once the terms fall
    # the rest is at most j times the current term
    log_1mq = -math.log1p(rate)
    term = gamma_poisson_log_pmf(k - 1, shape, rate)
    below = term
    for j in range(k - 1, 0, -1):
        ratio = math.log(j / (j - 1 + shape)) - log_1mq  # ln pmf(j - 1) / pmf(j)
        term += ratio
        below = _log_add(below, term)
        if ratio < 0 and term + math.log(j) < below + _LOG_EPS:
            break
    if below < -1e-6:  # P(K >= k) > 1e-6: the complement is accurate
        return math.log1p(-math.exp(below))
    return _gp_log_upper(k, shape, rate)


def _gp_log_upper(k: int, shape: float, rate: float) -> float:
    """ln sum_{j >= k} pmf(j), summed upwards. The ratio pmf(j+1)/pmf(j) =
    (j + shape)/(j + 1) * (1 - q) falls towards (1 - q) for shape >= 1 and rises towards it
    for shape < 1, so once it is below 1 every later ratio is at most rho and the rest is at
    most term * rho / (1 - rho)."""
    log_1mq = -math.log1p(rate)
    term = gamma_poisson_log_pmf(k, shape, rate)
    total = term
    j = k
    while True:
        ratio = math.log((j + shape) / (j + 1)) + log_1mq
        term += ratio
        total = _log_add(total, term)
        j += 1
        rho = max(ratio, log_1mq) if shape >= 1 else log_1mq
        if rho < 0 and term + rho - math.log(-math.expm1(rho)) < total + _LOG_EPS:
            return min(0.0, total)


# --- the evidence of one key ---------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    """What the prior of a key's baseline is centred on: every key of its kind."""

    share: float
    """pooled baseline bearish share, clamped (the share prior's mean)"""
    rate: float
    """bearish documents per key and window over the baseline (the count prior's mean)"""


def population(
    baselines: Iterable[tuple[int, int]], exposure: float, keys: int | None = None, unit: int = 1
) -> Population:
    """The population of ``(baseline_negative, baseline_documents)`` pairs, one per key,
    in ``1 / unit`` documents (integers, so that the sums are exact in any order).

    >>> population([(2, 10), (8, 40)], exposure=30).share
    0.2
    >>> round(population([(0, 10)], exposure=30).rate, 6)  # half an event, never zero
    0.016667
    >>> pop = population([(1, 4), (3, 16)], exposure=30, unit=2)  # in halves of documents
    >>> pop.share, round(pop.rate, 6)
    (0.2, 0.033333)
    """
    pairs = list(baselines)
    negative = sum(k for k, _ in pairs)
    documents = sum(n for _, n in pairs)
    share = negative / documents if documents else DEFAULT_PRIOR_SHARE
    share = min(max(share, PRIOR_SHARE_CLAMP), 1.0 - PRIOR_SHARE_CLAMP)
    count = keys if keys is not None else len(pairs)
    events = negative / unit
    rate = max(events, 0.5) / (max(count, 1) * exposure) if exposure > 0 else math.inf
    return Population(share=share, rate=rate)


@dataclass(frozen=True)
class Evidence:
    """How unusual a key's window is against its baseline (see the module docstring)."""

    metric: str
    observed: float
    """bearish count (negative_count) or bearish share (negative_share) in the window"""
    expected: float
    """what the baseline expects of ``observed``"""
    lift: float
    """observed / expected"""
    share_lift: float | None
    """the window's share / the baseline share (None without documents)"""
    baseline_share: float
    """posterior mean bearish share before the window"""
    baseline_per_window: float | None
    """posterior mean bearish documents per window (negative_count only)"""
    log_p: float
    """ln of the one-sided tail probability"""

    @property
    def p_value(self) -> float:
        return math.exp(self.log_p)

    @property
    def evidence(self) -> float:
        """-log10 p_value: 3 = 1 in 1,000."""
        return max(0.0, -self.log_p / _LOG10)


def share_posterior(
    baseline_negative: float, baseline_documents: float, prior_share: float
) -> tuple[float, float]:
    """(a, b) of the Beta posterior of the key's bearish share."""
    p = min(max(prior_share, PRIOR_SHARE_CLAMP), 1.0 - PRIOR_SHARE_CLAMP)
    return (
        SHARE_PRIOR_DOCUMENTS * p + baseline_negative,
        SHARE_PRIOR_DOCUMENTS * (1.0 - p) + (baseline_documents - baseline_negative),
    )


def evaluate(
    metric: str,
    negative: int,
    documents: int,
    baseline_negative: float,
    baseline_documents: float,
    *,
    exposure: float,
    pop: Population,
) -> Evidence:
    """The evidence of one key: ``negative`` bearish of ``documents`` in the window
    (whole documents: the outcomes of the count test), ``baseline_negative`` of
    ``baseline_documents`` (weights, may be fractional) over ``exposure`` windows of
    baseline.

    >>> pop = Population(share=0.2, rate=0.2)
    >>> evaluate("negative_count", 3, 3, 0, 0, exposure=30, pop=pop).p_value < 1e-4
    True
    >>> evaluate("negative_share", 3, 3, 0, 0, exposure=30, pop=pop).p_value > 0.01
    True
    """
    a, b = share_posterior(baseline_negative, baseline_documents, pop.share)
    baseline_share = a / (a + b)
    share = negative / documents if documents else None
    share_lift = share / baseline_share if share is not None else None
    if metric == "negative_share":
        log_p = beta_binomial_log_sf(negative, documents, a, b)
        observed = share if share is not None else 0.0
        return Evidence(
            metric=metric,
            observed=observed,
            expected=baseline_share,
            lift=observed / baseline_share,
            share_lift=share_lift,
            baseline_share=baseline_share,
            baseline_per_window=None,
            log_p=log_p,
        )
    if metric != "negative_count":
        raise ValueError(f"metric {metric!r} is not negative_count or negative_share")
    alpha0 = COUNT_PRIOR_EVENTS
    beta0 = COUNT_PRIOR_EVENTS / pop.rate
    shape, rate = alpha0 + baseline_negative, beta0 + exposure
    expected = shape / rate
    return Evidence(
        metric=metric,
        observed=float(negative),
        expected=expected,
        lift=negative / expected,
        share_lift=share_lift,
        baseline_share=baseline_share,
        baseline_per_window=expected,
        log_p=gamma_poisson_log_sf(negative, shape, rate),
    )


def fires(
    rule: AnomalyRule, negative: int, p_value: float, lift: float, share_lift: float | None
) -> bool:
    """The firing condition of the module docstring."""
    if negative < rule.min_count or p_value >= rule.p_value or lift < rule.min_lift:
        return False
    if rule.metric == "negative_count":
        return share_lift is not None and share_lift >= rule.min_share_lift
    return True


def breaches(rule: AnomalyRule, negative: int, ev: Evidence) -> bool:
    """:func:`fires` for an :class:`Evidence`."""
    return fires(rule, negative, ev.p_value, ev.lift, ev.share_lift)


def _sig(value: float | None, digits: int = 6) -> float | None:
    """Rounded to significant digits (a p-value of 1e-9 must not print as 0)."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def p_value_figure(log_p: float) -> float:
    """The ``p_value`` figure of a log tail probability (0.0 below the smallest double)."""
    value = _sig(math.exp(log_p)) if log_p > -745 else 0.0
    return 0.0 if value is None else value


def figures(
    rule: AnomalyRule,
    negative: int,
    documents: int,
    baseline_negative: int,
    baseline_documents: int,
    exposure: float,
    pop: Population,
    unit: int = 1,
) -> dict[str, Any]:
    """A key's window figures (JSON-ready; ``p_value`` None: no verdict possible), from
    its counts in ``1 / unit`` documents (``alerts.windows.UNIT`` for the weights the
    queries sum; 1 for whole documents)."""
    out: dict[str, Any] = {
        "documents": DocumentCount(round(documents / unit, 2)),
        "negative": DocumentCount(round(negative / unit, 2)),
        "tested_documents": documents // unit,
        "tested_negative": negative // unit,
        "negative_share": _sig(negative / documents) if documents else None,
        "metric": rule.metric,
        "baseline": format_duration(rule.baseline),
        "seasonality": rule.seasonality,
        "exposure_windows": _sig(exposure, 4),
        "baseline_documents": DocumentCount(round(baseline_documents / unit, 2)),
        "baseline_negative": DocumentCount(round(baseline_negative / unit, 2)),
        "population_share": _sig(pop.share),
    }
    if exposure < 1.0:  # less than one window of history in the database: no verdict
        out.update(p_value=None, evidence=None, lift=None, expected=None, observed=None)
        return out
    ev = evaluate(
        rule.metric,
        negative // unit,
        documents // unit,
        baseline_negative / unit,
        baseline_documents / unit,
        exposure=exposure,
        pop=pop,
    )
    hours = rule.window.total_seconds() / 3600
    out.update(
        baseline_share=_sig(ev.baseline_share),
        baseline_rate=_sig(ev.baseline_per_window / hours)
        if ev.baseline_per_window is not None
        else None,
        expected=_sig(ev.expected),
        observed=_sig(ev.observed),
        lift=_sig(ev.lift),
        share_lift=_sig(ev.share_lift),
        p_value=p_value_figure(ev.log_p),
        evidence=round(ev.evidence, 3),
    )
    return out


# --- the window in PostgreSQL --------------------------------------------------------------

_POINTS = windows.points_sql(
    "", "tp.event_at > :reach AND tp.event_at <= :end AND tp.key LIKE :prefix"
)

# the window (cur) and the baseline right before it (base), in weight units of first copies
_CONTINUOUS = sa.text(f"""
SELECT p.key,
       sum(p.cur) AS documents, sum(p.cur) FILTER (WHERE p.bearish) AS negative,
       sum(p.base) AS baseline_documents, sum(p.base) FILTER (WHERE p.bearish) AS baseline_negative
FROM (SELECT q.*, {windows.units_sql(":cur", ":end", "q")} AS cur,
             {windows.units_sql(":lo", ":cur", "q")} AS base
      FROM ({_POINTS}) q) p
WHERE p.cur + p.base > 0 AND {windows.first_copy_sql()}
GROUP BY p.key""")

# slot 0 is the window, slots 1..weeks the same window whole weeks (168 h, not calendar
# days: no daylight-saving shift) earlier
_WEEKLY = sa.text(f"""
WITH slots AS (
    SELECT j, CAST(:end AS timestamptz) - j * INTERVAL '168 hours' AS slot_end
    FROM generate_series(0, :weeks) AS j
)
SELECT p.key,
       sum(p.u) FILTER (WHERE p.j = 0) AS documents,
       sum(p.u) FILTER (WHERE p.j = 0 AND p.bearish) AS negative,
       sum(p.u) FILTER (WHERE p.j > 0) AS baseline_documents,
       sum(p.u) FILTER (WHERE p.j > 0 AND p.bearish) AS baseline_negative
FROM (SELECT q.*, s.j,
             {windows.units_sql("(s.slot_end - CAST(:window AS interval))", "s.slot_end", "q")} AS u
      FROM slots s
      JOIN ({_POINTS}) q
        ON q.event_at > s.slot_end - CAST(:reach_back AS interval) AND q.event_at <= s.slot_end) p
WHERE p.u > 0 AND {windows.first_copy_sql()}
GROUP BY p.key""")


def exposure_windows(rule: AnomalyRule, at: datetime, data_start: datetime | None) -> float:
    """The baseline's length in windows, counting only time from ``data_start`` (the
    oldest trend point) on."""
    if data_start is None:
        return 0.0
    window = rule.window
    if rule.seasonality == "weekly":
        total = 0.0
        for j in range(1, rule.baseline // WEEK + 1):
            end = at - j * WEEK
            covered = end - max(end - window, data_start)
            total += min(max(covered / window, 0.0), 1.0)
        return total
    cur_start = at - window
    covered = cur_start - max(cur_start - rule.baseline, data_start)
    return max(covered / window, 0.0)


def window_stats(
    conn: Connection, rule: AnomalyRule, at: datetime, open_keys: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """Figures per selected key with a document in the window, and per key of
    ``open_keys`` with data in the baseline (so an open alert resolves on real figures).
    The population behind the priors is every key of the kind, selected or not."""
    params: dict[str, Any] = {"end": at, "prefix": rule.select.sql_prefix()}
    if rule.seasonality == "weekly":
        weeks = rule.baseline // WEEK
        params.update(
            weeks=weeks,
            window=rule.window,
            reach_back=rule.window + windows.MAX_SPAN,
            reach=at - weeks * WEEK - rule.window - windows.MAX_SPAN,
        )
        rows = conn.execute(_WEEKLY, params).all()
    else:
        cur_start = at - rule.window
        params.update(
            cur=cur_start,
            lo=cur_start - rule.baseline,
            reach=cur_start - rule.baseline - windows.MAX_SPAN,
        )
        rows = conn.execute(_CONTINUOUS, params).all()
    data_start = conn.execute(sa.text("SELECT min(event_at) FROM trend_points")).scalar()
    exposure = exposure_windows(rule, at, data_start.astimezone(UTC) if data_start else None)
    counts = {
        row.key: (
            windows.as_units(row.negative),
            windows.as_units(row.documents),
            windows.as_units(row.baseline_negative),
            windows.as_units(row.baseline_documents),
        )
        for row in rows
    }
    by_kind: dict[str, list[tuple[int, int]]] = {}
    for key, (_, _, bneg, bdocs) in sorted(counts.items()):
        by_kind.setdefault(key_kind_of(key), []).append((bneg, bdocs))
    pops = {kind: population(pairs, exposure, unit=windows.UNIT) for kind, pairs in by_kind.items()}
    wanted = set(open_keys)
    out: dict[str, dict[str, Any]] = {}
    for key, (neg, docs, bneg, bdocs) in counts.items():
        if key not in wanted and not (docs and rule.select.matches(key)):
            continue  # the population counts it, nobody reads its figures
        out[key] = figures(
            rule, neg, docs, bneg, bdocs, exposure, pops[key_kind_of(key)], unit=windows.UNIT
        )
    return out


def judge(rule: AnomalyRule, fig: dict[str, Any]) -> tuple[float | None, bool, bool]:
    """(value, breach, calm) of a key's figures (those of :func:`figures`). ``value`` is
    the observed metric; with no verdict (no documents, no history yet) the key is calm."""
    p_value = fig.get("p_value")
    tested = fig.get("tested_negative")
    negative = int(tested if tested is not None else math.floor(fig.get("negative") or 0))
    if p_value is None or not fig.get("documents"):
        return fig.get("observed"), False, True
    lift = fig.get("lift")
    breach = lift is not None and fires(rule, negative, p_value, lift, fig.get("share_lift"))
    calm = p_value > rule.resolve.p_value if rule.resolve is not None else not breach
    return fig.get("observed"), breach, calm
