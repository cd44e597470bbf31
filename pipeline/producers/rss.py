"""RSS 2.0 / Atom feeds to Kafka, polled on an interval, restart-safe.

Each feed has a cursor in the ``feed_cursors`` table: the ETag and Last-Modified of the
last successful fetch (sent back as ``If-None-Match`` / ``If-Modified-Since``, so an
unchanged feed costs a 304 and no parsing) and the keys of the entries already sent
(``seen_ids``). A poll fetches the feed (httpx, with timeouts and a size cap), parses the
bytes with feedparser, sends the entries not seen before (oldest first), **flushes the
producer, and only then commits the cursor**. Therefore:

* a restart does not re-send what was sent and committed (the entries are in ``seen_ids``);
* a crash between send and commit re-sends those entries on the next start; their document
  ids are stable (source + guid, else link), so downstream the re-send is a harmless upsert;
* a new entry is never skipped: it is committed as seen only after Kafka acknowledged it.

``seen_ids`` holds entry keys (the document id when the entry has a guid or link, which
is nearly always); the ones still in the feed are always kept, older ones up to
``FINSENT_FEEDS__MAX_SEEN_IDS``. An entry that cannot be made into a document (no title or
text, a publication date far in the future) goes to the DLQ once and is marked seen.

A feed that fails (timeout, HTTP error, not a feed, Kafka refusing the records, database
unavailable) is recorded in its cursor's ``last_error`` and retried with exponential backoff
up to ``FINSENT_FEEDS__MAX_BACKOFF_S``; the other feeds keep their schedule.

An entry dated with a calendar date only (``<updated>2024-05-01</updated>``) is a ``day``
precision document at midnight UTC (feeds give no zone for a bare date); every other entry
is ``second``.
"""

from __future__ import annotations

import calendar
import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import feedparser
import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.documents import Document, make_document_id
from pipeline.errors import FinsentError, InputError
from pipeline.metrics import FEED_POLLS
from pipeline.producers.base import (
    DocumentProducer,
    IncomingDocument,
    Rejected,
    Source,
    clean_string,
    is_date_only,
)
from pipeline.roles import Stage
from pipeline.settings import Settings

log = logging.getLogger(__name__)

MAX_FEED_BYTES = 20 * 1024 * 1024
USER_AGENT = "finsent/0.1 (RSS/Atom ingest)"


# --- cursors -----------------------------------------------------------------------------------


@dataclass
class FeedCursor:
    """Where one feed's producer stopped."""

    feed_url: str
    etag: str | None = None
    last_modified: str | None = None
    seen_ids: list[str] = field(default_factory=list)
    last_fetched_at: datetime | None = None
    last_error: str | None = None


class FeedCursorStore:
    """The ``feed_cursors`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def load(self, feed_url: str) -> FeedCursor:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "select etag, last_modified, seen_ids, last_fetched_at, last_error "
                    "from feed_cursors where feed_url = :url"
                ),
                {"url": feed_url},
            ).first()
        if row is None:
            return FeedCursor(feed_url)
        return FeedCursor(
            feed_url,
            row.etag,
            row.last_modified,
            list(row.seen_ids or []),
            row.last_fetched_at,
            row.last_error,
        )

    def save(self, cursor: FeedCursor) -> None:
        """Commit the cursor after a successful poll (clears ``last_error``)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "insert into feed_cursors (feed_url, etag, last_modified, seen_ids, last_fetched_at, last_error, "
                    "updated_at) values (:url, :etag, :lm, :seen, :fetched, null, now()) "
                    "on conflict (feed_url) do update set etag = excluded.etag, last_modified = excluded.last_modified, "
                    "seen_ids = excluded.seen_ids, last_fetched_at = excluded.last_fetched_at, last_error = null, "
                    "updated_at = now()"
                ),
                {
                    "url": cursor.feed_url,
                    "etag": cursor.etag,
                    "lm": cursor.last_modified,
                    "seen": cursor.seen_ids,
                    "fetched": cursor.last_fetched_at,
                },
            )

    def record_error(self, feed_url: str, message: str, fetched_at: datetime) -> None:
        """Note a failed poll without touching what was committed before."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "insert into feed_cursors (feed_url, last_fetched_at, last_error, updated_at) "
                    "values (:url, :fetched, :err, now()) on conflict (feed_url) do update set "
                    "last_fetched_at = excluded.last_fetched_at, last_error = excluded.last_error, updated_at = now()"
                ),
                {"url": feed_url, "fetched": fetched_at, "err": message[:2000]},
            )


# --- entries -> documents ----------------------------------------------------------------------


def feed_source_name(feed_url: str) -> str:
    """``https://example.com/markets.xml`` -> ``rss:example.com/markets.xml`` (part of every id)."""
    parts = urlsplit(feed_url)
    return f"rss:{parts.netloc}{parts.path}".rstrip("/")[:200] or "rss"


