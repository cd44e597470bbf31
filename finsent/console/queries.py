"""What the console and ``finsent top`` show, read from PostgreSQL with plain SQL.

The question a risk desk asks is "which names and topics are turning negative *right now*,
and why?". Raw negative share answers it badly (two bearish headlines out of two beat forty
out of fifty) and so does the memory's surge score alone (a key that surged nine months ago
and went quiet keeps its last score). :func:`top_keys` therefore ranks every key by how
*surprising* its bearish count in the recent window is against **its own** recent past:

Window and baseline
    At instant ``now`` the window is ``(now - since, now]`` and the baseline the
    ``baseline`` (default 30 days) just before it, ``(now - since - baseline, now - since]``,
    both in event time (``published_at``). Not lifetime: a key whose normal moved months
    ago is compared with its new normal.

The maths (a beta-binomial tail probability)
    Let the baseline hold ``m`` documents of the key, ``b`` of them bearish, and the window
    ``n`` documents, ``x`` bearish. The key's bearish rate before the window gets the
    posterior ``Beta(a0 + b, b0 + m - b)``, where the prior ``Beta(a0, b0)`` is centred on
    the pooled bearish share ``p`` of every key's baseline with the weight of
    ``PRIOR_DOCUMENTS`` documents (``a0 = max(1, 4p)``, ``b0 = max(1, 4(1 - p))``; both at
    least 1 so the predictive below is unimodal). If nothing changed, the window's bearish
    count follows the posterior predictive ``BetaBinomial(n, a, b)``, and the **evidence**
    is ``-log10 P(X >= x)``, the one-sided tail probability of seeing at least as many
    bearish documents (3 means "1 in 1000 under the key's usual rate").

    Why this and not a plain binomial test against the baseline share: the beta keeps the
    baseline's own uncertainty. A key with 3 baseline documents has a wide posterior, so
    2 bearish out of 2 in the window is unremarkable (evidence about 1), while a key with
    40 bearish of 50 against a baseline of 20 of 200 is overwhelming (evidence above 20).
    Large keys behave too: with thousands of baseline documents the posterior is sharp and
    the test tends to the binomial one, and the tail is summed in log space, so no
    probability underflows to zero and the ranking stays total.

Keys are ranked by evidence, then by bearish count; keys without a document in the window
are not "turning" anything and are left out. One exception, so the list names the news
before its echo: a topic whose bearish window documents are at least half about one entity
(its **driver**, e.g. every bearish "Company / Product News" item is about NVLX) is listed
right after that entity when the entity itself ranks with evidence of at least
``MIN_DRIVER_EVIDENCE``; a topic keeps its own evidence and its place otherwise.

Where the rows come from: ``trend_points`` holds one row per (key, document) the memory
applied (written in the same transaction as the ``applied_documents`` ledger), with the
document's event time and the sentiment the memory saw, indexed by event time and by
(key, event time), so the window and baseline counts are index range scans. Headlines join
``documents`` and the document's newest ``predictions`` row (its model version), and its
newest human label from ``labels``.

Every time here is timezone-aware UTC. ``now`` is injectable everywhere (:func:`resolve_now`):
tests and the shipped sample stream are history, so "now" is then the newest document's
``published_at`` (``"latest"``) rather than the wall clock.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alerts.silences import Silence, list_silences
from pipeline.errors import InputError

KeyKind = Literal["entity", "topic"]
KEY_KINDS: tuple[KeyKind, ...] = ("entity", "topic")
#: the baseline a window is compared with: the 30 days before it
BASELINE = timedelta(days=30)
#: weight of the pooled prior on a key's baseline rate, in documents
PRIOR_DOCUMENTS = 4.0
#: the prior's share when no key has a baseline document yet
DEFAULT_PRIOR_SHARE = 0.2
#: a topic is listed under its driving entity when the entity's evidence is at least this
MIN_DRIVER_EVIDENCE = 2.0
#: at most this many buckets in one series (a chart of more is unreadable anyway)
MAX_BUCKETS = 2000
_LOG10 = math.log(10.0)


# --- the maths -----------------------------------------------------------------------------


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _log_pmf(k: int, n: int, a: float, b: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + _log_beta(k + a, n - k + b)
        - _log_beta(a, b)
    )


def _log_sum(terms: range, n: int, a: float, b: float) -> float:
    """log of the pmf summed over ``terms``, stopping once the terms have passed their peak
    and fallen below e^-40 of the sum (the pmf is unimodal for a, b >= 1)."""
    total = -math.inf
    previous = -math.inf
    for k in terms:
        term = _log_pmf(k, n, a, b)
        high, low = max(total, term), min(total, term)
        total = high + math.log1p(math.exp(low - high)) if low > -math.inf else high
        if term < previous and term < total - 40.0:
            break
        previous = term
    return total


def log_tail_probability(x: int, n: int, a: float, b: float) -> float:
    """Natural log of P(X >= x) for X ~ BetaBinomial(n, a, b), in log space (no underflow).

    >>> round(math.exp(log_tail_probability(2, 2, 1.0, 1.0)), 6)  # uniform: each k has 1/3
    0.333333
    >>> round(math.exp(log_tail_probability(1, 1, 2.0, 8.0)), 6)  # one draw: the mean, a/(a+b)
    0.2
    >>> log_tail_probability(0, 5, 1.0, 1.0)
    0.0
    >>> log_tail_probability(45, 50, 21.0, 181.0) < -27 * math.log(10)  # 45 of 50 vs ~10 %
    True
    """
    if x <= 0:
        return 0.0
    if x > n:
        return -math.inf
    if x > n * a / (a + b):
        return min(0.0, _log_sum(range(x, n + 1), n, a, b))
    below = _log_sum(range(x - 1, -1, -1), n, a, b)
    return math.log1p(-math.exp(below)) if below < 0 else -745.0


@dataclass(frozen=True)
class Evidence:
    """How unusual ``bearish`` of ``documents`` is against the key's baseline."""

    expected_share: float
    """the posterior mean of the key's bearish rate before the window"""
    p_value: float
    """P(at least this many bearish | the rate did not change)"""
    evidence: float
    """-log10 of that probability: 2 = 1 in 100, 5 = 1 in 100,000"""


