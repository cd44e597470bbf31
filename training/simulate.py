"""Simulated per-key document streams with labelled negative surges, for the memory cell.

There is no labelled corpus of "negative sentiment surges", so the memory is trained and
evaluated on streams built from *labelled documents*: each stream is one key (a topic or a
ticker) with its own quiet bearish rate, bursty irregular arrivals, and zero to two
negative surges of varied size, onset (step or ramp), duration and offset. At every step
we know the true bearish rate and whether the key is in a surge, so detectors can be
scored on detection delay and false alarms.

Each simulated document is a real labelled row (bearish rows more often during a surge);
what the memory sees of it comes from a :class:`FeatureBank`: the classifier's own outputs
on those texts (:func:`classifier_feature_bank`, through the ONNX runtime, so the memory
learns the served classifier's errors), or cheap synthetic features for tests
(:func:`synthetic_feature_bank`). Features are built with
:func:`pipeline.memory_features.memory_features`, exactly as the trends worker does.

Everything is deterministic for a seed: stream ``i`` of a call draws from
``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pipeline.memory_features import feature_dim, memory_features

log = logging.getLogger(__name__)

#: data-file sentiment ids (the CSV's labels)
BEARISH, BULLISH, NEUTRAL = 0, 1, 2


@dataclass(frozen=True)
class FeatureBank:
    """Per-document classifier outputs for a pool of labelled rows.

    ``labels`` are data-file sentiment ids (0 bearish, 1 bullish, 2 neutral); ``probs`` are
    in the model's output order (bearish, neutral, bullish)."""

    labels: np.ndarray  # [M] int
    probs: np.ndarray  # [M, 3] float32
    topic_confidence: np.ndarray  # [M] float32
    doc_vectors: np.ndarray  # [M, D] float32
    source: str = "unknown"

    def __post_init__(self) -> None:
        m = len(self.labels)
        if not (
            self.probs.shape == (m, 3)
            and self.topic_confidence.shape == (m,)
            and self.doc_vectors.ndim == 2
            and self.doc_vectors.shape[0] == m
        ):
            raise ValueError("FeatureBank arrays disagree on the number of documents")
        missing = {BEARISH, BULLISH, NEUTRAL} - set(np.unique(self.labels).tolist())
        if missing:
            raise ValueError(
                f"the feature bank has no documents with sentiment ids {sorted(missing)}; "
                "streams need bearish, bullish and neutral rows"
            )

    @property
    def doc_vector_dim(self) -> int:
        return int(self.doc_vectors.shape[1])

    @property
    def feature_dim(self) -> int:
        return feature_dim(self.doc_vector_dim)

    def subset(self, index: np.ndarray) -> FeatureBank:
        return FeatureBank(
            self.labels[index],
            self.probs[index],
            self.topic_confidence[index],
            self.doc_vectors[index],
            self.source,
        )

    def halves(self, seed: int = 0) -> tuple[FeatureBank, FeatureBank]:
        """A stratified 50/50 split (by label), so the memory is evaluated on documents it
        never trained on."""
        rng = np.random.default_rng(seed)
        first: list[int] = []
        second: list[int] = []
        for label in (BEARISH, BULLISH, NEUTRAL):
            idx = np.flatnonzero(self.labels == label)
            rng.shuffle(idx)
            k = (len(idx) + 1) // 2
            first.extend(idx[:k].tolist())
            second.extend(idx[k:].tolist())
        return self.subset(np.sort(first)), self.subset(np.sort(second))

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            labels=self.labels,
            probs=self.probs,
            topic_confidence=self.topic_confidence,
            doc_vectors=self.doc_vectors,
            source=np.array(self.source),
        )

    @classmethod
    def load(cls, path: Path) -> FeatureBank:
        with np.load(path) as data:
            return cls(
                data["labels"].astype(np.int64),
                data["probs"].astype(np.float32),
                data["topic_confidence"].astype(np.float32),
                data["doc_vectors"].astype(np.float32),
                str(data["source"]),
            )


