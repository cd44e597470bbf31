"""Human feedback for retraining: the ``labels`` table.

A label says "this document's sentiment (and/or topic) is really X", who said so and when,
and which prediction it corrects (the newest prediction of the document at labelling time:
its model version, sentiment and topic), so one can later ask how often each model version
was corrected. Labels are append-only; when a document is labelled twice, the newest label
of each head wins at export and retraining time.

``export_labels`` writes the labels as training CSVs in the same ``text,label`` format as
the base training data (sentiment ids 0 bearish, 1 bullish, 2 neutral; topic ids 0-19), so
they can be inspected, versioned, or fed to ``finsent train`` like any other data.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.errors import InputError

SENTIMENTS = ("bearish", "neutral", "bullish")
#: sentiment name -> label id in the training data (0 bearish, 1 bullish, 2 neutral)
SENTIMENT_DATA_IDS = {"bearish": 0, "bullish": 1, "neutral": 2}
N_TOPICS = 20
MAX_LABELLER_CHARS = 200


@dataclass(frozen=True)
class FeedbackRows:
    """Training rows from the labels table: (text, label id) per head, newest label wins."""

    sentiment: list[tuple[str, int]]
    topic: list[tuple[str, int]]


def _check(
    sentiment: str | None, topic_id: int | None, labelled_by: str
) -> tuple[str | None, int | None, str]:
    if sentiment is None and topic_id is None:
        raise InputError(
            "a label needs a sentiment (bearish, neutral, bullish) or a topic id (0-19), or both"
        )
    if sentiment is not None:
        sentiment = str(sentiment).strip().lower()
        if sentiment not in SENTIMENTS:
            raise InputError(f"sentiment {sentiment!r} is not one of bearish, neutral, bullish")
    if topic_id is not None:
        if isinstance(topic_id, bool) or not isinstance(topic_id, int):
            raise InputError(
                f"topic id {topic_id!r} is not an integer; give a topic id from 0 to 19"
            )
        if not 0 <= topic_id < N_TOPICS:
            raise InputError(
                f"topic id {topic_id} is out of range; give a topic id from 0 to {N_TOPICS - 1}"
            )
    labelled_by = (labelled_by or "").strip()
    if not labelled_by:
        raise InputError("a label needs the name of who made it (labelled_by / --by)")
    if len(labelled_by) > MAX_LABELLER_CHARS:
        raise InputError(f"labelled_by is longer than {MAX_LABELLER_CHARS} characters")
    return sentiment, topic_id, labelled_by


def store_label(
    conn: Connection,
    document_id: str,
    *,
    sentiment: str | None = None,
    topic_id: int | None = None,
    labelled_by: str,
) -> int:
    """Store one human label in the caller's transaction; return its id.

    Records the prediction it corrects (the document's newest prediction, if any).
    Raises ``InputError`` for an unknown document or invalid values, so the CLI and the
    HTTP endpoint can answer the user with the reason.
    """
    sentiment, topic_id, labelled_by = _check(sentiment, topic_id, labelled_by)
    if not isinstance(document_id, str) or not document_id.strip():
        raise InputError("a label needs the id of the document it is about")
    exists = conn.execute(
        sa.text("select 1 from documents where id = :id"), {"id": document_id}
    ).first()
    if exists is None:
        raise InputError(
            f"document {document_id!r} is not in the database; label a document finsent has ingested "
            "(see the documents table)"
        )
    latest = conn.execute(
        sa.text(
            "select model_version, sentiment, topic_id from predictions where document_id = :id "
            "order by scored_at desc, model_version desc limit 1"
        ),
        {"id": document_id},
    ).first()
    label_id = conn.execute(
        sa.text(
            "insert into labels (document_id, sentiment, topic_id, labelled_by, corrects_version, "
            "corrects_sentiment, corrects_topic_id) values (:doc, :s, :t, :by, :cv, :cs, :ct) returning id"
        ),
        {
            "doc": document_id,
            "s": sentiment,
            "t": topic_id,
            "by": labelled_by,
            "cv": latest.model_version if latest else None,
            "cs": latest.sentiment if latest else None,
            "ct": latest.topic_id if latest else None,
        },
    ).scalar_one()
    return int(label_id)


def _content(title: str | None, text: str) -> str:
    """What the classifier reads (the same rule as ``Document.content``)."""
    if title and not text.startswith(title):
        return f"{title}. {text}"
    return text


def feedback_rows(bind: Engine | Connection) -> FeedbackRows:
    """Every document's newest label per head, as training rows."""
    query = sa.text(
        "select distinct on (l.document_id, head) l.document_id, head, d.title, d.text, l.sentiment, l.topic_id "
        "from labels l join documents d on d.id = l.document_id "
        "cross join lateral (values ('sentiment'), ('topic')) h(head) "
        "where (head = 'sentiment' and l.sentiment is not null) or (head = 'topic' and l.topic_id is not null) "
        "order by l.document_id, head, l.labelled_at desc, l.id desc"
    )
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            rows = conn.execute(query).all()
    else:
        rows = bind.execute(query).all()
    sentiment: list[tuple[str, int]] = []
    topic: list[tuple[str, int]] = []
    for row in rows:
        text = _content(row.title, row.text)
        if row.head == "sentiment":
            sentiment.append((text, SENTIMENT_DATA_IDS[row.sentiment]))
        else:
            topic.append((text, int(row.topic_id)))
    return FeedbackRows(sentiment=sentiment, topic=topic)


def export_labels(engine: Engine, path: Path) -> dict[str, Any]:
    """Write the feedback labels as training CSVs into the directory ``path``.

    Files: ``labels_sentiment.csv`` and ``labels_topic.csv``, header ``text,label``, the
    format of the base training data. Returns ``{"sentiment": (file, rows), "topic": ...}``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(
            f"{path} is a file; 'finsent label export' writes two CSVs into a directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    rows = feedback_rows(engine)
    written: dict[str, Any] = {}
    for head, data in (("sentiment", rows.sentiment), ("topic", rows.topic)):
        out = path / f"labels_{head}.csv"
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(data)
        written[head] = (out, len(data))
    return written
