"""The per-key recurrent memory network (what ``memory.onnx`` computes): a GRU cell with a
three-number head.

One step per document applied to a key (a topic or a ticker): ``state [N,H]`` and the
document's features ``[N,F]`` (built by :func:`pipeline.memory_features.memory_features`)
go in; the new state and ``outputs [N,3]`` come out:

* ``outputs[:, 0]`` — the key's expected negative (bearish) rate, a probability in [0, 1];
* ``outputs[:, 1]`` — the **negativity** surge score, the logit of P(the key's bearish rate
  is lifted above its own level now). It is *volume-normalised by construction*: the GRU
  and its head never see the arrival times (the gap and first-document features are masked
  out of their inputs, and the arrival-rate statistic is not among their derived inputs),
  so it depends only on the sequence of document sentiments. A news burst at the key's usual
  negativity moves it no more than the same documents spread over a week.
* ``outputs[:, 2]`` — the **volume** surge score, the logit of P(documents arrive at least
  twice as fast as the key's usual rate), from the arrival-rate statistics alone.

Alert rules threshold ``surge_score`` (negativity; 0 = even odds) or, with ``score:
volume``, ``volume_surge_score``. Cells exported before this split have ``outputs [N,2]``
(a surge score that mixed both); the trends worker stores no volume score for them.

The state is a plain float tensor so the serving side (``pipeline.inference.MemoryCell``)
can keep it in PostgreSQL per key and feed it back, like Triton's implicit state. A key's
first state is all zeros (:meth:`MemoryNet.initial_state`).

The rest of the memory's life is beside this module, one job each:
:mod:`training.memory_train` (truncated BPTT over simulated streams),
:mod:`training.memory_export` (ONNX with a parity check, the manifest entry),
:mod:`training.memory_evaluate` (the comparison with the EWMA / CUSUM baselines),
:mod:`training.memory_report` (markdown, JSON, plot) and :mod:`training.memory_run`
(end to end, and ``train_memory_into(model_dir, sentiment_csv)``, what ``finsent train``
runs once the classifier is trained).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.memory_features import BASE_FEATURES

STATE_DIM = 32
INPUT_NAMES = ("state", "features")
OUTPUT_NAMES = ("new_state", "outputs")
#: what each column of ``outputs`` is (recorded in the manifest)
OUTPUT_COLUMNS = ("expected_negative_rate", "negativity_surge", "volume_surge")
#: the features that carry arrival times (log1p hours since the previous document, first flag)
TIME_FEATURES = (
    BASE_FEATURES.index("log1p_hours_since_previous"),
    BASE_FEATURES.index("first"),
)


class MemoryNet(nn.Module):
    """A GRU cell with a few fixed-decay statistics kept beside it in the same state vector.

    State layout ``[N, state_dim]``: the GRU's hidden units, then (with ``stats=True``) 9
    running statistics of the document stream, stored as offsets from training-set priors
    so the all-zero initial state means "a typical quiet key": the slow mean and second
    moment of p_bearish (decay 0.01), three fast means (0.05, 0.1, 0.3), two CUSUM
    accumulators (k = 0.25, 0.75), and a fast and slow mean of log1p(hours between
    documents) (arrival-rate change).

    Two paths read them. The **negativity** path (GRU + head: expected rate, negativity
    surge) gets the z-scores of the fast means against the key's own level, the CUSUMs, the
    level and its spread, and the document's features with the arrival-time features
    masked out: it starts from what the classical detectors know and adds what they cannot
    use (the full probability vector, topic confidence, the shape of the evidence), and it
    cannot learn "many documents" as "negative". The **volume** path is a small head over
    the arrival-rate statistics alone. Both read only the new state and the current
    document, so everything the outputs depend on is in the state a worker persists.
    """

    FAST = (0.05, 0.1, 0.3)  # decays of the fast means of p_bearish
    CUSUM_K = (0.25, 0.75)  # reference values of the CUSUM accumulators (in standard deviations)
    SLOW = 0.01  # decay of the key's own level (mean, second moment)
    GAP_FAST, GAP_SLOW = 0.1, 0.01
    N_STATS = 2 + len(FAST) + len(CUSUM_K) + 2
    N_DERIVED = len(FAST) + len(CUSUM_K) + 2  # sentiment statistics (the negativity path)
    N_VOLUME = 4  # arrival-rate change, fast and slow mean log-gap offsets, first flag

    def __init__(self, feature_dim: int, state_dim: int = STATE_DIM, *, stats: bool = True) -> None:
        super().__init__()
        n_stats = self.N_STATS if stats else 0
        if feature_dim < len(BASE_FEATURES) or state_dim <= n_stats:
            raise ValueError(
                f"feature_dim must be >= {len(BASE_FEATURES)} and state_dim > {n_stats}, "
                f"got {feature_dim}, {state_dim}"
            )
        self.feature_dim = int(feature_dim)
        self.state_dim = int(state_dim)
        self.stats = bool(stats)
        self.hidden_dim = self.state_dim - n_stats
        n_derived = self.N_DERIVED if stats else 0
        # Per-feature standardisation, fitted on training streams and baked into the ONNX
        # graph, so a classifier whose doc vectors have a large scale cannot saturate the gates.
        self.register_buffer("feature_shift", torch.zeros(self.feature_dim))
        self.register_buffer("feature_scale", torch.ones(self.feature_dim))
        # The negativity path's view of the features: arrival times masked out (with stats;
        # without them the GRU is the only memory and needs the gaps for both outputs).
        blind = torch.ones(self.feature_dim)
        if stats:
            blind[list(TIME_FEATURES)] = 0.0
        self.register_buffer("negativity_mask", blind)
        # Priors of the running statistics (quiet documents of the training streams).
        self.register_buffer(
            "prior", torch.tensor([0.15, 0.08, 0.5])
        )  # mean p, mean p^2, mean log-gap
        self.cell = nn.GRUCell(self.feature_dim + n_derived, self.hidden_dim)
        self.head = nn.Sequential(
            nn.Linear(self.hidden_dim + n_derived, 32),
            nn.Tanh(),
            nn.Linear(32, 2),
        )
        self.volume_head = nn.Sequential(
            nn.Linear(self.N_VOLUME if stats else self.hidden_dim, 8),
            nn.Tanh(),
            nn.Linear(8, 1),
        )

    def _statistics(
        self, stats: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(new stats, sentiment inputs, volume inputs) — the EWMA z-scores and CUSUMs of
        training.baselines, at several decays, against the key's own slowly tracked level;
        and the change of the mean log-gap (arrival rate)."""
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
        derived += [(mean - p_mean) * 5.0, sd * 5.0]
        new_stats = torch.stack(
            [mean - p_mean, m2 - p_m2, *new_cols, g_fast - p_gap, g_slow - p_gap], dim=1
        )
        volume = torch.stack(
            [(g_fast - g_slow) * 2.0, g_fast - p_gap, g_slow - p_gap, first], dim=1
        )
        return new_stats, torch.stack(derived, dim=1), volume

    def step(
        self, state: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step returning (new_state, negative-rate logit, negativity surge logit,
        volume surge logit): logits for the losses."""
        scaled = (features - self.feature_shift) * self.feature_scale
        if self.stats:
            hidden, stats = state[:, : self.hidden_dim], state[:, self.hidden_dim :]
            new_stats, derived, volume = self._statistics(stats, features)
            new_hidden = self.cell(
                torch.cat([scaled * self.negativity_mask, derived], dim=1), hidden
            )
            raw = self.head(torch.cat([new_hidden, derived], dim=1))
            volume_logit = self.volume_head(volume)[:, 0]
            new_state = torch.cat([new_hidden, new_stats], dim=1)
        else:
            new_state = self.cell(scaled, state)
            raw = self.head(new_state)
            volume_logit = self.volume_head(new_state)[:, 0]
        return new_state, raw[:, 0], raw[:, 1], volume_logit

    def forward(
        self, state: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new_state, rate_logit, surge_logit, volume_logit = self.step(state, features)
        outputs = torch.stack([torch.sigmoid(rate_logit), surge_logit, volume_logit], dim=1)
        return new_state, outputs

    def initial_state(self, n: int = 1) -> torch.Tensor:
        return torch.zeros(n, self.state_dim)
