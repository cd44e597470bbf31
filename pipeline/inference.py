"""The ONNX runtime of the classifier and the recurrent memory cell (no torch here).

A model directory (see ``manifest.json``) holds the classifier in two precisions (int8 for
the CPU provider, fp16/fp32 for CUDA), the memory cell ``memory.onnx`` and the fast
tokenizer. :class:`Classifier` turns texts into :class:`Prediction` s; :class:`MemoryCell`
steps per-key recurrent states. Workers call :func:`load_model` once and reuse it: an
onnxruntime session is expensive to build and safe to share between threads.

Text is prepared by :func:`model_text` both here and in training (``training.data``
imports it), so the model sees the same normalisation at serving time as when it learnt.
Batches are length-bucketed: texts are sorted by token count and padded only to the
longest of their bucket, because short tweets padded to a long neighbour waste about half
of the compute. Results come back in the caller's order.

Exact batching. A model directory whose manifest has ``classifier.cpu_exact_batching``
(written by ``training.batch_exact``) gives bit-identical predictions in any batch: the int8
graph's encoder is batch-exact, and the two fp32 steps that are not (mean pooling, the
doc-vector projection) run here per document in numpy, with the quantized heads as their own
small graph. Such models run ``Settings.inference_run_batch`` documents per call whatever
``Settings.batch_independent_inference`` says.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.documents import normalise_text
from pipeline.errors import ModelError
from pipeline.memory_features import memory_features
from pipeline.records import SENTIMENTS
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# The vocabularies (SENTIMENTS: the model's sentiment output order; TOPICS) live in
# pipeline.records, one definition for producer, scorer, trends, labels and training.

REQUIRED_FILES = ("manifest.json",)
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
#: Documents per onnxruntime call of a Classifier built directly (``load`` takes
#: ``Settings.inference_run_batch``). Within one call every text is padded to the longest,
#: so the runtime cuts its own length-sorted buckets whatever the caller's batch size.
RUN_BATCH = 8


def model_text(text: str, max_chars: int = 20_000) -> str:
    """The text as the classifier sees it: HTML entities decoded, control characters
    dropped, URLs removed (t.co links are random characters that only cost tokens), and
    whitespace collapsed. Cashtags ($AAPL) are kept: they carry the ticker."""
    text = normalise_text(text, max_chars=max_chars)
    text = _URL.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Prediction:
    """One document's classification. Probabilities are softmax outputs in [0, 1]."""

    topic_id: int
    topic: str
    topic_confidence: float
    sentiment: str
    p_bearish: float
    p_neutral: float
    p_bullish: float
    doc_vector: tuple[float, ...]


def read_manifest(model_dir: Path) -> dict[str, Any]:
    """The model directory's manifest, checked for the files it names."""
    model_dir = Path(model_dir)
    path = model_dir / "manifest.json"
    if not path.is_file():
        raise ModelError(
            f"{model_dir} is not a model directory (no manifest.json); point FINSENT_MODEL_DIR "
            "at a directory written by 'finsent export' (the shipped one is finsent/model/ in the installed package)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{path} is unreadable ({exc}); re-export the model with 'finsent export'"
        ) from exc
    for key in ("version", "topics", "sentiments", "classifier", "tokenizer", "max_tokens"):
        if key not in manifest:
            raise ModelError(f"{path} lacks '{key}'; re-export the model with 'finsent export'")
    if list(manifest["sentiments"]) != list(SENTIMENTS):
        raise ModelError(
            f"{path}: sentiments must be {list(SENTIMENTS)}, got {manifest['sentiments']}"
        )
    return manifest


def _session_options(settings: Settings) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.ort_intra_threads
    options.inter_op_num_threads = settings.ort_inter_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_warned: set[str] = set()


