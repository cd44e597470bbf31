"""Multi-task fine-tuning of the classifier, with per-epoch dev evaluation and checkpoints.

One optimiser step sees a length-bucketed batch mixing both corpora; each row has one
head's label, the other head's loss is masked (``ignore_index``) and each head's loss is
the mean over the rows that have its label, so neither head drowns the other. AdamW with a
linear warm-up and linear decay, layer-wise learning-rate decay (lower layers of the
pretrained encoder move less than the top ones), optional inverse-sqrt-frequency class
weights. The best epoch (mean of both heads' dev accuracy and macro-F1) is kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.records import SENTIMENTS, TOPICS
from training.data import IGNORE, Example, HeadRows, bucketed_batches, build_examples
from training.evaluate import classification_report
from training.model import MultiTaskClassifier, build_model, encoder_layer_groups, tokenizer_path
from training.news_data import news_dev_rows, news_train_rows

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Every knob of a training run (saved with the run as ``config.json``)."""

    epochs: int = 4
    lr: float = 8e-5  # top encoder layer; layer l gets lr * layer_decay ** (top - l)
    head_lr: float = 1e-3  # the two linear heads (fresh, so larger)
    layer_decay: float = 0.9
    batch_size: int = 32
    max_tokens: int = 64  # tweets average ~28 tokens; 64 truncates < 0.5 %
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    dropout: float = 0.1
    class_weighting: str = "none"  # "none" | "sqrt" (inverse sqrt of class frequency)
    sentiment_loss_weight: float = 1.0
    label_smoothing: float = 0.0
    tasks: str = "both"  # "both" | "sentiment" | "topic" (ablations)
    teacher: str = ""  # model dir(s), comma-separated: soft labels for the unlabelled head
    distill_weight: float = 1.0  # weight of the soft (teacher) loss of each head
    distill_temperature: float = 1.0
    max_steps: int | None = None  # stop after this many steps (tests, throughput checks)
    time_budget_s: float | None = None  # stop the epoch loop when this is spent
    eval_batch_size: int = 64
    seed: int = 13
    tiny: bool = False  # random-init tiny encoder (tests)
    threads: int | None = None  # torch intra-op threads (None: leave torch's default)
    save_checkpoints: bool = True
    progress: bool = True
    #: the external headline file (rss_finance_headlines_2021.csv.gz): adds the hand-labelled
    #: news train set to training and the news dev set to model selection (issue #13)
    news_csv: str = ""
    synthetic_news: bool = False  # add training/news_synth/headlines.csv (finsent's own text)
    news_repeat: int = 1  # each news row is seen this many times per epoch
    #: continue from ``work_dir/checkpoints/resume.pt`` (written after every epoch) when the
    #: run there had the same config: an interrupted run resumes at its last finished epoch
    resume: bool = True
    #: temperature-scale both heads on the dev splits before export (training.calibrate)
    calibrate: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class TrainResult:
    model: MultiTaskClassifier
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    dev: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    train_docs_per_s: float = 0.0
    steps: int = 0


