"""What every producer shares: the ``Source`` interface, turning raw items into
``Document``s, and the ``DocumentProducer`` that puts them on Kafka.

* A ``Source`` is one class that yields ``Document``s; an item it cannot make into a
  document is yielded as ``Rejected`` (reason, origin, payload) instead of raising, so
  one bad row never stops a replay or a feed.
* ``IncomingDocument`` is the wire shape accepted from users (HTTP bodies, replay rows
  after column mapping): pydantic-validated with field-level errors, every string cleaned
  of NUL and control characters and lone surrogates (PostgreSQL ``text`` cannot hold NUL,
  UTF-8 cannot hold surrogates), event time parsed from ISO 8601, RFC 2822 or epoch
  seconds/milliseconds and converted to UTC. Its optional ``time_precision`` defaults to
  ``day`` for a date-only ``published_at`` (``2024-05-01``), else ``second``.
* ``read_event_time`` parses a time keeping the offset it was written in (a naive time
  takes the zone it is given), and ``start_of_period`` truncates it to the start of its
  minute, hour or day in that zone: what file replay needs for day-stamped sources.
* ``DocumentProducer`` sends each document to ``finsent.documents`` keyed by its id (so a
  document always lands on the same partition) after tagging its watchlist entities, and
  each rejected item to ``finsent.dlq`` with its reason. ``flush()`` raises
  ``BrokerError`` when any send since the previous flush failed: callers that keep a
  cursor (RSS) commit it only after a successful flush.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.dlq import DeadLetter, send_dead_letter
from pipeline.documents import Document, describe_validation_error, make_document_id
from pipeline.entities import Watchlist, load_watchlist
from pipeline.errors import BrokerError, InputError
from pipeline.kafka_io import make_producer
from pipeline.metrics import DEAD_LETTERS, DOCUMENTS_INGESTED
from pipeline.records import TimePrecision
from pipeline.settings import Settings

log = logging.getLogger(__name__)

_CONTROL_ANY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
FUTURE_TOLERANCE = timedelta(days=2)
MIN_YEAR = 1900


# --- cleaning and parsing ------------------------------------------------------------------


def clean_string(value: str, *, collapse: bool = True) -> str:
    """Replace lone surrogates, drop NUL/control characters; collapse whitespace unless told not to."""
    value = value.encode("utf-8", "replace").decode("utf-8")
    if collapse:
        return _SPACE.sub(" ", _CONTROL_ANY.sub(" ", value)).strip()
    return value.replace("\x00", "")


def parse_event_time(value: Any, *, tz: tzinfo = UTC) -> datetime:
    """A document's published time as an aware UTC datetime.

    Accepts a ``datetime`` (naive means ``tz``, UTC unless told), epoch seconds /
    milliseconds / microseconds / nanoseconds (number or numeric string; the unit is
    inferred from the magnitude), ISO 8601 (``2024-05-01T12:00:00Z``,
    ``2024-05-01 12:00:00+02:00``, ``2024-05-01``) and RFC 2822
    (``Wed, 01 May 2024 12:00:00 GMT``, as RSS uses). Raises ValueError with a message for
    the user otherwise.
    """
    try:
        parsed = read_event_time(value, tz=tz).astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {str(value)[:40]!r} is out of range") from None
    if parsed.year < MIN_YEAR:
        raise ValueError(f"time {parsed.isoformat()} is before {MIN_YEAR}")
    return parsed


def read_event_time(value: Any, *, tz: tzinfo = UTC) -> datetime:
    """A time as written: aware, in the offset it was written with; a naive time (or a
    date) in ``tz``; epoch numbers in UTC. Its wall-clock time is the one in the source,
    which is what precision inference looks at. Same inputs and errors as
    :func:`parse_event_time`, which converts the result to UTC.

    >>> from zoneinfo import ZoneInfo
    >>> read_event_time("2021-03-04 09:30", tz=ZoneInfo("America/New_York")).isoformat()
    '2021-03-04T09:30:00-05:00'
    >>> read_event_time("2021-03-04T09:30:00+01:00", tz=ZoneInfo("America/New_York")).isoformat()
    '2021-03-04T09:30:00+01:00'
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(
            f"expected a time, got {type(value).__name__ if value is not None else 'null'}"
        )
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("time is empty")
        if _NUMBER.match(text):
            return _from_epoch(float(text))
        return _from_text(text, tz)
    raise ValueError(
        f"expected a time (ISO 8601 string or epoch number), got {type(value).__name__}"
    )


