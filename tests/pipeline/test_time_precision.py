"""Documents carry their time precision (second | minute | hour | day): file replay infers
it or takes it from a flag, reads naive times in a given zone, and stores a day document
at the start of its day in that zone; HTTP and RSS mark date-only values as days; the
schema holds the column on documents and trend points."""

from __future__ import annotations

import doctest
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

import pipeline.memory_features
import pipeline.producers.base
import pipeline.producers.replay
from finsent.cli import main
from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.producers.base import IncomingDocument, Rejected, incoming_from_mapping
from pipeline.producers.replay import ColumnMapping, ReplaySource, replay_file
from pipeline.producers.rss import FeedSource
from pipeline.records import ScoredRecord
from pipeline.settings import Settings
from tests.pipeline.test_producers import read_topic

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _replay(path: Path, **mapping: object) -> list[Document]:
    source = ReplaySource(path, ColumnMapping.from_options(**mapping), now=NOW)
    items = list(source)
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert not rejected, rejected
    return [i for i in items if isinstance(i, Document)]


def _by_text(docs: list[Document]) -> dict[str, Document]:
    return {d.text: d for d in docs}


def test_doctests_of_the_time_helpers_hold() -> None:
    for module in (pipeline.memory_features, pipeline.producers.base, pipeline.producers.replay):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# --- inference ---------------------------------------------------------------------------


def test_a_date_only_value_is_a_day_at_midnight_of_the_file_zone(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "wire.jsonl",
        [
            {"text": "dated", "published_at": "2021-03-04"},
            {"text": "timed", "published_at": "2021-03-04 09:31:17"},
        ],
    )
    docs = _by_text(_replay(path, timezone="America/New_York"))
    assert docs["dated"].time_precision == "day"
    assert docs["dated"].published_at == datetime(2021, 3, 4, 5, 0, tzinfo=UTC)  # EST midnight
    # a row with a real time in the same file stays second precision
    assert docs["timed"].time_precision == "second"
    assert docs["timed"].published_at == datetime(2021, 3, 4, 14, 31, 17, tzinfo=UTC)


def test_a_file_whose_times_are_all_midnight_is_day_precision(tmp_path: Path) -> None:
    path = tmp_path / "daily.csv"
    path.write_text(
        "text,published_at\n"
        "first,2021-03-04 00:00:00\n"
        "second,2021-03-05T00:00:00\n"
        "summer,2021-07-01 00:00:00\n"
        "dated,2021-03-06\n",
        encoding="utf-8",
    )
    docs = _by_text(_replay(path, timezone="America/New_York"))
    assert {d.time_precision for d in docs.values()} == {"day"}
    assert docs["first"].published_at == datetime(2021, 3, 4, 5, tzinfo=UTC)
    assert docs["summer"].published_at == datetime(2021, 7, 1, 4, tzinfo=UTC)  # EDT midnight
    assert docs["dated"].published_at == datetime(2021, 3, 6, 5, tzinfo=UTC)


def test_one_row_with_a_time_of_day_keeps_midnight_rows_second_precision(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"text": "a", "published_at": "2021-03-04T00:00:00Z"},
            {"text": "b", "published_at": "2021-03-04T00:00:00Z"},
            {"text": "c", "published_at": "2021-03-04T13:14:15Z"},
        ],
    )
    docs = _by_text(_replay(path))
    assert {d.time_precision for d in docs.values()} == {"second"}
    assert docs["a"].published_at == datetime(2021, 3, 4, tzinfo=UTC)


def test_whole_minute_times_throughout_are_minute_precision(tmp_path: Path) -> None:
    rows = [{"text": f"m{i}", "published_at": f"2021-03-04T10:{i:02d}:00Z"} for i in range(3)]
    assert {d.time_precision for d in _replay(_jsonl(tmp_path / "m.jsonl", rows))} == {"minute"}
    # two whole-minute times are chance, not a minute-stamped source
    few = _jsonl(tmp_path / "few.jsonl", rows[:2])
    assert {d.time_precision for d in _replay(few)} == {"second"}


