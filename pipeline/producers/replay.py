"""File replay: CSV, TSV and JSON Lines files (optionally gzip-compressed) to Kafka.

This is how users backfill history and how the demo and the stream tests feed data.

* **Columns** are mapped by name (``ColumnMapping``; ``--text-column`` etc. on the command
  line). Only ``text`` is required in every row; a CSV file without the text column (or
  without an explicitly named time column) is refused as a whole, with the columns it has.
* **Event time** is each row's own published time (ISO 8601, RFC 2822 or epoch seconds /
  milliseconds), kept as the document's ``published_at`` in UTC. Naive times (and dates)
  are read in ``timezone`` (an IANA name, default UTC); times with an offset keep it.
  A row without one is dead-lettered, unless ``missing_time="now"``.
* **Time precision** (``time_precision``, default ``auto``): many sources give a date, not
  a time. In ``auto`` a date-only value (``2021-03-04``) is ``day``; so is every row of a
  file whose times of day are all exactly midnight; a file whose times (at least
  ``MIN_ROWS_FOR_MINUTE`` of them) all have zero seconds is ``minute``; anything else is
  ``second``. Deciding "every row" reads the file once before sending (it stops at the
  first row that settles it). ``second`` / ``minute`` / ``hour`` / ``day`` force a
  precision on every row instead. A coarser-than-second document's ``published_at`` is
  the start of its minute, hour or day in the row's zone (``timezone`` for naive times,
  else the row's own offset), converted to UTC: ``2021-03-04`` in ``America/New_York`` is
  ``2021-03-04T05:00:00Z``.
* **Ids** are stable: source + the id column, else the URL, else the content and time, so
  replaying the same file again yields the same document ids. The source defaults to the
  file's name without extensions (``news.csv.gz`` -> ``news``); pass ``--source`` to keep
  ids stable across renamed files.
* **Pacing**: ``speed=None`` sends as fast as the broker takes it; ``speed=N`` replays at N
  times real time, spacing documents by their event-time gaps (a document older than the
  one before it is sent at once).
* **Bad rows** (not JSON, wrong types, empty text, unparseable time, over-long lines) go to
  the dead-letter topic with the reason ``FILE line N: reason``; the replay never stops for
  one. The ``ReplayReport`` counts rows, sent and dead-lettered.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.documents import Document
from pipeline.entities import Watchlist
from pipeline.errors import InputError
from pipeline.producers.base import (
    DocumentProducer,
    IncomingDocument,
    Rejected,
    Source,
    clean_string,
    is_date_only,
    read_event_time,
    start_of_period,
)
from pipeline.records import TIME_PRECISIONS, TimePrecision
from pipeline.settings import Settings

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 8 * 1024 * 1024
CSV_FIELD_LIMIT = 16 * 1024 * 1024
FORMATS = ("csv", "tsv", "jsonl")
Format = Literal["csv", "tsv", "jsonl"]
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
PrecisionOption = Literal["auto", "second", "minute", "hour", "day"]
PRECISION_OPTIONS: tuple[str, ...] = get_args(PrecisionOption)
#: a file is taken as minute-stamped only when at least this many of its times all have
#: zero seconds (one or two whole-minute times happen by chance)
MIN_ROWS_FOR_MINUTE = 3
_Item = TypeVar("_Item")


def time_zone(name: str) -> tzinfo:
    """The zone an IANA name (``America/New_York``, ``UTC``) stands for; InputError naming
    the value otherwise.

    >>> time_zone("UTC"), str(time_zone("Europe/London"))
    (datetime.timezone.utc, 'Europe/London')
    """
    if name.strip().upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InputError(
            f"unknown time zone {name!r}: use an IANA name such as America/New_York, "
            "Europe/London or UTC"
        ) from None


@dataclass(frozen=True)
class ColumnMapping:
    """Which column (CSV header or JSON key) holds which document field.

    ``source`` names the source for every row (default: a ``source`` column, else the
    file name without extensions); ``kind`` is used where there is no ``kind`` column.
    """

    text_column: str = "text"
    time_column: str = "published_at"
    id_column: str = "id"
    title_column: str = "title"
    url_column: str = "url"
    author_column: str = "author"
    language_column: str = "language"
    kind_column: str = "kind"
    entities_column: str = "entities"
    source_column: str = "source"
    source: str | None = None
    kind: Literal["news", "social"] = "news"
    missing_time: Literal["reject", "now"] = "reject"
    time_precision: PrecisionOption = "auto"
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.time_precision not in PRECISION_OPTIONS:
            raise InputError(
                f"unknown time precision {self.time_precision!r}: use one of "
                f"{', '.join(PRECISION_OPTIONS)}"
            )
        time_zone(self.timezone)

    @classmethod
    def from_options(cls, **options: Any) -> ColumnMapping:
        """Build from keyword options, ignoring None (unset flags); InputError on unknown names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(
                f"unknown replay option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**{k: v for k, v in options.items() if v is not None})

    def field_columns(self) -> dict[str, str]:
        """Document field -> column name."""
        return {
            "text": self.text_column,
            "published_at": self.time_column,
            "id": self.id_column,
            "title": self.title_column,
            "url": self.url_column,
            "author": self.author_column,
            "language": self.language_column,
            "kind": self.kind_column,
            "entities": self.entities_column,
        }


@dataclass
class ReplayReport:
    """What a replay did. ``rows`` counts data rows read (blank lines excluded)."""

    path: str
    rows: int = 0
    sent: int = 0
    dead_lettered: int = 0
    elapsed_s: float = 0.0
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    stopped_early: bool = False
    #: documents sent per time precision
    precisions: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        span = ""
        if self.first_event_at and self.last_event_at:
            span = f", event time {self.first_event_at.isoformat()} .. {self.last_event_at.isoformat()}"
        rate = self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0
        stopped = " (stopped early)" if self.stopped_early else ""
        precision = ""
        if set(self.precisions) - {"second"}:
            counts = ", ".join(
                f"{p} {self.precisions[p]}" for p in TIME_PRECISIONS if p in self.precisions
            )
            precision = f", time precision: {counts}"
        return (
            f"{self.path}: {self.rows} rows, {self.sent} sent, {self.dead_lettered} dead-lettered "
            f"in {self.elapsed_s:.2f}s ({rate:.0f} docs/s){span}{precision}{stopped}"
        )


def detect_format(path: Path) -> Format:
    """csv, tsv or jsonl from the file name (``.gz`` stripped first)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if suffixes and suffixes[-1] in _SUFFIXES:
        return _SUFFIXES[suffixes[-1]]  # type: ignore[return-value]
    raise InputError(
        f"cannot tell the format of {path.name}: name it .csv, .tsv or .jsonl "
        "(optionally .gz) or pass --format csv|tsv|jsonl"
    )


def default_source(path: Path) -> str:
    """``news.csv.gz`` -> ``news``."""
    name = path.name
    for suffix in reversed(path.suffixes):
        if suffix.lower() not in (".gz", *_SUFFIXES):
            break
        name = name[: -len(suffix)]
    return name or "replay"


def _open_binary(path: Path) -> IO[bytes]:
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror}") from None
    if path.suffix.lower() != ".gz":
        return raw
    magic = raw.read(2)
    raw.seek(0)
    if magic != b"\x1f\x8b":
        raw.close()
        raise InputError(f"{path} is named .gz but is not gzip-compressed")
    return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]


class ReplaySource(Source):
    """The rows of one file as documents (or rejected rows with ``FILE line N: reason``)."""

    name = "replay"

    def __init__(
        self,
        path: Path | str,
        mapping: ColumnMapping | None = None,
        *,
        fmt: Format | None = None,
        now: datetime | None = None,
    ) -> None:
        self.path = Path(path)
        self.mapping = mapping or ColumnMapping()
        self.format: Format = fmt or detect_format(self.path)
        if self.format not in FORMATS:
            raise InputError(f"unknown format {self.format!r}: use one of {', '.join(FORMATS)}")
        self.source_name = self.mapping.source or default_source(self.path)
        self.zone = time_zone(self.mapping.timezone)
        self.rows = 0
        self._now = now
        #: the precision of rows with a time of day: forced, or found by the first read
        self.file_precision: TimePrecision | None = (
            None if self.mapping.time_precision == "auto" else self.mapping.time_precision
        )

    def __iter__(self) -> Iterator[Document | Rejected]:
        if self.file_precision is None:
            self.file_precision = self._scan_precision()
            self.rows = 0
        yield from self._read(self._row_to_item)

    def _read(
        self, handle: Callable[[Mapping[str, Any], int, bytes | str], _Item]
    ) -> Generator[_Item | Rejected, None, None]:
        with _open_binary(self.path) as fh:
            try:
                if self.format == "jsonl":
                    yield from self._jsonl(fh, handle)
                else:
                    yield from self._csv(fh, "," if self.format == "csv" else "\t", handle)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                # A truncated .gz ends the file; what was read so far has been sent.
                yield Rejected(
                    f"{self.path.name} after row {self.rows}: file ends unreadably ({exc})",
                    origin=str(self.path),
                )

    # -- time precision ------------------------------------------------------------------------

    def _scan_precision(self) -> TimePrecision:
        """The precision of the file's timed rows (date-only rows are ``day`` anyway):
        ``day`` when every time of day is midnight, ``minute`` when every one (at least
        ``MIN_ROWS_FOR_MINUTE``) has zero seconds, else ``second``. Stops reading at the
        first row that settles it; unreadable rows and times are left to the real pass."""
        scan = _PrecisionScan()
        column = self.mapping.time_column

        def observe(row: Mapping[str, Any], _line_no: int, _payload: bytes | str) -> None:
            value = row.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                return
            if is_date_only(value):
                return
            try:
                scan.observe(read_event_time(value, tz=self.zone))
            except (ValueError, OverflowError):
                return

        rows = self._read(observe)
        try:
            for _ in rows:
                if scan.settled:
                    break
        finally:
            rows.close()  # closes the file at once when the scan stops early
        return scan.result()

    def _event_time(self, value: Any) -> tuple[datetime, TimePrecision]:
        """A row's published time (aware; the start of its period) and its precision.
        ValueError for a value that is not a time (reported against its column later)."""
        at = read_event_time(value, tz=self.zone)
        precision: TimePrecision
        if self.mapping.time_precision != "auto":
            precision = self.mapping.time_precision
        elif is_date_only(value):
            precision = "day"
        else:
            precision = self.file_precision or "second"
        return start_of_period(at, precision), precision

    # -- JSON Lines ----------------------------------------------------------------------------

    def _jsonl(
        self, fh: IO[bytes], handle: Callable[[Mapping[str, Any], int, bytes | str], _Item]
    ) -> Iterator[_Item | Rejected]:
        line_no = 0
        while True:
            line = fh.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            line_no += 1
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                while True:  # skip the rest of the over-long line
                    rest = fh.readline(MAX_LINE_BYTES)
                    if not rest or rest.endswith(b"\n"):
                        break
                self.rows += 1
                yield self._reject(line_no, f"line longer than {MAX_LINE_BYTES} bytes", line[:4096])
                continue
            if not line.strip():
                continue
            self.rows += 1
            line = line.rstrip(b"\r\n")
            text = line.decode("utf-8", errors="replace")
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                yield self._reject(line_no, f"not JSON: {exc.msg} at column {exc.colno}", line)
                continue
            except RecursionError:
                yield self._reject(line_no, "not JSON: nested too deeply", line)
                continue
            if not isinstance(data, dict):
                yield self._reject(
                    line_no, f"expected a JSON object, got {type(data).__name__}", line
                )
                continue
            yield handle(data, line_no, line)

    # -- CSV / TSV -------------------------------------------------------------------------------

    def _csv(
        self,
        fh: IO[bytes],
        delimiter: str,
        handle: Callable[[Mapping[str, Any], int, bytes | str], _Item],
    ) -> Iterator[_Item | Rejected]:
        if csv.field_size_limit() < CSV_FIELD_LIMIT:
            csv.field_size_limit(CSV_FIELD_LIMIT)
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.reader(text, delimiter=delimiter, strict=False)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"{self.path.name} line 1: cannot read the header: {exc}") from None
        header = [clean_string(h) for h in header]
        self._check_header(header)
        last_line = reader.line_num
        while True:
            start = last_line + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                last_line = reader.line_num
                self.rows += 1
                yield self._reject(start, f"unreadable CSV row: {exc}", None)
                continue
            last_line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            self.rows += 1
            payload = _csv_line(row, delimiter)
            if len(row) > len(header):
                yield self._reject(
                    start, f"{len(row)} fields but the header has {len(header)}", payload
                )
                continue
            yield handle(dict(zip(header, row, strict=False)), start, payload)

    def _check_header(self, header: list[str]) -> None:
        m = self.mapping
        missing = [c for c in (m.text_column,) if c not in header]
        if m.time_column != ColumnMapping.time_column and m.time_column not in header:
            missing.append(m.time_column)
        if missing:
            raise InputError(
                f"{self.path.name} has no column {', '.join(repr(c) for c in missing)} "
                f"(its columns: {', '.join(header) or 'none'}); pass --text-column / --time-column"
            )
        if m.time_column not in header and m.missing_time == "reject":
            raise InputError(
                f"{self.path.name} has no time column {m.time_column!r} (its columns: {', '.join(header)}); "
                "pass --time-column, or --missing-time now to stamp rows with the ingestion time"
            )

    # -- rows -> documents ---------------------------------------------------------------------

    def _reject(self, line_no: int, reason: str, payload: bytes | str | None) -> Rejected:
        return Rejected(
            f"{self.path.name} line {line_no}: {reason}",
            origin=f"{self.path} line {line_no}",
            payload=payload,
        )

    def _row_to_item(
        self, row: Mapping[str, Any], line_no: int, payload: bytes | str
    ) -> Document | Rejected:
        m = self.mapping
        columns = m.field_columns()
        values: dict[str, Any] = {}
        for field_name, column in columns.items():
            value = row.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            values[field_name] = value
        if "text" not in values:
            return self._reject(line_no, f"no text in column {m.text_column!r}", payload)
        if isinstance(values.get("entities"), str):
            values["entities"] = [
                e for e in values["entities"].replace(";", ",").replace(" ", ",").split(",") if e
            ]
        if isinstance(values.get("kind"), str):
            values["kind"] = values["kind"].strip().lower()
        if "published_at" in values:
            try:
                values["published_at"], values["time_precision"] = self._event_time(
                    values["published_at"]
                )
            except (ValueError, OverflowError):
                pass  # IncomingDocument reports it against the time column
        source = m.source or _string_or_none(row.get(m.source_column)) or self.source_name
        try:
            incoming = IncomingDocument.model_validate(values)
        except Exception as exc:  # noqa: BLE001 - pydantic ValidationError, reported per column
            return self._reject(line_no, _describe(exc, columns), payload)
        now = self._now or datetime.now(UTC)
        default_time = now if m.missing_time == "now" else None
        if incoming.published_at is None and default_time is None:
            return self._reject(
                line_no,
                f"no published time in column {m.time_column!r} "
                "(pass --time-column, or --missing-time now)",
                payload,
            )
        try:
            return incoming.to_document(
                source=source, kind=m.kind, default_time=default_time, now=now
            )
        except InputError as exc:
            return self._reject(line_no, str(exc), payload)


class _PrecisionScan:
    """What the times of day of a file's rows have in common (as written, in their zone)."""

    def __init__(self) -> None:
        self.timed = 0
        self.midnight = True
        self.whole_minute = True

    def observe(self, at: datetime) -> None:
        self.timed += 1
        if at.second or at.microsecond:
            self.midnight = self.whole_minute = False
        elif at.hour or at.minute:
            self.midnight = False

    @property
    def settled(self) -> bool:
        return not self.midnight and not self.whole_minute

    def result(self) -> TimePrecision:
        if self.timed and self.midnight:
            return "day"
        if self.whole_minute and self.timed >= MIN_ROWS_FOR_MINUTE:
            return "minute"
        return "second"


def _string_or_none(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return clean_string(value)[:200] or None
    return None


def _describe(exc: Exception, columns: Mapping[str, str]) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        loc = [str(p) for p in err["loc"]]
        name = loc[0] if loc else ""
        column = columns.get(name, name)
        where = f"column {column!r}" + (f"[{'.'.join(loc[1:])}]" if len(loc) > 1 else "")
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _csv_line(row: list[str], delimiter: str) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\n").writerow(row)
    return out.getvalue().rstrip("\n")


def replay_into(
    producer: DocumentProducer,
    source: ReplaySource,
    *,
    speed: float | None = None,
    stop: threading.Event | None = None,
) -> ReplayReport:
    """Send every row of ``source`` through ``producer`` (paced when ``speed`` is given), flush,
    and report. Raises BrokerError when Kafka does not take the records."""
    if speed is not None and speed <= 0:
        raise InputError(
            "--speed must be a positive number (e.g. 60 for a minute of event time per second)"
        )
    report = ReplayReport(path=str(source.path))
    start = time.monotonic()
    anchor: tuple[float, datetime] | None = None
    before = producer.counts
    for item in source:
        if stop is not None and stop.is_set():
            report.stopped_early = True
            break
        if isinstance(item, Document):
            event = item.published_at
            if speed is not None:
                if anchor is None:
                    anchor = (time.monotonic(), event)
                else:
                    due = anchor[0] + (event - anchor[1]).total_seconds() / speed
                    wait = due - time.monotonic()
                    if wait > 0:
                        if stop is not None:
                            if stop.wait(wait):
                                report.stopped_early = True
                                break
                        else:
                            time.sleep(wait)
            report.first_event_at = min(report.first_event_at or event, event)
            report.last_event_at = max(report.last_event_at or event, event)
            report.precisions[item.time_precision] = (
                report.precisions.get(item.time_precision, 0) + 1
            )
        producer.handle(item)
    producer.flush()
    after = producer.counts
    report.rows = source.rows
    report.sent = after.sent - before.sent
    report.dead_lettered = after.dead_lettered - before.dead_lettered
    report.elapsed_s = time.monotonic() - start
    log.info("replay %s", report)
    return report


def replay_file(
    settings: Settings,
    bootstrap: str,
    path: Path | str,
    *,
    speed: float | None = None,
    fmt: Format | None = None,
    stop: threading.Event | None = None,
    watchlist: Watchlist | None = None,
    producer: DocumentProducer | None = None,
    **mapping: Any,
) -> ReplayReport:
    """Replay one file to the documents Kafka topic and return the report.

    ``mapping`` takes ``ColumnMapping`` fields (``text_column="body"``, ``source="wire"``,
    ``missing_time="now"``, ``time_precision="day"``, ``timezone="America/New_York"``, ...). The watchlist defaults to ``FINSENT_WATCHLIST``. Raises
    InputError for a file that cannot be replayed at all (missing, unknown format, no text
    column) and BrokerError when Kafka does not take the records; bad rows only reach the DLQ.
    """
    source = ReplaySource(path, ColumnMapping.from_options(**mapping), fmt=fmt)
    if producer is not None:
        return replay_into(producer, source, speed=speed, stop=stop)
    with DocumentProducer.from_settings(
        settings, bootstrap, stage="ingest:replay", watchlist=watchlist
    ) as owned:
        return replay_into(owned, source, speed=speed, stop=stop)
