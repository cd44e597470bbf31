"""The training package's one entry point for the application (``finsent train | export |
retrain``) and for ``python -m training``: typed keyword arguments in, result objects out.

Importing this module needs no torch: every function checks the ``train`` extra first
(:class:`~training.errors.TrainExtraMissing`, a ConfigurationError naming the install
command) and imports the heavy modules then, so the command line loads torch only for the
commands that train. Every error is a :class:`~pipeline.errors.FinsentError` whose message
says what to do; the classes are re-exported here.

Labels in the CSVs are data-file ids (sentiment 0 bearish, 1 bullish, 2 neutral).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigurationError, InputError
from training.errors import (
    ExportParityError,
    MemoryExportError,
    RetrainLocked,
    TrainExtraMissing,
    UnsafeJobState,
)
from training.extra import require_train_extra

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from pipeline.settings import Settings
    from training.retrain_report import RetrainOutcome
    from training.train import TrainConfig

__all__ = [
    "ExportParityError",
    "ExportedModel",
    "MemoryExportError",
    "RetrainLocked",
    "TrainExtraMissing",
    "TrainedModel",
    "UnsafeJobState",
    "export",
    "quiet_third_party_logs",
    "retrain_once",
    "run_retrain_schedule",
    "soup",
    "train",
    "train_config",
    "train_config_from_json",
]

#: onnxruntime's transformer optimizer logs every fusion at INFO, some of it through the root
#: logger; the export commands show progress bars and a result line instead
NOISY_LOGGERS = ("onnx_model", "fusion_base", "fusion_utils", "onnx_model_bert", "root")


@dataclass(frozen=True)
class ExportedModel:
    """A finished model directory and its headline: accuracy and macro-F1 per head of the
    shipped int8 classifier on the fixed dev split (through the serving runtime)."""

    model_dir: Path
    int8: dict[str, dict[str, float]]


@dataclass(frozen=True)
class TrainedModel:
    """A fine-tuning run: ``work_dir`` holds checkpoints, history and ``result.json``;
    ``dev_pytorch`` is the best epoch's dev accuracy / macro-F1 per head in PyTorch;
    ``exported`` is None when the run was not exported."""

    work_dir: Path
    best_epoch: int
    dev_pytorch: dict[str, dict[str, float]]
    wall_s: float
    train_docs_per_s: float
    exported: ExportedModel | None


def quiet_third_party_logs() -> None:
    """Raise :data:`NOISY_LOGGERS` to WARNING (the root logger included, so INFO logging
    becomes opt-in per logger). Call it once, after configuring logging, before
    :func:`train` or :func:`export` to get the output ``python -m training`` gives."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def train_config(**fields: Any) -> TrainConfig:
    """A :class:`~training.train.TrainConfig` with ``fields`` changed from the defaults
    (``epochs=1, tiny=True`` ...). InputError names an unknown field."""
    require_train_extra()
    from training.train import TrainConfig

    try:
        return TrainConfig(**fields)
    except TypeError as exc:
        raise InputError(f"training config: {exc}") from exc


def train_config_from_json(text: str | None) -> TrainConfig | None:
    """A TrainConfig from a JSON object of overrides (``--train-config '{"epochs": 1}'``),
    or None for no text. InputError says what is wrong with the text."""
    if not text:
        return None
    require_train_extra()
    from training.train import TrainConfig

    try:
        overrides = json.loads(text)
    except ValueError as exc:
        raise InputError(
            f"--train-config is not JSON: {exc}; give e.g. '{{\"epochs\": 1}}'"
        ) from exc
    if not isinstance(overrides, dict):
        raise InputError(
            "--train-config must be a JSON object of TrainConfig fields, e.g. '{\"epochs\": 1}'"
        )
    try:
        return TrainConfig(**overrides)
    except TypeError as exc:
        raise InputError(f"--train-config: {exc}") from exc


def train(
    work_dir: Path,
    *,
    sentiment_csv: Path | None = None,
    topic_csv: Path | None = None,
    config: TrainConfig | None = None,
    out: Path | None = None,
    version: str | None = None,
    export_model: bool = True,
    memory: bool = False,
    reproduce: str = "",
) -> TrainedModel:
    """Fine-tune on the CSVs' train part, select the best epoch on the fixed dev split,
    write ``work_dir/result.json`` and (``export_model``) export a complete model directory
    to ``out`` (default ``work_dir/model``). ``memory``: train the memory cell on the new
    classifier (needs ``sentiment_csv``; else it stays random-init, with a warning).
    ``reproduce`` is the command line recorded in metrics.json and the model card.
    Raises ConfigurationError when neither CSV is given."""
    if sentiment_csv is None and topic_csv is None:
        raise _no_data("training")
    require_train_extra()
    from training.data import fixed_dev_split
    from training.train import TrainConfig, train_classifier
    from training.train_run import build_model_dir, training_info

    config = config or TrainConfig()
    work_dir = Path(work_dir)
    train_rows, dev = fixed_dev_split(sentiment_csv, topic_csv)
    result = train_classifier(config, train_rows, dev, work_dir=work_dir)
    info = training_info(result)
    (work_dir / "result.json").write_text(json.dumps(info, indent=2))
    exported = None
    if export_model:
        model_dir, metrics = build_model_dir(
            result.model,
            config,
            Path(out) if out else work_dir / "model",
            dev,
            version=version,
            memory_csv=sentiment_csv,
            train_memory=memory,
            training=info,
            reproduce=reproduce,
            data={"sentiment_csv": str(sentiment_csv), "topic_csv": str(topic_csv)},
        )
        exported = ExportedModel(model_dir, metrics["summary_int8"])
    return TrainedModel(
        work_dir,
        result.best_epoch,
        info["dev_pytorch"],
        info["wall_s"],
        info["train_docs_per_s"],
        exported,
    )


