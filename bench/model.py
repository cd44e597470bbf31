"""Classifier benchmark: documents/s of PyTorch eager fp32, onnxruntime fp32 and int8, in one run.

    python bench/model.py --model-dir models --checkpoint runs/mt_e5/checkpoints/epoch3.pt \\
        --sentiment-csv ../shared/data/tfn_sentiment_train.csv --topic-csv ../shared/data/tfn_topic_train.csv

What is measured (all on the dev split's texts, CPU, the threads onnxruntime/torch choose):

* model time only, on pre-tokenised ids (tokenisation is timed apart, it is the same for all);
* batch B = documents per model call. "arrival order" variants pad each batch of B
  consecutive documents to its longest; the runtime (``pipeline.inference.Classifier``)
  takes a window of 8*B documents, sorts it by token count and cuts batches of B
  (length bucketing), which is how the scorer is meant to call it;
* accuracy of each variant on the dev labels and argmax agreement with PyTorch fp32;
* useful work: FLOPs per document from real (unpadded) tokens, and the rate a numpy
  float32 matrix multiply reaches in the same run, giving a compute-bound ceiling in docs/s.

Without ``--checkpoint`` the PyTorch model is the pretrained encoder with untrained heads:
its speed is the same, its accuracy is not reported.
Results: bench/results/model.json and model.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCHES = (1, 8, 32, 64)


def numpy_matmul_gflops(seconds: float = 2.0) -> float:
    """float32 GEMM rate at transformer-like shapes (tokens x 384 @ 384 x 1536)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((512, 384), dtype=np.float32)
    b = rng.standard_normal((384, 1536), dtype=np.float32)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 512 * 384 * 1536 * n / (time.perf_counter() - t0) / 1e9


def encoder_flops(tokens: int, layers: int = 6, hidden: int = 384, inter: int = 1536) -> float:
    """Multiply-add FLOPs (x2) of a BERT encoder over one unpadded sequence."""
    per_layer = (
        2 * tokens * (4 * hidden * hidden + 2 * hidden * inter) + 2 * 2 * tokens * tokens * hidden
    )
    return float(layers * per_layer)


def padded(ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(x) for x in ids)
    a = np.zeros((len(ids), width), np.int64)
    m = np.zeros((len(ids), width), np.int64)
    for i, x in enumerate(ids):
        a[i, : len(x)] = x
        m[i, : len(x)] = 1
    return a, m


