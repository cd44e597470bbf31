"""News-domain rows for the classifier (issue #13): the hand-labelled news train set (real
headlines, text read from the external data file) and the project's own synthetic news
headlines (``training/news_synth/headlines.csv``: written for finsent, so they may live in
the repository), plus the news dev set as a second selection split.

Tweets taught the model that "bearish" means price-down language; these rows teach the
label convention of ``training/LABEL_GUIDELINE.md`` on news: collapse, insolvency, probes,
recalls, strikes and lay-offs are adverse for the company's investors.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.errors import InputError
from pipeline.records import TOPICS
from training.data import SENTIMENT_DATA_IDS, HeadRows, Row
from training.news_dev import load_news_dev, load_news_train

#: headlines written for finsent (none copied from a publisher), sentiment and topic labels
SYNTHETIC_PATH = Path(__file__).resolve().parent / "news_synth" / "headlines.csv"


def read_synthetic(path: Path = SYNTHETIC_PATH) -> HeadRows:
    """``text,sentiment,topic`` rows as (sentiment rows, topic rows) in data-file ids.
    Raises InputError naming the file and line of a bad row."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"cannot read the synthetic news file {path}: {exc.strerror}") from exc
    sentiment: list[Row] = []
    topic: list[Row] = []
    with handle:
        reader = csv.DictReader(handle)
        if set(reader.fieldnames or []) < {"text", "sentiment", "topic"}:
            raise InputError(f"{path} needs a text,sentiment,topic header, got {reader.fieldnames}")
        for record in reader:
            where = f"{path} line {reader.line_num}"
            text = (record.get("text") or "").strip()
            label = (record.get("sentiment") or "").strip()
            if not text or label not in SENTIMENT_DATA_IDS:
                raise InputError(
                    f"{where}: needs a text and a sentiment of bearish/neutral/bullish"
                )
            sentiment.append((text, SENTIMENT_DATA_IDS[label]))
            raw_topic = (record.get("topic") or "").strip()
            if raw_topic:
                if not raw_topic.isdigit() or not 0 <= int(raw_topic) < len(TOPICS):
                    raise InputError(
                        f"{where}: topic {raw_topic!r} is not an id 0..{len(TOPICS) - 1}"
                    )
                topic.append((text, int(raw_topic)))
    if not sentiment:
        raise InputError(f"{path} has no rows")
    return HeadRows(sentiment, topic)


def news_train_rows(news_csv: str, synthetic: bool, repeat: int = 1) -> HeadRows:
    """Extra training rows: the news train set joined to ``news_csv`` (when given) and the
    synthetic headlines (when ``synthetic``), each repeated ``repeat`` times."""
    if repeat < 1:
        raise ValueError(f"news_repeat must be at least 1, got {repeat}")
    sentiment: list[Row] = []
    topic: list[Row] = []
    if news_csv:
        sentiment += [(t, SENTIMENT_DATA_IDS[s]) for t, s in load_news_train(Path(news_csv))]
    if synthetic:
        synth = read_synthetic()
        sentiment += synth.sentiment
        topic += synth.topic
    return HeadRows(sentiment * repeat, topic * repeat)


def news_dev_rows(news_csv: str) -> list[Row]:
    """The news dev set as sentiment rows (data-file ids); empty without ``news_csv``."""
    if not news_csv:
        return []
    return [(t, SENTIMENT_DATA_IDS[s]) for t, s in load_news_dev(Path(news_csv))]
