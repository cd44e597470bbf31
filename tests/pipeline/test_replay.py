"""File replay (CSV, JSONL, .gz) to the real embedded broker, read back with a consumer."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from finsent.cli import main
from pipeline.documents import Document
from pipeline.entities import Watchlist
from pipeline.errors import InputError
from pipeline.producers.base import Rejected
from pipeline.producers.replay import ColumnMapping, ReplaySource, default_source, replay_file
from pipeline.settings import Settings
from tests.pipeline.test_producers import read_topic

DATA = Path(__file__).resolve().parents[1] / "data"
WIRE = DATA / "replay_wire.csv"
SOCIAL = DATA / "replay_social.jsonl"
WIRE_MAPPING = {
    "text_column": "body",
    "time_column": "ts",
    "id_column": "guid",
    "title_column": "headline",
    "url_column": "link",
    "source": "wire",
}


def _documents(settings: Settings) -> dict[str, dict]:
    return {
        value["id"]: value
        for _, value in read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)
    }


def test_csv_replay_maps_columns_and_keeps_each_rows_event_time(settings: Settings) -> None:
    watchlist = Watchlist.from_mapping(
        {"BA": ["Boeing", "737 MAX"], "AAPL": ["Apple"], "JPM": ["JPMorgan"]}
    )
    report = replay_file(
        settings, settings.kafka_bootstrap or "", WIRE, watchlist=watchlist, **WIRE_MAPPING
    )
    assert (report.rows, report.sent, report.dead_lettered) == (5, 5, 0)
    docs = {d["url"]: Document.model_validate(d) for d in _documents(settings).values()}
    assert len(docs) == 5
    first = docs["https://wire.example/w-001"]
    assert first.title == "Boeing cuts delivery outlook" and first.text.startswith("Boeing lowered")
    assert first.source == "wire" and first.kind == "news" and first.entities == ("BA",)
    assert first.published_at == datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    # +02:00, epoch seconds, naive (= UTC) and RFC 2822 all arrive as UTC instants
    assert docs["https://wire.example/w-002"].published_at == datetime(
        2024, 5, 1, 8, 15, tzinfo=UTC
    )
    assert docs["https://wire.example/w-003"].published_at == datetime(
        2024, 5, 1, 11, 30, tzinfo=UTC
    )
    assert docs["https://wire.example/w-004"].published_at == datetime(
        2024, 5, 1, 14, 0, tzinfo=UTC
    )
    assert docs["https://wire.example/w-005"].published_at == datetime(
        2024, 5, 1, 15, 0, tzinfo=UTC
    )
    assert docs["https://wire.example/w-004"].text.endswith('"no injuries" reported.')
    assert docs["https://wire.example/w-005"].entities == ("JPM",)


def test_gzipped_jsonl_replay_with_mapping_and_epoch_milliseconds(
    settings: Settings, tmp_path: Path
) -> None:
    gz = tmp_path / "social.jsonl.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(SOCIAL.read_bytes())
    watchlist = Watchlist.from_mapping({"BA": ["Boeing", "737 MAX"], "MSFT": ["Microsoft"]})
    report = replay_file(
        settings,
        settings.kafka_bootstrap or "",
        gz,
        text_column="content",
        time_column="created",
        id_column="post_id",
        author_column="user",
        kind="social",
        watchlist=watchlist,
    )
    assert (report.rows, report.sent, report.dead_lettered) == (4, 4, 0)
    docs = sorted(
        (Document.model_validate(d) for d in _documents(settings).values()),
        key=lambda d: d.published_at,
    )
    assert [d.source for d in docs] == ["social"] * 4  # the file name without .jsonl.gz
    assert all(d.kind == "social" for d in docs)
    assert docs[0].published_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert docs[1].published_at == datetime(2024, 5, 1, 10, 1, tzinfo=UTC)  # epoch milliseconds
    assert docs[3].published_at == datetime(2024, 5, 1, 14, 3, tzinfo=UTC)  # -04:00
    assert [d.entities for d in docs] == [("BA",), ("MSFT",), ("BA",), ()]
    assert docs[0].author == "trader_joe"
    assert (
        report.first_event_at == docs[0].published_at
        and report.last_event_at == docs[3].published_at
    )


def test_replaying_the_same_file_again_yields_the_same_ids(
    settings: Settings, tmp_path: Path
) -> None:
    bootstrap = settings.kafka_bootstrap or ""
    replay_file(settings, bootstrap, WIRE, **WIRE_MAPPING)
    copy = tmp_path / "renamed.csv"
    shutil.copy(WIRE, copy)
    replay_file(
        settings, bootstrap, copy, **WIRE_MAPPING
    )  # same --source: same ids whatever the file name
    records = read_topic(bootstrap, settings.kafka_topic_documents)
    assert len(records) == 10
    ids = [value["id"] for _, value in records]
    assert len(set(ids)) == 5
    # the key is the id, so both copies of a document land on the same partition
    assert all(key == value["id"].encode() for key, value in records)


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_hostile_jsonl_rows_go_to_the_dlq_with_file_line_and_reason(
    settings: Settings, tmp_path: Path
) -> None:
    good = {"text": "Boeing falls", "published_at": "2024-05-01T10:00:00Z"}
    lines = [
        json.dumps(good).encode(),  # 1 ok
        b"",  # 2 blank: skipped
        b"{not json",  # 3
        b"[1, 2, 3]",  # 4
        json.dumps({"text": 42, "published_at": "2024-05-01"}).encode(),  # 5 wrong type
        json.dumps({"text": "   ", "published_at": "2024-05-01"}).encode(),  # 6 empty text
        json.dumps({"text": "ok", "published_at": "whenever"}).encode(),  # 7 bad time
        json.dumps({"text": "ok"}).encode(),  # 8 no time
        json.dumps({"text": "ok", "published_at": "2999-01-01"}).encode(),  # 9 future
        json.dumps(
            {"text": "a\u0000b <script>x</script> &amp;", "published_at": 1714557600}
        ).encode(),  # 10 ok
        b'{"text": "caf\xe9 \xff\xfe bytes", "published_at": "2024-05-01"}',  # 11 ok, replaced
        json.dumps(
            {"text": "y" * 1_000_000, "published_at": "2024-05-01"}
        ).encode(),  # 12 ok, capped
        json.dumps(
            {"text": "ok", "published_at": "2024-05-01", "kind": "blog"}
        ).encode(),  # 13 bad kind
        b"\x00\x00\x00",  # 14
        b"null",  # 15
        b"[" * 5000 + b"]" * 5000,  # 16 deep nesting
    ]
    path = _write_lines(tmp_path / "hostile.jsonl", lines)
    report = replay_file(settings, settings.kafka_bootstrap or "", path)
    assert (report.rows, report.sent, report.dead_lettered) == (15, 4, 11)
    letters = {
        v["origin"].rsplit(" ", 1)[-1]: v
        for _, v in read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_dlq)
    }
    assert sorted(map(int, letters)) == [3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16]
    for line, letter in letters.items():
        assert letter["reason"].startswith(f"hostile.jsonl line {line}: ")
        assert letter["stage"] == "ingest:replay"
    assert "not JSON" in letters["3"]["reason"]
    assert "expected a JSON object, got list" in letters["4"]["reason"]
    assert "column 'text'" in letters["5"]["reason"] and "valid string" in letters["5"]["reason"]
    assert "no text in column 'text'" in letters["6"]["reason"]
    assert "unrecognised time 'whenever'" in letters["7"]["reason"]
    assert "no published time" in letters["8"]["reason"]
    assert "future" in letters["9"]["reason"]
    assert "column 'kind'" in letters["13"]["reason"]
    assert letters["5"]["payload_text"] == lines[4].decode()
    docs = [
        Document.model_validate(v)
        for _, v in read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)
    ]
    texts = sorted(d.text for d in docs)
    assert "ab x &" in texts  # NUL gone, tags dropped, entities unescaped
    assert any(t.startswith("caf\ufffd \ufffd\ufffd bytes") for t in texts)
    assert max(len(t) for t in texts) == 20_000


def test_hostile_csv_rows_go_to_the_dlq_and_the_rest_is_sent(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "hostile.csv"
    path.write_bytes(
        b"text,published_at,id\n"
        b"fine,2024-05-01,1\n"
        b"too,many,fields,here\n"
        b"nul\x00inside,2024-05-01,3\n"
        b"bad \xff utf8,2024-05-01,4\n"
        b",2024-05-01,5\n"
        b'"multi\nline, quoted",2024-05-01T00:00:00Z,6\n'
        b"no time,,7\n"
    )
    report = replay_file(settings, settings.kafka_bootstrap or "", path)
    assert (report.rows, report.sent, report.dead_lettered) == (7, 4, 3)
    letters = [v for _, v in read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_dlq)]
    reasons = sorted(letter["reason"] for letter in letters)
    assert reasons == [
        "hostile.csv line 3: 4 fields but the header has 3",
        "hostile.csv line 6: no text in column 'text'",
        "hostile.csv line 9: no published time in column 'published_at' (pass --time-column, or --missing-time now)",
    ]


def test_a_file_that_cannot_be_replayed_at_all_is_a_clear_input_error(
    settings: Settings, tmp_path: Path
) -> None:
    bootstrap = settings.kafka_bootstrap or ""
    with pytest.raises(InputError, match=r"no column 'text' \(its columns: guid, headline, body"):
        replay_file(settings, bootstrap, WIRE)
    with pytest.raises(InputError, match="does not exist"):
        replay_file(settings, bootstrap, tmp_path / "missing.csv")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(InputError, match="--format"):
        replay_file(settings, bootstrap, tmp_path / "data.xlsx")
    (tmp_path / "fake.csv.gz").write_text("text\nnot gzip\n")
    with pytest.raises(InputError, match="not gzip"):
        replay_file(settings, bootstrap, tmp_path / "fake.csv.gz")
    with pytest.raises(InputError, match="unknown replay option"):
        replay_file(settings, bootstrap, WIRE, text_colum="body")
    with pytest.raises(InputError, match="missing-time now"):
        replay_file(settings, bootstrap, WIRE, text_column="body")


def test_missing_time_now_stamps_rows_with_the_ingestion_time(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "untimed.csv"
    path.write_text("text\nBoeing falls\n", encoding="utf-8")
    before = datetime.now(UTC)
    report = replay_file(settings, settings.kafka_bootstrap or "", path, missing_time="now")
    assert report.sent == 1
    (doc,) = _documents(settings).values()
    assert datetime.fromisoformat(doc["published_at"].replace("Z", "+00:00")) >= before


def test_speed_paces_by_event_time_gaps_and_stop_ends_early(
    settings: Settings, tmp_path: Path
) -> None:
    rows = [{"text": f"doc {i}", "published_at": 1714557600 + 10 * i, "id": i} for i in range(4)]
    path = _write_lines(tmp_path / "paced.jsonl", [json.dumps(r).encode() for r in rows])
    started = time.monotonic()
    report = replay_file(
        settings, settings.kafka_bootstrap or "", path, speed=30.0
    )  # 30 s of events in 1 s
    elapsed = time.monotonic() - started
    assert report.sent == 4 and 0.9 <= elapsed < 10.0

    stop = threading.Event()
    slow = threading.Timer(0.5, stop.set)
    slow.start()
    started = time.monotonic()
    report = replay_file(
        settings, settings.kafka_bootstrap or "", path, speed=1.0, stop=stop
    )  # 30 s of events
    assert report.stopped_early and report.sent == 1 and time.monotonic() - started < 10.0
    with pytest.raises(InputError, match="--speed"):
        replay_file(settings, settings.kafka_bootstrap or "", path, speed=0)


def test_ingest_replay_command_reports_counts(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("KAFKA_TOPIC_DOCUMENTS", "KAFKA_TOPIC_DLQ", "KAFKA_TOPIC_SCORED"):
        monkeypatch.setenv(f"FINSENT_{name}", getattr(settings, name.lower()))
    path = _write_lines(
        tmp_path / "cli.jsonl", [b'{"text": "Boeing", "published_at": "2024-05-01"}', b"oops"]
    )
    code = main(
        [
            "--kafka-bootstrap",
            settings.kafka_bootstrap or "",
            "ingest",
            "replay",
            str(path),
            "--source",
            "cli",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "sent 1 document, dead-lettered 1" in out and settings.kafka_topic_dlq in out
    assert len(read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)) == 1


def test_ingest_replay_counts_rows_with_one_id_as_one_document(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("KAFKA_TOPIC_DOCUMENTS", "KAFKA_TOPIC_DLQ", "KAFKA_TOPIC_SCORED"):
        monkeypatch.setenv(f"FINSENT_{name}", getattr(settings, name.lower()))
    rows = [
        {"id": "a", "text": "Boeing falls", "published_at": "2024-05-01T10:00:00Z"},
        {"id": "b", "text": "Apple rises", "published_at": "2024-05-01T10:01:00Z"},
        {"id": "a", "text": "Boeing falls (corrected)", "published_at": "2024-05-01T10:02:00Z"},
        {"id": "a", "text": "Boeing falls again", "published_at": "2024-05-01T10:03:00Z"},
    ]
    path = _write_lines(tmp_path / "dupes.jsonl", [json.dumps(r).encode() for r in rows])
    argv = ["--kafka-bootstrap", settings.kafka_bootstrap or "", "ingest", "replay", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "sent 2 documents (4 rows: 2 repeated the id of an earlier row and collapsed into its "
        "document), dead-lettered 0"
    )
    records = read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)
    assert len(records) == 4 and len({value["id"] for _, value in records}) == 2


def test_ingest_without_a_kafka_cluster_says_how_to_configure_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingest", "replay", str(WIRE)]) == 2
    assert "FINSENT_KAFKA_BOOTSTRAP" in capsys.readouterr().err


def test_default_source_is_the_file_name_without_extensions() -> None:
    assert default_source(Path("/x/news.csv.gz")) == "news"
    assert default_source(Path("my.data.jsonl")) == "my.data"


ROW_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6,
)
ROWS = st.lists(
    st.one_of(
        st.dictionaries(
            st.sampled_from(
                ["text", "published_at", "id", "title", "kind", "url", "entities", "x"]
            ),
            ROW_VALUES,
            max_size=6,
        ),
        ROW_VALUES,
        st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
    ),
    min_size=1,
    max_size=12,
)


@hyp_settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=ROWS)
def test_any_jsonl_content_yields_a_document_or_a_located_rejection_per_row(
    tmp_path: Path, rows: list
) -> None:
    lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
    path = _write_lines(tmp_path / "prop.jsonl", lines)
    source = ReplaySource(path, ColumnMapping(), now=datetime(2024, 5, 1, tzinfo=UTC))
    items = list(source)
    assert len(items) == source.rows == sum(1 for line in lines if line.strip())
    for item in items:
        if isinstance(item, Rejected):
            assert item.reason.startswith("prop.jsonl line ") and len(item.reason) > len(
                "prop.jsonl line 1: "
            )
        else:
            assert isinstance(item, Document) and item.text
            assert b"\\u0000" not in item.to_json_bytes()


def test_truncated_gzip_sends_what_was_readable_and_dead_letters_the_end(
    settings: Settings, tmp_path: Path
) -> None:
    rows = [
        json.dumps(
            {"text": f"row {i} " + "x" * 200, "published_at": 1714557600 + i, "id": i}
        ).encode()
        for i in range(400)
    ]
    whole = gzip.compress(b"\n".join(rows) + b"\n")
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    report = replay_file(settings, settings.kafka_bootstrap or "", path)
    assert 0 < report.sent < 400 and report.dead_lettered == 1
    (letter,) = [v for _, v in read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_dlq)]
    assert "file ends unreadably" in letter["reason"]


def test_tsv_with_a_byte_order_mark_and_an_explicit_format(
    settings: Settings, tmp_path: Path
) -> None:
    tsv = tmp_path / "export.tsv"
    tsv.write_bytes(
        "\ufefftext\tpublished_at\tentities\nBoeing, again\t2024-05-01\tba;AAPL\n".encode()
    )
    txt = tmp_path / "dump.txt"
    txt.write_text('{"text": "from a .txt", "published_at": "2024-05-01"}\n', encoding="utf-8")
    bootstrap = settings.kafka_bootstrap or ""
    assert replay_file(settings, bootstrap, tsv).sent == 1
    assert replay_file(settings, bootstrap, txt, fmt="jsonl").sent == 1
    docs = {d["text"]: d for d in _documents(settings).values()}
    assert docs["Boeing, again"]["entities"] == ["AAPL", "BA"]
    assert docs["from a .txt"]["source"] == "dump.txt"