def bearish_evidence(
    bearish: int,
    documents: int,
    baseline_bearish: int,
    baseline_documents: int,
    prior_share: float = DEFAULT_PRIOR_SHARE,
) -> Evidence:
    """The beta-binomial evidence of the module docstring for one key.

    >>> bearish_evidence(2, 2, 0, 3).evidence < 1.5          # sparse: not convincing
    True
    >>> bearish_evidence(40, 50, 20, 200).evidence > 20      # 80 % vs a 10 % normal
    True
    >>> bearish_evidence(5, 50, 20, 200).evidence < 0.5      # its usual share
    True
    """
    p = min(max(prior_share, 0.0), 1.0)
    a = max(1.0, PRIOR_DOCUMENTS * p) + baseline_bearish
    b = max(1.0, PRIOR_DOCUMENTS * (1.0 - p)) + (baseline_documents - baseline_bearish)
    log_p = log_tail_probability(bearish, documents, a, b)
    return Evidence(
        expected_share=a / (a + b),
        p_value=math.exp(log_p),
        evidence=max(0.0, -log_p / _LOG10),
    )


# --- time ----------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def resolve_now(engine: Engine, now: datetime | str | None = None) -> datetime:
    """The instant "now" means: ``None`` or ``"now"`` is the wall clock; ``"latest"`` the
    newest document's ``published_at`` (the wall clock when there is none: history
    replays, tests, the sample stream); an ISO 8601 string or a datetime that instant
    (naive = UTC)."""
    if isinstance(now, datetime):
        return _utc(now)
    if now is None or now.strip().lower() == "now":
        return datetime.now(UTC)
    if now.strip().lower() == "latest":
        with engine.connect() as conn:
            newest = conn.execute(sa.text("SELECT max(published_at) FROM documents")).scalar()
        return _utc(newest) if newest is not None else datetime.now(UTC)
    try:
        return _utc(datetime.fromisoformat(now.strip().replace("Z", "+00:00")))
    except ValueError:
        raise InputError(
            f"now {now!r} is not a time: write 'latest', 'now' or ISO 8601 such as 2026-03-03T18:00Z"
        ) from None