def export(
    checkpoint: Path,
    out: Path,
    *,
    sentiment_csv: Path | None = None,
    topic_csv: Path | None = None,
    version: str | None = None,
    gpu_precision: str | None = None,
    memory: bool = False,
    memory_from: Path | None = None,
    note: str = "",
    reproduce: str = "",
) -> ExportedModel:
    """Export a training checkpoint (``<run>/checkpoints/epochN.pt``) to a complete model
    directory ``out``, parity-checked against PyTorch on the CSVs' fixed dev split.
    ``gpu_precision``: "fp16" | "fp32" (default fp16, fp32 for a tiny model). The memory
    cell is trained on the new classifier (``memory``), copied from the model directory
    ``memory_from`` when compatible, or random-init. ``note`` goes into the model card.
    Raises InputError for a missing checkpoint, ConfigurationError without data."""
    if not Path(checkpoint).is_file():
        raise InputError(
            f"checkpoint {checkpoint} does not exist; training writes WORK_DIR/checkpoints/epochN.pt"
        )
    if sentiment_csv is None and topic_csv is None:
        raise _no_data("export checks parity on the dev split, so it")
    require_train_extra()
    from training.data import fixed_dev_split
    from training.train import load_checkpoint
    from training.train_run import build_model_dir, checkpoint_training_info

    model, config = load_checkpoint(Path(checkpoint))
    info = checkpoint_training_info(Path(checkpoint), config, note)
    _, dev = fixed_dev_split(sentiment_csv, topic_csv)
    model_dir, metrics = build_model_dir(
        model,
        config,
        Path(out),
        dev,
        version=version,
        memory_from=memory_from,
        gpu_precision=gpu_precision,
        memory_csv=sentiment_csv,
        train_memory=memory,
        training=info,
        reproduce=reproduce,
        data={
            "sentiment_csv": str(sentiment_csv),
            "topic_csv": str(topic_csv),
            "dev_rows": {"sentiment": len(dev.sentiment), "topic": len(dev.topic)},
        },
    )
    return ExportedModel(model_dir, metrics["summary_int8"])


def soup(
    checkpoints: Sequence[Path],
    out: Path,
    *,
    sentiment_csv: Path | None = None,
    topic_csv: Path | None = None,
) -> dict[str, Any]:
    """Average ``checkpoints`` greedily (model soup, judged on the fixed dev split) into the
    checkpoint ``out``, which :func:`export` reads. Returns the members, score and what was
    tried."""
    if sentiment_csv is None and topic_csv is None:
        raise _no_data("the soup is judged on the dev split, so it")
    require_train_extra()
    from training.data import fixed_dev_split
    from training.soup import greedy_soup

    _, dev = fixed_dev_split(sentiment_csv, topic_csv)
    return greedy_soup([Path(c) for c in checkpoints], dev, Path(out))


def retrain_once(
    settings: Settings,
    *,
    trigger: str = "manual",
    config: TrainConfig | None = None,
    engine: Engine | None = None,
    candidate: Path | None = None,
) -> RetrainOutcome:
    """One champion/challenger retraining run (:mod:`training.retrain_run`); with
    ``candidate``, a model directory trained elsewhere is gated instead of training. Returns the
    outcome (status 'promoted', 'rejected' or 'failed', with the reason and
    ``summary()``); raises :class:`RetrainLocked` when another run holds the lock.
    ``engine``: reuse a database engine (default: one from ``settings``, migrated first)."""
    require_train_extra()
    from training.retrain_run import run_retraining

    return run_retraining(
        settings, trigger=trigger, config=config, engine=engine, candidate=candidate
    )


def run_retrain_schedule(
    settings: Settings,
    cron: str,
    *,
    config: TrainConfig | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Retrain on the crontab schedule ``cron`` (5 fields, UTC; or 6 with leading seconds)
    until SIGTERM/SIGINT or ``stop_event`` (:mod:`training.retrain_schedule`). Raises
    ConfigurationError for an invalid expression."""
    require_train_extra()
    from training.retrain_schedule import run_schedule

    run_schedule(settings, cron, config=config, stop_event=stop_event)


def _no_data(what: str) -> ConfigurationError:
    return ConfigurationError(
        f"{what} needs labelled data: give sentiment_csv and/or topic_csv "
        "(FINSENT_TRAIN_SENTIMENT_CSV / FINSENT_TRAIN_TOPIC_CSV)"
    )
