"""The model card states each head's dev accuracy with its sampling interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.card import wilson_interval, write_model_card


def test_wilson_interval_matches_the_textbook_value() -> None:
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(0.86, 954)
    assert 0.83 < lo < 0.86 < hi < 0.89


def test_model_card_lists_accuracy_interval_and_teacher(tmp_path: Path) -> None:
    manifest = {
        "version": "vX",
        "doc_vector_dim": 16,
        "max_tokens": 64,
        "classifier": {
            "cpu": "classifier.int8.onnx",
            "gpu": "classifier.onnx",
            "gpu_precision": "fp16",
        },
        "memory": {"file": "memory.onnx", "state_dim": 32, "feature_dim": 22},
    }
    report = {
        "accuracy": 0.86,
        "macro_f1": 0.81,
        "n": 954,
        "precision": {},
        "recall": {},
        "f1": {},
        "support": {},
    }
    metrics = {
        "dev_int8": {"sentiment": report},
        "training": {"config": {"epochs": 5, "teacher": "/t/v1,/t/ns1"}, "history": []},
    }
    text = write_model_card(tmp_path, manifest, metrics).read_text()
    assert "| sentiment | 0.8600 | 0.837–0.881 | 0.8100 | 954 |" in text
    assert "`/t/v1,/t/ns1`" in text
