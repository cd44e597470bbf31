"""``finsent alerts run | backtest | silence``: the alert engine (issue 5)."""

from __future__ import annotations

from typing import Any

from pipeline.commands.common import not_implemented

ISSUE = "alerts, issue 5"


def register(sub: Any) -> None:
    p = sub.add_parser("alerts", help="alert rules: run | backtest | silence")
    p.add_argument("action", choices=["run", "backtest", "silence"])
    p.set_defaults(func=not_implemented(ISSUE))