def test_midnight_is_read_in_each_rows_own_offset(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "aware.jsonl",
        [
            {"text": "paris", "published_at": "2021-03-04T00:00:00+01:00"},
            {"text": "epoch", "published_at": 1614816000},  # 2021-03-04T00:00:00Z
        ],
    )
    docs = _by_text(_replay(path, timezone="America/New_York"))
    assert {d.time_precision for d in docs.values()} == {"day"}
    assert docs["paris"].published_at == datetime(2021, 3, 3, 23, tzinfo=UTC)
    assert docs["epoch"].published_at == datetime(2021, 3, 4, tzinfo=UTC)


# --- the time zone -----------------------------------------------------------------------


def test_naive_times_are_read_in_the_zone_and_aware_ones_keep_their_offset(
    tmp_path: Path,
) -> None:
    path = _jsonl(
        tmp_path / "eastern.jsonl",
        [
            {"text": "winter", "published_at": "2021-01-15 09:30:12"},
            {"text": "summer", "published_at": "2021-07-15T09:30:12"},
            {"text": "aware", "published_at": "2021-07-15T09:30:12+02:00"},
            {"text": "utc", "published_at": "2021-07-15T09:30:12Z"},
            {"text": "epoch", "published_at": 1626341412},
        ],
    )
    docs = _by_text(_replay(path, timezone="America/New_York"))
    assert docs["winter"].published_at == datetime(2021, 1, 15, 14, 30, 12, tzinfo=UTC)  # EST
    assert docs["summer"].published_at == datetime(2021, 7, 15, 13, 30, 12, tzinfo=UTC)  # EDT
    assert docs["aware"].published_at == datetime(2021, 7, 15, 7, 30, 12, tzinfo=UTC)
    assert docs["utc"].published_at == datetime(2021, 7, 15, 9, 30, 12, tzinfo=UTC)
    assert docs["epoch"].published_at == datetime(2021, 7, 15, 9, 30, 12, tzinfo=UTC)
    assert {d.time_precision for d in docs.values()} == {"second"}
    # without --timezone a naive time is UTC, as before
    assert _by_text(_replay(path))["winter"].published_at == datetime(
        2021, 1, 15, 9, 30, 12, tzinfo=UTC
    )


# --- the flag ------------------------------------------------------------------------------


def test_a_forced_precision_truncates_every_row_to_the_start_of_its_period(
    tmp_path: Path,
) -> None:
    path = _jsonl(
        tmp_path / "forced.jsonl",
        [
            {"text": "naive", "published_at": "2021-03-14 15:45:30"},
            {"text": "aware", "published_at": "2021-03-14T23:30:00+01:00"},
        ],
    )
    day = _by_text(_replay(path, time_precision="day", timezone="America/New_York"))
    assert {d.time_precision for d in day.values()} == {"day"}
    # the DST day starts at 00:00 EST
    assert day["naive"].published_at == datetime(2021, 3, 14, 5, tzinfo=UTC)
    assert day["aware"].published_at == datetime(2021, 3, 13, 23, tzinfo=UTC)
    hour = _by_text(_replay(path, time_precision="hour", timezone="America/New_York"))
    assert hour["naive"].published_at == datetime(2021, 3, 14, 19, tzinfo=UTC)  # 15:00 EDT
    assert hour["naive"].time_precision == "hour"
    dated = _jsonl(tmp_path / "d.jsonl", [{"text": "x", "published_at": "2021-03-04"}])
    second = _replay(dated, time_precision="second")
    assert second[0].time_precision == "second"


def test_a_bad_zone_or_precision_is_refused_with_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown time zone 'Mars/Olympus'.*America/New_York"):
        ColumnMapping.from_options(timezone="Mars/Olympus")
    with pytest.raises(InputError, match=r"unknown time zone '\.\./etc'"):
        ColumnMapping.from_options(timezone="../etc")
    with pytest.raises(InputError, match=r"unknown time precision 'week'.*auto, second"):
        ColumnMapping.from_options(time_precision="week")


