"""``finsent classify | train | export``: the classifier (issue 3)."""

from __future__ import annotations

from typing import Any

from pipeline.commands.common import not_implemented

ISSUE = "the classifier, issue 3"


def register(sub: Any) -> None:
    p = sub.add_parser("classify", help="batch-classify a CSV/JSONL file")
    p.add_argument("input")
    p.add_argument("--output", required=True)
    p.set_defaults(func=not_implemented(ISSUE))
    p = sub.add_parser("train", help="fine-tune the classifier and memory cell (needs the train extra)")
    p.set_defaults(func=not_implemented(ISSUE))
    p = sub.add_parser("export", help="export a trained model to ONNX (+ int8)")
    p.set_defaults(func=not_implemented(ISSUE))
