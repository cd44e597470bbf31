"""``finsent alerts run | check | backtest | silence``: the alert engine (issue 5).

    finsent alerts run [--rules FILE] [--once]
    finsent alerts check [--rules FILE]
    finsent alerts backtest --rules FILE --from T1 --to T2 [--interval SECONDS] [--store] [--json]
    finsent alerts silence add --match label=value [--match ...] --for 2h [--comment TEXT]
    finsent alerts silence list [--all]
    finsent alerts silence expire ID

Times are ISO 8601 (``2026-11-20T09:00``; without an offset they are UTC) or ``now``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.settings import Settings

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("alerts", help="alert rules: run | check | backtest | silence")
    a_sub = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    run = a_sub.add_parser("run", help="evaluate the rules on a schedule and deliver notifications")
    run.add_argument("--rules", default=None, help="rules YAML (overrides FINSENT_RULES)")
    run.add_argument("--once", action="store_true", help="evaluate once, deliver what is due, exit")
    run.set_defaults(func=alerts_run)

    check = a_sub.add_parser("check", help="validate a rules file and list its rules")
    check.add_argument("--rules", default=None, help="rules YAML (overrides FINSENT_RULES)")
    check.set_defaults(func=alerts_check)

    bt = a_sub.add_parser(
        "backtest", help="replay rules over stored data; print the alerts they raise"
    )
    bt.add_argument("--rules", default=None, help="rules YAML (overrides FINSENT_RULES)")
    bt.add_argument(
        "--from", dest="start", required=True, help="first instant (ISO 8601, UTC if no offset)"
    )
    bt.add_argument("--to", dest="end", required=True, help="last instant (ISO 8601 or 'now')")
    bt.add_argument(
        "--interval",
        type=float,
        default=None,
        help="evaluation step in seconds (default FINSENT_ALERT_INTERVAL_S, as live)",
    )
    bt.add_argument("--store", action="store_true", help="also store the result in alert_backtests")
    bt.add_argument("--json", action="store_true", help="one JSON object per alert")
    bt.set_defaults(func=alerts_backtest)

    si = a_sub.add_parser("silence", help="silences: add | list | expire")
    s_sub = si.add_subparsers(dest="silence_command", metavar="ACTION", required=True)
    add = s_sub.add_parser("add", help="silence matching alerts' notifications for a while")
    add.add_argument(
        "--match",
        action="append",
        default=[],
        required=True,
        help="label=value (repeatable; all must match), e.g. rule=negative-share key=entity:AAPL",
    )
    add.add_argument("--for", dest="duration", required=True, help="how long, e.g. 30m, 2h, 1d")
    add.add_argument("--comment", default="", help="why (shown by 'silence list')")
    add.add_argument("--by", default=None, help="who (default: the current user)")
    add.set_defaults(func=silence_add)
    ls = s_sub.add_parser("list", help="active and future silences")
    ls.add_argument("--all", action="store_true", help="include expired silences")
    ls.set_defaults(func=silence_list)
    ex = s_sub.add_parser("expire", help="end a silence now")
    ex.add_argument("id", type=int)
    ex.set_defaults(func=silence_expire)


def parse_time(value: str) -> datetime:
    """ISO 8601 or 'now'; naive times are UTC."""
    if value.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{value!r} is not a time; write ISO 8601 such as 2026-11-20T09:00 or 2026-11-20T09:00+01:00"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _with_rules(args: argparse.Namespace, settings: Settings) -> Settings:
    if getattr(args, "rules", None):
        return settings.model_copy(update={"rules": Path(args.rules)})
    return settings


def _engine(settings: Settings) -> Any:
    from finsent.services import start_services

    return start_services(settings, migrate=True, kafka=False)


def alerts_check(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.rules import format_duration
    from alerts.service import rules_from_settings

    ruleset = rules_from_settings(_with_rules(args, settings))
    print(
        f"{ruleset.source}: {len(ruleset.rules)} rules, notifiers: "
        f"{', '.join(sorted(set(ruleset.notifiers) | {'email', 'webhook', 'log'}))}"
    )
    for rule in ruleset.rules:
        print(
            f"  {rule.name:32} {rule.kind:13} window {format_duration(rule.window):6} "
            f"for {format_duration(rule.for_):5} -> {', '.join(rule.notifiers)}"
        )
    return 0


def alerts_run(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.service import AlertService, rules_from_settings

    settings = _with_rules(args, settings)
    ruleset = rules_from_settings(settings)
    with _engine(settings) as services:
        service = AlertService(settings, engine=services.engine, ruleset=ruleset)
        if args.once:
            evaluated = service.evaluate_now()
            sent = service.dispatch_now()
            service.dispatcher.close()
            print(
                f"evaluated at {evaluated.at.isoformat()}: {evaluated.fired} fired, {evaluated.resolved} resolved; "
                f"deliveries: {sent.delivered} delivered, {sent.retried} to retry, {sent.dead} dead"
            )
            return 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        service.run(stop)
    return 0


def alerts_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.backtest import run_backtest, store
    from alerts.service import rules_from_settings

    settings = _with_rules(args, settings)
    ruleset = rules_from_settings(settings, will_notify=False)
    start, end = parse_time(args.start), parse_time(args.end)
    if end < start:
        raise InputError("--to is before --from; give the earlier time to --from")
    interval = args.interval or settings.alert_interval_s
    if interval <= 0:
        raise InputError("--interval must be positive (seconds)")
    with _engine(settings) as services:
        result = run_backtest(services.engine, ruleset, start, end, interval)
        if args.store:
            store(services.engine, ruleset, result)
    for ep in result.episodes:
        row = {
            "rule": ep.rule_name,
            "key": ep.key,
            "fingerprint": ep.fingerprint,
            "state": ep.state,
            "pending_since": ep.pending_since.isoformat(),
            "fired_at": ep.fired_at.isoformat() if ep.fired_at else None,
            "resolved_at": ep.resolved_at.isoformat() if ep.resolved_at else None,
            "value": ep.value,
            "figures": ep.figures,
        }
        if args.json:
            print(json.dumps(row))
        else:
            print(
                f"{row['rule']:28} {ep.key:28} {ep.state:9} fired {row['fired_at'] or '-':32} "
                f"resolved {row['resolved_at'] or '-'}"
            )
    fired = len(result.fired)
    summary = (
        f"backtest {result.run_id}: {result.instants} evaluations from {start.isoformat()} to "
        f"{end.isoformat()} every {interval:g}s; {fired} alerts fired"
        + (f"; stored in alert_backtests (run_id {result.run_id})" if args.store else "")
    )
    print(summary if not args.json else json.dumps({"summary": summary}))
    return 0


def silence_add(args: argparse.Namespace, settings: Settings) -> int:
    from alerts import silences
    from alerts.rules import parse_duration

    matchers = silences.parse_matchers(args.match)
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise InputError(f"--for {args.duration!r}: {exc}") from None
    with _engine(settings) as services:
        silence_id = silences.add(
            services.engine, matchers, duration, comment=args.comment, created_by=args.by
        )
    print(f"silence {silence_id} added for {args.duration}: {json.dumps(matchers)}")
    return 0


def silence_list(args: argparse.Namespace, settings: Settings) -> int:
    from alerts import silences

    with _engine(settings) as services:
        found = silences.list_silences(services.engine, include_expired=args.all)
    if not found:
        print("no silences")
    for s in found:
        state = (
            "active" if s.active else ("expired" if s.ends_at <= datetime.now(UTC) else "pending")
        )
        print(
            f"{s.id:5} {state:8} until {s.ends_at.astimezone(UTC).isoformat()} {json.dumps(s.matchers)} "
            f"by {s.created_by}: {s.comment}"
        )
    return 0


def silence_expire(args: argparse.Namespace, settings: Settings) -> int:
    from alerts import silences

    with _engine(settings) as services:
        done = silences.expire(services.engine, args.id)
    if not done:
        raise InputError(
            f"silence {args.id} does not exist or has already ended; see 'finsent alerts silence list --all'"
        )
    print(f"silence {args.id} expired")
    return 0