def timed(run: Callable[[], Any], min_seconds: float) -> tuple[float, int]:
    """(seconds per call, calls): warm once, then repeat until min_seconds have passed."""
    run()
    n, t0 = 0, time.perf_counter()
    while True:
        run()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / n, n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=ROOT / "finsent" / "model")
    parser.add_argument("--checkpoint", type=Path)
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
    parser.add_argument("--docs", type=int, default=512, help="dev texts per speed measurement")
    parser.add_argument(
        "--min-seconds", type=float, default=3.0, help="time each configuration at least this long"
    )
    parser.add_argument(
        "--quality-docs", type=int, default=0, help="dev texts for accuracy/agreement (0: all)"
    )
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--note",
        default="",
        help="a remark stored with the results (e.g. other load on the machine)",
    )
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from bench.machine import int8_isa
    from pipeline.inference import Classifier, read_manifest
    from pipeline.records import SENTIMENTS
    from pipeline.settings import load_settings
    from training.data import IGNORE, build_examples, fixed_dev_split
    from training.export import export_fp32, optimize_transformer
    from training.model import build_model
    from training.train import load_checkpoint, load_tokenizer

    batches = [int(b) for b in args.batches.split(",")]
    manifest = read_manifest(args.model_dir)
    max_tokens = int(manifest["max_tokens"])
    _, dev = fixed_dev_split(args.sentiment_csv, args.topic_csv)
    tok = load_tokenizer(max_tokens)
    examples = build_examples(tok, dev, max_tokens)
    texts_all = [t for t, _ in dev.sentiment] + [t for t, _ in dev.topic]
    if args.quality_docs:
        keep = np.random.default_rng(1).permutation(len(examples))[: args.quality_docs]
        texts_all = [texts_all[i] for i in sorted(keep)]
        examples = [examples[i] for i in sorted(keep)]
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(examples))[: args.docs]
    speed_ids = [examples[i].ids for i in pick]
    speed_texts = [texts_all[i] for i in pick]
    real_tokens = float(np.mean([len(x) for x in speed_ids]))

    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
        trained = True
    else:
        model = build_model()
        trained = False
    model.eval()
    torch_threads = torch.get_num_threads()

    work = Path(tempfile.mkdtemp(prefix="bench_model_"))
    fp32_path = export_fp32(model, work / "fp32.onnx")
    fused_path = optimize_transformer(fp32_path, work / "fused.onnx", model)
    cpu = load_settings(ort_providers=("CPUExecutionProvider",))
    sessions = {}
    for name, path in (
        ("ort_fp32", fp32_path),
        ("ort_fp32_fused", fused_path),
        ("ort_int8", args.model_dir / manifest["classifier"]["cpu"]),
    ):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cpu.ort_intra_threads
        opts.inter_op_num_threads = cpu.ort_inter_threads
        opts.log_severity_level = 3
        sessions[name] = ort.InferenceSession(
            str(path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def torch_run(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            t, s, _ = model(torch.from_numpy(ids), torch.from_numpy(mask))
        return t.numpy(), s.numpy()

    def ort_run(name: str) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        sess = sessions[name]

        def run(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            t, s, _ = sess.run(None, {"input_ids": ids, "attention_mask": mask})
            return t, s

        return run

    runners = {"pytorch_eager_fp32": torch_run, **{n: ort_run(n) for n in sessions}}

    # --- accuracy and agreement on the whole dev split (bucketed batches of 64) -----------
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, run in runners.items():
        t_all = np.zeros((len(examples), 20), np.float32)
        s_all = np.zeros((len(examples), 3), np.float32)
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            t, s = run(*padded([examples[i].ids for i in chunk]))
            t_all[chunk], s_all[chunk] = t, s
        outputs[name] = (t_all, s_all)
    s_idx = [i for i, e in enumerate(examples) if e.sentiment != IGNORE]
    t_idx = [i for i, e in enumerate(examples) if e.topic != IGNORE]
    s_true = np.array([examples[i].sentiment for i in s_idx])
    t_true = np.array([examples[i].topic for i in t_idx])
    ref = outputs["pytorch_eager_fp32"]
    quality: dict[str, dict[str, float | None]] = {}
    for name, (t, s) in outputs.items():
        quality[name] = {
            "sentiment_accuracy": float((s[s_idx].argmax(1) == s_true).mean()) if trained else None,
            "topic_accuracy": float((t[t_idx].argmax(1) == t_true).mean()) if trained else None,
            "agreement_sentiment": float((s.argmax(1) == ref[1].argmax(1)).mean()),
            "agreement_topic": float((t.argmax(1) == ref[0].argmax(1)).mean()),
        }

    # --- speed ---------------------------------------------------------------------------
    gflops = numpy_matmul_gflops()
    flops_doc = float(np.mean([encoder_flops(len(x)) for x in speed_ids]))
    ceiling = gflops * 1e9 / flops_doc
    tok_s, _ = timed(lambda: tok.encode_batch(speed_texts), args.min_seconds)
    results: list[dict[str, Any]] = []

    def arrival(run: Callable[..., Any], b: int) -> Callable[[], None]:
        groups = [padded(speed_ids[i : i + b]) for i in range(0, len(speed_ids), b)]

        def go() -> None:
            for ids, mask in groups:
                run(ids, mask)

        return go

    for b in batches:
        groups = [speed_ids[i : i + b] for i in range(0, len(speed_ids), b)]
        pad_len = float(np.mean([max(len(x) for x in g) for g in groups]))
        for name, run in runners.items():
            per_call, calls = timed(arrival(run, b), args.min_seconds)
            results.append(
                {
                    "variant": name,
                    "batching": "arrival order",
                    "batch": b,
                    "docs_per_s": len(speed_ids) / per_call,
                    "mean_padded_tokens": pad_len,
                }
            )
        for name, file in (("runtime_int8", manifest["classifier"]["cpu"]),):
            clf = Classifier.load(args.model_dir, cpu, model_file=file, run_batch=b)
            window = 8 * b
            windows = [speed_ids[i : i + window] for i in range(0, len(speed_ids), window)]
            bucket_pad = []
            for w in windows:
                srt = sorted(w, key=len)
                bucket_pad += [len(srt[min(i + b, len(srt)) - 1]) for i in range(0, len(srt), b)]

            def go(clf: Classifier = clf, windows: list = windows) -> None:
                for w in windows:
                    clf.logits(w)

            per_call, calls = timed(go, args.min_seconds)
            results.append(
                {
                    "variant": name,
                    "batching": f"bucketed (window {window})",
                    "batch": b,
                    "docs_per_s": len(speed_ids) / per_call,
                    "mean_padded_tokens": float(np.mean(bucket_pad)),
                }
            )
        print(
            f"batch {b}: "
            + ", ".join(
                f"{r['variant']} {r['docs_per_s']:.1f}" for r in results if r["batch"] == b
            ),
            flush=True,
        )

    def rate(variant: str, b: int) -> float:
        return next(r["docs_per_s"] for r in results if r["variant"] == variant and r["batch"] == b)

    ratios = {}
    for b in batches:
        base = rate("pytorch_eager_fp32", b)
        ratios[str(b)] = {
            v: round(rate(v, b) / base, 2)
            for v in ("ort_fp32", "ort_fp32_fused", "ort_int8", "runtime_int8")
        }
    for r in results:
        r["docs_per_s"] = round(r["docs_per_s"], 1)
        r["share_of_matmul_ceiling"] = round(r["docs_per_s"] / ceiling, 3)
    report = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": manifest["version"],
        "model_dir": str(args.model_dir),
        "trained_checkpoint": trained,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "int8_isa": int8_isa(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "torch_threads": torch_threads,
            "load_average_at_end": os.getloadavg(),
        },
        "docs": len(speed_ids),
        "mean_real_tokens": round(real_tokens, 1),
        "tokenisation_docs_per_s": round(len(speed_texts) / tok_s, 1),
        "numpy_fp32_matmul_gflops": round(gflops, 1),
        "flops_per_doc": round(flops_doc),
        "compute_bound_ceiling_docs_per_s": round(ceiling, 1),
        "quality": quality,
        "speed": results,
        "ratio_vs_pytorch_eager": ratios,
        "note": args.note,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.json").write_text(json.dumps(report, indent=2))
    (args.out / "model.md").write_text(render_markdown(report, batches, SENTIMENTS))
    print(json.dumps({"ratio_vs_pytorch_eager": ratios, "quality": quality}, indent=1))
    return 0


def render_markdown(
    report: dict[str, Any], batches: Sequence[int], sentiments: Sequence[str]
) -> str:
    lines = [
        f"# Classifier benchmark ({report['created_at']}, model {report['model_version']})",
        "",
        f"{report['machine']['cpus']} CPUs (int8 instruction set {report['machine']['int8_isa']}), onnxruntime {report['machine']['onnxruntime']}, torch "
        f"{report['machine']['torch']}; {report['docs']} dev texts, {report['mean_real_tokens']} real tokens "
        f"on average. Load average at the end: {', '.join(f'{x:.1f}' for x in report['machine']['load_average_at_end'])}.",
        "",
        f"{report['note']}" if report["note"] else "",
        "",
        "## Documents/s (model time only)",
        "",
        "| variant | batching | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in batches) + " |",
    ]
    seen: list[tuple[str, str]] = []
    for r in report["speed"]:
        key = (
            r["variant"],
            r["batching"] if r["variant"] != "runtime_int8" else "bucketed (window 8 x batch)",
        )
        if key not in seen:
            seen.append(key)
    for variant, batching in seen:
        cells = [
            next(
                f"{r['docs_per_s']:.1f}"
                for r in report["speed"]
                if r["variant"] == variant and r["batch"] == b
            )
            for b in batches
        ]
        lines.append(f"| {variant} | {batching} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean padded tokens per document: "
        + ", ".join(
            f"batch {b}: arrival {next(r['mean_padded_tokens'] for r in report['speed'] if r['batch'] == b and r['variant'] == 'ort_int8'):.1f}"
            f" / bucketed {next(r['mean_padded_tokens'] for r in report['speed'] if r['batch'] == b and r['variant'] == 'runtime_int8'):.1f}"
            for b in batches
        )
        + ".",
        "",
        "## Speed-up over PyTorch eager fp32 (same batch size)",
        "",
        "| batch | " + " | ".join(report["ratio_vs_pytorch_eager"][str(batches[0])]) + " |",
        "| ---: | "
        + " | ".join("---:" for _ in report["ratio_vs_pytorch_eager"][str(batches[0])])
        + " |",
    ]
    for b in batches:
        lines.append(
            f"| {b} | "
            + " | ".join(f"{v:.2f}x" for v in report["ratio_vs_pytorch_eager"][str(b)].values())
            + " |"
        )
    lines += [
        "",
        f"Tokenisation (tokenizers, apart from the above): {report['tokenisation_docs_per_s']:.0f} docs/s.",
        "",
        "## Quality on the dev split",
        "",
        "| variant | sentiment acc | topic acc | argmax agreement with PyTorch (sentiment / topic) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, q in report["quality"].items():
        sa = "n/a" if q["sentiment_accuracy"] is None else f"{q['sentiment_accuracy']:.4f}"
        ta = "n/a" if q["topic_accuracy"] is None else f"{q['topic_accuracy']:.4f}"
        lines.append(
            f"| {name} | {sa} | {ta} | {q['agreement_sentiment']:.4f} / {q['agreement_topic']:.4f} |"
        )
    lines += [
        "",
        "## Useful work",
        "",
        f"{report['flops_per_doc'] / 1e6:.1f} MFLOP per document from real tokens; numpy float32 matmul "
        f"reaches {report['numpy_fp32_matmul_gflops']:.1f} GFLOP/s here, a compute-bound ceiling of "
        f"{report['compute_bound_ceiling_docs_per_s']:.0f} docs/s at fp32 (int8 may exceed it).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
