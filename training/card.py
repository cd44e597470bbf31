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


HEAD_NAMES = {
    "sentiment": "sentiment (tweets dev)",
    "topic": "topic (tweets dev)",
    "news_sentiment": "sentiment (news dev, 640 headlines)",
}


def _news_data(cfg: dict[str, Any]) -> list[str]:
    """The Data section's news paragraph, when the run used news rows (issue #13)."""
    if not cfg.get("news_csv") and not cfg.get("synthetic_news"):
        return []
    parts = [
        "News (label convention: `training/LABEL_GUIDELINE.md`, bearish = adverse for an "
        "investor in the company or market the text is about):"
    ]
    if cfg.get("news_csv"):
        parts.append(
            "- the hand-labelled **news train set**, 1,195 real 2021 business headlines "
            "(`training/news_train/`; text read from the external "
            "`rss_finance_headlines_2021.csv.gz`, never vendored) and, for model selection and "
            "the metrics below only, the 640-headline **news dev set** (`training/news_dev/`); the "
            "two share no row;"
        )
    if cfg.get("synthetic_news"):
        parts.append(
            "- finsent's own **synthetic news** (`training/news_synth/headlines.csv`): 2,004 "
            "headlines and report sentences written for this project (company failures, probes, "
            "recalls, strikes, results, market reports), labelled for sentiment and topic;"
        )
    parts.append(f"- each news row seen {cfg.get('news_repeat', 1)}× per epoch.")
    return [*parts, ""]


