"""A classifier run end to end: fixed dev split, fine-tuning, ONNX export with parity
checks, the memory cell, evaluation of the shipped int8 model through the serving runtime,
report and model card.

:func:`build_model_dir` is the one path from a trained (or loaded) model to a finished
model directory, shared by ``training.api.train`` / ``export`` and by retraining
(:func:`train_and_export`), so every directory a worker may load was made the same way.
Labels in rows are data-file ids (sentiment 0 bearish, 1 bullish, 2 neutral).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.calibrate import calibrate_model
from training.data import HeadRows, build_examples, fixed_dev_split
from training.memory_run import train_memory_into
from training.model_dir import adopt_memory, finish_model_dir, summary, write_model_dir
from training.news_data import news_dev_rows
from training.train import TrainConfig, TrainResult, load_tokenizer, train_classifier

log = logging.getLogger(__name__)


def training_info(result: TrainResult) -> dict[str, Any]:
    """What a run tells about itself (``result.json``, the "training" part of metrics.json)."""
    return {
        "config": dataclasses.asdict(result.config),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "wall_s": round(result.wall_s, 1),
        "train_docs_per_s": round(result.train_docs_per_s, 2),
        "steps": result.steps,
        "dev_pytorch": summary(result.dev),
    }


def checkpoint_training_info(
    checkpoint: Path, config: TrainConfig, note: str = ""
) -> dict[str, Any] | None:
    """The training info of the run that wrote ``checkpoint`` (``<run>/checkpoints/epochN.pt``):
    its ``result.json``, else its ``history.json``, with the checkpoint's name and ``note``;
    None when the run directory has neither (a copied or averaged checkpoint)."""
    run_dir = Path(checkpoint).parent.parent
    if (run_dir / "result.json").is_file():
        info = json.loads((run_dir / "result.json").read_text())
    elif (run_dir / "history.json").is_file():
        info = {"history": json.loads((run_dir / "history.json").read_text())}
    else:
        return None
    info.setdefault("config", dataclasses.asdict(config))
    info["exported_checkpoint"] = Path(checkpoint).name
    if note:
        info["note"] = note
    return info


def train_memory_from_csv(
    model_dir: Path, sentiment_csv: Path | None, *, quick: bool = False
) -> bool:
    """Train the memory cell on ``model_dir``'s classifier over ``sentiment_csv``'s rows and
    install it (:func:`training.memory_run.train_memory_into`). Without sentiment data the
    cell stays random-init (a warning, not an error: the topic-only model still serves)."""
    if sentiment_csv is None:
        log.warning("no sentiment CSV: the memory cell stays random-init")
        return False
    train_memory_into(Path(model_dir), Path(sentiment_csv), quick=quick, progress=not quick)
    return True


def _temperatures(calibration: dict[str, Any]) -> dict[str, Any]:
    """The manifest's record of the calibration: the temperature folded into each head."""
    return {
        "method": "temperature scaling (folded into the head weights)",
        **{h: calibration[h]["temperature"] for h in ("topic", "sentiment") if h in calibration},
    }


def build_model_dir(
    model: Any,
    config: TrainConfig,
    out_dir: Path,
    dev: HeadRows,
    *,
    version: str | None,
    memory_from: Path | None = None,
    gpu_precision: str | None = None,
    memory_csv: Path | None = None,
    train_memory: bool = False,
    training: dict[str, Any] | None = None,
    reproduce: str = "",
    data: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export ``model`` to a complete directory (parity checked on ``dev``), then give it a
    memory cell (``memory_from``'s when compatible, or trained on ``memory_csv`` with
    ``train_memory``; else a random-init one) and finish it (metrics, plots, card).
    A tiny config ships fp32 on the GPU side and skips the int8 agreement floor.
    Returns (the directory, its metrics.json content)."""
    tokenizer = load_tokenizer(config.max_tokens)
    examples = build_examples(tokenizer, dev, config.max_tokens)
    news_dev = news_dev_rows(config.news_csv)
    news_examples = build_examples(tokenizer, HeadRows(news_dev, []), config.max_tokens)
    calibration = None
    if config.calibrate:
        calibration = calibrate_model(model, {"dev": examples, "news_dev": news_examples})
        log.info("calibrated: %s", calibration)
    model_dir, _ = write_model_dir(
        model,
        Path(out_dir),
        examples + news_examples,
        version=version,
        max_tokens=config.max_tokens,
        gpu_precision=gpu_precision or ("fp32" if config.tiny else "fp16"),
        int8_min_agreement=0.0 if config.tiny else 0.98,
        seed=config.seed,
        extra_manifest={"calibration": _temperatures(calibration)} if calibration else None,
    )
    if memory_from is not None:
        adopt_memory(model_dir, Path(memory_from))
    if train_memory:
        train_memory_from_csv(model_dir, memory_csv, quick=config.tiny)
    metrics = finish_model_dir(
        model_dir,
        dev,
        training=training,
        reproduce=reproduce,
        data=data,
        news_dev=news_dev,
        calibration=calibration,
    )
    return model_dir, metrics


def train_and_export(
    out_dir: Path,
    *,
    sentiment_csv: Path | None,
    topic_csv: Path | None,
    extra_sentiment: Sequence[tuple[str, int]] = (),
    extra_topic: Sequence[tuple[str, int]] = (),
    config: TrainConfig | None = None,
    version: str | None = None,
    work_dir: Path | None = None,
    memory_from: Path | None = None,
    reproduce: str = "",
) -> Path:
    """Train on the files' train part (+ extras, e.g. feedback labels), select on the fixed
    dev split, export a complete model directory to ``out_dir`` and return it.
    ``memory_from``: copy the memory cell of an existing model directory (e.g. the
    champion) instead of a fresh random one, when its feature size matches."""
    config = config or TrainConfig()
    train, dev = fixed_dev_split(sentiment_csv, topic_csv)
    train = HeadRows(
        list(train.sentiment) + list(extra_sentiment), list(train.topic) + list(extra_topic)
    )
    result = train_classifier(config, train, dev, work_dir=work_dir)
    model_dir, _ = build_model_dir(
        result.model,
        config,
        out_dir,
        dev,
        version=version,
        memory_from=memory_from,
        training=training_info(result),
        reproduce=reproduce,
        data={
            "sentiment_csv": str(sentiment_csv),
            "topic_csv": str(topic_csv),
            "train_rows": {"sentiment": len(train.sentiment), "topic": len(train.topic)},
            "dev_rows": {"sentiment": len(dev.sentiment), "topic": len(dev.topic)},
        },
    )
    return model_dir