def _entry_time(entry: Any) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if value:
            try:
                return datetime.fromtimestamp(calendar.timegm(value), UTC)
            except (OverflowError, ValueError, OSError, TypeError):
                continue
    return None


def _entry_precision(entry: Any) -> str | None:
    """``day`` when the date the entry's time comes from is written as a date only."""
    for key in ("published", "updated", "created"):
        if entry.get(f"{key}_parsed"):
            return "day" if is_date_only(entry.get(key)) else None
    return None


def _entry_text(entry: Any) -> str | None:
    for item in entry.get("content") or []:
        value = item.get("value") if isinstance(item, dict) else None
        if isinstance(value, str) and value.strip():
            return value
    for key in ("summary", "description"):
        value = entry.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def entry_key(source: str, entry: Any) -> str:
    """The key an entry is remembered by: its document id when it has a guid or link."""
    guid = entry.get("id") if isinstance(entry.get("id"), str) else None
    link = entry.get("link") if isinstance(entry.get("link"), str) else None
    text = " ".join(str(entry.get(k) or "") for k in ("title", "summary")) or repr(
        sorted(entry.keys())
    )
    return make_document_id(
        source,
        guid=clean_string(guid or "") or None,
        url=clean_string(link or "") or None,
        text=text,
    )


class FeedSource(Source):
    """The entries of one fetched feed that are not in ``seen``, oldest first."""

    name = "rss"

    def __init__(
        self,
        feed_url: str,
        content: bytes,
        *,
        content_type: str | None = None,
        seen: set[str] | None = None,
        fetched_at: datetime | None = None,
    ) -> None:
        self.feed_url = feed_url
        self.source_name = feed_source_name(feed_url)
        self.fetched_at = fetched_at or datetime.now(UTC)
        headers = {"content-location": feed_url}
        if content_type:
            headers["content-type"] = content_type
        self.parsed = feedparser.parse(content, response_headers=headers)
        self.seen = seen or set()
        self.keys_in_feed: list[str] = []
        self.language = (
            self.parsed.feed.get("language")
            if isinstance(self.parsed.feed.get("language"), str)
            else None
        )

    def check(self) -> None:
        """InputError when the bytes are not a feed at all."""
        if not self.parsed.entries and self.parsed.get("bozo"):
            exc = self.parsed.get("bozo_exception")
            raise InputError(f"{self.feed_url} is not a readable RSS/Atom feed: {exc}")
        if not self.parsed.entries and not self.parsed.get("version") and not self.parsed.feed:
            raise InputError(
                f"{self.feed_url} is not an RSS/Atom feed (no channel or feed element)"
            )

    def __iter__(self) -> Iterator[Document | Rejected]:
        entries = list(self.parsed.entries)
        self.keys_in_feed = [entry_key(self.source_name, e) for e in entries]
        # Feeds list newest first; send oldest first so event time mostly increases.
        for index in reversed(range(len(entries))):
            key = self.keys_in_feed[index]
            if key in self.seen:
                continue
            self.seen.add(key)
            yield self._to_item(entries[index], index)

    def _to_item(self, entry: Any, index: int) -> Document | Rejected:
        origin = f"{self.feed_url} entry {index}"
        title = entry.get("title") if isinstance(entry.get("title"), str) else None
        text = _entry_text(entry) or title
        if not text:
            return Rejected(
                f"{origin}: entry has no title or text",
                origin=origin,
                payload=_entry_payload(entry),
            )
        guid = entry.get("id") if isinstance(entry.get("id"), str) else None
        link = entry.get("link") if isinstance(entry.get("link"), str) else None
        author = entry.get("author") if isinstance(entry.get("author"), str) else None
        values = {
            "text": text,
            "title": title,
            "guid": guid,
            "url": link,
            "author": author,
            "language": self.language,
            "published_at": _entry_time(entry),
            "time_precision": _entry_precision(entry),
        }
        try:
            incoming = IncomingDocument.model_validate({k: v for k, v in values.items() if v})
            return incoming.to_document(source=self.source_name, default_time=self.fetched_at)
        except (InputError, ValueError) as exc:
            return Rejected(f"{origin}: {exc}", origin=origin, payload=_entry_payload(entry))


