"""RSS 2.0 and Atom feeds served by a local HTTP server, polled into the real broker, with
cursors in the real PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa

from finsent.cli import main
from pipeline.documents import Document
from pipeline.embedded import EmbeddedBroker, ensure_kafka_topics
from pipeline.entities import Watchlist
from pipeline.kafka_io import make_producer
from pipeline.producers.base import DocumentProducer
from pipeline.producers.rss import FeedCursorStore, RssPoller, RssRole, feed_source_name
from pipeline.settings import FeedPolicy, Settings
from tests.pipeline.test_producers import read_topic

RSS_ITEM = """
    <item>
      <title>{title}</title>
      <link>https://news.example.com/{slug}</link>
      <guid isPermaLink="false">{guid}</guid>
      <pubDate>{date}</pubDate>
      <dc:creator>Markets Desk</dc:creator>
      <category>Markets</category>
      <description><![CDATA[<p>{body} <a href="https://news.example.com/{slug}">Read more</a></p>]]></description>
    </item>"""

RSS = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom">
  <channel>
    <title>Example Markets News</title>
    <link>https://news.example.com/</link>
    <description>Markets headlines</description>
    <language>en-us</language>
    <lastBuildDate>Wed, 01 May 2024 12:00:00 GMT</lastBuildDate>
    <atom:link href="https://news.example.com/rss.xml" rel="self" type="application/rss+xml"/>{items}
  </channel>
</rss>"""

ATOM_ENTRY = """
  <entry>
    <title type="text">{title}</title>
    <link rel="alternate" type="text/html" href="https://blog.example.org/{slug}"/>
    <id>tag:blog.example.org,2024:{guid}</id>
    <published>{date}</published>
    <updated>{date}</updated>
    <author><name>Jane Analyst</name></author>
    <summary type="html">&lt;p&gt;{body}&lt;/p&gt;</summary>
  </entry>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">
  <title>Example Analyst Blog</title>
  <link href="https://blog.example.org/" rel="alternate"/>
  <link href="https://blog.example.org/atom.xml" rel="self"/>
  <id>tag:blog.example.org,2024:feed</id>
  <updated>2024-05-01T12:00:00Z</updated>{entries}
</feed>"""


def rss_feed(items: list[tuple[str, str, str]]) -> bytes:
    """items: (guid, title, body), newest first; pubDates an hour apart ending 12:00 GMT."""
    parts = []
    for i, (guid, title, body) in enumerate(items):
        hour = 12 - i
        parts.append(
            RSS_ITEM.format(
                title=title,
                slug=guid,
                guid=guid,
                body=body,
                date=f"Wed, 01 May 2024 {hour:02d}:00:00 GMT",
            )
        )
    return RSS.format(items="".join(parts)).encode()


def atom_feed(items: list[tuple[str, str, str]]) -> bytes:
    parts = []
    for i, (guid, title, body) in enumerate(items):
        parts.append(
            ATOM_ENTRY.format(
                title=title,
                slug=guid,
                guid=guid,
                body=body,
                date=f"2024-05-01T{12 - i:02d}:30:00+02:00",
            )
        )
    return ATOM.format(entries="".join(parts)).encode()


@dataclass
class Feed:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/rss+xml; charset=utf-8"
    conditional: bool = True  # answer If-None-Match / If-Modified-Since with 304
    delay_s: float = 0.0
    last_modified: str = "Wed, 01 May 2024 12:00:00 GMT"

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha1(self.body).hexdigest()[:16] + '"'


