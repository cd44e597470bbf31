"""The recurrent memory's input features, defined once for training and serving.

The memory cell (``memory.onnx``) sees, per document applied to a key:
``[p_bearish, p_neutral, p_bullish, topic_confidence, log1p(hours since the key's previous
document), first_document_flag, *doc_vector]``. Training (simulated streams) and the
trends worker both build features with :func:`memory_features`, so they cannot drift apart.

The gap. The trends worker measures it in the key's canonical order with
:func:`memory_gap_seconds`: the event-time difference to the key's previous document,
except for a ``day``-precision document (a source that gives only a date) stacked on the
same instant as its predecessor, i.e. the previous document of the same day. Its true gap
is unknown, and 0 s would tell the cell that 45 headlines of one day arrived in a burst.
It gets the key's **average inter-arrival time** over its canonical prefix instead
(``(previous - first) / (documents before - 1)``, at most a day; ``DAY_FALLBACK_GAP_S``
while the key's history spans no time yet): the day's documents are spread at the key's
own rate, e.g. 86400 s / 45 = 1920 s for a key that sees 45 a day. Only the key's past in
canonical order enters the rule (never the number of documents the day will end up with,
which is not known until the day is over), so a rewind replays the same gaps and the
memory stays independent of arrival order. A day document after a real gap (the first of
its day) keeps that gap: the key was quiet until that day.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import numpy as np

BASE_FEATURES = (
    "p_bearish",
    "p_neutral",
    "p_bullish",
    "topic_confidence",
    "log1p_hours_since_previous",
    "first",
)


DAY_S = 86_400.0
#: the gap between two documents of one day while a key's history spans no time yet
#: (its first day): one an hour
DAY_FALLBACK_GAP_S = 3_600.0


def feature_dim(doc_vector_dim: int) -> int:
    return len(BASE_FEATURES) + doc_vector_dim


def memory_gap_seconds(
    at: datetime,
    previous_at: datetime | None,
    time_precision: str = "second",
    *,
    first_at: datetime | None = None,
    documents_before: int = 0,
) -> float | None:
    """The ``dt_seconds`` the memory sees for a document at ``at`` (its canonical
    ``order_at``): None for the key's first document, else the gap to ``previous_at``, except
    that a ``day`` document on the same instant as its predecessor gets the key's average
    inter-arrival time (see the module docstring). ``first_at`` is the key's first
    document's ``order_at`` and ``documents_before`` how many documents precede this one.

    >>> from datetime import UTC, timedelta
    >>> day = datetime(2021, 3, 4, 5, tzinfo=UTC)
    >>> memory_gap_seconds(day, day - timedelta(hours=2))
    7200.0
    >>> memory_gap_seconds(day, day)  # two second-precision documents at one instant
    0.0
    >>> memory_gap_seconds(day, day, "day", first_at=day - timedelta(days=1), documents_before=46)
    1920.0
    >>> memory_gap_seconds(day, day, "day", first_at=day, documents_before=3)  # its first day
    3600.0
    """
    if previous_at is None:
        return None
    gap = (at - previous_at).total_seconds()
    if time_precision != "day" or gap > 0:
        return gap
    if first_at is not None and documents_before >= 2:
        span = (previous_at - first_at).total_seconds()
        if span > 0:
            return min(span / (documents_before - 1), DAY_S)
    return DAY_FALLBACK_GAP_S


def memory_features(
    p_bearish: float,
    p_neutral: float,
    p_bullish: float,
    topic_confidence: float,
    doc_vector: Sequence[float] | np.ndarray,
    dt_seconds: float | None,
) -> np.ndarray:
    """One document's feature vector (float32). ``dt_seconds`` is event time since the key's
    previous document (None for a key's first document; negative values count as 0)."""
    first = dt_seconds is None
    hours = 0.0 if first else max(float(dt_seconds), 0.0) / 3600.0  # type: ignore[arg-type]
    head = np.array(
        [
            p_bearish,
            p_neutral,
            p_bullish,
            topic_confidence,
            math.log1p(hours),
            1.0 if first else 0.0,
        ],
        dtype=np.float32,
    )
    return np.concatenate([head, np.asarray(doc_vector, dtype=np.float32).reshape(-1)])
