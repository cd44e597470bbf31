"""Which matmuls can be int8: argmax agreement with fp32 and speed of each quantization recipe.

    python bench/int8_recipes.py --checkpoint runs/soup/checkpoints/soup.pt \\
        --sentiment-csv ../shared/data/tfn_sentiment_train.csv --topic-csv ../shared/data/tfn_topic_train.csv

Exports the checkpoint to fp32 and the transformer-fused graph, quantizes it with each
recipe (the export's own, ``training.export.int8_recipes``, plus single-layer variants and
the weight formats: 7-bit int8 weights and uint8 weights),
and measures on the dev split: argmax agreement with fp32 per head (the export gate is
98 %) and documents/s at batch 32 in length-bucketed batches (the runtime's way), with
the ratio to the recipe that keeps every FFN down-projection in fp32, measured in the
same run. Results: bench/results/int8_recipes.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = "encoder int8 except FFN down-projections"


def bucketed_groups(
    ids: list[list[int]], batch: int, window: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    groups = []
    for start in range(0, len(ids), window):
        win = sorted(ids[start : start + window], key=len)
        for b in range(0, len(win), batch):
            chunk = win[b : b + batch]
            width = max(len(x) for x in chunk)
            a = np.zeros((len(chunk), width), np.int64)
            m = np.zeros_like(a)
            for i, x in enumerate(chunk):
                a[i, : len(x)] = x
                m[i, : len(x)] = 1
            groups.append((a, m))
    return groups


def weights_label(recipe: Any) -> str:
    """``s8``, ``s8 7-bit`` (reduce_range) or ``u8``."""
    return recipe.weight_type + (" 7-bit" if recipe.reduce_range else "")


def docs_per_s(
    path: Path, groups: list[tuple[np.ndarray, np.ndarray]], n_docs: int, seconds: float
) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for a, m in groups:  # warm-up
        session.run(None, {"input_ids": a, "attention_mask": m})
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a, m in groups:
            session.run(None, {"input_ids": a, "attention_mask": m})
        done += n_docs
    return done / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument(
        "--sentiment-csv",
        type=Path,
        default=Path(
            os.environ.get(
                "FINSENT_TRAIN_SENTIMENT_CSV", ROOT.parent / "shared/data/tfn_sentiment_train.csv"
            )
        ),
    )
    parser.add_argument(
        "--topic-csv",
        type=Path,
        default=Path(
            os.environ.get(
                "FINSENT_TRAIN_TOPIC_CSV", ROOT.parent / "shared/data/tfn_topic_train.csv"
            )
        ),
    )
    parser.add_argument("--docs", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    import onnx

    from bench.machine import int8_isa
    from training.data import build_examples, fixed_dev_split
    from training.export import (
        Int8Recipe,
        _ort_outputs,
        export_fp32,
        head_node_names,
        int8_recipes,
        optimize_transformer,
        quantize_with,
    )
    from training.train import load_checkpoint, load_tokenizer

    model, config = load_checkpoint(args.checkpoint)
    _, dev = fixed_dev_split(args.sentiment_csv, args.topic_csv)
    examples = build_examples(load_tokenizer(config.max_tokens), dev, config.max_tokens)
    work = Path(tempfile.mkdtemp(prefix="bench_int8_"))
    fp32 = export_fp32(model, work / "fp32.onnx")
    fused = optimize_transformer(fp32, work / "fused.onnx", model)
    reference = _ort_outputs(fp32, examples)
    heads = head_node_names(fused)
    names = [n.name for n in onnx.load(str(fused), load_external_data=False).graph.node]
    ffn = [n for n in names if n.endswith("output/dense/MatMul") and "attention" not in n]
    recipes = int8_recipes(fused, heads)
    h = tuple(heads)
    for k in (1, 5):
        recipes.append(
            Int8Recipe(
                f"encoder int8 except layer {k}'s FFN down-projection",
                h + tuple(n for n in ffn if f"layer.{k}/" in n),
                reduce_range=True,
            )
        )
    # Weight formats (AVX2 without VNNI saturates u8 x s8 products; see Int8Recipe).
    for base in recipes[:2]:
        recipes.append(Int8Recipe(base.name, base.exclude, reduce_range=not base.reduce_range))
        recipes.append(Int8Recipe(base.name, base.exclude, weight_type="u8"))
    pick = np.random.default_rng(0).permutation(len(examples))[: args.docs]
    groups = bucketed_groups([examples[i].ids for i in pick], 32, 256)
    rows: list[dict[str, Any]] = []
    for i, recipe in enumerate(recipes):
        path = quantize_with(recipe, fused, work / f"int8_{i}.onnx")
        out = _ort_outputs(path, examples)
        row = {
            "recipe": recipe.name,
            "weights": weights_label(recipe),
            "fp32_nodes_beyond_heads": len(recipe.exclude) - len(heads),
            "agreement_topic": round(float((out[0].argmax(1) == reference[0].argmax(1)).mean()), 4),
            "agreement_sentiment": round(
                float((out[1].argmax(1) == reference[1].argmax(1)).mean()), 4
            ),
            "docs_per_s_batch32": round(docs_per_s(path, groups, len(pick), args.seconds), 1),
        }
        row["passes_export_gate"] = min(row["agreement_topic"], row["agreement_sentiment"]) >= 0.98
        rows.append(row)
        print(json.dumps(row), flush=True)
    baseline = next(r for r in recipes if r.name == BASELINE)
    base = next(
        r["docs_per_s_batch32"]
        for r in rows
        if r["recipe"] == BASELINE and r["weights"] == weights_label(baseline)
    )
    for r in rows:
        r["ratio_vs_all_ffn_fp32"] = round(r["docs_per_s_batch32"] / base, 3)
    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint),
        "docs": len(pick),
        "int8_isa": int8_isa(),
        "load_average_at_end": os.getloadavg(),
        "baseline": BASELINE,
        "recipes": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_recipes.json").write_text(json.dumps(report, indent=2))
    lines = [
        "# int8 recipes: agreement with fp32 and speed (batch 32, length-bucketed)",
        "",
        f"{report['created_at']}, {len(pick)} dev texts, CPU int8 instruction set {report['int8_isa']}; "
        f"ratio against '{BASELINE}' ({weights_label(baseline)}) in the same run.",
        "",
        "| recipe | weights | agreement topic | agreement sentiment | export gate (98 %) | docs/s | ratio |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    lines += [
        f"| {r['recipe']} | {r['weights']} | {r['agreement_topic']:.4f} | {r['agreement_sentiment']:.4f} | "
        f"{'pass' if r['passes_export_gate'] else 'fail'} | {r['docs_per_s_batch32']} | {r['ratio_vs_all_ffn_fp32']}x |"
        for r in rows
    ]
    (args.out / "int8_recipes.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