@dataclass
class FeedServer:
    port: int = 0
    feeds: dict[str, Feed] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str], int]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def feed_server() -> Iterator[FeedServer]:
    server = FeedServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            feed = server.feeds.get(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            if feed is None:
                status, body = 404, b"not found"
            else:
                if feed.delay_s:
                    time.sleep(feed.delay_s)
                status, body = feed.status, feed.body
                if (
                    status == 200
                    and feed.conditional
                    and (
                        headers.get("if-none-match") == feed.etag
                        or (
                            headers.get("if-modified-since") == feed.last_modified
                            and "if-none-match" not in headers
                        )
                    )
                ):
                    status, body = 304, b""
            server.requests.append((self.path, headers, status))
            try:
                self.send_response(status)
                if feed is not None and feed.conditional and status in (200, 304):
                    self.send_header("ETag", feed.etag)
                    self.send_header("Last-Modified", feed.last_modified)
                self.send_header("Content-Type", feed.content_type if feed else "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    httpd.shutdown()
    httpd.server_close()


def quick(settings: Settings, **feeds: object) -> Settings:
    policy = {"interval_s": 0.2, "timeout_s": 5.0, "max_backoff_s": 5.0, **feeds}
    return settings.model_copy(update={"feeds": FeedPolicy(**policy)})  # type: ignore[arg-type]


def documents(settings: Settings) -> list[Document]:
    return [
        Document.model_validate(v)
        for _, v in read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)
    ]


FIRST = [
    ("m-3", "Boeing shares slide", "Boeing fell 3% after new 737 MAX inspections."),
    ("m-2", "Apple unveils buyback", "Apple announced a $110bn buyback &amp; a dividend raise."),
    ("m-1", "Markets open flat", "Stocks opened flat ahead of the Fed decision."),
]


def test_rss_and_atom_entries_become_documents_with_guid_ids_and_published_times(
    settings: Settings, engine: sa.engine.Engine, feed_server: FeedServer
) -> None:
    feed_server.feeds["/rss.xml"] = Feed(rss_feed(FIRST))
    feed_server.feeds["/atom.xml"] = Feed(atom_feed(FIRST[:2]), content_type="application/atom+xml")
    # One partition, so the order read back is the order the poller sent.
    single = settings.kafka_topic_documents + ".single"
    ensure_kafka_topics(settings.kafka_bootstrap or "", [single], partitions=1)
    s = quick(settings.model_copy(update={"kafka_topic_documents": single}))
    urls = [feed_server.url("/rss.xml"), feed_server.url("/atom.xml")]
    watchlist = Watchlist.from_mapping({"BA": ["Boeing"], "AAPL": ["Apple"]})
    with DocumentProducer(
        s, s.kafka_bootstrap or "", stage="ingest:rss", watchlist=watchlist
    ) as producer:
        poller = RssPoller(s, producer, engine, urls)
        results = poller.poll_all()
        poller.close()
    assert [(r.outcome, r.sent) for r in results] == [("new", 3), ("new", 2)]
    docs = documents(s)
    assert len(docs) == 5
    rss = {d.title: d for d in docs if d.source == feed_source_name(urls[0])}
    atom = {d.title: d for d in docs if d.source == feed_source_name(urls[1])}
    assert set(rss) == {"Boeing shares slide", "Apple unveils buyback", "Markets open flat"}
    boeing = rss["Boeing shares slide"]
    assert boeing.published_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert boeing.url == "https://news.example.com/m-3" and boeing.author == "Markets Desk"
    assert boeing.text == "Boeing fell 3% after new 737 MAX inspections. Read more"  # HTML gone
    assert boeing.entities == ("BA",) and boeing.language == "en-us"
    assert rss["Apple unveils buyback"].text.startswith(
        "Apple announced a $110bn buyback & a dividend"
    )
    assert atom["Boeing shares slide"].published_at == datetime(
        2024, 5, 1, 10, 30, tzinfo=UTC
    )  # +02:00
    assert atom["Boeing shares slide"].author == "Jane Analyst"
    # Oldest first: event time increases within each feed's batch.
    rss_order = [d.title for d in docs if d.source == feed_source_name(urls[0])]
    assert rss_order == ["Markets open flat", "Apple unveils buyback", "Boeing shares slide"]
    # Same guid in another feed is another document: the feed is part of the id.
    assert rss["Boeing shares slide"].id != atom["Boeing shares slide"].id
    cursor = FeedCursorStore(engine).load(urls[0])
    assert cursor.etag == feed_server.feeds["/rss.xml"].etag and len(cursor.seen_ids) == 3
    assert cursor.last_error is None


def test_unchanged_feed_is_a_304_and_sends_nothing(
    settings: Settings, engine: sa.engine.Engine, feed_server: FeedServer
) -> None:
    feed_server.feeds["/rss.xml"] = Feed(rss_feed(FIRST))
    s = quick(settings)
    with DocumentProducer(s, s.kafka_bootstrap or "", stage="ingest:rss") as producer:
        poller = RssPoller(s, producer, engine, [feed_server.url("/rss.xml")])
        assert poller.poll_all()[0].sent == 3
        second = poller.poll_all()[0]
        poller.close()
    assert second.outcome == "not_modified" and second.sent == 0
    path, headers, status = feed_server.requests[-1]
    assert headers.get("if-none-match") == feed_server.feeds["/rss.xml"].etag
    assert headers.get("if-modified-since") == "Wed, 01 May 2024 12:00:00 GMT"
    assert status == 304
    assert len(documents(s)) == 3


@pytest.mark.parametrize("conditional", [True, False], ids=["etag-feed", "feed-without-etag"])
def test_restart_does_not_resend_old_items_and_sends_a_new_one(
    settings: Settings, engine: sa.engine.Engine, feed_server: FeedServer, conditional: bool
) -> None:
    feed_server.feeds["/rss.xml"] = Feed(rss_feed(FIRST), conditional=conditional)
    s = quick(settings)
    url = feed_server.url("/rss.xml")
    with DocumentProducer(s, s.kafka_bootstrap or "", stage="ingest:rss") as producer:
        first = RssPoller(s, producer, engine, [url])
        assert first.poll_all()[0].sent == 3
        first.close()
    # "Restart": a new producer and poller, state only from PostgreSQL.
    with DocumentProducer(s, s.kafka_bootstrap or "", stage="ingest:rss") as producer:
        again = RssPoller(s, producer, engine, [url])
        assert again.poll_all()[0].sent == 0
        feed_server.feeds["/rss.xml"] = Feed(
            rss_feed([("m-4", "Tesla recalls cars", "Tesla recalls 10k cars.")] + FIRST),
            conditional=conditional,
        )
        result = again.poll_all()[0]
        again.close()
    assert result.outcome == "new" and result.sent == 1
    titles = [d.title for d in documents(s)]
    assert len(titles) == 4 and titles.count("Tesla recalls cars") == 1


def test_a_failing_feed_does_not_stop_the_others_and_is_retried_with_backoff(
    settings: Settings, engine: sa.engine.Engine, feed_server: FeedServer
) -> None:
    feed_server.feeds["/good.xml"] = Feed(rss_feed(FIRST[:1]))
    feed_server.feeds["/error.xml"] = Feed(b"oops", status=500)
    feed_server.feeds["/slow.xml"] = Feed(rss_feed(FIRST), delay_s=3.5)
    feed_server.feeds["/garbage.xml"] = Feed(
        b"\x00\x01 this is not xml at all {", content_type="text/html"
    )
    s = quick(settings, timeout_s=1.5)
    urls = {
        name: feed_server.url(f"/{name}.xml")
        for name in ("good", "error", "slow", "garbage", "missing")
    }
    with DocumentProducer(s, s.kafka_bootstrap or "", stage="ingest:rss") as producer:
        poller = RssPoller(s, producer, engine, list(urls.values()))
        outcomes = {r.feed_url: r for r in poller.poll_due()}
        assert outcomes[urls["good"]].outcome == "new" and outcomes[urls["good"]].sent == 1
        for name in ("error", "slow", "garbage", "missing"):
            assert outcomes[urls[name]].outcome == "error", name
        assert "HTTP 500" in (outcomes[urls["error"]].error or "")
        assert "Timeout" in (outcomes[urls["slow"]].error or "")
        assert "not a readable RSS/Atom feed" in (outcomes[urls["garbage"]].error or "")
        assert "HTTP 404" in (outcomes[urls["missing"]].error or "")
        feed_server.feeds["/slow.xml"] = Feed(
            b"down", status=503
        )  # keep the rest of the test quick
        store = FeedCursorStore(engine)
        assert "HTTP 500" in (store.load(urls["error"]).last_error or "")
        assert store.load(urls["error"]).seen_ids == []

        # Backoff: failing feeds wait longer and longer; the healthy one keeps its interval.
        error_requests = lambda: sum(1 for p, _, _ in feed_server.requests if p == "/error.xml")  # noqa: E731
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            poller.poll_due()
            time.sleep(0.05)
        good_polls = sum(1 for p, _, _ in feed_server.requests if p == "/good.xml")
        assert good_polls >= 3
        assert 2 <= error_requests() <= 5  # after 0.2 s, 0.4 s, 0.8 s (±10%) instead of every 0.2 s
        assert poller.failures()[urls["error"]] >= 2 and poller.failures()[urls["good"]] == 0

        # The feed recovers: the next retry sends its items and clears the error.
        feed_server.feeds["/error.xml"] = Feed(rss_feed(FIRST[1:]))
        deadline = time.monotonic() + 6.0
        while poller.failures()[urls["error"]] and time.monotonic() < deadline:
            poller.poll_due()
            time.sleep(0.05)
        poller.close()
    assert poller.failures()[urls["error"]] == 0
    assert FeedCursorStore(engine).load(urls["error"]).last_error is None
    assert sorted(d.title or "" for d in documents(s)) == sorted(t for _, t, _ in FIRST)


def test_cursor_is_not_committed_when_kafka_does_not_take_the_records(
    settings: Settings, engine: sa.engine.Engine, feed_server: FeedServer
) -> None:
    feed_server.feeds["/rss.xml"] = Feed(rss_feed(FIRST))
    s = quick(settings)
    url = feed_server.url("/rss.xml")
    with EmbeddedBroker() as doomed:
        kafka = make_producer(
            s,
            doomed.bootstrap,
            max_block_ms=1500,
            request_timeout_ms=1000,
            retries=0,
            bootstrap_timeout_ms=5000,
        )
        producer = DocumentProducer(s, doomed.bootstrap, stage="ingest:rss", kafka_producer=kafka)
        doomed.kill()
        poller = RssPoller(s, producer, engine, [url])
        result = poller.poll_all()[0]
        poller.close()
        kafka.close(timeout=1)
    assert result.outcome == "error" and "Kafka" in (result.error or "")
    cursor = FeedCursorStore(engine).load(url)
    assert cursor.seen_ids == [] and cursor.etag is None and cursor.last_error
    # On the real broker the items are all sent: nothing was skipped.
    with DocumentProducer(s, s.kafka_bootstrap or "", stage="ingest:rss") as producer:
        poller = RssPoller(s, producer, engine, [url])
        assert poller.poll_all()[0].sent == 3
        poller.close()


def test_entries_without_text_go_to_the_dlq_once(
    settings: Settings, engine: sa.engine.Engine, feed_server: FeedServer
) -> None:
    body = rss_feed(FIRST[:1]).replace(
        b"</channel>", b"<item><guid>empty-1</guid></item></channel>"
    )
    feed_server.feeds["/rss.xml"] = Feed(body, conditional=False)
    s = quick(settings)
    with DocumentProducer(s, s.kafka_bootstrap or "", stage="ingest:rss") as producer:
        poller = RssPoller(s, producer, engine, [feed_server.url("/rss.xml")])
        first, second = poller.poll_all()[0], poller.poll_all()[0]
        poller.close()
    assert (first.sent, first.dead_lettered) == (1, 1)
    assert (second.sent, second.dead_lettered) == (0, 0)
    (letter,) = [v for _, v in read_topic(s.kafka_bootstrap or "", s.kafka_topic_dlq)]
    assert "entry has no title or text" in letter["reason"] and letter["stage"] == "ingest:rss"


def test_rss_role_polls_on_its_interval_until_stopped(
    settings: Settings, engine: sa.engine.Engine, feed_server: FeedServer
) -> None:
    feed_server.feeds["/rss.xml"] = Feed(rss_feed(FIRST[1:]))
    s = quick(settings, urls=(feed_server.url("/rss.xml"),))
    role = RssRole(s, s.kafka_bootstrap or "", engine)
    stop = threading.Event()
    thread = threading.Thread(target=role.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while (
            len(read_topic(s.kafka_bootstrap or "", s.kafka_topic_documents)) < 2
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert role.ready()
        feed_server.feeds["/rss.xml"] = Feed(rss_feed(FIRST))
        while (
            len(read_topic(s.kafka_bootstrap or "", s.kafka_topic_documents)) < 3
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(documents(s)) == 3


def test_ingest_rss_once_command(
    settings: Settings,
    engine: sa.engine.Engine,
    feed_server: FeedServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed_server.feeds["/rss.xml"] = Feed(rss_feed(FIRST))
    for name in ("KAFKA_TOPIC_DOCUMENTS", "KAFKA_TOPIC_DLQ", "KAFKA_TOPIC_SCORED"):
        monkeypatch.setenv(f"FINSENT_{name}", getattr(settings, name.lower()))
    args = [
        "--kafka-bootstrap",
        settings.kafka_bootstrap or "",
        "--database-url",
        settings.database_url or "",
        "ingest",
        "rss",
        "--once",
        feed_server.url("/rss.xml"),
    ]
    assert main(args) == 0
    assert "new, 3 sent" in capsys.readouterr().out
    assert main([*args[:-1], feed_server.url("/nope.xml")]) == 1
    assert "HTTP 404" in capsys.readouterr().out
