"""``finsent classify``: CSV/JSONL in, the same rows with the classifier's columns out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from finsent.cli import main
from finsent.commands.classify import OUTPUT_COLUMNS
from pipeline.records import SENTIMENTS, TOPICS


def _run(tiny_model_dir: Path, *args: str) -> int:
    return main(["--model-dir", str(tiny_model_dir), "classify", *args, "--no-progress"])


def test_csv_keeps_input_columns_and_adds_predictions(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "headline", "source"])
        w.writerow(["1", "$AAPL falls after earnings miss\nsecond line", "wire"])
        w.writerow(["2", "Fed holds rates &amp; signals patience", "blog"])
        w.writerow(["3", "", "empty"])
    out = tmp_path / "out.csv"
    assert _run(tiny_model_dir, str(src), "--output", str(out), "--text-column", "headline") == 0
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["id", "headline", "source", *OUTPUT_COLUMNS]
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["headline"] == "$AAPL falls after earnings miss\nsecond line"
    for r in rows:
        assert r["topic"] in TOPICS and r["sentiment"] in SENTIMENTS
        total = float(r["p_bearish"]) + float(r["p_neutral"]) + float(r["p_bullish"])
        assert abs(total - 1) < 1e-4 and 0 < float(r["topic_confidence"]) <= 1
        assert r["model_version"] == "tiny-0"


def test_jsonl_in_and_out(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"text": "Gold rallies", "meta": {"k": 1}}\n\n{"text": "Oil slides", "meta": null}\n'
    )
    out = tmp_path / "out.jsonl"
    assert _run(tiny_model_dir, str(src), "--output", str(out)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["Gold rallies", "Oil slides"]
    assert rows[0]["meta"] == {"k": 1} and set(OUTPUT_COLUMNS) <= set(rows[0])


def test_input_columns_named_like_outputs_are_kept_under_a_suffix(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "labelled.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "sentiment", "topic"])
        w.writerow(["Shares slump after guidance cut", "gold-bearish", "gold-Earnings"])
        w.writerow(["Gold rallies", "gold-bullish", "gold-Gold"])
    out = tmp_path / "out.csv"
    assert _run(tiny_model_dir, str(src), "--output", str(out)) == 0
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["text", "sentiment_input", "topic_input", *OUTPUT_COLUMNS]
    assert [r["sentiment_input"] for r in rows] == ["gold-bearish", "gold-bullish"]
    assert [r["topic_input"] for r in rows] == ["gold-Earnings", "gold-Gold"]
    assert all(r["sentiment"] in SENTIMENTS and r["topic"] in TOPICS for r in rows)
    err = capsys.readouterr().err
    assert "input column 'sentiment' kept as 'sentiment_input'" in err
    assert "input column 'topic' kept as 'topic_input'" in err

    jsonl = tmp_path / "labelled.jsonl"
    jsonl.write_text(
        json.dumps({"text": "Oil slides", "sentiment": "gold", "sentiment_input": "older"}) + "\n"
    )
    out_jsonl = tmp_path / "out.jsonl"
    assert _run(tiny_model_dir, str(jsonl), "--output", str(out_jsonl)) == 0
    (row,) = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert row["sentiment_input"] == "older" and row["sentiment_input_input"] == "gold"
    assert row["sentiment"] in SENTIMENTS


def test_missing_column_is_a_clear_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,body\n1,hello\n")
    assert _run(tiny_model_dir, str(src), "--output", str(tmp_path / "o.csv")) == 2
    err = capsys.readouterr().err
    assert "no column 'text'" in err and "columns: id, body" in err and "--text-column" in err
    assert not (tmp_path / "o.csv").exists()


def test_unreadable_or_malformed_input_is_a_clear_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _run(tiny_model_dir, str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o.csv"))
        == 2
    )
    assert "cannot read" in capsys.readouterr().err
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00text\n")
    assert _run(tiny_model_dir, str(binary), "--output", str(tmp_path / "o.csv")) == 2
    assert "UTF-8" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    assert _run(tiny_model_dir, str(bad), "--output", str(tmp_path / "o.jsonl")) == 2
    assert "line 2 is not valid JSON" in capsys.readouterr().err
    assert _run(tiny_model_dir, str(bad), "--output", str(tmp_path / "o.txt")) == 2
    assert "use a .csv or .jsonl" in capsys.readouterr().err


def test_missing_model_directory_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("text\nhello\n")
    code = main(
        [
            "--model-dir",
            str(tmp_path / "nomodel"),
            "classify",
            str(src),
            "--output",
            str(tmp_path / "o.csv"),
        ]
    )
    assert code == 2 and "FINSENT_MODEL_DIR" in capsys.readouterr().err
