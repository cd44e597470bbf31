"""``finsent top``: which names and topics are turning negative now, and why: the console's
ranking (:func:`finsent.console.queries.top_keys`) in plain words or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.errors import InputError
from pipeline.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "top",
        help="which names and topics are turning negative now, and why",
        description="Ranks keys (entity:TICKER, topic:NAME) by how unusual their bearish count in "
        "the window is against their own previous 30 days (a beta-binomial tail probability), "
        "with volume, the memory's surge score, open alerts and the most bearish headlines.",
    )
    p.add_argument("--since", default="6h", help="the window: 30m, 6h, 1d … (default 6h)")
    p.add_argument("--kind", choices=["entity", "topic"], default=None, help="only this kind")
    p.add_argument("--limit", type=int, default=10, help="rows (default 10)")
    p.add_argument(
        "--now",
        default=None,
        metavar="ISO|latest",
        help="the instant the window ends: ISO 8601, 'latest' (the newest document) or 'now' "
        "(default: the wall clock, or 'latest' with FINSENT_ALERT_CLOCK=data)",
    )
    p.add_argument("--headlines", type=int, default=3, help="headlines per key (default 3)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=top)


def top(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.rules import format_duration, parse_duration
    from finsent.commands.common import migrated_engine
    from finsent.console import queries

    try:
        since = parse_duration(args.since)
    except ValueError as exc:
        raise InputError(f"--since: {exc}") from None
    if since.total_seconds() <= 0:
        raise InputError(f"--since must be longer than zero, got {args.since!r}")
    if args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    now = args.now or ("latest" if settings.alert_clock == "data" else "now")
    engine = migrated_engine(settings)
    try:
        ranking = queries.top_keys(
            engine,
            since=since,
            kind=args.kind,
            limit=args.limit,
            now=now,
            headlines=max(0, args.headlines),
        )
        newest = None
        if not ranking.keys:
            newest = queries.resolve_now(engine, "latest")
    finally:
        engine.dispose()
    out = sys.stdout
    if args.json:
        json.dump(ranking.to_json(), out, indent=2)
        out.write("\n")
        return 0
    what = {"entity": "entities", "topic": "topics"}.get(ranking.kind or "", "entities and topics")
    print(
        f"{what} turning negative: documents published {ranking.window_start:%Y-%m-%d %H:%M} – "
        f"{ranking.now:%Y-%m-%d %H:%M} UTC (last {format_duration(since)}), each against its own "
        f"previous {format_duration(ranking.baseline)}",
        file=out,
    )
    if not ranking.keys:
        hint = ""
        if newest is not None and newest < ranking.window_start:
            hint = f"; the newest document is from {newest:%Y-%m-%d %H:%M} UTC: try --now latest"
        print(f"no documents in this window{hint}", file=out)
        return 0
    for i, k in enumerate(ranking.keys, 1):
        usual = f"usually {100 * k.expected_share:.0f} % ({k.baseline_bearish} of {k.baseline_documents} before)"
        chance = (
            "as usual"
            if k.evidence < 0.3
            else f"a 1 in {10**k.evidence:,.0f} chance"
            if k.evidence <= 15
            else f"a 1 in 10^{k.evidence:.0f} chance"
        )
        surge = (
            f"surge score {k.surge_score:.2f}" if k.surge_score is not None else "no surge score"
        )
        alerts = ", ".join(
            f"{a.state} {a.rule_name}" + (" (silenced)" if a.silenced else "")
            for a in k.open_alerts
        )
        print(
            f"{i:>2}. {k.key}: {k.bearish} of {k.documents} bearish ({100 * k.negative_share:.0f} %), "
            f"{usual}; {chance} (evidence {k.evidence:.1f}); {surge}"
            + (f"; alerts: {alerts}" if alerts else "")
            + (
                f"; {k.driver_bearish} of its bearish documents are about {k.driver}"
                if k.driver
                else ""
            ),
            file=out,
        )
        for h in k.headlines:
            print(
                f"      {h.published_at:%Y-%m-%d %H:%M}  {h.headline[:110]}  "
                f"(p bearish {h.p_bearish:.2f}, {h.document_id})",
                file=out,
            )
    return 0