def _check_kind(kind: str | None) -> KeyKind | None:
    if kind in (None, "", "all"):
        return None
    if kind not in KEY_KINDS:
        raise InputError(f"kind {kind!r} is not one of entity, topic")
    return kind  # type: ignore[return-value]


def key_kind(key: str) -> str:
    """``'entity:NVLX'`` -> ``'entity'``."""
    return key.partition(":")[0]


def key_name(key: str) -> str:
    """``'entity:NVLX'`` -> ``'NVLX'``; ``'topic:Stock Commentary'`` -> ``'Stock Commentary'``."""
    return key.partition(":")[2] or key


# --- results -------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Headline:
    """One document behind a key, with its newest prediction and newest human label."""

    document_id: str
    published_at: datetime
    title: str | None
    text: str
    url: str | None
    source: str
    sentiment: str
    p_bearish: float
    model_version: str | None
    label: str | None = None
    """the newest human sentiment label, if anyone labelled it"""

    @property
    def headline(self) -> str:
        return self.title or self.text


@dataclass(frozen=True)
class OpenAlert:
    """A pending or firing alert on a key (the ``open_alerts`` view)."""

    id: int
    rule_name: str
    state: str
    severity: str
    value: float | None
    pending_since: datetime
    fired_at: datetime | None
    silenced: bool


@dataclass(frozen=True)
class RankedKey:
    """One row of the ranking: the window's counts, the baseline, the evidence and why."""

    key: str
    kind: str
    name: str
    documents: int
    """documents in the window"""
    bearish: int
    """bearish documents in the window"""
    baseline_documents: int
    baseline_bearish: int
    expected_share: float
    """the key's usual bearish share (posterior mean over the baseline)"""
    p_value: float
    evidence: float
    """-log10 P(this many bearish or more | the usual share)"""
    driver: str | None = None
    """topics: the entity key behind at least half of the window's bearish documents"""
    driver_bearish: int = 0
    """how many of the window's bearish documents are about ``driver``"""
    surge_score: float | None = None
    """the memory's (negativity) surge score as of ``now`` (its newest trend point at or before it)"""
    surge_at: datetime | None = None
    volume_surge_score: float | None = None
    """the memory's volume surge score at the same point (None under a two-output cell)"""
    open_alerts: tuple[OpenAlert, ...] = ()
    headlines: tuple[Headline, ...] = ()

    @property
    def negative_share(self) -> float:
        return self.bearish / self.documents if self.documents else 0.0

    @property
    def baseline_share(self) -> float | None:
        return self.baseline_bearish / self.baseline_documents if self.baseline_documents else None

    @property
    def expected_bearish(self) -> float:
        return self.expected_share * self.documents

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            negative_share=self.negative_share,
            baseline_share=self.baseline_share,
            expected_bearish=self.expected_bearish,
        )
        return _jsonable(out)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Ranking:
    """The answer of :func:`top_keys`, with the instants it was computed for."""

    now: datetime
    since: timedelta
    baseline: timedelta
    kind: str | None
    prior_share: float
    keys: tuple[RankedKey, ...] = field(default_factory=tuple)

    @property
    def window_start(self) -> datetime:
        return self.now - self.since

    @property
    def baseline_start(self) -> datetime:
        return self.now - self.since - self.baseline

    def to_json(self) -> dict[str, Any]:
        return {
            "now": self.now.isoformat(),
            "window_start": self.window_start.isoformat(),
            "baseline_start": self.baseline_start.isoformat(),
            "since_s": self.since.total_seconds(),
            "baseline_s": self.baseline.total_seconds(),
            "kind": self.kind,
            "prior_share": self.prior_share,
            "keys": [k.to_json() for k in self.keys],
        }


# --- the ranking ---------------------------------------------------------------------------