def synthetic_feature_bank(
    n: int = 900,
    doc_vector_dim: int = 8,
    *,
    seed: int = 0,
    bearish_share: float = 0.15,
    accuracy: float = 0.85,
) -> FeatureBank:
    """Cheap stand-in for classifier outputs (tests, and development before a classifier
    exists): a noisy classifier that puts most mass on the true class ``accuracy`` of the
    time, and doc vectors with a weak class-dependent mean."""
    rng = np.random.default_rng(seed)
    n_bear = max(3, round(n * bearish_share))
    n_bull = max(3, round(n * 0.2))
    labels = np.array(
        [BEARISH] * n_bear + [BULLISH] * n_bull + [NEUTRAL] * max(3, n - n_bear - n_bull)
    )
    rng.shuffle(labels)
    model_index = np.array([0, 2, 1])[labels]  # data id -> model output index
    believed = np.where(
        rng.random(len(labels)) < accuracy, model_index, rng.integers(0, 3, len(labels))
    )
    alpha = np.full((len(labels), 3), 0.6)
    alpha[np.arange(len(labels)), believed] = 6.0
    probs = np.stack([rng.dirichlet(a) for a in alpha]).astype(np.float32)
    centers = rng.normal(0, 1, (3, doc_vector_dim))
    vectors = (centers[model_index] * 0.5 + rng.normal(0, 1, (len(labels), doc_vector_dim))).astype(
        np.float32
    )
    topic_conf = rng.beta(5, 2, len(labels)).astype(np.float32)
    return FeatureBank(
        labels.astype(np.int64), probs, topic_conf, vectors, f"synthetic(seed={seed})"
    )