def test_the_replay_command_refuses_a_bad_zone_before_reaching_kafka(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _jsonl(tmp_path / "x.jsonl", [{"text": "x", "published_at": "2021-03-04"}])
    assert main(["ingest", "replay", str(path), "--timezone", "Mars/Olympus"]) == 2
    err = capsys.readouterr().err
    assert "unknown time zone 'Mars/Olympus'" in err and "FINSENT_KAFKA_BOOTSTRAP" not in err
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "replay", str(path), "--time-precision", "week"])
    assert exc.value.code == 2
    assert "invalid choice: 'week'" in capsys.readouterr().err


def test_the_replay_command_sends_eastern_days_with_their_precision(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("KAFKA_TOPIC_DOCUMENTS", "KAFKA_TOPIC_DLQ", "KAFKA_TOPIC_SCORED"):
        monkeypatch.setenv(f"FINSENT_{name}", getattr(settings, name.lower()))
    path = _jsonl(
        tmp_path / "eastern.jsonl",
        [
            {"id": "1", "text": "Boeing falls", "published_at": "2021-03-04"},
            {"id": "2", "text": "Apple rises", "published_at": "2021-03-04 00:00:00"},
        ],
    )
    argv = ["--kafka-bootstrap", settings.kafka_bootstrap or "", "ingest", "replay", str(path)]
    assert main([*argv, "--timezone", "America/New_York"]) == 0
    assert "time precision: day 2" in capsys.readouterr().out
    docs = [
        Document.model_validate(v)
        for _, v in read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)
    ]
    assert len(docs) == 2
    assert {(d.published_at, d.time_precision) for d in docs} == {
        (datetime(2021, 3, 4, 5, tzinfo=UTC), "day")
    }


def test_replay_file_takes_the_precision_options(settings: Settings, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "f.jsonl", [{"text": "x", "published_at": "2021-03-04T10:11:12Z"}])
    report = replay_file(
        settings, settings.kafka_bootstrap or "", path, time_precision="hour", timezone="UTC"
    )
    assert report.precisions == {"hour": 1} and "time precision: hour 1" in str(report)
    ((_, value),) = read_topic(settings.kafka_bootstrap or "", settings.kafka_topic_documents)
    assert value["time_precision"] == "hour" and value["published_at"] == "2021-03-04T10:00:00Z"


# --- records, HTTP and RSS -----------------------------------------------------------------


def test_the_precision_travels_in_the_kafka_records_and_old_records_are_second() -> None:
    doc = Document(id="s:1", source="s", published_at=NOW, text="x", time_precision="day")
    assert json.loads(doc.to_json_bytes())["time_precision"] == "day"
    assert Document.from_json_bytes(doc.to_json_bytes()).time_precision == "day"
    old = {"id": "s:1", "source": "s", "published_at": NOW.isoformat(), "text": "x"}
    assert Document.from_json_bytes(json.dumps(old).encode()).time_precision == "second"
    with pytest.raises(InputError, match="time_precision"):
        Document.from_json_bytes(json.dumps({**old, "time_precision": "week"}).encode())
    scored = {
        "key": "topic:Markets",
        "document_id": "s:1",
        "event_at": NOW.isoformat(),
        "topic_id": 0,
        "topic": "Markets",
        "topic_confidence": 0.5,
        "sentiment": "neutral",
        "p_bearish": 0.2,
        "p_neutral": 0.6,
        "p_bullish": 0.2,
    }
    assert ScoredRecord.from_bytes(json.dumps(scored).encode()).time_precision == "second"
    day = ScoredRecord.model_validate({**scored, "time_precision": "day"})
    assert ScoredRecord.from_bytes(day.to_bytes()).time_precision == "day"


