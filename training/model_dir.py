"""The complete model directory (contract in notes/model_contract.md): what
:func:`write_model_dir` writes (both classifier variants, ``memory.onnx``, tokenizer,
labels, manifest, export report), how it is measured (:func:`evaluate_model_dir`, through
the serving runtime, not PyTorch) and what :func:`finish_model_dir` adds for people
(``metrics.json``, confusion matrices, ``MODEL_CARD.md``).

Labels in rows are data-file ids (sentiment 0 bearish, 1 bullish, 2 neutral).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.inference import Classifier
from pipeline.records import SENTIMENTS, TOPICS
from pipeline.settings import load_settings
from training.batch_exact import make_batch_exact
from training.card import write_model_card
from training.data import DATA_TO_MODEL_SENTIMENT, Example, HeadRows
from training.evaluate import classification_report, plot_confusion
from training.export import export_classifier, export_memory
from training.model import MultiTaskClassifier, tokenizer_path

log = logging.getLogger(__name__)


def write_model_dir(
    model: MultiTaskClassifier,
    out_dir: Path,
    examples: Sequence[Example],
    *,
    version: str | None,
    max_tokens: int,
    memory_net: Any | None = None,
    gpu_precision: str = "fp16",
    int8_min_agreement: float = 0.98,
    optimize: bool = True,
    extra_manifest: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Path, dict[str, Any]]:
    """A complete model directory (contract in notes/model_contract.md): both classifier
    variants, memory.onnx, tokenizer.json, labels.json, manifest.json. Returns the directory
    and the export (parity) report. Metrics and the model card are added by the caller."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC)
    version = version or created.strftime("v%Y%m%d-%H%M%S")
    report = export_classifier(
        model,
        out_dir,
        examples,
        gpu_precision=gpu_precision,
        optimize=optimize,
        int8_min_agreement=int8_min_agreement,
    )
    memory = export_memory(out_dir, memory_net, model.doc_vector_dim, seed=seed)
    shutil.copyfile(tokenizer_path(), out_dir / "tokenizer.json")
    labels = {
        "topics": list(TOPICS),
        "sentiments": list(SENTIMENTS),
        "data_sentiment_ids": {"bearish": 0, "bullish": 1, "neutral": 2},
    }
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=2))
    manifest: dict[str, Any] = {
        "version": version,
        "created_at": created.isoformat(),
        "topics": list(TOPICS),
        "sentiments": list(SENTIMENTS),
        "max_tokens": int(max_tokens),
        "doc_vector_dim": int(model.doc_vector_dim),
        "classifier": {
            "cpu": "classifier.int8.onnx",
            "gpu": "classifier.onnx",
            "gpu_precision": gpu_precision,
            # int8 activation scales are calibrated and fixed (training.export): the encoder
            # and the quantized heads do not depend on the batch (training.batch_exact adds
            # cpu_exact_batching for the fp32 pooling and projection)
            "cpu_batch_independent": True,
        },
        "memory": memory,
        "tokenizer": "tokenizer.json",
        "pad_token_id": 0,
        "text_normalisation": "pipeline.inference.model_text",
    }
    manifest.update(extra_manifest or {})
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    # pooling and doc-vector projection per document in the runtime: bit-exact in any batch
    report["exact_batching"] = make_batch_exact(out_dir)
    (out_dir / "export_report.json").write_text(json.dumps(report, indent=2))
    return out_dir, report


def evaluate_model_dir(
    model_dir: Path,
    sentiment_rows: Sequence[tuple[str, int]],
    topic_rows: Sequence[tuple[str, int]],
    news_rows: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """Metrics of a model directory's CPU (int8) classifier through the serving runtime.
    Rows carry data-file label ids (sentiment 0 bearish, 1 bullish, 2 neutral);
    ``news_rows`` (the news dev set) are reported as the head ``news_sentiment``."""
    settings = load_settings(ort_providers=("CPUExecutionProvider",))
    clf = Classifier.load(Path(model_dir), settings)
    out: dict[str, Any] = {}
    for head, rows in (("sentiment", sentiment_rows), ("news_sentiment", news_rows)):
        if rows:
            preds = clf.classify([t for t, _ in rows])
            y = [DATA_TO_MODEL_SENTIMENT[label] for _, label in rows]
            out[head] = classification_report(
                y, [SENTIMENTS.index(p.sentiment) for p in preds], SENTIMENTS
            )
    if topic_rows:
        preds = clf.classify([t for t, _ in topic_rows])
        out["topic"] = classification_report(
            [label for _, label in topic_rows], [p.topic_id for p in preds], TOPICS
        )
    return out


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and macro-F1 per head, rounded: the headline of a metrics dict."""
    return {
        h: {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}
        for h, m in metrics.items()
    }


def finish_model_dir(
    model_dir: Path,
    dev: HeadRows,
    *,
    training: dict[str, Any] | None = None,
    reproduce: str = "",
    data: dict[str, Any] | None = None,
    news_dev: Sequence[tuple[str, int]] = (),
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the directory's int8 model on ``dev`` and ``news_dev`` (through the runtime)
    and write metrics.json, the confusion-matrix PNGs and MODEL_CARD.md beside it."""
    model_dir = Path(model_dir)
    dev_metrics = evaluate_model_dir(model_dir, dev.sentiment, dev.topic, news_dev)
    export_report = (
        json.loads((model_dir / "export_report.json").read_text())
        if (model_dir / "export_report.json").exists()
        else {}
    )
    manifest = json.loads((model_dir / "manifest.json").read_text())
    metrics = {
        "version": manifest["version"],
        "dev_int8": dev_metrics,
        "summary_int8": summary(dev_metrics),
        "export_parity": export_report,
        "training": training or {},
        "data": data or {},
        "reproduce": reproduce,
    }
    if calibration:
        metrics["calibration"] = calibration
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if "sentiment" in dev_metrics:
        plot_confusion(
            dev_metrics["sentiment"],
            SENTIMENTS,
            "sentiment (dev, int8)",
            model_dir / "confusion_sentiment.png",
        )
    if "news_sentiment" in dev_metrics:
        plot_confusion(
            dev_metrics["news_sentiment"],
            SENTIMENTS,
            "sentiment (news dev, int8)",
            model_dir / "confusion_news_sentiment.png",
        )
    if "topic" in dev_metrics:
        plot_confusion(
            dev_metrics["topic"], TOPICS, "topic (dev, int8)", model_dir / "confusion_topic.png"
        )
    write_model_card(model_dir, manifest, metrics, reproduce=reproduce)
    return metrics


def adopt_memory(model_dir: Path, source_dir: Path) -> bool:
    """Copy ``memory.onnx`` (and its manifest entry) from ``source_dir`` when compatible (same
    feature size): a retrained classifier keeps the champion's trained cell. Returns whether
    it was copied; an incompatible or unreadable source keeps the new cell."""
    try:
        source = json.loads((source_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    manifest = json.loads((model_dir / "manifest.json").read_text())
    mem = source.get("memory") or {}
    if (
        mem.get("feature_dim") != manifest["memory"]["feature_dim"]
        or not (source_dir / mem.get("file", "")).is_file()
    ):
        log.warning("memory cell of %s is not compatible; keeping the new one", source_dir)
        return False
    shutil.copyfile(source_dir / mem["file"], model_dir / "memory.onnx")
    manifest["memory"] = {**mem, "file": "memory.onnx"}
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return True