def _entry_payload(entry: Any) -> str:
    keep = {k: entry.get(k) for k in ("id", "link", "title", "summary", "published", "updated")}
    return repr({k: v for k, v in keep.items() if v is not None})[:65536]


# --- polling -------------------------------------------------------------------------------------


@dataclass
class FeedPollResult:
    feed_url: str
    outcome: str  # "new", "not_modified", "error"
    sent: int = 0
    dead_lettered: int = 0
    error: str | None = None


@dataclass
class _FeedState:
    due: float = 0.0
    failures: int = 0


class FeedFetchError(FinsentError):
    """A feed could not be fetched (network, HTTP status, size)."""


class RssPoller:
    """Polls feeds on an interval and produces their new entries. A ``Role`` ("rss")."""

    name = "rss"

    def __init__(
        self,
        settings: Settings,
        producer: DocumentProducer,
        engine: Engine,
        urls: Sequence[str],
        *,
        interval_s: float | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if not urls:
            raise InputError(
                "no feed URLs: give at least one (finsent ingest rss URL..., or FINSENT_FEEDS__URLS)"
            )
        for url in urls:
            if urlsplit(url).scheme not in ("http", "https"):
                raise InputError(f"feed URL {url!r} must start with http:// or https://")
        self.settings = settings
        self.policy = settings.feeds
        self.interval_s = interval_s if interval_s is not None else self.policy.interval_s
        self.producer = producer
        self.store = FeedCursorStore(engine)
        self.urls = list(dict.fromkeys(urls))
        self._state = {url: _FeedState() for url in self.urls}
        self._own_client = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(self.policy.timeout_s),
            follow_redirects=True,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "application/rss+xml, application/atom+xml, "
                "application/xml;q=0.9, text/xml;q=0.8, */*;q=0.5",
            },
        )
        self._ready = threading.Event()

    # -- one feed ---------------------------------------------------------------------------------

    def _fetch(self, cursor: FeedCursor) -> tuple[int, bytes, httpx.Headers]:
        headers = {}
        if cursor.etag:
            headers["If-None-Match"] = cursor.etag
        if cursor.last_modified:
            headers["If-Modified-Since"] = cursor.last_modified
        try:
            with self._client.stream("GET", cursor.feed_url, headers=headers) as response:
                if response.status_code == 304:
                    return 304, b"", response.headers
                if response.status_code != 200:
                    raise FeedFetchError(f"HTTP {response.status_code} from {cursor.feed_url}")
                chunks, size = [], 0
                # httpx's timeout is per read; a feed trickling bytes must not hold the poller forever.
                deadline = time.monotonic() + 3 * self.policy.timeout_s
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_FEED_BYTES:
                        raise FeedFetchError(
                            f"{cursor.feed_url} is larger than {MAX_FEED_BYTES} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise FeedFetchError(
                            f"{cursor.feed_url} took longer than {3 * self.policy.timeout_s:.0f}s "
                            "to download"
                        )
                    chunks.append(chunk)
                return 200, b"".join(chunks), response.headers
        except httpx.HTTPError as exc:
            raise FeedFetchError(
                f"cannot fetch {cursor.feed_url}: {type(exc).__name__}: {exc}"
            ) from exc

    def poll_feed(self, url: str) -> FeedPollResult:
        """Fetch one feed, send its new entries, flush, commit the cursor. Never raises for
        a failing feed: the result says what went wrong (and the cursor's last_error)."""
        fetched_at = datetime.now(UTC)
        before = self.producer.counts
        try:
            cursor = self.store.load(url)
            status, content, headers = self._fetch(cursor)
            if status == 304:
                cursor.last_fetched_at = fetched_at
                self.store.save(cursor)
                FEED_POLLS.labels(outcome="not_modified").inc()
                return FeedPollResult(url, "not_modified")
            source = FeedSource(
                url,
                content,
                content_type=headers.get("content-type"),
                seen=set(cursor.seen_ids),
                fetched_at=fetched_at,
            )
            source.check()
            for item in source:
                self.producer.handle(item)
            self.producer.flush()  # the cursor moves only once Kafka has the records
            cursor.etag = headers.get("etag")
            cursor.last_modified = headers.get("last-modified")
            cursor.seen_ids = self._remember(source.keys_in_feed, cursor.seen_ids)
            cursor.last_fetched_at = fetched_at
            self.store.save(cursor)
        except Exception as exc:  # noqa: BLE001 - one feed's failure must not stop the others
            message = str(exc) if isinstance(exc, FinsentError) else f"{type(exc).__name__}: {exc}"
            log.warning("feed %s failed: %s", url, message)
            FEED_POLLS.labels(outcome="error").inc()
            try:
                self.store.record_error(url, message, fetched_at)
            except Exception as db_exc:  # noqa: BLE001 - the database may be what failed
                log.warning("feed %s: cannot record the error: %s", url, db_exc)
            return FeedPollResult(url, "error", error=message)
        after = self.producer.counts
        FEED_POLLS.labels(outcome="new").inc()
        result = FeedPollResult(
            url,
            "new",
            sent=after.sent - before.sent,
            dead_lettered=after.dead_lettered - before.dead_lettered,
        )
        log.info("feed %s: %d new, %d dead-lettered", url, result.sent, result.dead_lettered)
        return result

    def _remember(self, keys_in_feed: list[str], previous: list[str]) -> list[str]:
        current = list(dict.fromkeys(keys_in_feed))
        in_feed = set(current)
        older = [k for k in previous if k not in in_feed]
        return (current + older)[: max(self.policy.max_seen_ids, len(current))]

    # -- scheduling -------------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        delay = min(
            self.interval_s * (2 ** min(failures - 1, 20)),
            max(self.policy.max_backoff_s, self.interval_s),
        )
        return delay * random.uniform(0.9, 1.1)

    def poll_due(self, now: float | None = None) -> list[FeedPollResult]:
        """Poll every feed that is due; schedule each one's next poll (backoff on failure)."""
        now = time.monotonic() if now is None else now
        results = []
        for url in self.urls:
            state = self._state[url]
            if state.due > now:
                continue
            result = self.poll_feed(url)
            if result.outcome == "error":
                state.failures += 1
                state.due = time.monotonic() + self._backoff(state.failures)
            else:
                state.failures = 0
                state.due = time.monotonic() + self.interval_s
            results.append(result)
        return results

    def poll_all(self) -> list[FeedPollResult]:
        """Poll every feed once now (``finsent ingest rss --once``, tests)."""
        return [self.poll_feed(url) for url in self.urls]

    def run(self, stop: threading.Event) -> None:
        """Role interface: poll until ``stop`` is set."""
        self._ready.set()
        try:
            while not stop.is_set():
                self.poll_due()
                next_due = min(s.due for s in self._state.values())
                stop.wait(max(0.05, next_due - time.monotonic()))
        finally:
            self._ready.clear()

    def ready(self) -> bool:
        return self._ready.is_set()

    def failures(self) -> dict[str, int]:
        """Consecutive failures per feed (0 = healthy)."""
        return {url: s.failures for url, s in self._state.items()}

    def close(self) -> None:
        if self._own_client:
            self._client.close()


class RssRole:
    """The feed poller as a role of ``finsent run``: owns its producer and HTTP client."""

    name = "rss"
    stage = Stage.INGEST

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        engine: Engine,
        urls: Sequence[str] | None = None,
        *,
        interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.engine = engine
        self.urls = list(urls if urls is not None else settings.feeds.urls)
        self.interval_s = interval_s
        self.poller: RssPoller | None = None
        if not self.urls:
            raise InputError("no feed URLs: set FINSENT_FEEDS__URLS (a JSON list) or give URLs")

    def run(self, stop: threading.Event) -> None:
        with DocumentProducer.from_settings(
            self.settings, self.bootstrap, stage="ingest:rss"
        ) as producer:
            self.poller = RssPoller(
                self.settings, producer, self.engine, self.urls, interval_s=self.interval_s
            )
            try:
                self.poller.run(stop)
            finally:
                self.poller.close()

    def ready(self) -> bool:
        return self.poller is not None and self.poller.ready()