def _installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed (``onnxruntime``, ``onnxruntime-gpu``):
    both install the same module, so with both present whichever came last wins."""
    from importlib import metadata

    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def choose_providers(settings: Settings) -> list[str]:
    """The execution providers to open sessions with, in order, CPU last as the fallback.

    ``FINSENT_ORT_PROVIDERS`` empty (the default) means automatic: CUDA when the installed
    onnxruntime offers it, else the CPU. A configured provider this build does not offer
    is skipped with one WARNING that says why and what to install: a run that asked for
    the GPU must not quietly serve from the CPU."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    runtimes = _installed_runtimes()
    if len(runtimes) > 1:
        _warn_once(
            "both onnxruntime and onnxruntime-gpu are installed; they provide the same module, so "
            "which one loads is an accident of install order. Keep one: 'make install-gpu' replaces "
            "the CPU runtime, 'make install' the GPU one"
        )
    wanted = list(settings.ort_providers) or [CUDA, CPU]
    chosen = [p for p in wanted if p in available]
    missing = [p for p in wanted if p not in available]
    if missing and settings.ort_providers:
        why = (
            "this onnxruntime build is CPU-only (the onnxruntime wheel): install the GPU runtime with "
            "'make install-gpu' (pip install 'finsent[gpu]' after uninstalling onnxruntime)"
            if CUDA in missing and "onnxruntime-gpu" not in runtimes
            else f"this onnxruntime build offers only {sorted(available)}"
        )
        _warn_once(
            f"FINSENT_ORT_PROVIDERS asks for {', '.join(missing)}, which cannot be used: {why}; "
            "serving from the CPU"
        )
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def provider_in_use(settings: Settings) -> str:
    """The provider a classifier loaded with ``settings`` runs on, as ``finsent status``
    reports it (no model needed: the first usable of :func:`choose_providers`)."""
    return choose_providers(settings)[0]


