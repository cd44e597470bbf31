"""``memory.onnx``: export a trained :class:`~training.memory.MemoryNet`, prove the graph
computes what PyTorch does, and record it in the model directory's manifest.

The parity check chains several steps and feeds each runtime its own state back, because
the state a worker persists is where a small per-step difference would grow.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from training.errors import MemoryExportError
from training.memory import INPUT_NAMES, OUTPUT_NAMES, MemoryNet


def export_memory_onnx(
    net: MemoryNet,
    path: Path | str,
    feature_dim: int | None = None,
    *,
    steps: int = 4,
    batch: int = 3,
    atol: float = 1e-5,
    seed: int = 0,
) -> dict:
    """Export ``net`` to ``path`` (inputs state/features, outputs new_state/outputs, dynamic N)
    and check parity against PyTorch over ``steps`` chained steps, feeding each runtime its own
    state back (so drift through the recurrence is caught). Raises :class:`MemoryExportError`
    when the max abs difference exceeds ``atol``. Returns {"max_abs_diff", "steps", "path"}.
    """
    import onnxruntime as ort

    feature_dim = net.feature_dim if feature_dim is None else int(feature_dim)
    if feature_dim != net.feature_dim:
        raise ValueError(
            f"feature_dim {feature_dim} does not match the network's {net.feature_dim}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    example = (torch.zeros(2, net.state_dim), torch.zeros(2, feature_dim))
    # The TorchScript exporter: fast (~1 s), exact for a GRUCell, and available in the pinned
    # torch; its deprecation warning is torch's noise, not ours, so it is silenced here only.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                "state": {0: "N"},
                "features": {0: "N"},
                "new_state": {0: "N"},
                "outputs": {0: "N"},
            },
            opset_version=17,
            dynamo=False,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    t_state = torch.zeros(batch, net.state_dim)
    o_state = np.zeros((batch, net.state_dim), dtype=np.float32)
    worst = 0.0
    for _ in range(steps):
        feats = torch.rand(batch, feature_dim, generator=gen)
        with torch.no_grad():
            t_state, t_out = net(t_state, feats)
        o_state, o_out = session.run(
            list(OUTPUT_NAMES), {"state": o_state, "features": feats.numpy()}
        )
        worst = max(
            worst,
            float(np.abs(o_state - t_state.numpy()).max()),
            float(np.abs(o_out - t_out.numpy()).max()),
        )
    if not worst <= atol:
        raise MemoryExportError(
            f"memory.onnx differs from PyTorch by {worst:.3g} (> {atol:g}) over {steps} steps; "
            "check the onnxruntime/torch versions and re-export"
        )
    return {"max_abs_diff": worst, "steps": steps, "path": str(path)}


def update_manifest_memory(
    model_dir: Path, *, state_dim: int, feature_dim: int, extra: dict | None = None
) -> dict:
    """Set manifest.json's "memory" entry (written atomically); returns the manifest."""
    path = Path(model_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = {"file": "memory.onnx", "state_dim": int(state_dim), "feature_dim": int(feature_dim)}
    entry.update(extra or {})
    manifest["memory"] = entry
    tmp = path.with_name("manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return manifest
