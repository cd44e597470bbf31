"""Training runs on the tiny config and the exported ONNX model matches PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.inference import Classifier  # noqa: E402
from pipeline.settings import load_settings  # noqa: E402
from training.data import build_examples  # noqa: E402
from training.errors import ExportParityError  # noqa: E402
from training.export import export_fp32, quantize_int8  # noqa: E402
from training.model_dir import write_model_dir  # noqa: E402
from training.tiny import tiny_rows  # noqa: E402
from training.train import TrainConfig, load_checkpoint, load_tokenizer, predict, train_classifier  # noqa: E402

CPU = load_settings(ort_providers=("CPUExecutionProvider",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    work = tmp_path_factory.mktemp("train")
    config = TrainConfig(
        tiny=True,
        epochs=1,
        max_steps=2,
        batch_size=8,
        max_tokens=32,
        progress=False,
        lr=1e-3,
        head_lr=1e-3,
    )
    result = train_classifier(config, tiny_rows(), tiny_rows(), work_dir=work)
    return result, work


def test_two_training_steps_write_checkpoint_history_and_config(trained: tuple) -> None:
    result, work = trained
    assert result.steps == 2
    assert json.loads((work / "history.json").read_text())[0]["step"] == 2
    assert json.loads((work / "config.json").read_text())["tiny"] is True
    model, config = load_checkpoint(work / "checkpoints" / "epoch1.pt")
    ids = torch.tensor([[101, 2054, 102]])
    with torch.no_grad():
        a = model(ids, torch.ones_like(ids))
        b = result.model(ids, torch.ones_like(ids))
    assert torch.allclose(a[0], b[0]) and config.max_steps == 2


def test_exported_model_in_runtime_matches_pytorch(trained: tuple, tmp_path: Path) -> None:
    result, _ = trained
    rows = tiny_rows()
    tok = load_tokenizer(32)
    examples = build_examples(tok, rows, 32)
    model_dir, report = write_model_dir(
        result.model,
        tmp_path / "m",
        examples,
        version="t1",
        max_tokens=32,
        gpu_precision="fp32",
        int8_min_agreement=0.0,
    )
    assert report["fp32"]["max_abs_diff_topic"] < 1e-4
    texts = [t for t, _ in rows.sentiment] + [t for t, _ in rows.topic]
    reference = predict(result.model, examples)
    fp32 = Classifier.load(model_dir, CPU, model_file="classifier.onnx")
    topic, sentiment, vectors = fp32.logits(fp32.encode(texts))
    np.testing.assert_allclose(topic, reference[0], atol=1e-4)
    np.testing.assert_allclose(sentiment, reference[1], atol=1e-4)
    np.testing.assert_allclose(vectors, reference[2], atol=1e-4)
    int8 = Classifier.load(model_dir, CPU)
    assert int8.provider == "CPUExecutionProvider"
    t8, s8, _ = int8.logits(int8.encode(texts))
    # int8 of a random 32-wide encoder is coarse, and how coarse depends on the CPU's int8
    # kernels (AVX2 vs AVX-512 VNNI): compare the logits' pattern, not their last decimals.
    # The real model's int8 precision is gated on the dev split by the export itself.
    for q, ref in ((t8, reference[0]), (s8, reference[1])):
        assert q.shape == ref.shape and np.isfinite(q).all()
        assert np.corrcoef(q.ravel(), ref.ravel())[0, 1] > 0.9
        assert np.abs(q - ref).max() < 0.5
    onnx = pytest.importorskip("onnx")
    ops = {n.op_type for n in onnx.load(str(model_dir / "classifier.int8.onnx")).graph.node}
    assert "DynamicQuantizeLinear" not in ops and "QuantizeLinear" in ops
    manifest = json.loads((model_dir / "manifest.json").read_text())
    exact = manifest["classifier"].pop("cpu_exact_batching")
    assert manifest["classifier"] == {
        "cpu": "classifier.int8.onnx",
        "gpu": "classifier.onnx",
        "gpu_precision": "fp32",
        "cpu_batch_independent": True,
    }
    assert (model_dir / exact["heads"]).is_file() and (
        model_dir / exact["doc_projection"]
    ).is_file()
    assert manifest["memory"]["feature_dim"] == 6 + manifest["doc_vector_dim"]


def test_export_fails_when_int8_disagrees_beyond_the_threshold(
    trained: tuple, tmp_path: Path
) -> None:
    result, _ = trained
    examples = build_examples(load_tokenizer(32), tiny_rows(), 32)
    with pytest.raises(ExportParityError, match="int8 argmax agrees"):
        write_model_dir(
            result.model,
            tmp_path / "m",
            examples,
            version="t2",
            max_tokens=32,
            gpu_precision="fp32",
            int8_min_agreement=1.01,
        )


def _quantized_weights(path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return [
        numpy_helper.to_array(t)
        for t in onnx.load(str(path)).graph.initializer
        if t.name.endswith("_quantized")
        and t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    ]


def test_int8_weight_formats_full_7_bit_and_uint8(trained: tuple, tmp_path: Path) -> None:
    result, _ = trained
    fp32 = export_fp32(result.model, tmp_path / "fp32.onnx")
    full = _quantized_weights(quantize_int8(fp32, tmp_path / "s8.onnx"))
    seven = _quantized_weights(quantize_int8(fp32, tmp_path / "s8r.onnx", reduce_range=True))
    unsigned = _quantized_weights(quantize_int8(fp32, tmp_path / "u8.onnx", weight_type="u8"))
    assert full and len(full) == len(seven) == len(unsigned)
    assert all(w.dtype == np.int8 for w in full + seven) and all(
        w.dtype == np.uint8 for w in unsigned
    )
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in full) == 127
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in seven) <= 64
    with pytest.raises(ValueError, match="weight_type"):
        quantize_int8(fp32, tmp_path / "bad.onnx", weight_type="s4")


def test_a_documents_int8_output_is_the_same_alone_in_any_batch_and_across_runs(
    trained: tuple, tmp_path: Path
) -> None:
    # dynamic int8 scaled activations per batch, so a label could flip with its batch mates;
    # the export freezes calibrated scales instead
    result, _ = trained
    rows = tiny_rows()
    examples = build_examples(load_tokenizer(32), rows, 32)
    model_dir, _ = write_model_dir(
        result.model,
        tmp_path / "m",
        examples,
        version="t1",
        max_tokens=32,
        gpu_precision="fp32",
        int8_min_agreement=0.0,
    )
    texts = [t for t, _ in rows.sentiment] + [t for t, _ in rows.topic]
    target = "Tour operator collapses, stranding 150,000 holidaymakers abroad"
    first = Classifier.load(
        model_dir, CPU.model_copy(update={"batch_independent_inference": False})
    )
    alone = first.logits(first.encode([target]))
    long_mates = [t + " and more words to pad the batch out further" * 3 for t in texts[:7]]
    batches = [texts[:15] + [target], [target] + long_mates, texts[::-1] + [target, target]]
    second = Classifier.load(  # a fresh session: across runs
        model_dir, CPU.model_copy(update={"batch_independent_inference": False})
    )
    for clf in (first, second):
        for batch in batches:
            outs = clf.logits(clf.encode(batch))
            for k in (0, 1, 2):
                np.testing.assert_allclose(outs[k][batch.index(target)], alone[k][0], atol=1e-5)
