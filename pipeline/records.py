"""The vocabularies every stage shares and the scored record the scorer hands the trends
worker: one definition, so a stage cannot drift from another.

* :data:`SENTIMENTS`: the model's sentiment output order (bearish, neutral, bullish).
* :data:`SENTIMENT_DATA_IDS`: the training files number sentiments differently
  (0 bearish, 1 bullish, 2 neutral); labels exports and training read them from here.
* :data:`TOPICS`: the 20 topics of the base topic data, in label-id order. A model's
  manifest carries its own topic list; :func:`n_topics` is how many there are.
* :data:`TIME_PRECISIONS`: how precise a document's published time is (``second``,
  ``minute``, ``hour``, ``day``). Many news sources give only a date: a ``day`` document's
  ``published_at`` is the start of its day (in the source's time zone, stored as UTC) and
  stands for the whole day. The same values are checked by PostgreSQL on
  ``documents.time_precision`` and ``trend_points.time_precision``.
* :class:`ScoredRecord`: one (memory key, document) with the stored prediction, the value
  of every record on the scored Kafka topic. ``to_bytes``/``from_bytes`` are the wire
  format; a value that is not one raises :class:`~pipeline.errors.InputError` with the
  reason (the trends worker dead-letters it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import InputError
from pipeline.json_codec import record_bytes

Sentiment = Literal["bearish", "neutral", "bullish"]
SENTIMENTS: tuple[Sentiment, ...] = ("bearish", "neutral", "bullish")
#: sentiment name -> label id in the training data files (0 bearish, 1 bullish, 2 neutral)
SENTIMENT_DATA_IDS: dict[str, int] = {"bearish": 0, "bullish": 1, "neutral": 2}
TOPICS: tuple[str, ...] = (
    "Analyst Update",
    "Fed / Central Banks",
    "Company / Product News",
    "Treasuries / Corporate Debt",
    "Dividend",
    "Earnings",
    "Energy / Oil",
    "Financials",
    "Currencies",
    "General News / Opinion",
    "Gold / Metals / Materials",
    "IPO",
    "Legal / Regulation",
    "M&A / Investments",
    "Macro",
    "Markets",
    "Politics",
    "Personnel Change",
    "Stock Commentary",
    "Stock Movement",
)
TimePrecision = Literal["second", "minute", "hour", "day"]
#: finest first; "second" is the default for records and producers that do not say
TIME_PRECISIONS: tuple[TimePrecision, ...] = ("second", "minute", "hour", "day")
KEY_KINDS = ("topic", "entity")
MAX_KEY_CHARS = 300


def n_topics(topics: Sequence[str] = TOPICS) -> int:
    """How many topic ids there are (0 … n-1) for a topic list (default: the base data's)."""
    return len(topics)


def keys_of(topic: str, entities: Sequence[str]) -> list[str]:
    """The memory keys a document moves: its predicted topic and every entity it names,
    each once, in the order named."""
    keys = [f"topic:{topic}"]
    seen: set[str] = set()
    for entity in entities:
        ticker = str(entity).strip().upper()
        if ticker and ticker not in seen:
            seen.add(ticker)
            keys.append(f"entity:{ticker}")
    return keys


class ScoredRecord(BaseModel):
    """One scored (key, document): what the trends worker applies to the key's memory."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    key: str = Field(min_length=1, max_length=MAX_KEY_CHARS)
    document_id: str = Field(min_length=1)
    event_at: AwareDatetime
    source: str = ""
    model_version: str = ""
    topic_id: int = Field(ge=0)
    topic: str
    topic_confidence: float = Field(ge=0.0, le=1.0)
    sentiment: Sentiment
    p_bearish: float
    p_neutral: float
    p_bullish: float
    doc_vector: tuple[float, ...] = ()
    #: the document's time precision; records written before it existed are "second"
    time_precision: TimePrecision = "second"

    @field_validator("key")
    @classmethod
    def _key_kind(cls, key: str) -> str:
        if not key.startswith(tuple(f"{kind}:" for kind in KEY_KINDS)):
            raise ValueError(f"key {key[:80]!r} is not topic:<name> or entity:<TICKER>")
        return key

    @property
    def key_kind(self) -> str:
        return self.key.split(":", 1)[0]

    def to_bytes(self) -> bytes:
        """The wire format: compact JSON, UTF-8, floats as stored (exactly representable)."""
        data = self.model_dump(mode="json")
        data["event_at"] = self.event_at.isoformat()
        return record_bytes(data)

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> ScoredRecord:
        """Parse a scored record's value; InputError naming what is wrong otherwise."""
        if raw is None:
            raise InputError("record has no value (tombstone)")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"scored record is not UTF-8 JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError("scored record must be a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise InputError(f"scored record is missing or has a bad field: {problems}") from None