def load_tokenizer(max_tokens: int) -> Any:
    """The MiniLM fast tokenizer (the same file ships in every model directory)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path()))
    tok.enable_truncation(max_length=max_tokens)
    tok.no_padding()
    return tok


def collate(
    batch: Sequence[Example],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(e.ids) for e in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        mask[i, : len(e.ids)] = 1
    topic = torch.tensor([e.topic for e in batch], dtype=torch.long)
    sentiment = torch.tensor([e.sentiment for e in batch], dtype=torch.long)
    return ids, mask, topic, sentiment


def collate_soft(
    batch: Sequence[Example], head: str, k: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(rows, targets)``: the rows of ``batch`` that carry a teacher distribution for
    ``head`` ("topic" or "sentiment") and those distributions; None when no row does."""
    rows, targets = [], []
    for i, e in enumerate(batch):
        soft = e.topic_soft if head == "topic" else e.sentiment_soft
        if soft is not None:
            if len(soft) != k:
                raise ValueError(
                    f"a {head} teacher distribution has {len(soft)} classes, the head {k}"
                )
            rows.append(i)
            targets.append(soft)
    if not rows:
        return None
    return torch.tensor(rows, dtype=torch.long), torch.tensor(targets, dtype=torch.float32)


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy against a teacher distribution (already at ``temperature``), scaled
    by T² so its gradient keeps the size of a hard-label loss (Hinton et al.)."""
    log_p = torch.log_softmax(logits / temperature, dim=1)
    return -(targets * log_p).sum(dim=1).mean() * temperature**2


def _class_weights(labels: Sequence[int], k: int, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode != "sqrt":
        raise ValueError(f"class_weighting must be 'none' or 'sqrt', got {mode!r}")
    counts = np.bincount([x for x in labels if x != IGNORE], minlength=k).astype(np.float64)
    w = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    w = w / (w * counts).sum() * counts.sum()  # mean weight per example stays 1
    return torch.tensor(w, dtype=torch.float32)


def _optimizer(model: MultiTaskClassifier, config: TrainConfig) -> torch.optim.Optimizer:
    groups = encoder_layer_groups(model)
    n_encoder = len(groups) - 1
    param_groups = []
    for depth, params in enumerate(groups):
        if depth == n_encoder:
            lr = config.head_lr
        else:
            lr = config.lr * config.layer_decay ** (n_encoder - 1 - depth)
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        param_groups.append({"params": decay, "lr": lr, "weight_decay": config.weight_decay})
        param_groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    for g in param_groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW([g for g in param_groups if g["params"]], lr=config.lr)


@torch.no_grad()
def predict(
    model: MultiTaskClassifier, examples: Sequence[Example], batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(topic logits, sentiment logits, doc vectors) for examples, in their order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    topic = np.zeros((len(examples), len(TOPICS)), np.float32)
    sent = np.zeros((len(examples), len(SENTIMENTS)), np.float32)
    vec = np.zeros((len(examples), model.doc_vector_dim), np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask, _, _ = collate([examples[i] for i in chunk])
        t, s, v = model(ids, mask)
        topic[chunk], sent[chunk], vec[chunk] = t.numpy(), s.numpy(), v.numpy()
    model.train(was_training)
    return topic, sent, vec


def evaluate_examples(
    model: MultiTaskClassifier, examples: Sequence[Example], batch_size: int = 64
) -> dict[str, Any]:
    """Dev reports per head (sentiment in model order: bearish, neutral, bullish)."""
    topic, sent, _ = predict(model, examples, batch_size)
    out: dict[str, Any] = {}
    s_idx = [i for i, e in enumerate(examples) if e.sentiment != IGNORE]
    t_idx = [i for i, e in enumerate(examples) if e.topic != IGNORE]
    if s_idx:
        out["sentiment"] = classification_report(
            [examples[i].sentiment for i in s_idx], sent[s_idx].argmax(1).tolist(), SENTIMENTS
        )
    if t_idx:
        out["topic"] = classification_report(
            [examples[i].topic for i in t_idx], topic[t_idx].argmax(1).tolist(), TOPICS
        )
    return out


#: the dev reports that choose the best epoch (``news_sentiment``: the news dev set, when used)
SELECTION_HEADS = ("sentiment", "topic", "news_sentiment")


def selection_score(dev: dict[str, Any]) -> float:
    parts = [dev[h][m] for h in SELECTION_HEADS if h in dev for m in ("accuracy", "macro_f1")]
    return float(np.mean(parts)) if parts else 0.0


def _filter_tasks(rows: HeadRows, tasks: str) -> HeadRows:
    if tasks == "both":
        return rows
    if tasks == "sentiment":
        return HeadRows(rows.sentiment, [])
    if tasks == "topic":
        return HeadRows([], rows.topic)
    raise ValueError(f"tasks must be both, sentiment or topic, got {tasks!r}")


def train_classifier(
    config: TrainConfig, train_rows: HeadRows, dev_rows: HeadRows, work_dir: Path | None = None
) -> TrainResult:
    """Fine-tune; evaluate on dev after every epoch; checkpoint to ``work_dir/checkpoints``;
    return the best epoch's model (weights restored)."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    news = news_train_rows(config.news_csv, config.synthetic_news, config.news_repeat)
    train_rows = HeadRows(
        list(train_rows.sentiment) + news.sentiment, list(train_rows.topic) + news.topic
    )
    train_rows = _filter_tasks(train_rows, config.tasks)
    tok = load_tokenizer(config.max_tokens)
    train_ex = build_examples(tok, train_rows, config.max_tokens)
    dev_ex = build_examples(tok, dev_rows, config.max_tokens)
    news_dev_ex = build_examples(
        tok, HeadRows(news_dev_rows(config.news_csv), []), config.max_tokens
    )
    if not train_ex:
        raise ValueError("no training rows: give a sentiment and/or a topic CSV")
    if config.teacher:
        from training.distill import attach_teacher

        teachers = [Path(p.strip()) for p in config.teacher.split(",") if p.strip()]
        train_ex = attach_teacher(
            train_ex, train_rows, teachers, config.distill_temperature, cache_dir=work_dir
        )
    model = build_model(tiny=config.tiny, seed=config.seed, dropout=config.dropout)
    model.train()
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(train_ex) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    warmup = max(1, int(config.warmup_ratio * total))
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    topic_loss = nn.CrossEntropyLoss(
        weight=_class_weights([e.topic for e in train_ex], len(TOPICS), config.class_weighting),
        ignore_index=IGNORE,
        label_smoothing=config.label_smoothing,
    )
    sent_loss = nn.CrossEntropyLoss(
        weight=_class_weights(
            [e.sentiment for e in train_ex], len(SENTIMENTS), config.class_weighting
        ),
        ignore_index=IGNORE,
        label_smoothing=config.label_smoothing,
    )
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    result = TrainResult(model=model, config=config)
    best_score, best_state = -1.0, None
    step, docs, t0 = 0, 0, time.perf_counter()
    train_time = 0.0
    first_epoch = 1
    resumed = _load_resume(work_dir, config, model, optimizer, scheduler, rng)
    if resumed is not None:
        first_epoch, step, result.history = (
            resumed["epoch"] + 1,
            resumed["step"],
            resumed["history"],
        )
        best_score, result.best_epoch, result.dev = (
            resumed["best_score"],
            resumed["best_epoch"],
            resumed["best_dev"],
        )
        best_state = resumed["best_state"]
        t0 -= resumed["elapsed_s"]
        log.info("resumed %s after epoch %d (step %d)", work_dir, resumed["epoch"], step)
    for epoch in range(first_epoch, config.epochs + 1):
        epoch_t0 = time.perf_counter()
        batches = list(bucketed_batches(train_ex, config.batch_size, rng))
        bar = tqdm(
            batches,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not config.progress,
            mininterval=10,
        )
        running = 0.0
        for batch in bar:
            if step >= total:
                break
            ids, mask, topic_y, sent_y = collate(batch)
            t_logits, s_logits, _ = model(ids, mask)
            loss = torch.zeros(())
            if (topic_y != IGNORE).any():
                loss = loss + topic_loss(t_logits, topic_y)
            if (sent_y != IGNORE).any():
                loss = loss + config.sentiment_loss_weight * sent_loss(s_logits, sent_y)
            if config.teacher:
                for head, logits, k, weight in (
                    ("topic", t_logits, len(TOPICS), 1.0),
                    ("sentiment", s_logits, len(SENTIMENTS), config.sentiment_loss_weight),
                ):
                    soft = collate_soft(batch, head, k)
                    if soft is not None:
                        rows_i, targets = soft
                        loss = loss + weight * config.distill_weight * soft_cross_entropy(
                            logits[rows_i], targets, config.distill_temperature
                        )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            docs += len(batch)
            value = loss.item()
            running = 0.98 * running + 0.02 * value if step > 1 else value
            bar.set_postfix(loss=f"{running:.3f}", refresh=False)
        bar.close()
        train_time += time.perf_counter() - epoch_t0
        dev = evaluate_examples(model, dev_ex, config.eval_batch_size) if dev_ex else {}
        if news_dev_ex:
            news_report = evaluate_examples(model, news_dev_ex, config.eval_batch_size)
            dev["news_sentiment"] = news_report["sentiment"]
        score = selection_score(dev)
        entry = {
            "epoch": epoch,
            "step": step,
            "loss": round(running, 4),
            "score": round(score, 4),
            "elapsed_s": round(time.perf_counter() - t0, 1),
            **{f"{h}_{m}": round(dev[h][m], 4) for h in dev for m in ("accuracy", "macro_f1")},
        }
        result.history.append(entry)
        log.info("epoch %d: %s", epoch, entry)
        print(json.dumps(entry), flush=True)
        if work_dir is not None:
            (work_dir / "history.json").write_text(json.dumps(result.history, indent=2))
            if config.save_checkpoints:
                ckpt = work_dir / "checkpoints"
                ckpt.mkdir(exist_ok=True)
                torch.save(
                    {
                        "state_dict": model.state_dict(),
                        "config": asdict(config),
                        "epoch": epoch,
                        "dev": dev,
                    },
                    ckpt / f"epoch{epoch}.pt",
                )
        if score > best_score or best_state is None:
            best_score = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.best_epoch, result.dev = epoch, dev
            if work_dir is not None and config.save_checkpoints:
                (work_dir / "best_epoch.txt").write_text(str(epoch))
        if work_dir is not None and config.save_checkpoints:
            _save_resume(
                work_dir,
                config,
                model,
                optimizer,
                scheduler,
                rng,
                {
                    "epoch": epoch,
                    "step": step,
                    "history": result.history,
                    "best_score": best_score,
                    "best_epoch": result.best_epoch,
                    "best_dev": result.dev,
                    "elapsed_s": time.perf_counter() - t0,
                },
            )
        if step >= total:
            break
        if config.time_budget_s is not None and time.perf_counter() - t0 > config.time_budget_s:
            log.warning(
                "time budget of %.0f s spent after epoch %d; stopping", config.time_budget_s, epoch
            )
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.wall_s = time.perf_counter() - t0
    result.steps = step
    result.train_docs_per_s = docs / train_time if train_time > 0 else 0.0
    return result


