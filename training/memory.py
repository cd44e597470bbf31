"""The per-key recurrent memory (``memory.onnx``): a GRU cell with a two-number head.

One step per document applied to a key (a topic or a ticker): ``state [N,H]`` and the
document's features ``[N,F]`` (built by :func:`pipeline.memory_features.memory_features`)
go in; the new state and ``outputs [N,2]`` come out:

* ``outputs[:, 0]`` — the key's expected negative (bearish) rate, a probability in [0, 1];
* ``outputs[:, 1]`` — the surge score, the logit of P(the key is in a negative surge now);
  a real number, higher means more surge. Alert rules threshold it (0 = even odds).

The state is a plain float tensor so the serving side (``pipeline.inference.MemoryCell``)
can keep it in PostgreSQL per key and feed it back, like Triton's implicit state. A key's
first state is all zeros (:func:`initial_state`).

Training lives in :mod:`training.memory_train`-style helpers below (``train_memory`` and
``train_memory_into``); they need simulated streams from :mod:`training.simulate`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

STATE_DIM = 32
INPUT_NAMES = ("state", "features")
OUTPUT_NAMES = ("new_state", "outputs")


class MemoryExportError(RuntimeError):
    """The exported memory.onnx disagrees with PyTorch: do not ship it; re-export or report a bug."""


class MemoryNet(nn.Module):
    """GRUCell(feature_dim -> state_dim) followed by a small head.

    The base features (probabilities, topic confidence, log time gap, first flag) carry the
    signal; the document vector adds context. The head reads the new state only, so
    everything the outputs depend on is in the state a worker persists.
    """

    def __init__(self, feature_dim: int, state_dim: int = STATE_DIM) -> None:
        super().__init__()
        if feature_dim < 1 or state_dim < 1:
            raise ValueError(f"feature_dim and state_dim must be positive, got {feature_dim}, {state_dim}")
        self.feature_dim = int(feature_dim)
        self.state_dim = int(state_dim)
        self.cell = nn.GRUCell(self.feature_dim, self.state_dim)
        self.head = nn.Sequential(
            nn.Linear(self.state_dim, self.state_dim),
            nn.Tanh(),
            nn.Linear(self.state_dim, 2),
        )

    def step(self, state: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step returning (new_state, negative-rate logit, surge logit): logits for the losses."""
        new_state = self.cell(features, state)
        raw = self.head(new_state)
        return new_state, raw[:, 0], raw[:, 1]

    def forward(self, state: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new_state, rate_logit, surge_logit = self.step(state, features)
        outputs = torch.stack([torch.sigmoid(rate_logit), surge_logit], dim=1)
        return new_state, outputs

    def initial_state(self, n: int = 1) -> torch.Tensor:
        return torch.zeros(n, self.state_dim)


def export_memory_onnx(net: MemoryNet, path: Path | str, feature_dim: int | None = None, *,
                       steps: int = 4, batch: int = 3, atol: float = 1e-5, seed: int = 0) -> dict:
    """Export ``net`` to ``path`` (inputs state/features, outputs new_state/outputs, dynamic N)
    and check parity against PyTorch over ``steps`` chained steps, feeding each runtime its own
    state back (so drift through the recurrence is caught). Raises :class:`MemoryExportError`
    when the max abs difference exceeds ``atol``. Returns {"max_abs_diff", "steps", "path"}.
    """
    import onnxruntime as ort

    feature_dim = net.feature_dim if feature_dim is None else int(feature_dim)
    if feature_dim != net.feature_dim:
        raise ValueError(f"feature_dim {feature_dim} does not match the network's {net.feature_dim}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    example = (torch.zeros(2, net.state_dim), torch.zeros(2, feature_dim))
    # The TorchScript exporter: fast (~1 s), exact for a GRUCell, and available in the pinned
    # torch; its deprecation warning is torch's noise, not ours, so it is silenced here only.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, example, str(path),
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_axes={"state": {0: "N"}, "features": {0: "N"}, "new_state": {0: "N"}, "outputs": {0: "N"}},
            opset_version=17, dynamo=False,
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
        o_state, o_out = session.run(list(OUTPUT_NAMES), {"state": o_state, "features": feats.numpy()})
        worst = max(worst, float(np.abs(o_state - t_state.numpy()).max()), float(np.abs(o_out - t_out.numpy()).max()))
    if not worst <= atol:
        raise MemoryExportError(
            f"memory.onnx differs from PyTorch by {worst:.3g} (> {atol:g}) over {steps} steps; "
            "check the onnxruntime/torch versions and re-export"
        )
    return {"max_abs_diff": worst, "steps": steps, "path": str(path)}
