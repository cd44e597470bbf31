"""Human feedback labels: stored with the prediction they correct, validated, exported as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import sqlalchemy as sa

from finsent.cli import main
from pipeline.errors import InputError
from pipeline.labels import export_labels, feedback_rows, store_label


def add_document(conn: sa.Connection, doc_id: str, text: str, title: str | None = None) -> None:
    conn.execute(
        sa.text(
            "insert into documents (id, source, published_at, title, text) values (:id, 'test', now(), :title, :text)"
        ),
        {"id": doc_id, "title": title, "text": text},
    )


def add_prediction(
    conn: sa.Connection, doc_id: str, version: str, sentiment: str, topic_id: int, scored_at: str
) -> None:
    conn.execute(
        sa.text(
            "insert into predictions (document_id, model_version, topic_id, topic, topic_confidence, sentiment, "
            "p_bearish, p_neutral, p_bullish, scored_at) "
            "values (:d, :v, :t, 'Markets', 0.5, :s, 0.2, 0.5, 0.3, cast(:at as timestamptz))"
        ),
        {"d": doc_id, "v": version, "t": topic_id, "s": sentiment, "at": scored_at},
    )


def test_label_records_the_newest_prediction_it_corrects(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_document(conn, "doc-1", "Shares slump after guidance cut")
        add_prediction(conn, "doc-1", "v1", "bullish", 5, "2026-11-01T10:00:00Z")
        add_prediction(conn, "doc-1", "v2", "neutral", 19, "2026-11-02T10:00:00Z")
        label_id = store_label(conn, "doc-1", sentiment="bearish", topic_id=5, labelled_by="alice")
    with engine.connect() as conn:
        row = conn.execute(sa.text("select * from labels where id = :i"), {"i": label_id}).one()
    assert (row.sentiment, row.topic_id, row.labelled_by) == ("bearish", 5, "alice")
    assert (row.corrects_version, row.corrects_sentiment, row.corrects_topic_id) == (
        "v2",
        "neutral",
        19,
    )
    assert row.labelled_at is not None


def test_label_of_an_unscored_document_corrects_nothing(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        add_document(conn, "doc-1", "Fed holds rates")
        label_id = store_label(conn, "doc-1", topic_id=1, labelled_by="bob")
        row = conn.execute(sa.text("select * from labels where id = :i"), {"i": label_id}).one()
    assert row.sentiment is None and row.topic_id == 1 and row.corrects_version is None


@pytest.mark.parametrize(
    ("doc_id", "kwargs", "message"),
    [
        ("missing", {"sentiment": "bearish"}, "not in the database"),
        ("doc-1", {}, "needs a sentiment"),
        ("doc-1", {"sentiment": "very bad"}, "not one of"),
        ("doc-1", {"topic_id": 20}, "out of range"),
        ("doc-1", {"topic_id": -1}, "out of range"),
        ("doc-1", {"topic_id": "3"}, "not an integer"),
        ("doc-1", {"topic_id": True}, "not an integer"),
    ],
)
def test_bad_label_is_refused_with_the_reason(
    engine: sa.Engine, doc_id: str, kwargs: dict[str, object], message: str
) -> None:
    with engine.begin() as conn:
        add_document(conn, "doc-1", "text")
    with engine.begin() as conn, pytest.raises(InputError, match=message):
        store_label(conn, doc_id, labelled_by="alice", **kwargs)  # type: ignore[arg-type]
    with engine.begin() as conn, pytest.raises(InputError, match="who made it"):
        store_label(conn, "doc-1", sentiment="bearish", labelled_by="  ")
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from labels")).scalar_one() == 0


def test_export_writes_training_csvs_with_the_newest_label_per_head(
    engine: sa.Engine, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        add_document(conn, "doc-1", 'Oil jumps, "quoted", and\nnewline', title="Crude rallies")
        add_document(conn, "doc-2", "Dividend raised")
        store_label(conn, "doc-1", sentiment="bearish", labelled_by="alice")
        store_label(
            conn, "doc-1", sentiment="bullish", topic_id=6, labelled_by="bob"
        )  # newer: wins
        store_label(conn, "doc-2", sentiment="neutral", labelled_by="alice")
        store_label(conn, "doc-2", topic_id=4, labelled_by="carol")
    written = export_labels(engine, tmp_path / "out")
    assert written["sentiment"][1] == 2 and written["topic"][1] == 2
    with open(tmp_path / "out" / "labels_sentiment.csv", newline="", encoding="utf-8") as fh:
        sentiment = sorted((r["text"], r["label"]) for r in csv.DictReader(fh))
    with open(tmp_path / "out" / "labels_topic.csv", newline="", encoding="utf-8") as fh:
        topic = sorted((r["text"], r["label"]) for r in csv.DictReader(fh))
    # data label ids: 0 bearish, 1 bullish, 2 neutral
    assert sentiment == [
        ('Crude rallies. Oil jumps, "quoted", and\nnewline', "1"),
        ("Dividend raised", "2"),
    ]
    assert topic == [
        ('Crude rallies. Oil jumps, "quoted", and\nnewline', "6"),
        ("Dividend raised", "4"),
    ]
    assert feedback_rows(engine).sentiment == feedback_rows(engine).sentiment  # deterministic


def test_label_command_stores_and_exports(
    engine: sa.Engine, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        add_document(conn, "doc-1", "Bank fined by regulator")
    assert (
        main(
            [
                "--database-url",
                database_url,
                "label",
                "doc-1",
                "--sentiment",
                "bearish",
                "--topic",
                "12",
                "--by",
                "desk",
            ]
        )
        == 0
    )
    assert "stored for document doc-1" in capsys.readouterr().out
    assert main(["--database-url", database_url, "label", "nope", "--sentiment", "bearish"]) == 2
    assert "not in the database" in capsys.readouterr().err
    assert main(["--database-url", database_url, "label", "doc-1", "--by", "desk"]) == 2
    assert "needs a sentiment" in capsys.readouterr().err
    assert main(["--database-url", database_url, "label", "export"]) == 2
    assert "needs the directory" in capsys.readouterr().err
    assert main(["--database-url", database_url, "label", "export", str(tmp_path / "csv")]) == 0
    assert "sentiment: 1 rows" in capsys.readouterr().out
    assert (tmp_path / "csv" / "labels_topic.csv").read_text().splitlines() == [
        "text,label",
        "Bank fined by regulator,12",
    ]
    with engine.connect() as conn:
        assert conn.execute(sa.text("select labelled_by from labels")).scalar_one() == "desk"
