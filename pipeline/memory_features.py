"""The recurrent memory's input features, defined once for training and serving.

The memory cell (``memory.onnx``) sees, per document applied to a key:
``[p_bearish, p_neutral, p_bullish, topic_confidence, log1p(hours since the key's previous
document), first_document_flag, *doc_vector]``. Training (simulated streams) and the
trends worker both build features with :func:`memory_features`, so they cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BASE_FEATURES = (
    "p_bearish",
    "p_neutral",
    "p_bullish",
    "topic_confidence",
    "log1p_hours_since_previous",
    "first",
)


def feature_dim(doc_vector_dim: int) -> int:
    return len(BASE_FEATURES) + doc_vector_dim


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
