"""What a trend point weighs in a rule's window: time precision and stories (issue #14).

Every window statistic of every rule kind (threshold, spike, memory_surge's counts, anomaly's
window and baseline) and the alert evidence (``alerts.evaluator.headlines``) are built from
the SQL helpers here (:func:`units_sql`: a point's weight in a window; :func:`first_copy_sql`:
whether it counts for its story), and the backtest's fast path (``alerts.backtest``) mirrors
them with :func:`units`, so the live evaluator, the backtest and its fast path count alike.

Time precision: a point is spread over its span
    A trend point of precision ``p`` stands for a document published somewhere in
    ``[event_at, event_at + span(p))``: day 86,400 s, hour 3,600 s, minute 60 s, second 0
    (an instant). It is spread **uniformly** over that span, and its weight in a window
    ``(lo, hi]`` is the fraction of its span inside the window (an instant: 1 if
    ``lo < event_at <= hi``, else 0). A day-stamped document (``event_at`` = the start of
    its day in the feed's zone, stored as UTC) weighs 1/24 in every hourly window of its day
    and 1 in any window holding the whole day, so hourly windows over day-stamped data see
    the day's documents spread over the day instead of all of them at midnight, and the
    weights of a day's 24 hourly windows add up to the day's documents. A point is *in* a
    window when its weight there is positive (its span intersects the window); the window
    queries therefore read points from ``lo - MAX_SPAN`` on. Nothing is read after ``hi``:
    a window never counts a point whose ``event_at`` is later than its end.

    Weights are exact integers: **units** of ``1 / UNIT`` document, ``UNIT`` = 86,400 x
    10^6 (one microsecond of a day's span). A point's units in a window are its overlap in
    microseconds times ``UNIT / span`` (1 for a day, 24 for an hour, 1,440 for a minute), or
    ``UNIT`` for an instant. Sums of units are exact in PostgreSQL (``numeric``) and in
    Python, so the SQL evaluator and the backtest's mirror compute bit-identical figures.

Stories: one story, one count
    Outlets repeat a story (``documents.story_id``, assigned by ``pipeline/stories.py``;
    NULL when grouping is off or for old rows, and then every document is its own story:
    ``coalesce(d.story_id, tp.document_id)``). Within a key a story counts **once, where
    and as its first copy**: the key's earliest trend point of the story (by ``event_at``,
    then document id) carries the story's weight and sentiment, later copies weigh nothing
    in every window (:func:`first_copy_sql`). Why this rule:

    * every story weighs exactly 1 over any partition of time into windows -- the window
      and the anomaly baseline before it never both count one story, and 24 hourly windows
      add up to the day's stories. "The largest weight of its copies in the window" counts a
      story whose copies straddle a window boundary in both windows;
    * copies arriving later (newspapers the next morning repeating the wire's story of the
      day before) add nothing, so a repeated story cannot look like a second burst;
    * one reading per story, as an ungrouped document has: a story's chance to count as
      bearish does not grow with its copies. "Bearish if any copy is" would turn a neutral
      story carried by ``n`` outlets bearish with probability ``1 - (1 - q)^n`` for a
      per-copy misreading rate ``q``: coverage posing as negativity, the failure issue #14
      reports of the memory's surge score. The first copy is usually the original report
      that the others rewrite; the price is that a misread first copy misreads the story;
    * it is a filter on points, so window sums stay sums (cheap in SQL, prefix sums in the
      backtest).

    The memory's own surge score is the key's state after *every* document (copies
    included): a memory_surge rule reads the newest trend point in the window, whichever
    copy it is; only its document counts (``documents``, ``negative``) count stories.

Figures
    Counts shown in alerts (``documents``, ``negative``, their reference and baseline
    counterparts) are :class:`DocumentCount` values: always floats, rounded to 2 decimals,
    printed without a trailing ``.0`` (``3 bearish of 12 documents``, ``0.04 documents``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: weight units per document (one microsecond of a day's span)
UNIT = 86_400_000_000
#: each precision's span in microseconds (0: an instant)
SPAN_US = {"second": 0, "minute": 60_000_000, "hour": 3_600_000_000, "day": 86_400_000_000}
#: the longest span: window queries read points from ``lo - MAX_SPAN`` on
MAX_SPAN = timedelta(days=1)
MAX_SPAN_US = max(SPAN_US.values())
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class DocumentCount(float):
    """A count of documents (stories) that may be fractional: a float, rounded to 2
    decimals, printed without a trailing ``.0``.

    >>> c = DocumentCount.of_units(3 * UNIT)
    >>> c == 3, f"{c} documents", f"{c:.1f}", isinstance(c, float)
    (True, '3 documents', '3.0', True)
    >>> f"{DocumentCount.of_units(UNIT // 24)} documents"
    '0.04 documents'
    """

    @classmethod
    def of_units(cls, units: int) -> DocumentCount:
        return cls(round(units / UNIT, 2))

    def __str__(self) -> str:
        text = f"{float(self):.2f}".rstrip("0").rstrip(".")
        return "0" if text in ("", "-0") else text

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else format(float(self), spec)


def span_us(precision: str) -> int:
    """A precision's span in microseconds (unknown precisions are instants, as
    ``'second'``)."""
    return SPAN_US.get(precision, 0)


def epoch_us(at: datetime) -> int:
    """Microseconds since the Unix epoch (exact; what :func:`event_us_sql` computes)."""
    return (at.astimezone(UTC) - EPOCH) // _US


def units(event_us: int, span: int, lo_us: int, hi_us: int) -> int:
    """The weight units of a point at ``event_us`` spread over ``span`` microseconds in
    the window ``(lo_us, hi_us]``: what :func:`units_sql` computes.

    >>> H = 3_600_000_000
    >>> units(0, 0, -1, 0) == UNIT, units(0, 0, 0, H)      # an instant: (lo, hi]
    (True, 0)
    >>> units(0, 24 * H, 0, H) * 24 == UNIT                  # a day point, its first hour
    True
    >>> units(0, 24 * H, -H, 0), units(0, 24 * H, -H, 48 * H) == UNIT
    (0, True)
    """
    if span == 0:
        return UNIT if lo_us < event_us <= hi_us else 0
    return max(0, min(span, hi_us - event_us) - max(0, lo_us - event_us)) * (UNIT // span)


def as_units(value: object) -> int:
    """A SQL sum of weight units (``numeric``, NULL for no rows) as an exact int."""
    return 0 if value is None else int(value)  # type: ignore[call-overload]


# --- SQL -----------------------------------------------------------------------------------


def point_columns_sql(tp: str = "tp") -> str:
    """SQL select-list item ``s_us``: the span in microseconds of the trend point aliased
    ``tp``."""
    cases = " ".join(f"WHEN '{name}' THEN {span}" for name, span in SPAN_US.items() if span)
    return f"CAST(CASE {tp}.time_precision {cases} ELSE 0 END AS bigint) AS s_us"


def _us_sql(interval: str) -> str:
    """SQL (bigint): an interval in microseconds, exact (``EXTRACT`` is ``numeric``)."""
    return f"CAST(EXTRACT(EPOCH FROM {interval}) * 1000000 AS bigint)"


def units_sql(lo: str, hi: str, p: str = "p") -> str:
    """SQL (bigint): the weight units in the window ``(lo, hi]`` (timestamptz SQL
    expressions) of a point ``p`` (columns ``event_at`` and ``s_us``, see
    :func:`point_columns_sql`). The one definition of a point's weight in SQL; an
    instant costs two comparisons, only a spread point is measured in microseconds."""
    e, s = f"{p}.event_at", f"{p}.s_us"
    return (
        f"(CASE WHEN {s} = 0 THEN (CASE WHEN {e} > {lo} AND {e} <= {hi} THEN {UNIT} ELSE 0 END) "
        f"WHEN {e} >= {hi} OR {e} + {s} * INTERVAL '1 microsecond' <= {lo} THEN 0 "
        f"ELSE (least({s}, {_us_sql(f'{hi} - {e}')}) - greatest(0, {_us_sql(f'{lo} - {e}')})) "
        f"* ({UNIT} / {s}) END)"
    )


def story_sql(d: str = "d") -> str:
    """SQL: the story of the document ``d`` (row of ``documents``; no story id: a story
    of its own)."""
    return f"coalesce({d}.story_id, {d}.id)"


def first_copy_sql(p: str = "p") -> str:
    """SQL (boolean): the point ``p`` (columns ``key``, ``event_at``, ``document_id``) is
    the first copy of its story on its key -- no trend point of the key whose document
    belongs to the same story is earlier (by ``event_at``, then document id). A document
    without a story id (grouping off, older rows) is a story of its own: a story's first
    document carries its own id as story id (``pipeline/stories.py``), so no document
    names a story whose first document has none.

    One primary-key probe for the point's document, one ``documents_story_id_idx`` probe
    for the story's other documents, and a ``(key, document_id)`` probe of
    ``trend_points`` for each of those, evaluated only for the points a window keeps."""
    # nested scalar subqueries fix the order of the probes: as one join (or as a WHERE
    # clause NOT EXISTS) the planner may drive it from the key's points or hash a table
    earlier = (
        f'(SELECT (tp2.event_at, tp2.document_id COLLATE "C") '
        f'< ({p}.event_at, {p}.document_id COLLATE "C") '
        f"FROM trend_points tp2 WHERE tp2.key = {p}.key AND tp2.document_id = d2.id)"
    )
    return (
        f"coalesce((SELECT d.story_id IS NULL OR NOT EXISTS (SELECT 1 FROM documents d2 "
        f"WHERE d2.story_id = d.story_id AND d2.id <> d.id AND {earlier}) "
        f"FROM documents d WHERE d.id = {p}.document_id), true)"
    )


def points_sql(columns: str, where: str, tp: str = "tp") -> str:
    """SQL: a subquery of trend points ``tp`` selected by ``where``, exposing ``key``,
    ``event_at``, ``document_id``, ``bearish``, ``s_us`` (:func:`point_columns_sql`) and
    ``columns``."""
    extra = f", {columns}" if columns else ""
    return (
        f"SELECT {tp}.key, {tp}.event_at, {tp}.document_id, "
        f"{tp}.sentiment = 'bearish' AS bearish, {point_columns_sql(tp)}{extra} "
        f"FROM trend_points {tp} WHERE {where}"
    )