def is_date_only(value: Any) -> bool:
    """Whether ``value`` is a calendar date without a time of day (``2021-03-04``): such a
    value has day precision. Numbers are epoch times, never dates.

    >>> is_date_only("2021-03-04"), is_date_only(" 2021-03-04 "), is_date_only("2021-03-04T00:00:00")
    (True, True, False)
    >>> is_date_only("20210304"), is_date_only(20210304)
    (False, False)
    """
    if not isinstance(value, str):
        return False
    text = value.strip()
    if not text or _NUMBER.match(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def start_of_period(at: datetime, precision: TimePrecision) -> datetime:
    """The start of ``at``'s minute, hour or day in ``at``'s own zone (``second`` keeps it
    as it is). With a ``zoneinfo`` zone the offset is the one in force at that start, so a
    day across a daylight-saving change still starts at local midnight.

    >>> from zoneinfo import ZoneInfo
    >>> at = datetime(2021, 3, 14, 15, 45, 30, tzinfo=ZoneInfo("America/New_York"))
    >>> start_of_period(at, "day").isoformat(), start_of_period(at, "hour").isoformat()
    ('2021-03-14T00:00:00-05:00', '2021-03-14T15:00:00-04:00')
    """
    if precision == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    if precision == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    if precision == "minute":
        return at.replace(second=0, microsecond=0)
    return at


def _from_epoch(number: float) -> datetime:
    if not math.isfinite(number):
        raise ValueError("epoch time is not a finite number")
    magnitude = abs(number)
    if magnitude >= 1e17:
        number /= 1e9
    elif magnitude >= 1e14:
        number /= 1e6
    elif magnitude >= 1e11:
        number /= 1e3
    try:
        return datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"epoch time {number!r} is out of range") from None


def _from_text(text: str, tz: tzinfo = UTC) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            shown = text if len(text) <= 40 else text[:40] + "…"
            raise ValueError(
                f"unrecognised time {shown!r}: use ISO 8601 (2024-05-01T12:00:00Z), RFC 2822 or epoch seconds"
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


# --- the accepted input shape --------------------------------------------------------------


class IncomingDocument(BaseModel):
    """A document as users send it (HTTP body item, or a replay row after column mapping).

    ``id`` (or ``guid``) is the item's own identifier in its source; the stored document id
    is derived from source + that identifier (else the URL, else the content), so sending
    the same item twice yields the same document id. ``published_at`` defaults to the time
    of ingestion only where the caller allows it (HTTP); replay requires it.

    ``time_precision`` (second | minute | hour | day) says how much of ``published_at`` the
    source knows; it defaults to ``day`` when ``published_at`` is a date (``2024-05-01``,
    taken as midnight UTC) and to ``second`` otherwise. ``published_at`` is kept as given:
    a caller stating a coarser precision sends the start of the period (file replay
    truncates for its rows, in the file's time zone).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    title: str | None = None
    published_at: datetime | None = None
    id: str | None = Field(None, max_length=2000)
    guid: str | None = Field(None, max_length=2000)
    url: str | None = Field(None, max_length=4000)
    source: str | None = Field(None, min_length=1, max_length=200)
    kind: Literal["news", "social"] | None = None
    author: str | None = Field(None, max_length=500)
    language: str | None = Field(None, max_length=20)
    entities: tuple[str, ...] = Field((), max_length=100)
    time_precision: TimePrecision | None = None

    @model_validator(mode="before")
    @classmethod
    def _date_only_is_day(cls, data: Any) -> Any:
        if (
            isinstance(data, Mapping)
            and data.get("time_precision") is None
            and is_date_only(data.get("published_at"))
        ):
            return {**data, "time_precision": "day"}
        return data

    @field_validator("published_at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse_event_time(value)

    @field_validator("id", "guid", mode="before")
    @classmethod
    def _identifier(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("text", mode="after")
    @classmethod
    def _text(cls, value: str) -> str:
        return clean_string(value, collapse=False)

    @field_validator("title", "id", "guid", "url", "source", "author", "language", mode="after")
    @classmethod
    def _strings(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return clean_string(value) or None

    @field_validator("entities", mode="after")
    @classmethod
    def _entities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = []
        for item in value:
            item = clean_string(item).upper()
            if not item or len(item) > 40:
                raise ValueError(f"entity {item[:40]!r} must be 1 to 40 characters")
            cleaned.append(item)
        return tuple(sorted(set(cleaned)))

    def to_document(
        self,
        *,
        source: str,
        kind: Literal["news", "social"] = "news",
        default_time: datetime | None = None,
        now: datetime | None = None,
    ) -> Document:
        """The normalised ``Document``; InputError with field-level reasons when it cannot be."""
        now = now or datetime.now(UTC)
        published = self.published_at or default_time
        if published is None:
            raise InputError("published_at: missing (give the item's own publication time)")
        if published > now + FUTURE_TOLERANCE:
            raise InputError(
                f"published_at: {published.isoformat()} is more than 2 days in the future"
            )
        src = clean_string(self.source or source)[:200]
        if not src:
            raise InputError("source: empty (name where the document comes from)")
        try:
            doc_id = make_document_id(
                src, guid=self.id or self.guid, url=self.url, text=self.text, published_at=published
            )
            return Document(
                id=doc_id,
                source=src,
                kind=self.kind or kind,
                published_at=published,
                title=self.title,
                text=self.text,
                url=self.url,
                author=self.author,
                language=self.language,
                entities=self.entities,
                time_precision=self.time_precision or "second",
            )
        except ValidationError as exc:
            raise InputError(describe_validation_error(exc)) from None


def incoming_from_mapping(data: Any) -> IncomingDocument:
    """Validate one item; InputError listing every bad field ('field: message; ...')."""
    if not isinstance(data, Mapping):
        raise InputError(f"a document must be a JSON object, got {_json_type(data)}")
    try:
        return IncomingDocument.model_validate(dict(data))
    except ValidationError as exc:
        raise InputError(describe_validation_error(exc)) from None


def field_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Pydantic errors as [{'field': 'documents.0.text', 'message': ...}] for 400 bodies."""
    out = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        out.append(
            {
                "field": f"{prefix}{path}" if path else (prefix.rstrip(".") or "(body)"),
                "message": err["msg"],
            }
        )
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}.get(
        type(value), type(value).__name__
    )