_COUNTS = sa.text("""
SELECT tp.key,
       count(*) FILTER (WHERE tp.event_at > :window_start)                               AS n,
       count(*) FILTER (WHERE tp.event_at > :window_start AND tp.sentiment = 'bearish')  AS x,
       count(*) FILTER (WHERE tp.event_at <= :window_start)                              AS m,
       count(*) FILTER (WHERE tp.event_at <= :window_start AND tp.sentiment = 'bearish') AS b
FROM trend_points tp
WHERE tp.event_at > :baseline_start AND tp.event_at <= :now
  AND tp.key LIKE :prefix
GROUP BY tp.key
""")

_DRIVERS = sa.text("""
SELECT tp.key, upper(e.entity) AS entity, count(*) AS bearish
FROM trend_points tp JOIN documents d ON d.id = tp.document_id
CROSS JOIN LATERAL unnest(d.entities) AS e(entity)
WHERE tp.key = ANY(CAST(:keys AS text[])) AND tp.event_at > :window_start AND tp.event_at <= :now
  AND tp.sentiment = 'bearish'
GROUP BY 1, 2
""")

_SURGE = sa.text("""
SELECT k.key, coalesce(s.surge_score, CASE WHEN ks.last_event_at <= :now THEN ks.surge_score END) AS surge_score,
       coalesce(s.event_at, CASE WHEN ks.last_event_at <= :now THEN ks.last_event_at END) AS surge_at,
       CASE WHEN s.event_at IS NOT NULL THEN s.volume_surge_score
            WHEN ks.last_event_at <= :now THEN ks.volume_surge_score END AS volume_surge_score
FROM unnest(CAST(:keys AS text[])) AS k(key)
LEFT JOIN key_state ks ON ks.key = k.key
LEFT JOIN LATERAL (
    SELECT tp.surge_score, tp.volume_surge_score, tp.event_at FROM trend_points tp
    WHERE tp.key = k.key AND tp.event_at <= :now
    ORDER BY tp.event_at DESC, tp.id DESC LIMIT 1
) s ON true
""")

_OPEN_ALERTS = sa.text("""
SELECT id, key, rule_name, state, severity, value, pending_since, fired_at, silenced
FROM open_alerts WHERE key = ANY(CAST(:keys AS text[]))
ORDER BY (state = 'firing') DESC, pending_since DESC
""")

#: a document's newest prediction and newest human sentiment label
_DOCUMENT_LATERALS = """
LEFT JOIN LATERAL (
    SELECT p.sentiment, p.p_bearish, p.model_version FROM predictions p
    WHERE p.document_id = d.id ORDER BY p.scored_at DESC, p.model_version DESC LIMIT 1
) lp ON true
LEFT JOIN LATERAL (
    SELECT l.sentiment FROM labels l
    WHERE l.document_id = d.id AND l.sentiment IS NOT NULL
    ORDER BY l.labelled_at DESC, l.id DESC LIMIT 1
) lb ON true
"""
_HEADLINE_COLUMNS = (
    "d.id AS document_id, d.published_at, d.title, d.text, d.url, d.source, "
    "coalesce(lp.sentiment, tp.sentiment) AS sentiment, "
    "coalesce(lp.p_bearish, tp.p_bearish) AS p_bearish, "
    "coalesce(lp.model_version, tp.model_version) AS model_version, lb.sentiment AS label"
)

_BEARISH_HEADLINES = sa.text(f"""
SELECT k.key, h.* FROM unnest(CAST(:keys AS text[])) AS k(key)
CROSS JOIN LATERAL (
    SELECT {_HEADLINE_COLUMNS}
    FROM trend_points tp JOIN documents d ON d.id = tp.document_id
    {_DOCUMENT_LATERALS}
    WHERE tp.key = k.key AND tp.event_at > :window_start AND tp.event_at <= :now
      AND tp.sentiment = 'bearish'
    ORDER BY tp.p_bearish DESC, tp.event_at DESC, d.id LIMIT :per_key
) h
""")


def _headline(row: Any) -> Headline:
    return Headline(
        document_id=row.document_id,
        published_at=_utc(row.published_at),
        title=row.title,
        text=row.text,
        url=row.url,
        source=row.source,
        sentiment=row.sentiment,
        p_bearish=float(row.p_bearish),
        model_version=row.model_version,
        label=row.label,
    )