RESUME_FILE = "resume.pt"


def _save_resume(
    work_dir: Path,
    config: TrainConfig,
    model: MultiTaskClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: random.Random,
    progress: dict[str, Any],
) -> None:
    """Everything an interrupted run needs to go on after this epoch, written atomically
    (a kill mid-write leaves the previous epoch's file)."""
    path = work_dir / "checkpoints" / RESUME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "config": asdict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
        **progress,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _load_resume(
    work_dir: Path | None,
    config: TrainConfig,
    model: MultiTaskClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: random.Random,
) -> dict[str, Any] | None:
    """Restore a run's state from its resume file when ``config.resume`` and the file was
    written by the same config (knobs that do not change the maths may differ); else None."""
    if work_dir is None or not config.resume:
        return None
    path = work_dir / "checkpoints" / RESUME_FILE
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=False)
    free = {"progress", "threads", "resume", "time_budget_s", "save_checkpoints", "calibrate"}
    saved = {k: v for k, v in blob["config"].items() if k not in free}
    wanted = {k: v for k, v in asdict(config).items() if k not in free}
    if saved != wanted:
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        log.warning("not resuming %s: its config differs in %s", path, ", ".join(changed))
        return None
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    rng.setstate(blob["rng"])
    torch.set_rng_state(blob["torch_rng"])
    best_path = work_dir / "checkpoints" / f"epoch{blob['best_epoch']}.pt"
    if blob["best_epoch"] == blob["epoch"] or not best_path.is_file():
        blob["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        blob["best_state"] = torch.load(best_path, map_location="cpu", weights_only=False)[
            "state_dict"
        ]
    return blob


def load_checkpoint(path: Path) -> tuple[MultiTaskClassifier, TrainConfig]:
    """A model and its config from a ``checkpoints/epochN.pt`` file."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(blob["config"])
    model = build_model(tiny=config.tiny, seed=config.seed, dropout=config.dropout)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, config