# --- sources ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """An item a source could not make into a document: it goes to the DLQ, not away."""

    reason: str
    origin: str | None = None
    payload: bytes | str | None = None


class Source(ABC):
    """One class that yields ``Document``s (and ``Rejected`` for items that cannot be).

    ``name`` labels metrics and dead letters (``ingest:<name>``).
    """

    name: str = "source"

    @abstractmethod
    def __iter__(self) -> Iterator[Document | Rejected]:
        """Yield every item of the source once, in source order."""


class IterableSource(Source):
    """Wrap already-built documents (tests, the demo, other code) as a source."""

    def __init__(self, documents: Iterable[Document | Rejected], name: str = "api") -> None:
        self._documents = documents
        self.name = name

    def __iter__(self) -> Iterator[Document | Rejected]:
        yield from self._documents


# --- the producer ----------------------------------------------------------------------------


@dataclass
class ProduceCounts:
    sent: int = 0
    dead_lettered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class DocumentProducer:
    """Sends documents to the documents Kafka topic (key = document id) and rejected items
    to the dead-letter topic. Thread-safe: the HTTP server shares one instance.

    Sends are asynchronous; ``flush()`` waits for them and raises ``BrokerError`` when any
    failed since the last flush, so a caller knows whether what it sent is durable.
    """

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        *,
        stage: str = "ingest:api",
        watchlist: Watchlist | None = None,
        kafka_producer: Any = None,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.watchlist = watchlist
        self._owns_producer = kafka_producer is None
        if kafka_producer is None:
            try:
                kafka_producer = make_producer(
                    settings,
                    bootstrap,
                    max_block_ms=10_000,
                    bootstrap_timeout_ms=settings.kafka.request_timeout_ms,
                )
            except Exception as exc:
                raise BrokerError(
                    f"cannot connect to Kafka at {bootstrap}: {exc}; is the broker up and "
                    "FINSENT_KAFKA_BOOTSTRAP right?"
                ) from exc
        self._producer = kafka_producer
        self._lock = threading.Lock()
        self._counts = ProduceCounts()
        self._failures_since_flush: list[str] = []
        self._source_label = stage.split(":", 1)[-1]

    @classmethod
    def from_settings(
        cls, settings: Settings, bootstrap: str, *, stage: str, watchlist: Watchlist | None = None
    ) -> DocumentProducer:
        """A producer with the watchlist of ``FINSENT_WATCHLIST`` unless one is given."""
        return cls(
            settings,
            bootstrap,
            stage=stage,
            watchlist=watchlist or load_watchlist(settings.watchlist),
        )

    @property
    def counts(self) -> ProduceCounts:
        with self._lock:
            return ProduceCounts(
                self._counts.sent,
                self._counts.dead_lettered,
                self._counts.failed,
                list(self._counts.errors),
            )

    def tag(self, doc: Document) -> Document:
        """The document with its watchlist tickers added to ``entities``."""
        if self.watchlist is None or len(self.watchlist) == 0:
            return doc
        found = self.watchlist.match(doc.title, doc.text)
        if not found or set(found) <= set(doc.entities):
            return doc
        return doc.model_copy(update={"entities": tuple(sorted(set(doc.entities) | set(found)))})

    def send(self, doc: Document) -> Document:
        """Tag and send one document; returns what was sent."""
        doc = self.tag(doc)
        try:
            future = self._producer.send(
                self.settings.kafka_topic_documents,
                key=doc.id.encode("utf-8"),
                value=doc.to_json_bytes(),
            )
        except Exception as exc:
            self._record_failure(f"send {doc.id}: {exc}")
            raise BrokerError(
                f"cannot send to Kafka topic {self.settings.kafka_topic_documents}: {exc}; "
                "is the broker (FINSENT_KAFKA_BOOTSTRAP) up?"
            ) from exc
        future.add_errback(lambda exc, doc_id=doc.id: self._record_failure(f"send {doc_id}: {exc}"))
        with self._lock:
            self._counts.sent += 1
        DOCUMENTS_INGESTED.labels(source=self._source_label).inc()
        return doc

    def dead_letter(
        self, reason: str, *, payload: bytes | str | None = None, origin: str | None = None
    ) -> None:
        """Send an item that could not be made into a document to the DLQ with ``reason``."""
        letter = DeadLetter.build(reason, self.stage, payload, origin=origin)
        try:
            future = send_dead_letter(self._producer, self.settings.kafka_topic_dlq, letter)
        except Exception as exc:
            self._record_failure(f"dead letter: {exc}")
            raise BrokerError(
                f"cannot send to Kafka topic {self.settings.kafka_topic_dlq}: {exc}"
            ) from exc
        future.add_errback(lambda exc: self._record_failure(f"dead letter: {exc}"))
        with self._lock:
            self._counts.dead_lettered += 1
        DEAD_LETTERS.labels(stage=self.stage).inc()
        log.info("dead-lettered (%s) %s: %s", self.stage, origin or "", reason)

    def handle(self, item: Document | Rejected) -> None:
        """Send a document, or dead-letter a rejected item."""
        if isinstance(item, Rejected):
            self.dead_letter(item.reason, payload=item.payload, origin=item.origin)
        else:
            self.send(item)

    def _record_failure(self, message: str) -> None:
        with self._lock:
            self._counts.failed += 1
            self._failures_since_flush.append(message)
            if len(self._counts.errors) < 20:
                self._counts.errors.append(message)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every send so far is acknowledged; BrokerError if any failed."""
        try:
            self._producer.flush(timeout=timeout_s)
        except Exception as exc:
            raise BrokerError(
                f"Kafka did not acknowledge sends within {timeout_s:.0f}s: {exc}; "
                "is the broker (FINSENT_KAFKA_BOOTSTRAP) up?"
            ) from exc
        with self._lock:
            failures, self._failures_since_flush = self._failures_since_flush, []
        if failures:
            raise BrokerError(f"{len(failures)} send(s) to Kafka failed, first: {failures[0]}")

    def close(self, timeout_s: float = 10.0) -> None:
        if self._owns_producer:
            try:
                self._producer.close(timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001 - closing must not mask the real outcome
                log.warning("closing the Kafka producer: %s", exc)

    def __enter__(self) -> DocumentProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_source(
    source: Source, producer: DocumentProducer, *, stop: threading.Event | None = None
) -> ProduceCounts:
    """Send everything ``source`` yields (documents and dead letters), then flush."""
    for item in source:
        if stop is not None and stop.is_set():
            break
        producer.handle(item)
    producer.flush()
    return producer.counts


def produce_documents(
    settings: Settings,
    bootstrap: str,
    docs: Iterable[Document],
    *,
    watchlist: Watchlist | None = None,
    stage: str = "ingest:api",
) -> int:
    """Send ``docs`` to the documents Kafka topic (tagging watchlist entities: the given
    watchlist, else ``FINSENT_WATCHLIST``), flush, and return how many were sent.
    Raises BrokerError when any send failed."""
    with DocumentProducer.from_settings(
        settings, bootstrap, stage=stage, watchlist=watchlist
    ) as producer:
        counts = run_source(IterableSource(docs), producer)
    return counts.sent
