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
        "recall": {"bearish": 0.7},
        "f1": {},
        "support": {},
    }
    news = {**report, "accuracy": 0.8, "macro_f1": 0.75, "n": 640, "recall": {"bearish": 0.9}}
    metrics = {
        "dev_int8": {"sentiment": report, "news_sentiment": news},
        "training": {
            "config": {"epochs": 5, "teacher": "/t/v1,/t/ns1", "news_csv": "/d/h.csv.gz"},
            "history": [],
        },
        "calibration": {
            "sentiment": {
                "temperature": 1.5,
                "fitted_on": ["dev"],
                "dev": {
                    "ece_before": 0.08,
                    "ece_after": 0.02,
                    "nll_before": 0.5,
                    "nll_after": 0.4,
                    "n": 954,
                },
            }
        },
    }
    text = write_model_card(tmp_path, manifest, metrics).read_text()
    assert "| sentiment (tweets dev) | 0.8600 | 0.837–0.881 | 0.8100 | 0.700 | 954 |" in text
    assert (
        "| sentiment (news dev, 640 headlines) | 0.8000 | 0.767–0.829 | 0.7500 | 0.900 | 640 |"
        in text
    )
    assert "| sentiment | 1.500 | dev | 0.0800 | 0.0200 | 0.5000 | 0.4000 | 954 |" in text
    assert "news train set" in text and "LABEL_GUIDELINE.md" in text
    assert "`/t/v1,/t/ns1`" in text


def test_speed_summary_takes_batch_32_eager_and_runtime_int8_from_a_bench_result() -> None:
    from training.card import speed_summary

    bench = {
        "created_at": "2026-12-06T00:00:00+00:00",
        "machine": {"cpus": 2, "int8_isa": "avx2"},
        "speed": [
            {"variant": "pytorch_eager_fp32", "batch": 32, "docs_per_s": 100.0},
            {"variant": "runtime_int8", "batch": 32, "docs_per_s": 350.0},
            {"variant": "runtime_int8", "batch": 8, "docs_per_s": 999.0},
        ],
        "quality": {"ort_int8": {"agreement_sentiment": 0.99, "agreement_topic": 0.985}},
    }
    s = speed_summary(bench)
    assert s["ratio"] == 3.5 and s["int8_isa"] == "avx2" and s["agreement_topic"] == 0.985