def _under_drivers(ranked: list[RankedKey]) -> list[RankedKey]:
    """Move each topic with a driver right after its driving entity (when the entity ranks
    with evidence >= ``MIN_DRIVER_EVIDENCE``), keeping the order otherwise."""
    strong = {k.key for k in ranked if k.kind == "entity" and k.evidence >= MIN_DRIVER_EVIDENCE}
    followers: dict[str, list[RankedKey]] = {}
    for k in ranked:
        if k.driver in strong:
            followers.setdefault(k.driver, []).append(k)
    out: list[RankedKey] = []
    for k in ranked:
        if k.driver in strong:
            continue
        out.append(k)
        out.extend(followers.get(k.key, ()))
    return out


def top_keys(
    engine: Engine,
    *,
    since: timedelta = timedelta(hours=6),
    kind: str | None = None,
    limit: int = 20,
    now: datetime | str | None = None,
    baseline: timedelta = BASELINE,
    headlines: int = 3,
    only_key: str | None = None,
) -> Ranking:
    """Keys ranked by the evidence that their bearish count in ``(now - since, now]`` is
    above their own baseline (see the module docstring for the maths), each with volume,
    the memory's surge score as of ``now``, its open alerts and its ``headlines`` most
    bearish documents of the window.

    ``kind`` is ``"entity"``, ``"topic"`` or None (both); ``now`` as :func:`resolve_now`
    takes it; ``only_key`` restricts the answer to one key (the key page), with the prior
    still pooled over the selected kind.
    """
    if since <= timedelta(0):
        raise InputError(f"since must be positive, got {since}")
    if limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    kind = _check_kind(kind)
    at = resolve_now(engine, now)
    window_start = at - since
    params = {
        "now": at,
        "window_start": window_start,
        "baseline_start": window_start - baseline,
        "prefix": f"{kind}:%" if kind else "%",
    }
    with engine.connect() as conn:
        rows = conn.execute(_COUNTS, params).all()
        total_m = sum(r.m for r in rows)
        prior = sum(r.b for r in rows) / total_m if total_m else DEFAULT_PRIOR_SHARE
        ranked: list[RankedKey] = []
        for r in rows:
            if r.n == 0 or (only_key is not None and r.key != only_key):
                continue
            ev = bearish_evidence(r.x, r.n, r.b, r.m, prior)
            ranked.append(
                RankedKey(
                    key=r.key,
                    kind=key_kind(r.key),
                    name=key_name(r.key),
                    documents=r.n,
                    bearish=r.x,
                    baseline_documents=r.m,
                    baseline_bearish=r.b,
                    expected_share=ev.expected_share,
                    p_value=ev.p_value,
                    evidence=ev.evidence,
                )
            )
        ranked.sort(key=lambda k: (-k.evidence, -k.bearish, -k.documents, k.key))
        topics = [k.key for k in ranked if k.kind == "topic" and k.bearish > 0]
        drivers: dict[str, tuple[str, int]] = {}
        if topics:
            for row in conn.execute(
                _DRIVERS, {"keys": topics, "now": at, "window_start": window_start}
            ):
                best = drivers.get(row.key)
                if best is None or (row.bearish, f"entity:{row.entity}") > (best[1], best[0]):
                    drivers[row.key] = (f"entity:{row.entity}", int(row.bearish))
        ranked = _under_drivers(
            [
                RankedKey(**{**k.__dict__, "driver": d[0], "driver_bearish": d[1]})
                if (d := drivers.get(k.key)) is not None and 2 * d[1] >= k.bearish
                else k
                for k in ranked
            ]
        )[:limit]
        keys = [k.key for k in ranked]
        surge: dict[str, Any] = {}
        alerts: dict[str, list[OpenAlert]] = {}
        lines: dict[str, list[Headline]] = {}
        if keys:
            for row in conn.execute(_SURGE, {"keys": keys, "now": at}):
                surge[row.key] = row
            for row in conn.execute(_OPEN_ALERTS, {"keys": keys}):
                alerts.setdefault(row.key, []).append(
                    OpenAlert(
                        id=row.id,
                        rule_name=row.rule_name,
                        state=row.state,
                        severity=row.severity,
                        value=row.value,
                        pending_since=_utc(row.pending_since),
                        fired_at=_utc(row.fired_at) if row.fired_at else None,
                        silenced=bool(row.silenced),
                    )
                )
            if headlines > 0:
                for row in conn.execute(
                    _BEARISH_HEADLINES,
                    {"keys": keys, "now": at, "window_start": window_start, "per_key": headlines},
                ):
                    lines.setdefault(row.key, []).append(_headline(row))
    out = []
    for k in ranked:
        s = surge.get(k.key)
        out.append(
            RankedKey(
                **{
                    **k.__dict__,
                    "surge_score": float(s.surge_score)
                    if s is not None and s.surge_score is not None
                    else None,
                    "surge_at": _utc(s.surge_at) if s is not None and s.surge_at else None,
                    "volume_surge_score": float(s.volume_surge_score)
                    if s is not None and s.volume_surge_score is not None
                    else None,
                    "open_alerts": tuple(alerts.get(k.key, ())),
                    "headlines": tuple(lines.get(k.key, ())),
                }
            )
        )
    return Ranking(
        now=at, since=since, baseline=baseline, kind=kind, prior_share=prior, keys=tuple(out)
    )