def _open_session(path: Path, settings: Settings, providers: list[str]) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise ModelError(f"model file {path} is missing; re-export the model with 'finsent export'")
    try:
        return ort.InferenceSession(
            str(path), sess_options=_session_options(settings), providers=providers
        )
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load {path}: {exc}") from exc


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class ExactHeads:
    """The per-document tail of an exact-batching model (see the module docstring): the
    encoder output to read, the heads' graph and the doc-vector projection."""

    hidden_output: str
    heads: Any  # onnxruntime session: pooled [N,H] -> topic, sentiment logits
    heads_input: str
    projection: np.ndarray  # [H, D] float32
    count_floor: float
    norm_eps: float

    @classmethod
    def load(cls, model_dir: Path, entry: dict[str, Any], settings: Settings) -> ExactHeads:
        path = model_dir / entry["doc_projection"]
        try:
            projection = np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {path}: {exc}; re-export the model") from exc
        return cls(
            hidden_output=str(entry["hidden_output"]),
            heads=_open_session(model_dir / entry["heads"], settings, [CPU]),
            heads_input=str(entry["heads_input"]),
            projection=projection,
            count_floor=float(entry["pool_count_floor"]),
            norm_eps=float(entry["norm_eps"]),
        )

    def outputs(
        self, hidden: np.ndarray, lengths: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(topic logits, sentiment logits, doc vectors) from the encoder's last hidden
        state ``[N, W, H]`` of documents with these token counts. Every sum runs over one
        document's own rows in a fixed order, so the result does not depend on the batch."""
        counts = np.asarray(lengths)
        # Rows past a document's length become -0.0, the exact additive identity (x + -0.0
        # == x for every x, signed zeros included), and numpy reduces a middle axis one row
        # after the other: each document's sum is the sequential sum of its own rows, as if
        # it were alone. The norm reduces the contiguous last axis, pairwise per row exactly
        # as for one vector. One vectorised pass instead of a Python loop per document (it
        # was 6 % of the scorer thread, on the serial path).
        inside = np.arange(hidden.shape[1])[None, :] < counts[:, None]
        tokens = np.where(inside[:, :, None], hidden, np.float32(-0.0)).astype(
            np.float32, copy=False
        )
        floor, eps = np.float32(self.count_floor), np.float32(self.norm_eps)
        pooled = (
            tokens.sum(axis=1, dtype=np.float32)
            / np.maximum(counts.astype(np.float32), floor)[:, None]
        )
        norms = np.sqrt(np.sum(pooled * pooled, axis=1, dtype=np.float32))
        units = pooled / np.maximum(norms, eps)[:, None]
        vectors = (units[:, :, None] * self.projection[None, :, :]).sum(axis=1, dtype=np.float32)
        topic, sentiment = self.heads.run(None, {self.heads_input: pooled})
        return topic, sentiment, vectors


class Classifier:
    """Topic + sentiment classifier over onnxruntime. Thread-safe: ``classify`` keeps no state."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        manifest: dict[str, Any],
        provider: str,
        max_chars: int,
        run_batch: int = RUN_BATCH,
        exact: ExactHeads | None = None,
    ) -> None:
        self._session = session
        self._exact = exact
        self._tokenizer = tokenizer
        self.manifest = manifest
        self.version: str = str(manifest["version"])
        self.provider = provider
        self.topics: tuple[str, ...] = tuple(manifest["topics"])
        self._max_chars = max_chars
        self._run_batch = run_batch
        self._pad_id = int(manifest.get("pad_token_id", 0))

    @classmethod
    def load(
        cls,
        model_dir: Path,
        settings: Settings,
        *,
        model_file: str | None = None,
        run_batch: int | None = None,
    ) -> Classifier:
        """Open the classifier of ``model_dir``: the GPU file on the CUDA provider when the
        settings allow it and onnxruntime offers it, else the int8 file on the CPU.
        ``model_file`` forces a file (the benchmark compares precisions with it);
        ``run_batch`` is the number of documents per onnxruntime call (default:
        ``Settings.inference_run_batch`` for an exact-batching model or with
        ``Settings.batch_independent_inference`` off, else 1)."""
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir)
        providers = choose_providers(settings)
        use_gpu = providers[0] == CUDA
        name = model_file or manifest["classifier"]["gpu" if use_gpu else "cpu"]
        if not use_gpu:
            providers = [CPU]
        session = _open_session(model_dir / name, settings, providers)
        if use_gpu and session.get_providers()[0] != CUDA and model_file is None:
            # onnxruntime-gpu lists CUDA even where the driver or CUDA libraries are missing,
            # then builds the session on the CPU: say so, and serve the CPU (int8) file.
            _warn_once(
                f"the CUDA execution provider is installed but could not be initialised (no GPU, driver "
                f"or CUDA/cuDNN libraries?); serving {manifest['classifier']['cpu']} from the CPU"
            )
            name = manifest["classifier"]["cpu"]
            session = _open_session(model_dir / name, settings, [CPU])
        try:
            tokenizer = Tokenizer.from_file(str(model_dir / manifest["tokenizer"]))
        except Exception as exc:
            raise ModelError(f"cannot load the tokenizer of {model_dir}: {exc}") from exc
        max_tokens = min(int(manifest["max_tokens"]), settings.max_tokens)
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.no_padding()
        provider = session.get_providers()[0]
        log.info(
            "classifier %s loaded from %s (%s, %s)", manifest["version"], model_dir, name, provider
        )
        exact = None
        entry = manifest["classifier"].get("cpu_exact_batching")
        if entry and name == manifest["classifier"]["cpu"] and provider == CPU:
            exact = ExactHeads.load(model_dir, entry, settings)
        if run_batch is None:
            # exact-batching models batch freely; any other model (and the GPU file) gives
            # bit-identical outputs only one call per document (its fp32 pooling and
            # projection move by ~1e-7 with the batch), which exact replays need
            independent = exact is not None or not settings.batch_independent_inference
            run_batch = settings.inference_run_batch if independent else 1
        return cls(
            session, tokenizer, manifest, provider, settings.max_text_chars, run_batch, exact
        )

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (normalised, truncated, unpadded)."""
        prepared = [model_text(t if isinstance(t, str) else str(t), self._max_chars) for t in texts]
        return [enc.ids for enc in self._tokenizer.encode_batch(prepared)]

    def logits(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw outputs for pre-tokenised texts, in their order: topic logits [N,T],
        sentiment logits [N,3], doc vectors [N,D] (float32)."""
        n = len(ids)
        order = sorted(range(n), key=lambda i: len(ids[i]))
        topic = sentiment = vectors = None
        for start in range(0, n, self._run_batch):
            chunk = order[start : start + self._run_batch]
            width = max(len(ids[i]) for i in chunk)
            input_ids = np.full((len(chunk), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            feeds = {"input_ids": input_ids, "attention_mask": mask}
            if self._exact is not None:
                (hidden,) = self._session.run([self._exact.hidden_output], feeds)
                t, s, v = self._exact.outputs(hidden, [len(ids[i]) for i in chunk])
            else:
                t, s, v = self._session.run(
                    ["topic_logits", "sentiment_logits", "doc_vector"], feeds
                )
            if topic is None:
                topic = np.empty((n, t.shape[1]), dtype=np.float32)
                sentiment = np.empty((n, s.shape[1]), dtype=np.float32)
                vectors = np.empty((n, v.shape[1]), dtype=np.float32)
            topic[chunk] = t
            sentiment[chunk] = s  # type: ignore[index]
            vectors[chunk] = v  # type: ignore[index]
        if topic is None:
            d = int(self.manifest.get("doc_vector_dim", 0))
            return (
                np.zeros((0, len(self.topics)), np.float32),
                np.zeros((0, 3), np.float32),
                np.zeros((0, d), np.float32),
            )
        return topic, sentiment, vectors  # type: ignore[return-value]

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        """Predictions for ``texts``, in their order (an empty text is classified too)."""
        if not texts:
            return []
        topic_logits, sentiment_logits, vectors = self.logits(self.encode(texts))
        p_topic = _softmax(topic_logits)
        p_sent = _softmax(sentiment_logits)
        topic_ids = p_topic.argmax(axis=1)
        sent_ids = p_sent.argmax(axis=1)
        out = []
        for i in range(len(texts)):
            tid = int(topic_ids[i])
            out.append(
                Prediction(
                    topic_id=tid,
                    topic=self.topics[tid],
                    topic_confidence=float(p_topic[i, tid]),
                    sentiment=SENTIMENTS[int(sent_ids[i])],
                    p_bearish=float(p_sent[i, 0]),
                    p_neutral=float(p_sent[i, 1]),
                    p_bullish=float(p_sent[i, 2]),
                    doc_vector=tuple(float(x) for x in vectors[i]),
                )
            )
        return out


class MemoryCell:
    """The per-key recurrent memory (a GRU cell in ONNX): state in, state out.

    The caller owns the states (the trends worker keeps them in PostgreSQL); this class
    only computes. ``outputs[:, 0]`` is the key's expected negative rate in [0, 1],
    ``outputs[:, 1]`` its (negativity) surge score and ``outputs[:, 2]`` its volume surge
    score: NaN for a cell exported before the two were split (two outputs), so callers see
    one shape whatever the model."""

    #: columns of the outputs :meth:`update` returns
    OUTPUTS = 3

    def __init__(self, session: Any, state_dim: int, feature_dim: int) -> None:
        self._session = session
        self.state_dim = state_dim
        self.feature_dim = feature_dim

    @classmethod
    def load(cls, model_dir: Path, settings: Settings) -> MemoryCell:
        manifest = read_manifest(Path(model_dir))
        memory = manifest.get("memory")
        if not memory:
            raise ModelError(f"{model_dir}/manifest.json names no memory cell; re-export the model")
        # The cell is tiny: the CPU provider beats a GPU round trip.
        session = _open_session(
            Path(model_dir) / memory["file"], settings, ["CPUExecutionProvider"]
        )
        return cls(session, int(memory["state_dim"]), int(memory["feature_dim"]))

    def initial_state(self) -> np.ndarray:
        return np.zeros(self.state_dim, dtype=np.float32)

    def features(
        self,
        p_bearish: float,
        p_neutral: float,
        p_bullish: float,
        topic_confidence: float,
        doc_vector: Sequence[float] | np.ndarray,
        dt_seconds: float | None,
    ) -> np.ndarray:
        """One document's input features; see :func:`pipeline.memory_features.memory_features`."""
        feats = memory_features(
            p_bearish, p_neutral, p_bullish, topic_confidence, doc_vector, dt_seconds
        )
        if feats.shape[0] != self.feature_dim:
            raise ModelError(
                f"memory features have {feats.shape[0]} values but the cell expects {self.feature_dim}; "
                "the classifier's doc_vector_dim and the memory cell do not match, re-export the model"
            )
        return feats

    def update(self, states: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step N keys at once: states [N,H], features [N,F] -> (new_states [N,H], outputs [N,3])."""
        states = np.ascontiguousarray(states, dtype=np.float32).reshape(-1, self.state_dim)
        features = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, self.feature_dim)
        if states.shape[0] != features.shape[0]:
            raise ValueError(f"{states.shape[0]} states but {features.shape[0]} feature rows")
        if states.shape[0] == 0:
            return states.copy(), np.zeros((0, self.OUTPUTS), dtype=np.float32)
        new_state, outputs = self._session.run(None, {"state": states, "features": features})
        outputs = outputs.astype(np.float32, copy=False)
        if outputs.shape[1] < self.OUTPUTS:  # a two-output cell: no volume score
            pad = np.full((outputs.shape[0], self.OUTPUTS - outputs.shape[1]), np.nan, np.float32)
            outputs = np.concatenate([outputs, pad], axis=1)
        return new_state.astype(np.float32, copy=False), outputs


@dataclass(frozen=True)
class LoadedModel:
    """Everything a worker needs from one model directory."""

    classifier: Classifier
    memory: MemoryCell
    manifest: dict[str, Any]
    version: str


def load_model(model_dir: Path, settings: Settings) -> LoadedModel:
    """Load the classifier and memory cell of ``model_dir`` (raises ModelError with advice)."""
    classifier = Classifier.load(Path(model_dir), settings)
    memory = MemoryCell.load(Path(model_dir), settings)
    return LoadedModel(classifier, memory, classifier.manifest, classifier.version)