def test_http_items_with_a_date_are_days_and_may_state_their_precision() -> None:
    def doc(item: dict[str, object]) -> Document:
        return incoming_from_mapping(item).to_document(source="http", default_time=NOW, now=NOW)

    dated = doc({"text": "x", "published_at": "2024-05-01"})
    assert (dated.time_precision, dated.published_at) == ("day", datetime(2024, 5, 1, tzinfo=UTC))
    assert doc({"text": "x", "published_at": "2024-05-01T10:00:00Z"}).time_precision == "second"
    assert doc({"text": "x"}).time_precision == "second"  # stamped now
    stated = doc({"text": "x", "published_at": "2024-05-01T10:00:00Z", "time_precision": "hour"})
    assert stated.time_precision == "hour"
    told = doc({"text": "x", "published_at": "2024-05-01", "time_precision": "second"})
    assert told.time_precision == "second"
    with pytest.raises(InputError, match="time_precision"):
        incoming_from_mapping({"text": "x", "time_precision": "week"})
    assert IncomingDocument.model_validate({"text": "x"}).time_precision is None


def test_an_rss_entry_dated_with_a_date_only_is_a_day() -> None:
    feed = b"""<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
      <entry><title>Dated</title><id>e1</id><updated>2024-05-01</updated><summary>a</summary></entry>
      <entry><title>Timed</title><id>e2</id><updated>2024-05-01T10:00:00Z</updated><summary>b</summary></entry>
    </feed>"""
    docs = {
        d.title: d
        for d in FeedSource("https://blog.example.org/atom.xml", feed, fetched_at=NOW)
        if isinstance(d, Document)
    }
    assert docs["Dated"].time_precision == "day"
    assert docs["Dated"].published_at == datetime(2024, 5, 1, tzinfo=UTC)
    assert docs["Timed"].time_precision == "second"


# --- the schema --------------------------------------------------------------------------


def test_the_migration_adds_checked_precision_columns(engine: sa.engine.Engine) -> None:
    with engine.begin() as conn:
        for table in ("documents", "trend_points"):
            column = conn.execute(
                sa.text(
                    "SELECT data_type, is_nullable, column_default FROM information_schema.columns "
                    "WHERE table_name = :t AND column_name = 'time_precision'"
                ),
                {"t": table},
            ).one()
            assert column.data_type == "text" and column.is_nullable == "NO"
            assert "'second'" in column.column_default
        conn.execute(
            sa.text(
                "INSERT INTO documents (id, source, published_at, text) "
                "VALUES ('t:1', 't', now(), 'x')"
            )
        )
        assert conn.execute(sa.text("SELECT time_precision FROM documents")).scalar() == "second"
        conn.execute(sa.text("UPDATE documents SET time_precision = 'day'"))
    with pytest.raises(sa.exc.IntegrityError, match="documents_time_precision_check"):
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE documents SET time_precision = 'week'"))
    with pytest.raises(sa.exc.IntegrityError, match="trend_points_time_precision_check"):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO trend_points (key, event_at, document_id, sentiment, p_bearish, "
                    "expected_negative_rate, surge_score, doc_count, negative_count, time_precision) "
                    "VALUES ('topic:x', now(), 't:1', 'neutral', 0, 0, 0, 1, 0, 'Day')"
                )
            )


def test_the_migration_downgrades_and_upgrades_again(empty_database_url: str) -> None:
    from pipeline import db

    db.upgrade(empty_database_url)
    db.downgrade(empty_database_url, "0002_partition_watermarks")
    probe = sa.create_engine(empty_database_url)
    try:
        with probe.connect() as conn:
            names = conn.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.columns WHERE column_name = 'time_precision'"
                )
            ).all()
        assert names == []
        db.upgrade(empty_database_url, "0003_time_precision")
        assert db.current_revision(probe) == "0003_time_precision"
        db.upgrade(empty_database_url)
        assert db.current_revision(probe) == db.head_revision()
    finally:
        probe.dispose()