def classifier_feature_bank(
    model_dir: Path,
    rows: Sequence[tuple[str, int]],
    *,
    cache_dir: Path | None = None,
    settings: object | None = None,
) -> FeatureBank:
    """The classifier of ``model_dir`` run (ONNX runtime, CPU) over labelled ``rows``
    (text, data-file sentiment id). Cached as a .npz keyed by the model version and the
    rows, because classifying a few thousand texts takes a minute on two cores."""
    from pipeline.inference import Classifier, read_manifest
    from pipeline.settings import load_settings

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    digest = hashlib.sha256(json.dumps([[t, int(y)] for t, y in rows]).encode()).hexdigest()[:16]
    cache_dir = (
        Path(cache_dir) if cache_dir else Path.home() / ".cache" / "finsent" / "memory_features"
    )
    safe_version = "".join(
        c if c.isalnum() or c in "-_." else "_" for c in str(manifest["version"])
    )
    cache = cache_dir / f"{safe_version}-{digest}.npz"
    source = f"classifier {manifest['version']} ({model_dir})"
    if cache.exists():
        try:
            return replace(FeatureBank.load(cache), source=source)
        except Exception as exc:  # noqa: BLE001 - a torn cache file is rebuilt, not fatal
            log.warning("ignoring unreadable feature cache %s: %s", cache, exc)
    settings = settings or load_settings(execution_providers=["CPUExecutionProvider"])
    classifier = Classifier.load(model_dir, settings)  # type: ignore[arg-type]
    texts = [t for t, _ in rows]
    preds = []
    for start in range(0, len(texts), 256):
        preds.extend(classifier.classify(texts[start : start + 256]))
    bank = FeatureBank(
        labels=np.array([int(y) for _, y in rows], dtype=np.int64),
        probs=np.array([[p.p_bearish, p.p_neutral, p.p_bullish] for p in preds], dtype=np.float32),
        topic_confidence=np.array([p.topic_confidence for p in preds], dtype=np.float32),
        doc_vectors=np.array([p.doc_vector for p in preds], dtype=np.float32).reshape(
            len(preds), -1
        ),
        source=source,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    bank.save(tmp)
    tmp.replace(cache)
    return bank


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the stream simulator. Rates are bearish shares of documents; arrival rates
    are documents per hour. Indices count documents within a stream."""

    n_steps: int = 600
    warmup: int = 40  # no surge starts, no false alarm counts, before this
    base_rate: tuple[float, float] = (0.03, 0.25)  # quiet bearish share, uniform per stream
    bullish_share: tuple[float, float] = (0.15, 0.4)  # of the non-bearish documents
    surge_counts: tuple[float, float, float] = (0.2, 0.5, 0.3)  # P(0, 1, 2 surges)
    surge_lift: tuple[float, float] = (0.12, 0.55)  # added to the base rate at the surge's peak
    max_rate: float = 0.9
    ramp_probability: float = 0.5  # onset (and, separately, offset) is a ramp
    ramp_steps: tuple[int, int] = (10, 60)
    duration: tuple[int, int] = (15, 150)  # documents at the peak
    gap_after: int = 60  # quiet documents between surges
    arrival_per_hour: tuple[float, float] = (0.5, 30.0)  # log-uniform per stream
    burst_enter: float = 0.01  # per document, quiet bursts of volume
    burst_leave: float = 0.06
    burst_multiplier: tuple[float, float] = (3.0, 10.0)
    # Bearish share added during a quiet burst (busy news days are a little more negative):
    # below the smallest surge lift, so a burst is "more news", not a negative surge.
    burst_rate_lift: tuple[float, float] = (0.0, 0.06)
    surge_volume: tuple[float, float] = (1.0, 3.0)  # arrival-rate multiplier at a surge's peak
    # A document is in a *volume* surge while the arrival rate is at least this multiple of
    # the stream's usual rate (quiet bursts, and surges that bring more coverage).
    volume_surge_multiplier: float = 2.0


@dataclass
class Surge:
    onset: int  # first document of the surge (its rate starts rising here)
    end: int  # one past the last document labelled in-surge
    lift: float
    ramp_up: int
    ramp_down: int


@dataclass
class Stream:
    """One key's simulated documents. ``features`` rows are what the memory sees."""

    features: np.ndarray  # [T, F] float32
    p_bearish: np.ndarray  # [T] the classifier's bearish probability (the baselines' input)
    is_bearish_pred: np.ndarray  # [T] bool, argmax == bearish
    labels: np.ndarray  # [T] true data-file sentiment id of each document
    hours: np.ndarray  # [T] event time since the stream's start, hours
    true_rate: np.ndarray  # [T] bearish share of the regime the document was drawn from
    in_surge: np.ndarray  # [T] bool
    quiet: np.ndarray  # [T] bool: counts toward false alarms
    base_rate: float
    surges: list[Surge] = field(default_factory=list)
    #: [T] arrival-rate multiplier of the regime each document was drawn in (1 = usual)
    volume: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: episodes of volume >= SimConfig.volume_surge_multiplier (``lift`` = their multiplier)
    volume_surges: list[Surge] = field(default_factory=list)
    #: [T] bool: counts toward a volume detector's false alarms (usual volume, not just after an episode)
    volume_quiet: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def as_volume_task(self) -> Stream:
        """The same stream with the volume episodes as its "surges": what the volume output
        is scored on by the same delay / false-alarm machinery."""
        return replace(
            self,
            in_surge=self.volume >= 0,  # unused by the detection curve; kept the right shape
            surges=list(self.volume_surges),
            quiet=self.volume_quiet,
        )


def _rate_profile(
    n: int, base: float, surges: Sequence[Surge], max_rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-document bearish rate and in-surge label. Ramp-up counts as in-surge from its
    first document; ramp-down counts while the lift is still above half its peak."""
    rate = np.full(n, base)
    label = np.zeros(n, dtype=bool)
    for s in surges:
        peak = min(base + s.lift, max_rate)
        plateau_start = s.onset + s.ramp_up
        for i in range(s.onset, min(plateau_start, n)):
            rate[i] = base + (peak - base) * (i - s.onset + 1) / (s.ramp_up + 1)
        label[s.onset : min(s.end, n)] = True
        # ramp-down after the labelled end: half the lift remains at ``end``
        down_start = s.end - s.ramp_down // 2 if s.ramp_down else s.end
        rate[plateau_start : min(down_start, n)] = peak
        for j in range(s.ramp_down):
            i = down_start + j
            if 0 <= i < n:
                rate[i] = base + (peak - base) * (1 - (j + 1) / (s.ramp_down + 1))
    return rate, label


def simulate_stream(bank: FeatureBank, config: SimConfig, rng: np.random.Generator) -> Stream:
    """One stream; see the module docstring."""
    n = config.n_steps
    base = float(rng.uniform(*config.base_rate))
    bull_share = float(rng.uniform(*config.bullish_share))
    k = int(rng.choice(3, p=np.asarray(config.surge_counts) / np.sum(config.surge_counts)))
    surges: list[Surge] = []
    cursor = config.warmup
    for _ in range(k):
        ramp_up = (
            int(rng.integers(*config.ramp_steps)) if rng.random() < config.ramp_probability else 0
        )
        ramp_down = (
            int(rng.integers(*config.ramp_steps)) if rng.random() < config.ramp_probability else 0
        )
        duration = int(rng.integers(*config.duration))
        length = ramp_up + duration + ramp_down // 2
        latest = n - length - 10
        if latest <= cursor:
            break
        onset = int(
            rng.integers(cursor, min(latest, cursor + (n - cursor) // max(1, k - len(surges))))
        )
        surges.append(
            Surge(onset, onset + length, float(rng.uniform(*config.surge_lift)), ramp_up, ramp_down)
        )
        cursor = onset + length + ramp_down + config.gap_after
    rate, in_surge = _rate_profile(n, base, surges, config.max_rate)
    rate = np.minimum(rate, config.max_rate)

    # When: Poisson arrivals whose rate is modulated by quiet bursts and by the surge.
    lam0 = float(np.exp(rng.uniform(*np.log(config.arrival_per_hour))))
    volume = float(rng.uniform(*config.surge_volume))
    burst = np.ones(n)
    burst_lift = np.zeros(n)
    in_burst, mult, lift = False, 1.0, 0.0
    for i in range(n):
        if in_burst and rng.random() < config.burst_leave:
            in_burst = False
        elif not in_burst and rng.random() < config.burst_enter:
            in_burst, mult = True, float(rng.uniform(*config.burst_multiplier))
            lift = float(rng.uniform(*config.burst_rate_lift))
        burst[i] = mult if in_burst else 1.0
        burst_lift[i] = lift if in_burst else 0.0
    # a busy quiet day is a little more negative, never a surge (outside the surges only)
    rate = np.where(in_surge, rate, np.minimum(rate + burst_lift, config.max_rate))

    # Which documents: bearish with the regime's rate, else bullish/neutral at the stream's mix.
    u = rng.random(n)
    labels = np.where(
        u < rate, BEARISH, np.where(rng.random(n) < bull_share, BULLISH, NEUTRAL)
    ).astype(np.int64)
    pools = {lab: np.flatnonzero(bank.labels == lab) for lab in (BEARISH, BULLISH, NEUTRAL)}
    rows = np.empty(n, dtype=np.int64)
    for lab, pool in pools.items():
        mask = labels == lab
        rows[mask] = pool[rng.integers(0, len(pool), int(mask.sum()))]

    lift_frac = np.zeros(n)
    for s in surges:
        peak = min(base + s.lift, config.max_rate)
        if peak > base:
            seg = slice(s.onset, min(s.end + s.ramp_down, n))
            lift_frac[seg] = np.maximum(lift_frac[seg], (rate[seg] - base) / (peak - base))
    multiplier = burst * (1.0 + (volume - 1.0) * lift_frac)
    lam = lam0 * multiplier
    gaps_h = rng.exponential(1.0 / lam)
    gaps_h[0] = 0.0
    hours = np.cumsum(gaps_h)
    volume_surges, volume_quiet = _volume_episodes(multiplier, config)

    probs = bank.probs[rows]
    feats = np.stack(
        [
            memory_features(
                float(probs[i, 0]),
                float(probs[i, 1]),
                float(probs[i, 2]),
                float(bank.topic_confidence[rows[i]]),
                bank.doc_vectors[rows[i]],
                None if i == 0 else float(gaps_h[i] * 3600.0),
            )
            for i in range(n)
        ]
    )
    quiet = ~in_surge
    quiet[: config.warmup] = False
    for (
        s
    ) in surges:  # the tail of a surge (ramp-down, detectors' memory) is neither quiet nor surge
        quiet[s.end : min(s.end + s.ramp_down + config.gap_after // 2, n)] = False
    return Stream(
        features=feats.astype(np.float32),
        p_bearish=probs[:, 0].astype(np.float32),
        is_bearish_pred=probs.argmax(axis=1) == 0,
        labels=labels,
        hours=hours,
        true_rate=rate.astype(np.float32),
        in_surge=in_surge,
        quiet=quiet,
        base_rate=base,
        surges=surges,
        volume=multiplier.astype(np.float32),
        volume_surges=volume_surges,
        volume_quiet=volume_quiet,
    )


def _volume_episodes(multiplier: np.ndarray, config: SimConfig) -> tuple[list[Surge], np.ndarray]:
    """The volume episodes of a stream (runs of documents at ``>= volume_surge_multiplier``
    times the usual arrival rate) and the documents a volume detector's false alarms count
    on: usual volume, outside the warm-up and the 20 documents after an episode."""
    n = len(multiplier)
    high = multiplier >= config.volume_surge_multiplier
    episodes: list[Surge] = []
    i = 0
    while i < n:
        if high[i]:
            j = i
            while j < n and high[j]:
                j += 1
            if i >= config.warmup:
                episodes.append(Surge(i, j, float(multiplier[i:j].max()), 0, 0))
            i = j
        else:
            i += 1
    quiet = multiplier < 1.0 + 1e-9
    quiet[: config.warmup] = False
    for e in episodes:
        quiet[e.end : min(e.end + 20, n)] = False
    return episodes, quiet


def simulate_streams(
    bank: FeatureBank, n_streams: int, *, seed: int, config: SimConfig | None = None
) -> list[Stream]:
    """``n_streams`` independent streams; stream ``i`` depends only on (seed, i)."""
    config = config or SimConfig()
    return [
        simulate_stream(bank, config, np.random.default_rng([seed, i])) for i in range(n_streams)
    ]


def stack(streams: Sequence[Stream], attr: str) -> np.ndarray:
    """``[B, T, ...]`` array of one attribute over equal-length streams."""
    return np.stack([getattr(s, attr) for s in streams])


def no_volume_change(config: SimConfig) -> SimConfig:
    """The same simulator where surges do not change the arrival rate: an ablation that
    shows how much of a detector's edge comes from document volume rather than sentiment."""
    return replace(config, surge_volume=(1.0, 1.0))
