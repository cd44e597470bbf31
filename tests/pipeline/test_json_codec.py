"""The hot-path JSON encoder writes what json.dumps wrote, and falls back to it for what
orjson refuses."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np

from pipeline.json_codec import record_bytes, rows_text


def test_rows_read_back_as_the_same_values_as_with_json_dumps() -> None:
    rng = np.random.default_rng(7)
    rows = [
        {
            "key": "entity:ACME",
            "state": rng.random(32).astype(np.float32).tolist(),
            "doc_vector": tuple(rng.random(16).astype(np.float32).tolist()),
            "p": float(np.float32(1e-7)),
            "n": i,
            "none": None,
            "text": "Überraschung — 利益",
            "at": datetime(2026, 3, 2, 9, 30, 1, 250, tzinfo=UTC) + timedelta(seconds=i),
            "local": datetime(2026, 3, 2, 9, 30, tzinfo=timezone(timedelta(hours=-5))),
        }
        for i in range(20)
    ]
    expected = json.loads(json.dumps(rows, default=lambda v: v.isoformat()))
    assert json.loads(rows_text(rows)) == expected
    assert json.loads(record_bytes(rows)) == expected
    assert json.loads(rows_text([{"x": 0.1 + 0.2}]))[0]["x"] == 0.1 + 0.2
    assert not math.isnan(json.loads(rows_text([{"x": 1.5}]))[0]["x"])


def test_a_lone_surrogate_is_escaped_for_postgresql_to_refuse() -> None:
    text = rows_text([{"id": "bad\ud800id"}])
    assert "\\ud800" in text  # json's ASCII escape: PostgreSQL refuses it (DataError -> DLQ)
    assert json.loads(text) == [{"id": "bad\ud800id"}]
