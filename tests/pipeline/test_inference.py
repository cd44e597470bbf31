"""The ONNX runtime: classifier predictions and the memory cell's state round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ModelError
from pipeline.inference import Classifier, MemoryCell, load_model
from pipeline.records import SENTIMENTS, TOPICS
from pipeline.settings import load_settings

CPU = load_settings(ort_providers=("CPUExecutionProvider",))
TEXTS = [
    "$AAPL falls 5% after earnings miss https://t.co/x",
    "Fed holds rates",
    "",
    "a " * 400,
    "Gold &amp; silver rally",
]


def test_classify_returns_one_prediction_per_text_in_order(tiny_model_dir: Path) -> None:
    clf = Classifier.load(tiny_model_dir, CPU)
    preds = clf.classify(TEXTS)
    assert len(preds) == len(TEXTS)
    for p in preds:
        assert p.topic == TOPICS[p.topic_id] and p.sentiment in SENTIMENTS
        assert abs(p.p_bearish + p.p_neutral + p.p_bullish - 1) < 1e-5
        assert 0 < p.topic_confidence <= 1
        assert len(p.doc_vector) == clf.manifest["doc_vector_dim"]
    assert clf.classify([]) == []
    # fp32: a text's result does not depend on its batch neighbours (bucketing, padding).
    # int8 quantizes activations per batch, so there it may move by a little.
    fp32 = Classifier.load(tiny_model_dir, CPU, model_file="classifier.onnx")
    batched = fp32.classify(TEXTS)
    for text, a, b in zip(TEXTS, batched, preds, strict=True):
        alone = fp32.classify([text])[0]
        assert a.topic_id == alone.topic_id and abs(a.p_bearish - alone.p_bearish) < 1e-5
        assert abs(a.p_bearish - b.p_bearish) < 0.02
    assert clf.version == "tiny-0"


def test_unavailable_providers_fall_back_to_cpu(tiny_model_dir: Path) -> None:
    settings = load_settings(ort_providers=("NoSuchExecutionProvider",), ort_intra_threads=1)
    assert Classifier.load(tiny_model_dir, settings).provider == "CPUExecutionProvider"


def test_asking_for_cuda_on_a_cpu_runtime_logs_one_warning_saying_what_to_install(
    tiny_model_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    from pipeline import inference

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA")
    monkeypatch.setattr(inference, "_warned", set())
    cuda = load_settings(ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    with caplog.at_level("WARNING", logger="pipeline.inference"):
        for _ in range(2):
            assert Classifier.load(tiny_model_dir, cuda).provider == "CPUExecutionProvider"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "CUDAExecutionProvider" in warning and "make install-gpu" in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline.inference"):  # automatic: no warning
        assert Classifier.load(tiny_model_dir, load_settings()).provider == "CPUExecutionProvider"
        assert inference.provider_in_use(load_settings()) == "CPUExecutionProvider"
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_missing_or_broken_model_directory_raises_model_error(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with pytest.raises(ModelError, match="no manifest.json"):
        Classifier.load(tmp_path, CPU)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "classifier.int8.onnx").unlink()
    with pytest.raises(ModelError, match="classifier.int8.onnx is missing"):
        Classifier.load(broken, CPU)


def test_memory_state_round_trips_through_onnx(tiny_model_dir: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from training.export import export_memory
    from training.memory import MemoryNet

    torch.manual_seed(3)
    net = MemoryNet(6 + 16).eval()
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    entry = export_memory(model_dir, net, 16)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["memory"] = entry
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    cell = load_model(model_dir, CPU).memory
    assert isinstance(cell, MemoryCell) and cell.feature_dim == 22
    states = np.stack([cell.initial_state(), cell.initial_state()])
    t_states = torch.zeros(2, cell.state_dim)
    rng = np.random.default_rng(0)
    for step in range(5):
        feats = np.stack(
            [
                cell.features(
                    0.2, 0.5, 0.3, 0.9, rng.normal(size=16), None if step == 0 else 600.0 * k
                )
                for k in (1, 2)
            ]
        )
        states, outputs = cell.update(states, feats)  # the caller keeps the state and feeds it back
        with torch.no_grad():
            t_states, t_out = net(t_states, torch.from_numpy(feats))
        np.testing.assert_allclose(states, t_states.numpy(), atol=1e-5)
        np.testing.assert_allclose(outputs, t_out.numpy(), atol=1e-5)
    assert outputs.shape == (2, 3) and np.all((outputs[:, 0] >= 0) & (outputs[:, 0] <= 1))
    new, out = cell.update(np.zeros((0, cell.state_dim)), np.zeros((0, cell.feature_dim)))
    assert new.shape == (0, cell.state_dim) and out.shape == (0, 3)


def test_memory_features_of_wrong_size_are_refused(tiny_model_dir: Path) -> None:
    cell = MemoryCell.load(tiny_model_dir, CPU)
    with pytest.raises(ModelError, match="doc_vector_dim"):
        cell.features(0.1, 0.8, 0.1, 0.5, [0.0] * 3, None)


def test_a_two_output_memory_cell_from_before_the_split_serves_no_volume_score(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Cells exported before the negativity / volume split have outputs [N,2]: the runtime
    still returns [N,3], the volume column NaN (stored as NULL by the trends worker)."""
    torch = pytest.importorskip("torch")
    from training.memory import MemoryNet
    from training.memory_export import export_memory_onnx

    class TwoOutputs(MemoryNet):
        def forward(self, state, features):  # type: ignore[no-untyped-def, override]
            new_state, outputs = super().forward(state, features)
            return new_state, outputs[:, :2]

    torch.manual_seed(1)
    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    net = TwoOutputs(int(manifest["memory"]["feature_dim"]), int(manifest["memory"]["state_dim"]))
    export_memory_onnx(net, model_dir / "memory.onnx")
    cell = MemoryCell.load(model_dir, CPU)
    feats = np.stack([cell.features(0.2, 0.5, 0.3, 0.9, [0.0] * 16, None)] * 2)
    _, outputs = cell.update(np.zeros((2, cell.state_dim)), feats)
    assert outputs.shape == (2, 3)
    assert np.all(np.isfinite(outputs[:, :2])) and np.all(np.isnan(outputs[:, 2]))
