"""A memory training run end to end: simulate streams, train, export ``memory.onnx``,
evaluate the exported graph against the baselines, write the report.

:func:`train_and_evaluate` works on any two feature banks (synthetic ones in tests and the
bench); :func:`train_memory_into` builds them from a model directory's own classifier and
installs the trained cell there (what ``training.api.train(memory=True)`` runs once the
classifier is exported).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.inference import read_manifest
from pipeline.memory_features import feature_dim
from training.data import fixed_dev_split
from training.errors import MemoryExportError
from training.memory import OUTPUT_COLUMNS
from training.memory_evaluate import evaluate_memory
from training.memory_export import export_memory_onnx, update_manifest_memory
from training.memory_report import jsonable, write_report
from training.memory_train import MemoryTrainConfig, train_memory
from training.simulate import (
    FeatureBank,
    Stream,
    classifier_feature_bank,
    no_volume_change,
    simulate_streams,
)


def stream_sets(
    train_bank: FeatureBank, eval_bank: FeatureBank, config: MemoryTrainConfig
) -> tuple[list[Stream], list[Stream], dict[str, list[Stream]]]:
    """(train, validation, held-out sets). Training and validation streams draw documents
    from ``train_bank``; the held-out sets from ``eval_bank`` with other seeds. The second
    held-out set has surges that do not change the arrival rate (an ablation)."""
    s = config.seed * 1000
    train = simulate_streams(train_bank, config.n_train_streams, seed=s + 1, config=config.sim)
    val = simulate_streams(train_bank, config.n_val_streams, seed=s + 2, config=config.sim)
    eval_sets = {
        "held-out streams": simulate_streams(
            eval_bank, config.n_eval_streams, seed=s + 3, config=config.sim
        ),
        "held-out, surges without volume change": simulate_streams(
            eval_bank, config.n_eval_streams, seed=s + 4, config=no_volume_change(config.sim)
        ),
    }
    return train, val, eval_sets


def train_and_evaluate(
    train_bank: FeatureBank,
    eval_bank: FeatureBank,
    out_dir: Path,
    config: MemoryTrainConfig,
    *,
    progress: bool = False,
    reference_onnx: Path | None = None,
) -> dict:
    """Simulate, train, export ``out_dir/memory.onnx``, evaluate the exported graph against
    the baselines on held-out streams (other seeds, other documents), write
    ``memory_report.md/.json`` and ``memory_detection.png``. Returns the result dict.
    ``reference_onnx``: an earlier cell compared on false alarms in volume bursts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val, eval_sets = stream_sets(train_bank, eval_bank, config)
    net, history = train_memory(train, val, config, progress=progress)
    onnx_path = out_dir / "memory.onnx"
    export = export_memory_onnx(net, onnx_path, net.feature_dim)
    result = evaluate_memory(onnx_path, train, eval_sets, config, reference_onnx=reference_onnx)
    result.update(
        {
            "feature_source": train_bank.source,
            "feature_dim": net.feature_dim,
            "state_dim": net.state_dim,
            "stats": net.stats,
            "train_documents": len(train_bank.labels),
            "eval_documents": len(eval_bank.labels),
            "train_seconds": history["train_seconds"],
            "best_iteration": history["best_iteration"],
            "val_delay": history["val_delay"],
            "final_loss": history["loss"][-1] if history["loss"] else None,
            "export": export,
            "config": jsonable(asdict(config)),
        }
    )
    write_report(result, out_dir)
    return result


def memory_rows(sentiment_csv: Path, quick: bool, seed: int) -> tuple[list[tuple[str, int]], str]:
    """The labelled rows the memory's streams are built from: the classifier's dev split
    (texts it never trained on, so its outputs carry realistic errors); all rows when the
    dev split is too small to hold every class (tiny test data)."""
    train, dev = fixed_dev_split(Path(sentiment_csv), None)
    rows, note = list(dev.sentiment), "the classifier's dev split"
    if any(sum(1 for _, y in rows if y == lab) < 4 for lab in (0, 1, 2)):
        rows, note = list(train.sentiment) + rows, "all rows (the dev split is too small)"
    if quick and len(rows) > 300:
        rng = np.random.default_rng(seed)
        rows = [rows[i] for i in sorted(rng.choice(len(rows), 300, replace=False))]
        note += ", 300-row sample (quick)"
    return rows, note


def train_memory_into(
    model_dir: Path,
    sentiment_csv: Path,
    *,
    seed: int = 0,
    quick: bool = False,
    cache_dir: Path | None = None,
    progress: bool = False,
    config: MemoryTrainConfig | None = None,
) -> dict:
    """Train the memory on the classifier of ``model_dir`` and install it there.

    Features come from that classifier (ONNX runtime) over ``sentiment_csv``'s dev rows,
    split in two: streams for training from one half, held-out streams for the evaluation
    from the other. Writes ``memory.onnx``, the manifest's "memory" entry and
    ``memory_report.md/.json`` + ``memory_detection.png``; returns the metrics."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    config = config or (MemoryTrainConfig.quick(seed) if quick else MemoryTrainConfig(seed=seed))
    rows, note = memory_rows(Path(sentiment_csv), quick, seed)
    bank = classifier_feature_bank(model_dir, rows, cache_dir=cache_dir)
    expected = feature_dim(int(manifest.get("doc_vector_dim", bank.doc_vector_dim)))
    if bank.feature_dim != expected:
        raise MemoryExportError(
            f"the classifier's doc vectors give {bank.feature_dim} memory features but "
            f"the manifest's doc_vector_dim implies {expected}; re-export the classifier"
        )
    train_bank, eval_bank = bank.halves(seed)
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        if (model_dir / "memory.onnx").exists():  # the cell being replaced, for the report
            reference = Path(tmp) / "previous_memory.onnx"
            shutil.copyfile(model_dir / "memory.onnx", reference)
        result = train_and_evaluate(
            train_bank, eval_bank, model_dir, config, progress=progress, reference_onnx=reference
        )
    result["documents"] = note
    write_report(result, model_dir)
    update_manifest_memory(
        model_dir,
        state_dim=result["state_dim"],
        feature_dim=result["feature_dim"],
        extra={
            "outputs": list(OUTPUT_COLUMNS),
            "surge_score_thresholds": result["surge_score_thresholds"],
        },
    )
    return result
