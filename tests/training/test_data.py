"""Data reading, text normalisation and the fixed dev split."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.inference import model_text
from training.data import (
    DATA_TO_MODEL_SENTIMENT,
    IGNORE,
    HeadRows,
    build_examples,
    fixed_dev_split,
    read_labelled_csv,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_newlines_inside_quoted_fields_is_read_row_by_row(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", 'text,label\n"line one\nline two",0\nplain,2\n')
    assert read_labelled_csv(path, 3) == [("line one\nline two", 0), ("plain", 2)]


def test_bad_label_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.csv", "text,label\nok,1\nbad,7\n")
    with pytest.raises(InputError, match=r"s\.csv line 3: label 7"):
        read_labelled_csv(path, 3)


def test_missing_file_and_missing_columns_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_labelled_csv(tmp_path / "nope.csv", 3)
    with pytest.raises(InputError, match="'text' and 'label'"):
        read_labelled_csv(_write(tmp_path / "x.csv", "body,y\na,1\n"), 3)


def test_model_text_drops_urls_decodes_entities_keeps_cashtags() -> None:
    raw = "$AAPL up &amp; away\n https://t.co/AbC123  see www.example.com/x"
    assert model_text(raw) == "$AAPL up & away see"


def test_dev_split_is_stratified_deterministic_and_disjoint(tmp_path: Path) -> None:
    rows = "".join(f"text {i},{i % 3}\n" for i in range(300))
    s = _write(tmp_path / "s.csv", "text,label\n" + rows)
    t = _write(
        tmp_path / "t.csv", "text,label\n" + "".join(f"topic {i},{i % 20}\n" for i in range(400))
    )
    train, dev = fixed_dev_split(s, t)
    again_train, again_dev = fixed_dev_split(s, t)
    assert dev == again_dev and train == again_train
    assert len(dev.sentiment) == 30 and len(dev.topic) == 40
    assert sorted(label for _, label in dev.sentiment).count(0) == 10
    assert {label for _, label in dev.topic} == set(range(20))
    assert not {x for x, _ in dev.sentiment} & {x for x, _ in train.sentiment}
    other_train, other_dev = fixed_dev_split(s, t, seed=99)
    assert other_dev != dev


def test_examples_mask_the_head_without_a_label_and_map_sentiment_ids() -> None:
    from training.train import load_tokenizer

    rows = HeadRows(
        [("shares fall", 0), ("shares rise", 1), ("meeting today", 2)], [("earnings beat", 5)]
    )
    examples = build_examples(load_tokenizer(32), rows, 32)
    assert [e.sentiment for e in examples] == [DATA_TO_MODEL_SENTIMENT[x] for x in (0, 1, 2)] + [
        IGNORE
    ]
    assert [e.topic for e in examples] == [IGNORE, IGNORE, IGNORE, 5]
    assert DATA_TO_MODEL_SENTIMENT == {0: 0, 1: 2, 2: 1}  # bearish, bullish->2, neutral->1
    assert examples[0].ids[0] == 101 and examples[0].ids[-1] == 102