# --- one key -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesPoint:
    """One time bucket of a key: ``[start, start + bucket)`` in event time."""

    start: datetime
    documents: int
    bearish: int
    surge_score: float | None
    """the memory's surge score after the bucket's newest document (None: no document)"""
    max_surge_score: float | None

    @property
    def negative_share(self) -> float | None:
        return self.bearish / self.documents if self.documents else None


@dataclass(frozen=True)
class KeySeries:
    key: str
    start: datetime
    end: datetime
    bucket: timedelta
    points: tuple[SeriesPoint, ...]


_SERIES = sa.text("""
WITH buckets AS (
    SELECT generate_series(
        date_bin(:bucket, CAST(:start AS timestamptz), TIMESTAMPTZ '2000-01-01 00:00+00'),
        date_bin(:bucket, CAST(:now AS timestamptz), TIMESTAMPTZ '2000-01-01 00:00+00'),
        :bucket) AS start
)
SELECT b.start,
       count(tp.id) AS documents,
       count(tp.id) FILTER (WHERE tp.sentiment = 'bearish') AS bearish,
       (array_agg(tp.surge_score ORDER BY tp.event_at DESC, tp.id DESC)
            FILTER (WHERE tp.id IS NOT NULL))[1] AS surge_score,
       max(tp.surge_score) AS max_surge_score
FROM buckets b
LEFT JOIN trend_points tp
  ON tp.key = :key AND tp.event_at >= b.start AND tp.event_at < b.start + :bucket
 AND tp.event_at > :start AND tp.event_at <= :now
GROUP BY b.start ORDER BY b.start
""")


def key_series(
    engine: Engine,
    key: str,
    since: timedelta,
    bucket: timedelta,
    *,
    now: datetime | str | None = None,
) -> KeySeries:
    """Per ``bucket`` of ``(now - since, now]``: the key's volume, bearish count (so its
    negative share) and the memory's surge score, from ``trend_points``. Buckets are aligned
    to multiples of ``bucket`` since 2000-01-01 UTC, and empty buckets are included (volume
    0, no share), so a chart's x axis is time, not document count."""
    if bucket <= timedelta(0) or since <= timedelta(0):
        raise InputError("since and bucket must be positive")
    if since / bucket > MAX_BUCKETS:
        raise InputError(
            f"{since} in buckets of {bucket} is more than {MAX_BUCKETS} buckets; use a larger bucket"
        )
    at = resolve_now(engine, now)
    start = at - since
    with engine.connect() as conn:
        rows = conn.execute(
            _SERIES, {"key": key, "start": start, "now": at, "bucket": bucket}
        ).all()
    return KeySeries(
        key=key,
        start=start,
        end=at,
        bucket=bucket,
        points=tuple(
            SeriesPoint(
                start=_utc(r.start),
                documents=int(r.documents),
                bearish=int(r.bearish),
                surge_score=float(r.surge_score) if r.surge_score is not None else None,
                max_surge_score=float(r.max_surge_score) if r.max_surge_score is not None else None,
            )
            for r in rows
        ),
    )


