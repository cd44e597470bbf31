"""The memory cell's contract: its state round-trips through ONNX exactly as in PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pipeline.errors import ModelError
from pipeline.memory_features import feature_dim, memory_features
from training.errors import ExportParityError, MemoryExportError
from training.memory import MemoryNet
from training.memory_export import export_memory_onnx


def test_memory_state_round_trips_through_onnx_like_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    d = 8
    net = MemoryNet(feature_dim(d))
    path = tmp_path / "memory.onnx"
    report = export_memory_onnx(net, path, feature_dim(d))
    assert report["max_abs_diff"] <= 1e-5

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["state", "features"]
    assert [o.name for o in session.get_outputs()] == ["new_state", "outputs"]
    rng = np.random.default_rng(1)
    n = 5  # a batch size the export never saw: the N axis is dynamic
    o_state = np.zeros((n, net.state_dim), dtype=np.float32)
    t_state = torch.zeros(n, net.state_dim)
    for step in range(6):
        feats = np.stack(
            [
                memory_features(
                    *rng.dirichlet([1, 1, 1]),
                    float(rng.random()),
                    rng.normal(size=d),
                    None if step == 0 else float(rng.exponential(3600)),
                )
                for _ in range(n)
            ]
        )
        o_state, o_out = session.run(None, {"state": o_state, "features": feats})
        with torch.no_grad():
            t_state, t_out = net(t_state, torch.from_numpy(feats))
        np.testing.assert_allclose(o_state, t_state.numpy(), atol=1e-5)
        np.testing.assert_allclose(o_out, t_out.numpy(), atol=1e-5)
        assert o_out.shape == (n, 3)
        assert np.all((o_out[:, 0] >= 0) & (o_out[:, 0] <= 1)), (
            "expected negative rate is a probability"
        )


def test_export_refuses_a_feature_dim_the_network_was_not_built_for(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="feature_dim"):
        export_memory_onnx(MemoryNet(10), tmp_path / "m.onnx", 11)


def test_export_errors_are_model_errors_the_cli_reports_in_one_line() -> None:
    assert issubclass(MemoryExportError, ModelError) and issubclass(ExportParityError, ModelError)


def test_memory_trained_briefly_on_synthetic_streams_exports_and_reports(tmp_path: Path) -> None:
    import json

    from training.memory_run import train_and_evaluate
    from training.memory_train import MemoryTrainConfig
    from training.simulate import synthetic_feature_bank

    bank = synthetic_feature_bank(n=300, doc_vector_dim=4, seed=0)
    train_bank, eval_bank = bank.halves(0)
    result = train_and_evaluate(train_bank, eval_bank, tmp_path, MemoryTrainConfig.quick(seed=1))

    for name in ("memory.onnx", "memory_report.md", "memory_report.json", "memory_detection.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "memory_report.json").read_text())
    assert saved["feature_dim"] == bank.feature_dim and saved["state_dim"] == 32
    assert saved["export"]["max_abs_diff"] <= 1e-5
    table = result["sets"]["held-out streams"]["table"]
    assert [row["false_alarms_per_1000"] for row in table] == [0.5, 1.0, 2.0, 5.0, 10.0]
    assert {"memory", "ewma_z", "cusum"} <= set(table[-1])
    assert set(result["sets"]["held-out streams"]["breakdown_at_selection_false_alarms"]) <= {
        "memory",
        "ewma_z",
        "cusum",
    }
    assert "Verdict" in (tmp_path / "memory_report.md").read_text()


def test_memory_training_is_deterministic_for_a_seed() -> None:
    from training.memory_train import MemoryTrainConfig, train_memory
    from training.simulate import simulate_streams, synthetic_feature_bank

    config = MemoryTrainConfig.quick(seed=3)
    bank = synthetic_feature_bank(n=200, doc_vector_dim=4, seed=0)
    streams = simulate_streams(bank, 8, seed=1, config=config.sim)
    val = simulate_streams(bank, 4, seed=2, config=config.sim)
    a, _ = train_memory(streams, val, config)
    b, _ = train_memory(streams, val, config)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def _run_net(net: MemoryNet, p_bearish: list[float], gaps_s: list[float | None]) -> np.ndarray:
    """outputs [T, 3] of ``net`` over one key's documents with these bearish probabilities
    and gaps (seconds; None = the key's first document)."""
    state = net.initial_state(1)
    rows = []
    with torch.no_grad():
        for p, gap in zip(p_bearish, gaps_s, strict=True):
            feats = memory_features(p, (1 - p) / 2, (1 - p) / 2, 0.8, np.zeros(4), gap)
            state, out = net(state, torch.from_numpy(feats).unsqueeze(0))
            rows.append(out[0].numpy())
    return np.stack(rows)


def test_negativity_surge_ignores_arrival_times_and_volume_surge_reads_them() -> None:
    """The same documents a week apart or a minute apart: identical negativity scores and
    expected rates (volume-normalised by construction), different volume scores."""
    torch.manual_seed(0)
    net = MemoryNet(feature_dim(4)).eval()
    rng = np.random.default_rng(2)
    p = [float(x) for x in rng.beta(1, 4, 60)]
    slow = _run_net(net, p, [None] + [7 * 86400.0] * 59)
    fast = _run_net(net, p, [None] + [60.0] * 59)
    np.testing.assert_array_equal(slow[:, :2], fast[:, :2])
    assert np.abs(slow[:, 2] - fast[:, 2]).max() > 1e-3
