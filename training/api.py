"""The training API used by ``finsent train|export`` and the retraining job.

``train_and_export`` is the whole path from CSV files to a complete model directory:
fixed dev split, fine-tuning, ONNX export with parity checks, memory cell, evaluation of
the shipped int8 model through the serving runtime, report and model card.
Labels in rows are data-file ids (sentiment 0 bearish, 1 bullish, 2 neutral).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.inference import SENTIMENTS, TOPICS
from training.data import HeadRows, build_examples, fixed_dev_split
from training.evaluate import plot_confusion
from training.export import evaluate_model_dir, write_model_dir
from training.train import (
    TrainConfig,
    TrainResult,
    load_checkpoint,
    load_tokenizer,
    train_classifier,
)

__all__ = ["TrainConfig", "train_and_export", "export_checkpoint", "evaluate_model_dir", "fixed_dev_split",
           "finish_model_dir"]

log = logging.getLogger(__name__)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {h: {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)} for h, m in metrics.items()}


def finish_model_dir(model_dir: Path, dev: HeadRows, *, training: dict[str, Any] | None = None,
                     reproduce: str = "", data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the directory's int8 model on ``dev`` (through the runtime) and write
    metrics.json, the confusion-matrix PNGs and MODEL_CARD.md beside it."""
    model_dir = Path(model_dir)
    dev_metrics = evaluate_model_dir(model_dir, dev.sentiment, dev.topic)
    export_report = json.loads((model_dir / "export_report.json").read_text()) if (model_dir / "export_report.json").exists() else {}
    manifest = json.loads((model_dir / "manifest.json").read_text())
    metrics = {"version": manifest["version"], "dev_int8": dev_metrics, "summary_int8": _summary(dev_metrics),
               "export_parity": export_report, "training": training or {}, "data": data or {},
               "reproduce": reproduce}
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if "sentiment" in dev_metrics:
        plot_confusion(dev_metrics["sentiment"], SENTIMENTS, "sentiment (dev, int8)", model_dir / "confusion_sentiment.png")
    if "topic" in dev_metrics:
        plot_confusion(dev_metrics["topic"], TOPICS, "topic (dev, int8)", model_dir / "confusion_topic.png")
    from training.card import write_model_card

    write_model_card(model_dir, manifest, metrics, reproduce=reproduce)
    return metrics


def _training_info(result: TrainResult) -> dict[str, Any]:
    return {"config": asdict(result.config), "history": result.history, "best_epoch": result.best_epoch,
            "wall_s": round(result.wall_s, 1), "train_docs_per_s": round(result.train_docs_per_s, 2),
            "steps": result.steps, "dev_pytorch": _summary(result.dev)}


def _with_extras(train: HeadRows, extra_sentiment: Sequence[tuple[str, int]], extra_topic: Sequence[tuple[str, int]]) -> HeadRows:
    return HeadRows(list(train.sentiment) + list(extra_sentiment), list(train.topic) + list(extra_topic))


def train_and_export(out_dir: Path, *, sentiment_csv: Path | None, topic_csv: Path | None,
                     extra_sentiment: Sequence[tuple[str, int]] = (), extra_topic: Sequence[tuple[str, int]] = (),
                     config: TrainConfig | None = None, version: str | None = None,
                     work_dir: Path | None = None, memory_from: Path | None = None,
                     reproduce: str = "") -> Path:
    """Train on the files' train part (+ extras), select on the fixed dev split, export a
    complete model directory to ``out_dir`` and return it. ``memory_from``: copy the
    memory cell of an existing model directory (e.g. the champion) instead of a fresh
    random one, when its feature size matches."""
    config = config or TrainConfig()
    train, dev = fixed_dev_split(sentiment_csv, topic_csv)
    train = _with_extras(train, extra_sentiment, extra_topic)
    result = train_classifier(config, train, dev, work_dir=work_dir)
    model_dir = _export(result.model, config, out_dir, dev, version=version,
                        tiny=config.tiny, memory_from=memory_from)
    finish_model_dir(model_dir, dev, training=_training_info(result), reproduce=reproduce,
                     data={"sentiment_csv": str(sentiment_csv), "topic_csv": str(topic_csv),
                           "train_rows": {"sentiment": len(train.sentiment), "topic": len(train.topic)},
                           "dev_rows": {"sentiment": len(dev.sentiment), "topic": len(dev.topic)}})
    return model_dir


def _export(model: Any, config: TrainConfig, out_dir: Path, dev: HeadRows, *, version: str | None,
            tiny: bool, memory_from: Path | None, gpu_precision: str | None = None) -> Path:
    examples = build_examples(load_tokenizer(config.max_tokens), dev, config.max_tokens)
    model_dir, _ = write_model_dir(model, Path(out_dir), examples, version=version, max_tokens=config.max_tokens,
                                   gpu_precision=gpu_precision or ("fp32" if tiny else "fp16"),
                                   int8_min_agreement=0.0 if tiny else 0.98, seed=config.seed)
    if memory_from is not None:
        adopt_memory(model_dir, Path(memory_from))
    return model_dir


def adopt_memory(model_dir: Path, source_dir: Path) -> bool:
    """Copy ``memory.onnx`` (and its manifest entry) from ``source_dir`` when compatible."""
    try:
        source = json.loads((source_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    manifest = json.loads((model_dir / "manifest.json").read_text())
    mem = source.get("memory") or {}
    if mem.get("feature_dim") != manifest["memory"]["feature_dim"] or not (source_dir / mem.get("file", "")).is_file():
        log.warning("memory cell of %s is not compatible; keeping the new one", source_dir)
        return False
    shutil.copyfile(source_dir / mem["file"], model_dir / "memory.onnx")
    manifest["memory"] = {**mem, "file": "memory.onnx"}
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return True


def export_checkpoint(checkpoint: Path, out_dir: Path, *, sentiment_csv: Path | None, topic_csv: Path | None,
                      version: str | None = None, gpu_precision: str | None = None, training: dict[str, Any] | None = None,
                      reproduce: str = "", memory_from: Path | None = None) -> Path:
    """Export a ``checkpoints/epochN.pt`` to a complete model directory (parity checked on dev)."""
    model, config = load_checkpoint(Path(checkpoint))
    _, dev = fixed_dev_split(sentiment_csv, topic_csv)
    model_dir = _export(model, config, out_dir, dev, version=version, tiny=config.tiny,
                        memory_from=memory_from, gpu_precision=gpu_precision)
    finish_model_dir(model_dir, dev, training=training, reproduce=reproduce,
                     data={"sentiment_csv": str(sentiment_csv), "topic_csv": str(topic_csv),
                           "dev_rows": {"sentiment": len(dev.sentiment), "topic": len(dev.topic)}})
    return model_dir
