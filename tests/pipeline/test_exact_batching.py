"""Exact batching: a document's prediction is bit-identical whatever batch it is scored in,
so replays reproduce every stored row while the scorer batches (training/batch_exact.py)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from pipeline.errors import ModelError
from pipeline.inference import Classifier
from pipeline.settings import Settings, load_settings

MODEL = Path(__file__).resolve().parents[2] / "finsent" / "model"
CPU = load_settings(ort_providers=("CPUExecutionProvider",))

TEXTS = [
    "Shares of Acme tumble after the company cuts its outlook",
    "Fed holds rates steady",
    "Regulators open a probe into the bank's lending practices as losses mount and customers leave",
    "Dividend raised 5%",
    "Brent crude climbs on supply worries",
    "",
    "Analysts upgrade the chipmaker to buy, citing strong data-centre demand and a rebound in PC sales",
    "Company X files for bankruptcy protection",
    "Stocks end the week flat",
] * 5


def _by_batches(clf: Classifier, texts: list[str], seed: int, size: int) -> list:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    got: dict[int, object] = {}
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        for i, p in zip(chunk, clf.classify([texts[i] for i in chunk]), strict=True):
            got[i] = p
    return [got[i] for i in range(len(texts))]


@pytest.mark.parametrize("model", ["shipped", "tiny"])
def test_predictions_are_bit_identical_in_any_batch(model: str, tiny_model_dir: Path) -> None:
    model_dir = MODEL if model == "shipped" else tiny_model_dir
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert "cpu_exact_batching" in manifest["classifier"], "export writes the exact-batching files"
    one_by_one = Classifier.load(model_dir, CPU, run_batch=1).classify(TEXTS)
    for run_batch, call_size, seed in ((8, 13, 0), (32, 45, 1), (3, 7, 2)):
        clf = Classifier.load(model_dir, CPU, run_batch=run_batch)
        assert _by_batches(clf, TEXTS, seed, call_size) == one_by_one, (run_batch, call_size)


def test_an_exact_batching_model_batches_by_default_and_others_do_not(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings: Settings = CPU.model_copy(update={"inference_run_batch": 5})
    assert Classifier.load(tiny_model_dir, settings)._run_batch == 5
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    del manifest["classifier"]["cpu_exact_batching"]
    (plain / "manifest.json").write_text(json.dumps(manifest))
    assert Classifier.load(plain, settings)._run_batch == 1
    batching = settings.model_copy(update={"batch_independent_inference": False})
    assert Classifier.load(plain, batching)._run_batch == 5


def test_a_missing_heads_file_is_a_model_error_that_says_what_to_do(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "classifier.int8.heads.onnx").unlink()
    with pytest.raises(ModelError, match="re-export"):
        Classifier.load(broken, CPU)