_KEY_HEADLINES = sa.text(f"""
SELECT {_HEADLINE_COLUMNS}
FROM trend_points tp JOIN documents d ON d.id = tp.document_id
{_DOCUMENT_LATERALS}
WHERE tp.key = :key AND tp.event_at <= :now
ORDER BY tp.event_at DESC, d.id DESC LIMIT :limit
""")


def key_headlines(
    engine: Engine, key: str, limit: int = 20, *, now: datetime | str | None = None
) -> list[Headline]:
    """The key's newest documents at or before ``now``, newest first, each with its newest
    prediction (sentiment, p_bearish, the model version that made it) and label."""
    at = resolve_now(engine, now)
    with engine.connect() as conn:
        rows = conn.execute(_KEY_HEADLINES, {"key": key, "now": at, "limit": limit}).all()
    return [_headline(r) for r in rows]


# --- alerts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertEpisode:
    """One alert episode (an ``alerts`` row): pending -> firing -> resolved."""

    id: int
    rule_name: str
    key: str
    severity: str
    state: str
    value: float | None
    summary: str
    pending_since: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    silenced: bool
    """an active silence matches it (its notifications are recorded, not sent)"""


@dataclass(frozen=True)
class AlertEpisodes:
    firing: tuple[AlertEpisode, ...]
    pending: tuple[AlertEpisode, ...]
    resolved: tuple[AlertEpisode, ...]
    silences: tuple[Silence, ...]

    @property
    def all(self) -> tuple[AlertEpisode, ...]:
        return self.firing + self.pending + self.resolved


_EPISODES = sa.text("""
SELECT a.id, a.rule_name, a.key, a.severity, a.state, a.value,
       coalesce(a.annotations->>'summary', a.rule_name || ' on ' || a.key) AS summary,
       a.pending_since, a.fired_at, a.resolved_at,
       EXISTS (
           SELECT 1 FROM silences s
           WHERE now() >= s.starts_at AND now() < s.ends_at
             AND (a.labels || jsonb_build_object('rule', a.rule_name, 'key', a.key, 'severity', a.severity))
                 @> s.matchers
       ) AS silenced
FROM alerts a
WHERE CAST(:key AS text) IS NULL OR a.key = :key
ORDER BY coalesce(a.fired_at, a.pending_since) DESC, a.id DESC
LIMIT :limit
""")


def alert_episodes(engine: Engine, key: str | None = None, *, limit: int = 500) -> AlertEpisodes:
    """Alert episodes (all keys, or one), newest first and split by state, plus the
    silences that are active or still to come. ``silenced`` uses the same matching as the
    ``open_alerts`` view (every matcher equals the alert's label), on the wall clock:
    silences are about notifications now, whatever instant the data is viewed at."""
    with engine.connect() as conn:
        rows = conn.execute(_EPISODES, {"key": key, "limit": limit}).all()
    episodes = [
        AlertEpisode(
            id=r.id,
            rule_name=r.rule_name,
            key=r.key,
            severity=r.severity,
            state=r.state,
            value=r.value,
            summary=r.summary,
            pending_since=_utc(r.pending_since),
            fired_at=_utc(r.fired_at) if r.fired_at else None,
            resolved_at=_utc(r.resolved_at) if r.resolved_at else None,
            silenced=bool(r.silenced),
        )
        for r in rows
    ]
    silences = list_silences(engine)
    if key is not None:
        silences = [s for s in silences if s.matchers.get("key", key) == key]
    return AlertEpisodes(
        firing=tuple(e for e in episodes if e.state == "firing"),
        pending=tuple(e for e in episodes if e.state == "pending"),
        resolved=tuple(e for e in episodes if e.state == "resolved"),
        silences=tuple(silences),
    )
