"""train_memory_into: the memory trained on a model directory's own classifier, installed there."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from pipeline.inference import MemoryCell
from pipeline.settings import load_settings


def _sentiment_csv(path: Path) -> Path:
    words = {
        0: "plunges misses lawsuit downgrade",
        1: "soars beats upgrade record",
        2: "announces meeting schedule",
    }
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(90):
            label = i % 3
            writer.writerow([f"$TIC{i} {words[label]} item {i}", label])
    return path


def test_memory_trained_on_the_model_dirs_classifier_is_installed_and_served(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from training.memory_run import train_memory_into

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)  # the session fixture is shared: never mutate it
    data = _sentiment_csv(tmp_path / "sentiment.csv")
    cache = tmp_path / "cache"

    result = train_memory_into(model_dir, data, seed=0, quick=True, cache_dir=cache)

    manifest = json.loads((model_dir / "manifest.json").read_text())
    entry = manifest["memory"]
    assert entry["file"] == "memory.onnx" and entry["state_dim"] == 32
    assert entry["feature_dim"] == 6 + int(manifest["doc_vector_dim"]) == result["feature_dim"]
    for name in ("memory_report.md", "memory_report.json", "memory_detection.png"):
        assert (model_dir / name).is_file(), name
    assert list(cache.glob("*.npz")), "classifier features are cached per model version"

    cell = MemoryCell.load(model_dir, load_settings())
    states = np.stack([cell.initial_state()] * 2)
    feats = np.stack(
        [cell.features(0.9, 0.05, 0.05, 0.8, np.zeros(int(manifest["doc_vector_dim"])), None)] * 2
    )
    new_states, outputs = cell.update(states, feats)
    assert new_states.shape == (2, 32) and outputs.shape == (2, 3)
    assert 0.0 <= float(outputs[0, 0]) <= 1.0
