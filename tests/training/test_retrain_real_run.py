"""One real retraining run on the shipped data plus 200 feedback labels (skipped unless
asked for: it trains MiniLM for real, ~17 min for one epoch on 2 cores).

    FINSENT_REAL_RETRAIN='{"epochs": 1, "threads": 2, "save_checkpoints": false}' \
        .venv/bin/pytest -q -s tests/training/test_retrain_real_run.py

The champion is the shipped model (``finsent/model/``). The 387 sample-stream documents are stored
and scored by it; 200 of them (its wrong sentiment predictions first) get the sample
generator's true sentiment as human labels; then ``run_retraining`` trains a challenger on
the base CSVs (``FINSENT_DATA_DIR``, default ../shared/data) plus those labels and decides.
The outcome is printed and must be a decision (promoted or rejected), not a failure.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

CONFIG = os.environ.get(
    "FINSENT_REAL_RETRAIN"
)  # read at import: the autouse fixture clears FINSENT_*
DATA_DIR = Path(
    os.environ.get("FINSENT_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data")
)
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not CONFIG, reason="set FINSENT_REAL_RETRAIN to a TrainConfig JSON to run it"
)


def sample_truth() -> dict[str, str]:
    from finsent.demo import make_sample as ms

    truth: dict[str, str] = {}
    for pool, label in ((ms.BULLISH, "bullish"), (ms.BEARISH, "bearish"), (ms.NEUTRAL, "neutral")):
        for ticker, name in ms.COMPANIES.items():
            for template in pool:
                truth[template.format(name=name, t=ticker)] = label
    truth.update({title: label for title, label in ms.MARKET})
    truth.update({title: "bearish" for title in ms.SURGE})
    return truth


def test_real_retraining_run_on_shipped_data_and_200_labels(
    database_url: str, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from pipeline import db, registry
    from pipeline.documents import Document
    from pipeline.inference import Classifier
    from pipeline.labels import store_label
    from pipeline.settings import load_settings
    from training.api import train_config_from_json
    from training.retrain_run import run_retraining

    champion_dir = ROOT / "finsent" / "model"
    settings = load_settings(
        database_url=database_url,
        model_dir=champion_dir,
        model_registry_dir=tmp_path / "registry",
        train_sentiment_csv=DATA_DIR / "tfn_sentiment_train.csv",
        train_topic_csv=DATA_DIR / "tfn_topic_train.csv",
        ort_providers=("CPUExecutionProvider",),
    )
    engine = db.make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "truncate labels, predictions, documents, model_versions, training_runs cascade"
            )
        )
    truth = sample_truth()
    docs = [
        Document.parse_obj_or_raise(json.loads(line))
        for line in (ROOT / "finsent" / "demo" / "stream.jsonl").read_text().splitlines()
    ]
    clf = Classifier.load(champion_dir, settings)
    preds = clf.classify([d.content for d in docs])
    with engine.begin() as conn:
        for d, p in zip(docs, preds, strict=True):
            conn.execute(
                sa.text(
                    "insert into documents (id, source, kind, published_at, text, url) "
                    "values (:i, :s, :k, :p, :t, :u)"
                ),
                {
                    "i": d.id,
                    "s": d.source,
                    "k": d.kind,
                    "p": d.published_at,
                    "t": d.text,
                    "u": d.url,
                },
            )
            conn.execute(
                sa.text(
                    "insert into predictions (document_id, model_version, topic_id, topic, topic_confidence, sentiment, "
                    "p_bearish, p_neutral, p_bullish) values (:d, :v, :ti, :tn, :tc, :s, :a, :b, :c)"
                ),
                {
                    "d": d.id,
                    "v": clf.version,
                    "ti": p.topic_id,
                    "tn": p.topic,
                    "tc": p.topic_confidence,
                    "s": p.sentiment,
                    "a": p.p_bearish,
                    "b": p.p_neutral,
                    "c": p.p_bullish,
                },
            )
    wrong = [d for d, p in zip(docs, preds, strict=True) if truth[d.text] != p.sentiment]
    right = [d for d, p in zip(docs, preds, strict=True) if truth[d.text] == p.sentiment]
    with engine.begin() as conn:
        for d in (wrong + right)[:200]:
            store_label(conn, d.id, sentiment=truth[d.text], labelled_by="sample-truth")
    print(
        f"\nchampion {clf.version}: {len(wrong)} of {len(docs)} sample documents' sentiment wrong; "
        f"200 labels ({min(len(wrong), 200)} corrections)"
    )
    started = time.perf_counter()
    outcome = run_retraining(settings, config=train_config_from_json(CONFIG), engine=engine)
    print(outcome.summary())
    print(f"wall time {time.perf_counter() - started:.1f} s")
    engine.dispose()
    assert outcome.status in ("promoted", "rejected"), outcome.reason
    assert outcome.challenger_metrics and outcome.champion_metrics
    champion = registry.current_champion(db.make_engine(database_url))
    assert champion is not None
    assert champion.version == (
        outcome.challenger_version if outcome.status == "promoted" else clf.version
    )
