"""MODEL_CARD.md for a model directory: data, licence, metrics, and how to reproduce it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _table(report: dict[str, Any]) -> str:
    lines = ["| class | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in report["precision"]:
        lines.append(
            f"| {name} | {report['precision'][name]:.3f} | {report['recall'][name]:.3f} | "
            f"{report['f1'][name]:.3f} | {report['support'][name]} |"
        )
    return "\n".join(lines)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy ``p`` measured on ``n`` rows: how far the
    dev figure may sit from the model's true accuracy on data like it (with ~950
    sentiment rows, about ±2.2 points)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def write_model_card(
    model_dir: Path, manifest: dict[str, Any], metrics: dict[str, Any], *, reproduce: str = ""
) -> Path:
    dev = metrics.get("dev_int8", {})
    training = metrics.get("training") or {}
    parity = metrics.get("export_parity") or {}
    rows = []
    for head in ("sentiment", "topic"):
        if head in dev:
            lo, hi = wilson_interval(float(dev[head]["accuracy"]), int(dev[head]["n"]))
            rows.append(
                f"| {head} | {dev[head]['accuracy']:.4f} | {lo:.3f}–{hi:.3f} | {dev[head]['macro_f1']:.4f} | "
                f"{dev[head]['n']} |"
            )
    int8 = parity.get("int8", {})
    parts = [
        f"# finsent classifier {manifest['version']}",
        "",
        "Multi-task fine-tune of **all-MiniLM-L6-v2** (22.7M parameters; 6 layers, hidden 384) with a "
        "topic head (20 classes), a sentiment head (bearish / neutral / bullish) and a "
        f"{manifest.get('doc_vector_dim')}-dimensional document vector for the recurrent memory "
        "(`memory.onnx`, a GRU cell per key).",
        "",
        "## Files",
        "",
        f"- `{manifest['classifier']['cpu']}`: int8 dynamic quantization (CPU execution provider; "
        "transformer-fused graph, heads kept in fp32)",
        f"- `{manifest['classifier']['gpu']}`: {manifest['classifier'].get('gpu_precision', 'fp32')} "
        "variant for the CUDA execution provider (float32 inputs/outputs)",
        f"- `{manifest['memory']['file']}`: recurrent memory cell, state {manifest['memory']['state_dim']}, "
        f"features {manifest['memory']['feature_dim']}",
        "- `tokenizer.json` (MiniLM WordPiece, uncased), `labels.json`, `manifest.json`, `metrics.json`, "
        "`confusion_*.png`",
        "",
        "## Data",
        "",
        "Training: the train splits of *zeroshot/twitter-financial-news-sentiment* (9,543 tweets) and "
        "*zeroshot/twitter-financial-news-topic* (16,990 tweets), MIT License. Each row has one head's "
        "label; the other head's loss is masked. A fixed stratified 10 % dev split per head (seed 13, "
        "`training.data.fixed_dev_split`) is held out for model selection and the metrics below. "
        "Text normalisation (training and serving alike, `pipeline.inference.model_text`): HTML "
        "entities decoded, URLs removed, whitespace collapsed, cashtags kept.",
        "",
        "## Metrics (dev split, shipped int8 model through the serving runtime)",
        "",
        "| head | accuracy | 95 % interval | macro-F1 | n |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]
    if int8:
        parts += [
            f"int8 vs PyTorch fp32 argmax agreement on dev: topic {int8.get('agreement_topic', 0):.4f}, "
            f"sentiment {int8.get('agreement_sentiment', 0):.4f}.",
            "",
        ]
    for head in ("sentiment", "topic"):
        if head in dev:
            parts += [
                f"### {head}",
                "",
                _table(dev[head]),
                "",
                f"![{head} confusion matrix](confusion_{head}.png)",
                "",
            ]
    if training:
        cfg = training.get("config", {})
        parts += [
            "## Training",
            "",
            f"Exported: {training.get('exported_checkpoint', 'best epoch ' + str(training.get('best_epoch')))} "
            f"(schedule planned for {cfg.get('epochs')} epochs). Wall time "
            f"{(training.get('wall_s') or (training.get('history') or [{}])[-1].get('elapsed_s', 0)) / 60:.1f} min "
            "on 2 shared CPU cores.",
            "",
            *([training["note"], ""] if training.get("note") else []),
            *(
                [
                    f"Self-distillation: the teacher model(s) `{cfg['teacher']}` (averaged) gave each "
                    "training row a soft label for the head it has no gold label for "
                    f"(weight {cfg.get('distill_weight', 1.0)}, temperature {cfg.get('distill_temperature', 1.0)}; "
                    "`training/distill.py`).",
                    "",
                ]
                if cfg.get("teacher")
                else []
            ),
            "| epoch | sentiment acc | sentiment macro-F1 | topic acc | topic macro-F1 | elapsed s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
            *[
                f"| {h['epoch']} | {h.get('sentiment_accuracy', 0):.4f} | {h.get('sentiment_macro_f1', 0):.4f} | "
                f"{h.get('topic_accuracy', 0):.4f} | {h.get('topic_macro_f1', 0):.4f} | {h.get('elapsed_s', 0):.0f} |"
                for h in training.get("history", [])
            ],
            "",
            "(per-epoch rows: PyTorch fp32 on the dev split)",
            "",
            "```json",
            __import__("json").dumps(cfg, indent=1),
            "```",
            "",
        ]
    parts += [
        "## Licence",
        "",
        "Model weights derived from sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0); training data "
        "MIT (zeroshot/twitter-financial-news-*). This model directory: Apache-2.0.",
        "",
    ]
    if reproduce:
        parts += ["## Reproduce", "", "```sh", reproduce, "```", ""]
    parts += [
        "## Limits",
        "",
        "English finance tweets and headlines; long articles are truncated to "
        f"{manifest['max_tokens']} tokens. Sentiment is market direction (bearish/bullish) as "
        "labelled in the data, not general tone.",
        "",
    ]
    path = Path(model_dir) / "MODEL_CARD.md"
    path.write_text("\n".join(parts))
    return path
