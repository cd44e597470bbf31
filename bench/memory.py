"""Detection-delay benchmark of the recurrent memory vs EWMA z-score and CUSUM.

Usage (from the repository root):

    .venv/bin/python bench/memory.py --model-dir models --sentiment-csv ../shared/data/tfn_sentiment_train.csv
    .venv/bin/python bench/memory.py --synthetic            # no classifier needed

With a model directory the documents' features are that classifier's outputs (ONNX runtime)
on the sentiment dev split; by default the model's own ``memory.onnx`` is evaluated on the
held-out simulated streams (``--retrain`` trains a fresh memory in a temporary directory
instead, leaving the model untouched). Everything is seeded (``--seed``), so a rerun gives the
same table. Writes ``bench/results/memory.json``, ``memory.md`` and ``memory.png`` and prints
the memory's delay as a ratio of each baseline's at matched false-alarm rates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0] and bench/pipeline.py would shadow the package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=ROOT / "finsent" / "model",
        help="model directory whose classifier supplies the features (default: finsent/model/)",
    )
    parser.add_argument(
        "--sentiment-csv",
        type=Path,
        default=None,
        help="labelled sentiment CSV (text,label); default: FINSENT_TRAIN_SENTIMENT_CSV",
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="synthetic features instead of a classifier"
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="train a fresh memory instead of evaluating the model's memory.onnx",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (smoke test; numbers meaningless)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    from training.memory_evaluate import evaluate_memory
    from training.memory_report import jsonable, write_report
    from training.memory_run import memory_rows, stream_sets, train_and_evaluate
    from training.memory_train import MemoryTrainConfig
    from training.simulate import classifier_feature_bank, synthetic_feature_bank

    config = MemoryTrainConfig.quick(args.seed) if args.quick else MemoryTrainConfig(seed=args.seed)
    started = time.perf_counter()
    if args.synthetic:
        bank = synthetic_feature_bank(n=1000, doc_vector_dim=16, seed=args.seed)
        args.retrain = True
        note = "synthetic"
    else:
        csv = args.sentiment_csv
        if csv is None:
            from pipeline.settings import load_settings

            csv = load_settings().train_sentiment_csv
        if csv is None or not Path(csv).exists():
            parser.error(
                "pass --sentiment-csv (or set FINSENT_TRAIN_SENTIMENT_CSV), or use --synthetic"
            )
        if not (args.model_dir / "manifest.json").exists():
            parser.error(
                f"{args.model_dir} has no manifest.json: pass --model-dir of a trained model"
            )
        rows, note = memory_rows(Path(csv), args.quick, args.seed)
        bank = classifier_feature_bank(args.model_dir, rows)
    train_bank, eval_bank = bank.halves(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    memory_file = args.model_dir / "memory.onnx"
    if args.retrain or not memory_file.exists():
        with tempfile.TemporaryDirectory() as tmp:
            result = train_and_evaluate(
                train_bank, eval_bank, Path(tmp), config, progress=sys.stderr.isatty()
            )
        result["memory_file"] = "trained by this benchmark"
    else:
        train, _val, eval_sets = stream_sets(train_bank, eval_bank, config)
        result = evaluate_memory(memory_file, train, eval_sets, config)
        result.update(
            {
                "feature_source": bank.source,
                "memory_file": str(memory_file),
                "config": jsonable(asdict(config)),
            }
        )
    result["documents"] = note
    result["bench_seconds"] = time.perf_counter() - started
    write_report(result, args.out, stem="memory", png="memory.png")

    first = next(iter(result["sets"]))
    print(f"memory vs baselines on '{first}' (delay ratio < 1: the memory is earlier)")
    for row in result["sets"][first]["table"]:
        ratios = "  ".join(
            f"{name}: {row[f'delay_ratio_vs_{name}']:.2f}"
            if row[f"delay_ratio_vs_{name}"] is not None
            else f"{name}: —"
            for name in result["baselines"]
        )
        mem = row["memory"]
        mem_txt = "—" if mem is None else f"{mem['mean_delay_docs']:.1f} docs"
        print(
            f"  FA {row['false_alarms_per_1000']:>4g}/1000 quiet docs: memory {mem_txt}  {ratios}"
        )
    print(result["verdict"])
    print(f"wrote {args.out / 'memory.md'} ({result['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
