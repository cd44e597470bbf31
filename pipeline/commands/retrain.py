"""``finsent retrain | models | label``: feedback and scheduled retraining (issue 6)."""

from __future__ import annotations

from typing import Any

from pipeline.commands.common import not_implemented

ISSUE = "scheduled retraining, issue 6"


def register(sub: Any) -> None:
    p = sub.add_parser("retrain", help="retrain now or on a schedule, champion/challenger gated")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--now", action="store_true")
    g.add_argument("--schedule", metavar="CRON")
    p.set_defaults(func=not_implemented(ISSUE))
    p = sub.add_parser("models", help="model versions: list | promote V | rollback")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?")
    p.set_defaults(func=not_implemented(ISSUE))
    p = sub.add_parser("label", help="human feedback for retraining")
    p.add_argument("doc_id")
    p.add_argument("--sentiment", choices=["bearish", "neutral", "bullish"])
    p.add_argument("--topic", type=int)
    p.set_defaults(func=not_implemented(ISSUE))
