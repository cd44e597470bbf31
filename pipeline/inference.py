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
#: Documents per onnxruntime call for a batch-independent model (or with
#: ``Settings.batch_independent_inference`` off).
#: Within one call every text is padded to the longest, so the runtime cuts its own
#: length-sorted buckets whatever the caller's batch size.
RUN_BATCH = 32


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
    ) -> None:
        self._session = session
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
        ``run_batch`` is the number of documents per onnxruntime call (default: 1 with
        ``Settings.batch_independent_inference``, else :data:`RUN_BATCH`)."""
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
        if run_batch is None:
            # the CPU int8 file of a model with calibrated activation scales gives the same
            # output in any batch; anything else is batch-independent only one call per document
            independent = (
                name == manifest["classifier"]["cpu"]
                and provider == CPU
                and bool(manifest["classifier"].get("cpu_batch_independent"))
            )
            # fp32 parts (heads, doc-vector projection) still move by ~1e-7 with the batch, so
            # exact replays keep one call per document; batching is opt-in (setting off)
            del independent
            run_batch = 1 if settings.batch_independent_inference else RUN_BATCH
        return cls(session, tokenizer, manifest, provider, settings.max_text_chars, run_batch)

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
            t, s, v = self._session.run(None, {"input_ids": input_ids, "attention_mask": mask})
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
    only computes. ``outputs[:, 0]`` is the key's expected negative rate in [0, 1] and
    ``outputs[:, 1]`` its surge score."""

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
        """Step N keys at once: states [N,H], features [N,F] -> (new_states [N,H], outputs [N,2])."""
        states = np.ascontiguousarray(states, dtype=np.float32).reshape(-1, self.state_dim)
        features = np.ascontiguousarray(features, dtype=np.float32).reshape(-1, self.feature_dim)
        if states.shape[0] != features.shape[0]:
            raise ValueError(f"{states.shape[0]} states but {features.shape[0]} feature rows")
        if states.shape[0] == 0:
            return states.copy(), np.zeros((0, 2), dtype=np.float32)
        new_state, outputs = self._session.run(None, {"state": states, "features": features})
        return new_state.astype(np.float32, copy=False), outputs.astype(np.float32, copy=False)


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
