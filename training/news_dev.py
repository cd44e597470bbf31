"""The hand-labelled news dev set: labels kept in the project, headline text read from a path.

``training/news_dev/labels.csv`` (the dev set) and ``training/news_train/labels.csv`` (the
train set, every other row) hold, per labelled row of the external file
``rss_finance_headlines_2021.csv.gz``, only the 0-based data row index, the SHA-256 of the
row's exact title and a sentiment (bearish, neutral or bullish). The project never vendors
the headlines: :func:`load_news_dev` reads them from the data file, checks every hash and
returns ``(title, sentiment)`` pairs. See ``training/news_dev/README.md`` and
``training/LABEL_GUIDELINE.md``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from pathlib import Path
from typing import TextIO

from pipeline.errors import InputError

#: the committed label file of the dev set (evaluation and model selection only)
DEFAULT_LABELS_PATH = Path(__file__).resolve().parent / "news_dev" / "labels.csv"
#: the committed label file of the train set: every other row of the same data file
TRAIN_LABELS_PATH = Path(__file__).resolve().parent / "news_train" / "labels.csv"
SENTIMENT_NAMES: frozenset[str] = frozenset({"bearish", "neutral", "bullish"})
LABEL_COLUMNS: tuple[str, ...] = ("row", "title_sha256", "sentiment", "labeller", "labelled_on")
DATA_COLUMNS: tuple[str, ...] = ("published", "source", "title", "description", "link")


def title_sha256(title: str) -> str:
    """Hex SHA-256 of a title exactly as the csv module reads it, encoded as UTF-8."""
    return hashlib.sha256(title.encode("utf-8")).hexdigest()


def _open_text(path: Path) -> TextIO:
    """Open a UTF-8 CSV for reading, through gzip when the name ends in ``.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_data_titles(data_path: Path) -> list[str]:
    """The ``title`` of every row of the headline data file, in file order (row 0 first)."""
    data_path = Path(data_path)
    try:
        handle = _open_text(data_path)
    except OSError as exc:
        raise InputError(
            f"cannot read the news data file {data_path}: {exc.strerror}; "
            "pass the path of rss_finance_headlines_2021.csv.gz"
        ) from exc
    try:
        with handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "title" not in reader.fieldnames:
                raise InputError(
                    f"{data_path} has no 'title' column (header {reader.fieldnames}); "
                    f"expected {','.join(DATA_COLUMNS)}"
                )
            return [record.get("title") or "" for record in reader]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{data_path} is not a readable UTF-8 (gzip) CSV file: {exc}") from exc


def read_labels(labels_path: Path = DEFAULT_LABELS_PATH) -> list[tuple[int, str, str]]:
    """``(row, title_sha256, sentiment)`` for each line of a label file, in file order.

    Raises InputError naming the file and line of a malformed entry.
    """
    labels_path = Path(labels_path)
    try:
        handle = labels_path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot read the label file {labels_path}: {exc.strerror}") from exc
    out: list[tuple[int, str, str]] = []
    seen: set[int] = set()
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in LABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{labels_path} lacks column(s) {', '.join(missing)}; "
                f"expected header {','.join(LABEL_COLUMNS)}"
            )
        for record in reader:
            where = f"{labels_path} line {reader.line_num}"
            raw_row = (record.get("row") or "").strip()
            try:
                row = int(raw_row)
            except ValueError:
                raise InputError(f"{where}: row {raw_row!r} is not an integer") from None
            if row < 0:
                raise InputError(f"{where}: row {row} is negative")
            if row in seen:
                raise InputError(f"{where}: row {row} is labelled twice")
            seen.add(row)
            digest = (record.get("title_sha256") or "").strip().lower()
            if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
                raise InputError(f"{where}: title_sha256 {digest!r} is not a SHA-256 hex digest")
            sentiment = (record.get("sentiment") or "").strip()
            if sentiment not in SENTIMENT_NAMES:
                raise InputError(
                    f"{where}: sentiment {sentiment!r} is not one of {sorted(SENTIMENT_NAMES)}"
                )
            out.append((row, digest, sentiment))
    if not out:
        raise InputError(f"{labels_path} has no labelled rows")
    return out


def load_news_dev(
    data_path: Path, labels_path: Path = DEFAULT_LABELS_PATH
) -> list[tuple[str, str]]:
    """``(text, sentiment)`` pairs of the hand-labelled news dev set, in label-file order.

    ``text`` is the headline (the model input), read from ``data_path`` (the external
    ``rss_finance_headlines_2021.csv.gz``) at each labelled row; ``sentiment`` is
    ``"bearish"``, ``"neutral"`` or ``"bullish"``. Every title is checked against the
    label file's SHA-256, so a different or edited data file is refused: raises InputError
    naming the data file and the row that does not match.
    """
    data_path = Path(data_path)
    titles = read_data_titles(data_path)
    pairs: list[tuple[str, str]] = []
    for row, digest, sentiment in read_labels(labels_path):
        if row >= len(titles):
            raise InputError(
                f"{data_path} has {len(titles)} data rows but {labels_path} labels row {row}; "
                "this is not the data file the labels were made for"
            )
        title = titles[row]
        if title_sha256(title) != digest:
            raise InputError(
                f"{data_path} row {row} does not match {labels_path}: the title's SHA-256 differs "
                f"(title {title[:80]!r}); this is not the data file the labels were made for"
            )
        pairs.append((title, sentiment))
    return pairs


def load_news_train(data_path: Path) -> list[tuple[str, str]]:
    """``(text, sentiment)`` pairs of the hand-labelled news **train** set (the data file's
    rows that are not in the dev set), checked like :func:`load_news_dev`."""
    return load_news_dev(data_path, TRAIN_LABELS_PATH)
