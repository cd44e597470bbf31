"""The news dev set loader joins external headlines to committed labels by row and hash."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pytest

from pipeline.errors import InputError
from training.news_dev import (
    DEFAULT_LABELS_PATH,
    TRAIN_LABELS_PATH,
    load_news_dev,
    read_labels,
    title_sha256,
)

# invented headlines, not taken from any feed
TITLES = [
    "Widget maker lifts forecast after record quarter",
    'Regulator fines "Acme Bank" over missing client funds, sources say',
    "What does a four-day week mean for your pay?",
    "Café chain shuts 40 sites, cutting 900 jobs",
]


def _write_data(path: Path, titles: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["published", "source", "title", "description", "link"])
        for i, title in enumerate(titles):
            writer.writerow(
                [
                    f"2021-01-0{i + 1}T00:00:00Z",
                    "Test feed",
                    title,
                    "A summary, with a comma.",
                    f"https://example.test/{i}",
                ]
            )
    return path


def _write_labels(path: Path, entries: list[tuple[int, str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["row", "title_sha256", "sentiment", "labeller", "labelled_on"])
        for row, digest, sentiment in entries:
            writer.writerow([row, digest, sentiment, "test", "2026-12-01"])
    return path


def test_loader_joins_labels_to_titles_by_row_and_hash(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "news.csv.gz", TITLES)
    labels = _write_labels(
        tmp_path / "labels.csv",
        [
            (3, title_sha256(TITLES[3]), "bearish"),
            (0, title_sha256(TITLES[0]), "bullish"),
            (2, title_sha256(TITLES[2]), "neutral"),
        ],
    )
    assert load_news_dev(data, labels) == [
        (TITLES[3], "bearish"),
        (TITLES[0], "bullish"),
        (TITLES[2], "neutral"),
    ]


def test_loader_rejects_a_data_file_whose_title_does_not_match(tmp_path: Path) -> None:
    labels = _write_labels(
        tmp_path / "labels.csv",
        [
            (0, title_sha256(TITLES[0]), "bullish"),
            (1, title_sha256(TITLES[1]), "bearish"),
        ],
    )
    edited = list(TITLES)
    edited[1] = edited[1] + " "  # a single changed character is enough
    data = _write_data(tmp_path / "news.csv.gz", edited)
    with pytest.raises(InputError, match=r"news\.csv\.gz row 1 does not match .*labels\.csv"):
        load_news_dev(data, labels)
    short = _write_data(tmp_path / "short.csv.gz", TITLES[:1])
    with pytest.raises(InputError, match="short.csv.gz has 1 data rows"):
        load_news_dev(short, labels)


def test_loader_rejects_an_unknown_sentiment(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "news.csv.gz", TITLES)
    labels = _write_labels(tmp_path / "labels.csv", [(0, title_sha256(TITLES[0]), "positive")])
    with pytest.raises(InputError, match="labels.csv line 2: sentiment 'positive'"):
        load_news_dev(data, labels)


def test_committed_label_file_is_well_formed() -> None:
    # reads only the committed labels (no headline text is needed)
    entries = read_labels(DEFAULT_LABELS_PATH)
    assert len(entries) >= 600
    assert {s for _, _, s in entries} == {"bearish", "neutral", "bullish"}


def test_committed_train_labels_share_no_row_or_title_with_the_dev_set() -> None:
    dev = read_labels(DEFAULT_LABELS_PATH)
    train = read_labels(TRAIN_LABELS_PATH)
    assert len(train) >= 1000
    assert {s for _, _, s in train} == {"bearish", "neutral", "bullish"}
    assert not {r for r, _, _ in dev} & {r for r, _, _ in train}
    assert not {h for _, h, _ in dev} & {h for _, h, _ in train}
