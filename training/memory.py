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

Training (``train_memory``, truncated BPTT over streams from :mod:`training.simulate`),
the comparison with the EWMA / CUSUM baselines (:mod:`training.baselines`) and
``train_memory_into(model_dir, sentiment_csv)`` (what ``finsent train`` calls once the
classifier is trained) are below.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.memory_features import BASE_FEATURES, feature_dim
from training.baselines import (
    Detector,
    baseline_grid,
    delay_at_false_alarm,
    describe,
    detection_curve,
    input_prior,
    point_dict,
    run_detector,
    surge_delays,
    surge_kinds,
)
from training.simulate import (
    FeatureBank,
    SimConfig,
    Stream,
    classifier_feature_bank,
    no_volume_change,
    simulate_streams,
    stack,
)

STATE_DIM = 32
INPUT_NAMES = ("state", "features")
OUTPUT_NAMES = ("new_state", "outputs")


class MemoryExportError(RuntimeError):
    """The exported memory.onnx disagrees with PyTorch: do not ship it; re-export or report a bug."""


class MemoryNet(nn.Module):
    """A GRU cell with a few fixed-decay statistics kept beside it in the same state vector.

    State layout ``[N, state_dim]``: the GRU's hidden units, then (with ``stats=True``) 9
    running statistics of the document stream, stored as offsets from training-set priors
    so the all-zero initial state means "a typical quiet key": the slow mean and second
    moment of p_bearish (decay 0.01), three fast means (0.05, 0.1, 0.3), two CUSUM
    accumulators (k = 0.25, 0.75), and a fast and slow mean of log1p(hours between
    documents) (arrival-rate change). From them
    the cell derives z-scores of the fast means against the key's own level, the CUSUM and
    the volume change; these feed both the GRU and the head, so the learned part starts
    from what the classical detectors know and adds what they cannot use (arrival times,
    the document vector, the shape of the evidence). The head reads only the new state and
    the current document, so everything the outputs depend on is in the state a worker
    persists.
    """

    FAST = (0.05, 0.1, 0.3)       # decays of the fast means of p_bearish
    CUSUM_K = (0.25, 0.75)        # reference values of the CUSUM accumulators (in standard deviations)
    SLOW = 0.01                   # decay of the key's own level (mean, second moment)
    GAP_FAST, GAP_SLOW = 0.1, 0.01
    N_STATS = 2 + len(FAST) + len(CUSUM_K) + 2
    N_DERIVED = len(FAST) + len(CUSUM_K) + 3

    def __init__(self, feature_dim: int, state_dim: int = STATE_DIM, *, stats: bool = True) -> None:
        super().__init__()
        n_stats = self.N_STATS if stats else 0
        if feature_dim < len(BASE_FEATURES) or state_dim <= n_stats:
            raise ValueError(f"feature_dim must be >= {len(BASE_FEATURES)} and state_dim > {n_stats}, "
                             f"got {feature_dim}, {state_dim}")
        self.feature_dim = int(feature_dim)
        self.state_dim = int(state_dim)
        self.stats = bool(stats)
        self.hidden_dim = self.state_dim - n_stats
        n_derived = self.N_DERIVED if stats else 0
        # Per-feature standardisation, fitted on training streams and baked into the ONNX
        # graph, so a classifier whose doc vectors have a large scale cannot saturate the gates.
        self.register_buffer("feature_shift", torch.zeros(self.feature_dim))
        self.register_buffer("feature_scale", torch.ones(self.feature_dim))
        # Priors of the running statistics (quiet documents of the training streams).
        self.register_buffer("prior", torch.tensor([0.15, 0.08, 0.5]))  # mean p, mean p^2, mean log-gap
        self.cell = nn.GRUCell(self.feature_dim + n_derived, self.hidden_dim)
        self.head = nn.Sequential(
            nn.Linear(self.hidden_dim + n_derived, 32),
            nn.Tanh(),
            nn.Linear(32, 2),
        )

    def _statistics(self, stats: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(new stats, derived inputs) — the EWMA z-scores and CUSUMs of training.baselines,
        at several decays, against the key's own slowly tracked level."""
        x = features[:, 0]
        first = features[:, 5]
        p_mean, p_m2, p_gap = self.prior[0], self.prior[1], self.prior[2]
        nf, nk = len(self.FAST), len(self.CUSUM_K)
        mean = p_mean + stats[:, 0]
        m2 = p_m2 + stats[:, 1]
        sd = torch.sqrt(torch.clamp(m2 - mean * mean, min=1e-4))
        new_cols: list[torch.Tensor] = []
        derived: list[torch.Tensor] = []
        for j, a in enumerate(self.FAST):
            fast = p_mean + stats[:, 2 + j]
            fast = fast + a * (x - fast)
            new_cols.append(fast - p_mean)
            z = torch.clamp((fast - mean) / (sd * (a / (2.0 - a)) ** 0.5), -8.0, 8.0)
            derived.append(z / 3.0)
        for j, k in enumerate(self.CUSUM_K):
            c = torch.clamp(stats[:, 2 + nf + j] + (x - mean) / sd - k, 0.0, 30.0)
            new_cols.append(c)
            derived.append(c / 5.0)
        g_fast = p_gap + stats[:, 2 + nf + nk]
        g_slow = p_gap + stats[:, 3 + nf + nk]
        gap = features[:, 4] * (1.0 - first) + g_slow * first  # a key's first document has no gap
        g_fast = g_fast + self.GAP_FAST * (gap - g_fast)
        g_slow = g_slow + self.GAP_SLOW * (gap - g_slow)
        mean = mean + self.SLOW * (x - mean)
        m2 = m2 + self.SLOW * (x * x - m2)
        derived += [(mean - p_mean) * 5.0, g_fast - g_slow, sd * 5.0]
        new_stats = torch.stack([mean - p_mean, m2 - p_m2, *new_cols, g_fast - p_gap, g_slow - p_gap], dim=1)
        return new_stats, torch.stack(derived, dim=1)

    def step(self, state: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step returning (new_state, negative-rate logit, surge logit): logits for the losses."""
        scaled = (features - self.feature_shift) * self.feature_scale
        if self.stats:
            hidden, stats = state[:, : self.hidden_dim], state[:, self.hidden_dim:]
            new_stats, derived = self._statistics(stats, features)
            new_hidden = self.cell(torch.cat([scaled, derived], dim=1), hidden)
            raw = self.head(torch.cat([new_hidden, derived], dim=1))
            new_state = torch.cat([new_hidden, new_stats], dim=1)
        else:
            new_state = self.cell(scaled, state)
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


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class MemoryTrainConfig:
    """Every knob of the memory's training and evaluation. Sizes are in simulated streams
    of ``sim.n_steps`` documents; ``iterations`` are mini-batches of whole streams, each cut
    into ``tbptt``-document chunks (truncated back-propagation through time)."""

    state_dim: int = STATE_DIM
    stats: bool = True                    # running statistics beside the GRU (see MemoryNet)
    n_train_streams: int = 384
    n_val_streams: int = 128
    n_eval_streams: int = 400
    iterations: int = 200
    batch: int = 32
    tbptt: int = 100
    lr: float = 3e-3
    rate_weight: float = 1.0
    # Share of documents whose doc vector is replaced by the training mean. 1.0 (the default)
    # ignores it: on the real classifier's features it overfit the few hundred training
    # documents (held-out delay ratios vs the baselines 0.83-1.04 at 0.5, 0.82-1.00 at 1.0).
    doc_vector_dropout: float = 1.0
    eval_every: int = 25
    selection_false_alarms: float = 2.0   # per 1000 quiet documents: where checkpoints are compared
    report_false_alarms: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
    sim: SimConfig = field(default_factory=SimConfig)
    seed: int = 0

    @classmethod
    def quick(cls, seed: int = 0) -> MemoryTrainConfig:
        """Seconds, not minutes: for tests and smoke runs (numbers are not meaningful)."""
        return cls(n_train_streams=24, n_val_streams=12, n_eval_streams=24, iterations=6, batch=8,
                   tbptt=50, eval_every=3, sim=SimConfig(n_steps=200, duration=(15, 60)), seed=seed)


def _stream_tensors(streams: Sequence[Stream]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """features [B,T,F], in_surge [B,T], true_rate [B,T] as float32 tensors."""
    return (torch.from_numpy(stack(streams, "features")),
            torch.from_numpy(stack(streams, "in_surge").astype(np.float32)),
            torch.from_numpy(stack(streams, "true_rate").astype(np.float32)))


def memory_outputs(net: MemoryNet, streams: Sequence[Stream]) -> tuple[np.ndarray, np.ndarray]:
    """(surge_score [B,T], expected_negative_rate [B,T]) of ``net`` run over whole streams."""
    feats = torch.from_numpy(stack(streams, "features"))
    b, t, _ = feats.shape
    state = net.initial_state(b)
    surge = np.empty((b, t), dtype=np.float32)
    rate = np.empty((b, t), dtype=np.float32)
    net.eval()
    with torch.no_grad():
        for i in range(t):
            state, out = net(state, feats[:, i])
            rate[:, i] = out[:, 0].numpy()
            surge[:, i] = out[:, 1].numpy()
    return surge, rate


def onnx_memory_outputs(path: Path, streams: Sequence[Stream]) -> tuple[np.ndarray, np.ndarray]:
    """Same as :func:`memory_outputs` through onnxruntime: what the trends worker computes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feats = stack(streams, "features").astype(np.float32)
    b, t, _ = feats.shape
    h = int(session.get_inputs()[0].shape[1])
    state = np.zeros((b, h), dtype=np.float32)
    surge = np.empty((b, t), dtype=np.float32)
    rate = np.empty((b, t), dtype=np.float32)
    for i in range(t):
        state, out = session.run(list(OUTPUT_NAMES), {"state": state, "features": np.ascontiguousarray(feats[:, i])})
        rate[:, i] = out[:, 0]
        surge[:, i] = out[:, 1]
    return surge, rate


def _selection_delay(streams: Sequence[Stream], scores: np.ndarray, fa: float) -> float:
    point = delay_at_false_alarm(detection_curve(streams, scores, n_thresholds=80), fa)
    return float("inf") if point is None else point.mean_delay_docs


def train_memory(train_streams: Sequence[Stream], val_streams: Sequence[Stream],
                 config: MemoryTrainConfig, *, progress: bool = False) -> tuple[MemoryNet, dict]:
    """Fit a :class:`MemoryNet` (BCE on in-surge + BCE on the true negative rate as a soft
    target) and keep the checkpoint with the shortest validation delay at
    ``config.selection_false_alarms``. Returns (net, history)."""
    threads = torch.get_num_threads()
    # Tiny per-step ops: one thread is faster than two, and far faster on a shared machine
    # where spinning OpenMP workers fight other processes for the cores.
    torch.set_num_threads(1)
    try:
        return _train_memory(train_streams, val_streams, config, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _train_memory(train_streams: Sequence[Stream], val_streams: Sequence[Stream],
                  config: MemoryTrainConfig, *, progress: bool) -> tuple[MemoryNet, dict]:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    feats, surge_y, rate_y = _stream_tensors(train_streams)
    n, t, f = feats.shape
    net = MemoryNet(f, config.state_dim, stats=config.stats)
    flat = feats.reshape(-1, f)
    shift = flat.mean(0)
    scale = 1.0 / flat.std(0).clamp_min(1e-2)
    net.feature_shift.copy_(shift)
    net.feature_scale.copy_(scale)
    quiet = torch.from_numpy(stack(train_streams, "quiet"))
    p_quiet = feats[..., 0][quiet]
    gaps = feats[..., 4][feats[..., 5] == 0]
    net.prior.copy_(torch.stack([p_quiet.mean(), (p_quiet * p_quiet).mean(), gaps.mean()]))
    n_doc = f - len(BASE_FEATURES)
    if config.doc_vector_dropout >= 1.0 and n_doc > 0:
        # Always dropped: the graph ignores the doc vector outright (zero scale), rather than
        # serving it through weights that never received a gradient.
        net.feature_scale[-n_doc:] = 0.0
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.iterations))
    bce = nn.BCEWithLogitsLoss()
    history: dict = {"loss": [], "val_delay": [], "best_iteration": 0}
    best = (float("inf"), copy.deepcopy(net.state_dict()))
    started = time.perf_counter()
    bar = range(1, config.iterations + 1)
    if progress:
        from tqdm import tqdm

        bar = tqdm(bar, desc="memory", unit="it")
    for it in bar:
        net.train()
        idx = torch.from_numpy(rng.choice(n, size=min(config.batch, n), replace=False))
        x, ys, yr = feats[idx], surge_y[idx], rate_y[idx]
        if config.doc_vector_dropout > 0 and n_doc > 0:
            keep = (torch.rand(x.shape[0], x.shape[1], 1) >= config.doc_vector_dropout).float()
            # a dropped doc vector reads as the training mean (0 after standardisation)
            x = x.clone()
            x[..., -n_doc:] = x[..., -n_doc:] * keep + shift[-n_doc:] * (1 - keep)
        state = net.initial_state(x.shape[0])
        total = 0.0
        for c0 in range(0, t, config.tbptt):
            loss = torch.zeros(())
            for i in range(c0, min(c0 + config.tbptt, t)):
                state, rate_logit, surge_logit = net.step(state, x[:, i])
                loss = loss + bce(surge_logit, ys[:, i]) + config.rate_weight * bce(rate_logit, yr[:, i])
            loss = loss / min(config.tbptt, t - c0)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            state = state.detach()
            total += float(loss.detach())
        sched.step()
        history["loss"].append(total / max(1, -(-t // config.tbptt)))
        if it % config.eval_every == 0 or it == config.iterations:
            scores, _ = memory_outputs(net, val_streams)
            delay = _selection_delay(val_streams, scores, config.selection_false_alarms)
            history["val_delay"].append((it, delay))
            if delay < best[0]:
                best = (delay, copy.deepcopy(net.state_dict()))
                history["best_iteration"] = it
    net.load_state_dict(best[1])
    net.eval()
    history["train_seconds"] = time.perf_counter() - started
    return net, history


# ----------------------------------------------------------------------------- evaluation


def _tune_baselines(streams: Sequence[Stream], prior: dict[str, float], fa: float) -> dict[str, Detector]:
    """Best EWMA and best CUSUM configuration on the *training* streams (the memory's own
    tuning data), judged like the memory: mean delay at ``fa`` false alarms per 1000."""
    best: dict[str, tuple[float, Detector]] = {}
    for det in baseline_grid():
        delay = _selection_delay(streams, run_detector(det, streams, prior), fa)
        if det.name not in best or delay < best[det.name][0]:
            best[det.name] = (delay, det)
    return {name: det for name, (_, det) in best.items()}


def compare_detectors(train_streams: Sequence[Stream], eval_sets: dict[str, Sequence[Stream]],
                      memory_scores: dict[str, np.ndarray], config: MemoryTrainConfig) -> dict:
    """The delay / false-alarm comparison of the memory with the tuned baselines on each
    held-out set. Returns a JSON-able dict with the curves and the table."""
    prior = input_prior(train_streams)
    tuned = _tune_baselines(train_streams, prior, config.selection_false_alarms)
    result: dict = {"baselines": {name: {"config": asdict(det), "description": describe(det)}
                                  for name, det in tuned.items()},
                    "sets": {}}
    for set_name, streams in eval_sets.items():
        curves = {"memory": detection_curve(streams, memory_scores[set_name])}
        for name, det in tuned.items():
            curves[name] = detection_curve(streams, run_detector(det, streams, prior))
        table = []
        for fa in config.report_false_alarms:
            row: dict = {"false_alarms_per_1000": fa}
            for name, curve in curves.items():
                row[name] = point_dict(delay_at_false_alarm(curve, fa))
            for name in tuned:
                m, b = row["memory"], row[name]
                row[f"delay_ratio_vs_{name}"] = (m["mean_delay_docs"] / b["mean_delay_docs"]
                                                 if m and b and b["mean_delay_docs"] > 0 else None)
            table.append(row)
        breakdown: dict[str, dict[str, float]] = {}
        kinds = surge_kinds(streams)
        for name, curve in curves.items():
            point = delay_at_false_alarm(curve, config.selection_false_alarms)
            if point is None:
                continue
            scores_ = memory_scores[set_name] if name == "memory" else run_detector(tuned[name], streams, prior)
            delays = surge_delays(streams, scores_, point.threshold)
            breakdown[name] = {kind: float(delays[mask].mean()) for kind, mask in kinds.items() if mask.any()}
        n_surges = sum(len(s.surges) for s in streams)
        result["sets"][set_name] = {
            "streams": len(streams), "documents": int(sum(len(s.labels) for s in streams)),
            "quiet_documents": int(sum(int(s.quiet.sum()) for s in streams)), "surges": n_surges,
            "table": table,
            "breakdown_at_selection_false_alarms": breakdown,
            "curves": {name: [asdict(p) for p in curve] for name, curve in curves.items()},
        }
    return result


def rate_error(streams: Sequence[Stream], memory_rate: np.ndarray, slow: float = 0.02) -> dict[str, float]:
    """Mean absolute error of the expected negative rate vs the truth, next to a plain slow
    EWMA of the bearish probability (what a dashboard would otherwise show)."""
    truth = stack(streams, "true_rate")
    p = stack(streams, "p_bearish").astype(np.float64)
    ewma = np.empty_like(p)
    m = np.full(p.shape[0], float(p[:, :50].mean()))
    for i in range(p.shape[1]):
        m = (1 - slow) * m + slow * p[:, i]
        ewma[:, i] = m
    return {"memory_mae": float(np.abs(memory_rate - truth).mean()),
            f"ewma{slow}_p_bearish_mae": float(np.abs(ewma - truth).mean())}


# ----------------------------------------------------------------------------- report


def report_markdown(result: dict) -> str:
    """The human report: tables per held-out set, then the setup."""
    lines = ["# Memory cell: surge detection vs baselines", ""]
    head = [f"Feature source: {result.get('feature_source', 'unknown')}."]
    if "train_seconds" in result:
        head.append(f"Trained in {result['train_seconds']:.0f} s ({result['config']['iterations']} iterations, "
                    f"best at {result['best_iteration']}).")
    if "export" in result:
        head.append(f"ONNX parity max |diff| {result['export']['max_abs_diff']:.2g}.")
    if "memory_file" in result:
        head.append(f"Memory evaluated: {result['memory_file']}.")
    if "documents" in result:
        head.append(f"Documents: {result['documents']}, split in two halves: training streams draw from "
                    "one, the held-out streams from the other.")
    cfg = result.get("config") or {}
    if cfg:
        head.append(f"Cell: state {cfg.get('state_dim')} = GRU hidden units + running statistics "
                    f"({'on' if cfg.get('stats', True) else 'off'}); doc-vector dropout "
                    f"{cfg.get('doc_vector_dropout')} (1.0 = the doc vector is ignored).")
    lines.append(" ".join(head))
    lines.append("")
    lines.append("Delay = documents from a surge's onset to the first alarm inside it; a missed surge "
                 "counts its whole labelled length. False alarms = alarm episodes starting on quiet "
                 "documents, per 1000 quiet documents. Each detector's threshold is the fastest one "
                 "within the false-alarm budget; baselines' hyper-parameters were tuned on the training "
                 "streams, like the memory.")
    for name, info in result["baselines"].items():
        lines.append(f"- {name}: {info['description']}")
    for set_name, data in result["sets"].items():
        lines += ["", f"## {set_name} ({data['streams']} streams, {data['documents']} documents, "
                      f"{data['surges']} surges)", ""]
        names = ["memory"] + list(result["baselines"])
        header = "| FA / 1000 quiet docs | " + " | ".join(
            f"{n} delay docs (median) / hours / detected" for n in names) + " | " + " | ".join(
            f"memory ÷ {n}" for n in result["baselines"]) + " |"
        lines.append(header)
        lines.append("|" + "---|" * (1 + len(names) + len(result["baselines"])))
        for row in data["table"]:
            cells = [f"{row['false_alarms_per_1000']:g}"]
            for n in names:
                p = row[n]
                cells.append("—" if p is None else
                             f"{p['mean_delay_docs']:.1f} ({p['median_delay_docs']:.0f}) / "
                             f"{p['mean_delay_hours']:.1f} h / {100 * p['detected']:.0f}%")
            for n in result["baselines"]:
                r = row[f"delay_ratio_vs_{n}"]
                cells.append("—" if r is None else f"{r:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        bd = data.get("breakdown_at_selection_false_alarms") or {}
        if bd:
            fa = (result.get("config") or {}).get("selection_false_alarms", 2.0)
            kinds = list(next(iter(bd.values())))
            lines += ["", f"Mean delay (documents) by kind of surge at {fa:g} false alarms per 1000 quiet documents:", "",
                      "| detector | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
            for name, row in bd.items():
                lines.append(f"| {name} | " + " | ".join(f"{row.get(k, float('nan')):.1f}" for k in kinds) + " |")
    lines += ["", "Expected negative rate, mean absolute error vs the true rate: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in result["rate_error"].items()), ""]
    lines.append(f"Verdict: {result['verdict']}")
    return "\n".join(lines) + "\n"


def _verdict(result: dict, set_name: str) -> str:
    rows = result["sets"][set_name]["table"]
    wins, total = 0, 0
    for row in rows:
        for n in result["baselines"]:
            r = row[f"delay_ratio_vs_{n}"]
            if r is not None:
                total += 1
                wins += r < 1.0
    if total and wins == total:
        return f"the memory detects earlier than every baseline at every false-alarm budget on '{set_name}'"
    return (f"the memory is earlier in {wins} of {total} (budget, baseline) comparisons on '{set_name}'; "
            "it does NOT beat the baselines everywhere")


def plot_curves(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, set_name in zip(axes[0], sets, strict=True):
        for name, curve in result["sets"][set_name]["curves"].items():
            pts = sorted((p["false_alarms_per_1000"], p["mean_delay_docs"]) for p in curve
                         if p["false_alarms_per_1000"] > 0)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=name, lw=2 if name == "memory" else 1.2)
        ax.set_xscale("log")
        ax.set_xlim(0.1, 50)
        ax.set_xlabel("false alarms per 1000 quiet documents")
        ax.set_ylabel("mean detection delay (documents)")
        ax.set_title(set_name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- end to end


def stream_sets(train_bank: FeatureBank, eval_bank: FeatureBank, config: MemoryTrainConfig
                ) -> tuple[list[Stream], list[Stream], dict[str, list[Stream]]]:
    """(train, validation, held-out sets). Training and validation streams draw documents
    from ``train_bank``; the held-out sets from ``eval_bank`` with other seeds. The second
    held-out set has surges that do not change the arrival rate (an ablation)."""
    s = config.seed * 1000
    train = simulate_streams(train_bank, config.n_train_streams, seed=s + 1, config=config.sim)
    val = simulate_streams(train_bank, config.n_val_streams, seed=s + 2, config=config.sim)
    eval_sets = {
        "held-out streams": simulate_streams(eval_bank, config.n_eval_streams, seed=s + 3, config=config.sim),
        "held-out, surges without volume change": simulate_streams(
            eval_bank, config.n_eval_streams, seed=s + 4, config=no_volume_change(config.sim)),
    }
    return train, val, eval_sets


def evaluate_memory(onnx_path: Path, train: Sequence[Stream], eval_sets: dict[str, list[Stream]],
                    config: MemoryTrainConfig) -> dict:
    """Run the exported ``memory.onnx`` (what the trends worker runs) over the held-out sets
    and compare it with the baselines tuned on ``train``."""
    scores: dict[str, np.ndarray] = {}
    rates: dict[str, np.ndarray] = {}
    for name, streams in eval_sets.items():
        scores[name], rates[name] = onnx_memory_outputs(Path(onnx_path), streams)
    result = compare_detectors(train, eval_sets, scores, config)
    first = next(iter(eval_sets))
    result["rate_error"] = rate_error(eval_sets[first], rates[first])
    result["surge_score_thresholds"] = {
        str(row["false_alarms_per_1000"]): row["memory"]["threshold"]
        for row in result["sets"][first]["table"] if row["memory"]}
    result["verdict"] = _verdict(result, first)
    return result


def write_report(result: dict, out_dir: Path, stem: str = "memory_report", png: str = "memory_detection.png") -> None:
    out_dir = Path(out_dir)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(report_markdown(result))
    plot_curves(result, out_dir / png)


def train_and_evaluate(train_bank: FeatureBank, eval_bank: FeatureBank, out_dir: Path,
                       config: MemoryTrainConfig, *, progress: bool = False) -> dict:
    """Simulate, train, export ``out_dir/memory.onnx``, evaluate the exported graph against
    the baselines on held-out streams (other seeds, other documents), write
    ``memory_report.md/.json`` and ``memory_detection.png``. Returns the result dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val, eval_sets = stream_sets(train_bank, eval_bank, config)
    net, history = train_memory(train, val, config, progress=progress)
    onnx_path = out_dir / "memory.onnx"
    export = export_memory_onnx(net, onnx_path, net.feature_dim)
    result = evaluate_memory(onnx_path, train, eval_sets, config)
    result.update({
        "feature_source": train_bank.source,
        "feature_dim": net.feature_dim, "state_dim": net.state_dim, "stats": net.stats,
        "train_documents": len(train_bank.labels), "eval_documents": len(eval_bank.labels),
        "train_seconds": history["train_seconds"], "best_iteration": history["best_iteration"],
        "val_delay": history["val_delay"], "final_loss": history["loss"][-1] if history["loss"] else None,
        "export": export,
        "config": _jsonable(asdict(config)),
    })
    write_report(result, out_dir)
    return result


def _jsonable(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _memory_rows(sentiment_csv: Path, quick: bool, seed: int) -> tuple[list[tuple[str, int]], str]:
    """The labelled rows the memory's streams are built from: the classifier's dev split
    (texts it never trained on, so its outputs carry realistic errors); all rows when the
    dev split is too small to hold every class (tiny test data)."""
    from training.data import fixed_dev_split

    train, dev = fixed_dev_split(Path(sentiment_csv), None)
    rows, note = list(dev.sentiment), "the classifier's dev split"
    if any(sum(1 for _, y in rows if y == lab) < 4 for lab in (0, 1, 2)):
        rows, note = list(train.sentiment) + rows, "all rows (the dev split is too small)"
    if quick and len(rows) > 300:
        rng = np.random.default_rng(seed)
        rows = [rows[i] for i in sorted(rng.choice(len(rows), 300, replace=False))]
        note += ", 300-row sample (quick)"
    return rows, note


def update_manifest_memory(model_dir: Path, *, state_dim: int, feature_dim: int,
                           extra: dict | None = None) -> dict:
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


def train_memory_into(model_dir: Path, sentiment_csv: Path, *, seed: int = 0, quick: bool = False,
                      cache_dir: Path | None = None, progress: bool = False,
                      config: MemoryTrainConfig | None = None) -> dict:
    """Train the memory on the classifier of ``model_dir`` and install it there.

    Features come from that classifier (ONNX runtime) over ``sentiment_csv``'s dev rows,
    split in two: streams for training from one half, held-out streams for the evaluation
    from the other. Writes ``memory.onnx``, the manifest's "memory" entry and
    ``memory_report.md/.json`` + ``memory_detection.png``; returns the metrics."""
    from pipeline.inference import read_manifest

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    config = config or (MemoryTrainConfig.quick(seed) if quick else MemoryTrainConfig(seed=seed))
    rows, note = _memory_rows(Path(sentiment_csv), quick, seed)
    bank = classifier_feature_bank(model_dir, rows, cache_dir=cache_dir)
    expected = feature_dim(int(manifest.get("doc_vector_dim", bank.doc_vector_dim)))
    if bank.feature_dim != expected:
        raise MemoryExportError(f"the classifier's doc vectors give {bank.feature_dim} memory features but "
                                f"the manifest's doc_vector_dim implies {expected}; re-export the classifier")
    train_bank, eval_bank = bank.halves(seed)
    result = train_and_evaluate(train_bank, eval_bank, model_dir, config, progress=progress)
    result["documents"] = note
    write_report(result, model_dir)
    update_manifest_memory(model_dir, state_dim=result["state_dim"], feature_dim=result["feature_dim"],
                           extra={"surge_score_thresholds": result["surge_score_thresholds"]})
    return result