def _calibration(calibration: dict[str, Any] | None) -> list[str]:
    """The calibration table: temperature and ECE before/after per head and split."""
    if not calibration:
        return []
    lines = [
        "## Calibration",
        "",
        f"{calibration.get('method', 'temperature scaling')}; the temperature is folded into "
        f"each head, so the argmax is unchanged. ECE: {calibration.get('bins', 15)} equal-width "
        "bins, top label (PyTorch fp32 logits).",
        "",
        "| head | temperature | split | ECE before | ECE after | NLL before | NLL after | n |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for head in ("sentiment", "topic"):
        info = calibration.get(head)
        if not info:
            continue
        for split in info.get("fitted_on", []):
            r = info[split]
            lines.append(
                f"| {head} | {info['temperature']:.3f} | {split} | {r['ece_before']:.4f} | "
                f"{r['ece_after']:.4f} | {r['nll_before']:.4f} | {r['nll_after']:.4f} | {r['n']} |"
            )
    return [*lines, ""]


def speed_summary(bench: dict[str, Any]) -> dict[str, Any]:
    """The speed gate's figures from a ``bench/model.py`` result: batch-32 docs/s of PyTorch
    eager and of the runtime's int8 path, their ratio, the int8 agreement and the machine."""
    speed = {
        (r["variant"], int(r["batch"])): float(r["docs_per_s"]) for r in bench.get("speed", [])
    }
    eager = speed.get(("pytorch_eager_fp32", 32))
    runtime = speed.get(("runtime_int8", 32))
    quality = (bench.get("quality") or {}).get("ort_int8", {})
    return {
        "measured_at": bench.get("created_at"),
        "int8_isa": (bench.get("machine") or {}).get("int8_isa"),
        "cpus": (bench.get("machine") or {}).get("cpus"),
        "batch": 32,
        "pytorch_eager_docs_per_s": eager,
        "runtime_int8_docs_per_s": runtime,
        "ratio": round(runtime / eager, 2) if eager and runtime else None,
        "agreement_sentiment": quality.get("agreement_sentiment"),
        "agreement_topic": quality.get("agreement_topic"),
    }


def _speed(speed: dict[str, Any] | None) -> list[str]:
    if not speed:
        return []
    return [
        "## Speed",
        "",
        f"`bench/model.py`, one run ({speed.get('measured_at')}, {speed.get('cpus')} CPUs, int8 ISA "
        f"{speed.get('int8_isa')}), batch {speed.get('batch')}: PyTorch eager fp32 "
        f"{speed.get('pytorch_eager_docs_per_s')} docs/s, serving runtime int8 (length-bucketed) "
        f"{speed.get('runtime_int8_docs_per_s')} docs/s: **{speed.get('ratio')}×** (gate: ≥ 3×). "
        f"int8 argmax agreement with PyTorch fp32 on the tweets dev split: sentiment "
        f"{speed.get('agreement_sentiment', 0):.4f}, topic {speed.get('agreement_topic', 0):.4f} "
        "(gate: ≥ 0.98).",
        "",
    ]


def rewrite_card(model_dir: Path, speed_json: Path | None = None) -> Path:
    """Rewrite ``MODEL_CARD.md`` from the directory's manifest and metrics, first merging the
    speed figures of a ``bench/model.py`` result (``speed_json``) into ``metrics.json``."""
    import json

    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    if speed_json is not None:
        metrics["speed"] = speed_summary(json.loads(Path(speed_json).read_text()))
        (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return write_model_card(model_dir, manifest, metrics, reproduce=metrics.get("reproduce", ""))


def write_model_card(
    model_dir: Path, manifest: dict[str, Any], metrics: dict[str, Any], *, reproduce: str = ""
) -> Path:
    dev = metrics.get("dev_int8", {})
    training = metrics.get("training") or {}
    parity = metrics.get("export_parity") or {}
    cfg_all = (training or {}).get("config", {})
    rows = []
    for head in ("sentiment", "topic", "news_sentiment"):
        if head in dev:
            lo, hi = wilson_interval(float(dev[head]["accuracy"]), int(dev[head]["n"]))
            bearish = (dev[head].get("recall") or {}).get("bearish")
            rows.append(
                f"| {HEAD_NAMES[head]} | {dev[head]['accuracy']:.4f} | {lo:.3f}–{hi:.3f} | {dev[head]['macro_f1']:.4f} | "
                f"{'' if bearish is None else f'{bearish:.3f}'} | {dev[head]['n']} |"
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
        f"- `{manifest['classifier']['cpu']}`: int8 (CPU execution provider; transformer-fused graph, "
        "heads kept in fp32), weights quantized per channel and **activation scales calibrated and "
        "fixed** (`training.export.freeze_activation_scales`), so a document's output is the same "
        "alone, in any batch and across runs",
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
        *_news_data(cfg_all),
        "## Metrics (dev splits, shipped int8 model through the serving runtime)",
        "",
        "| split | accuracy | 95 % interval | macro-F1 | bearish recall | n |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        *_calibration(metrics.get("calibration")),
        *_speed(metrics.get("speed")),
    ]
    if int8:
        parts += [
            f"int8 vs PyTorch fp32 argmax agreement on dev: topic {int8.get('agreement_topic', 0):.4f}, "
            f"sentiment {int8.get('agreement_sentiment', 0):.4f}.",
            "",
        ]
    for head in ("sentiment", "news_sentiment", "topic"):
        if head in dev:
            parts += [
                f"### {HEAD_NAMES[head]}",
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
            "| epoch | sentiment acc | sentiment macro-F1 | topic acc | topic macro-F1 | news acc | news macro-F1 | elapsed s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *[
                f"| {h['epoch']} | {h.get('sentiment_accuracy', 0):.4f} | {h.get('sentiment_macro_f1', 0):.4f} | "
                f"{h.get('topic_accuracy', 0):.4f} | {h.get('topic_macro_f1', 0):.4f} | "
                f"{h.get('news_sentiment_accuracy', 0):.4f} | {h.get('news_sentiment_macro_f1', 0):.4f} | "
                f"{h.get('elapsed_s', 0):.0f} |"
                for h in training.get("history", [])
            ],
            "",
            "(per-epoch rows: PyTorch fp32 on the dev splits, before calibration)",
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
        "English finance tweets, headlines and news sentences; long articles are truncated to "
        f"{manifest['max_tokens']} tokens. Sentiment follows the label convention of "
        "`training/LABEL_GUIDELINE.md`: adverse (bearish) or favourable (bullish) for an investor "
        "in the company or market the text is about, not general tone. The news dev set has one "
        "annotator, so differences of about a point of macro-F1 on it are noise.",
        "",
    ]
    path = Path(model_dir) / "MODEL_CARD.md"
    path.write_text("\n".join(parts))
    return path
