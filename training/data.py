"""Labelled data for the classifier: CSV reading, the fixed dev split, batching.

Rows are ``(text, label)`` with labels **as numbered in the data files**: topic 0..19
(``pipeline.inference.TOPICS`` order) and sentiment 0 bearish, 1 bullish, 2 neutral. The
model's sentiment head is ordered bearish, neutral, bullish; :data:`DATA_TO_MODEL_SENTIMENT`
is the one place that maps between them, applied when examples are built.

Each row carries one head's label only (the two corpora share no text): an
:class:`Example` has ``-100`` (ignored by the loss) for the head it has no label for.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pipeline.errors import InputError
from pipeline.inference import model_text
from pipeline.records import SENTIMENTS, TOPICS

IGNORE = -100
#: data file sentiment id -> model output index (bearish, neutral, bullish)
DATA_TO_MODEL_SENTIMENT: dict[int, int] = {0: 0, 1: 2, 2: 1}
MODEL_TO_DATA_SENTIMENT: dict[int, int] = {v: k for k, v in DATA_TO_MODEL_SENTIMENT.items()}
SENTIMENT_DATA_IDS: dict[str, int] = {"bearish": 0, "bullish": 1, "neutral": 2}
DEV_FRACTION = 0.1
DEV_SEED = 13

Row = tuple[str, int]


class HeadRows(NamedTuple):
    """Rows per head (data-file label ids)."""

    sentiment: list[Row]
    topic: list[Row]


def read_labelled_csv(path: Path, n_classes: int) -> list[Row]:
    """``text,label`` rows of a CSV file, read with a real CSV parser (quoted fields may
    hold newlines). Raises InputError naming the file and line of a bad row."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot read {path}: {exc.strerror}; pass an existing text,label CSV"
        ) from exc
    rows: list[Row] = []
    with handle:
        reader = csv.DictReader(handle)
        if (
            not reader.fieldnames
            or "text" not in reader.fieldnames
            or "label" not in reader.fieldnames
        ):
            raise InputError(
                f"{path} must have a header with 'text' and 'label' columns, got {reader.fieldnames}"
            )
        for record in reader:
            raw = (record.get("label") or "").strip()
            try:
                label = int(raw)
            except ValueError:
                raise InputError(
                    f"{path} line {reader.line_num}: label {raw!r} is not an integer"
                ) from None
            if not 0 <= label < n_classes:
                raise InputError(
                    f"{path} line {reader.line_num}: label {label} is outside 0..{n_classes - 1}"
                )
            rows.append((record.get("text") or "", label))
    if not rows:
        raise InputError(f"{path} has no rows")
    return rows


def stratified_split(
    rows: Sequence[Row], fraction: float, seed: int
) -> tuple[list[Row], list[Row]]:
    """Per label, a seeded shuffle; the first ``round(fraction * n)`` (at least one when the
    class has two or more rows) go to dev. Deterministic for the same rows and seed."""
    by_label: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    train: list[Row] = []
    dev: list[Row] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        k = round(fraction * len(group))
        if k == 0 and len(group) >= 2 and fraction > 0:
            k = 1
        dev.extend(group[:k])
        train.extend(group[k:])
    return train, dev


def fixed_dev_split(
    sentiment_csv: Path | None,
    topic_csv: Path | None,
    seed: int = DEV_SEED,
    fraction: float = DEV_FRACTION,
) -> tuple[HeadRows, HeadRows]:
    """``(train, dev)``, each a :class:`HeadRows`: a stratified dev split per head, carved
    with a fixed seed, so every run and the retraining job select models on the same rows."""
    sent = read_labelled_csv(sentiment_csv, len(SENTIMENTS)) if sentiment_csv else []
    topic = read_labelled_csv(topic_csv, len(TOPICS)) if topic_csv else []
    s_train, s_dev = stratified_split(sent, fraction, seed)
    t_train, t_dev = stratified_split(topic, fraction, seed)
    return HeadRows(s_train, t_train), HeadRows(s_dev, t_dev)


@dataclass(frozen=True)
class Example:
    ids: list[int]
    topic: int
    sentiment: int  # model order (bearish, neutral, bullish) or IGNORE
    #: a teacher's distribution for a head without a gold label (``training.distill``)
    topic_soft: tuple[float, ...] | None = None
    sentiment_soft: tuple[float, ...] | None = None


def build_examples(tokenizer: object, rows: HeadRows, max_tokens: int) -> list[Example]:
    """Tokenise both heads' rows into masked multi-task examples."""
    tok = tokenizer  # a tokenizers.Tokenizer with truncation already enabled
    texts = [model_text(t) for t, _ in rows.sentiment] + [model_text(t) for t, _ in rows.topic]
    encodings = tok.encode_batch(texts) if texts else []  # type: ignore[attr-defined]
    out: list[Example] = []
    for i, (_, label) in enumerate(rows.sentiment):
        out.append(Example(encodings[i].ids[:max_tokens], IGNORE, DATA_TO_MODEL_SENTIMENT[label]))
    offset = len(rows.sentiment)
    for j, (_, label) in enumerate(rows.topic):
        out.append(Example(encodings[offset + j].ids[:max_tokens], label, IGNORE))
    return out


def bucketed_batches(
    examples: Sequence[Example], batch_size: int, rng: random.Random, window: int = 50
) -> Iterator[list[Example]]:
    """Shuffled batches of similar length: shuffle, sort each window of
    ``window * batch_size`` examples by length, cut batches, shuffle the batches. Keeps
    the randomness of SGD while cutting padding to a few tokens per batch."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    batches: list[list[Example]] = []
    span = window * batch_size
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: len(examples[i].ids))
        for b in range(0, len(chunk), batch_size):
            batches.append([examples[i] for i in chunk[b : b + batch_size]])
    rng.shuffle(batches)
    yield from batches
