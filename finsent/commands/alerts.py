"""``finsent alerts run | check | backtest | evaluate | silence``: the alert engine (issue 5).

    finsent alerts run [--rules FILE] [--once]
    finsent alerts check [--rules FILE]
    finsent alerts backtest --rules FILE --from T1 --to T2 [--step DURATION] [--store] [--json]
    finsent alerts evaluate --rules FILE --incidents FILE --from T1 --to T2 [--step DURATION]
                            [--tolerance 6h] [--match-window 7d] [--detect-within 24h] [--json]
    finsent alerts silence add --match label=value [--match ...] --for 2h [--comment TEXT]
    finsent alerts silence list [--all]
    finsent alerts silence expire ID

Times are ISO 8601 (``2026-11-20T09:00``; without an offset they are UTC) or ``now``.
Backtests print their progress (instants done / total, rate, ETA) to stderr every few
seconds; results go to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError
from pipeline.settings import Settings

if TYPE_CHECKING:
    from alerts.backtest import BacktestResult, Progress
    from alerts.rules import RuleSet

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser("alerts", help="alert rules: run | check | backtest | evaluate | silence")
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
    _backtest_arguments(bt)
    bt.add_argument("--store", action="store_true", help="also store the result in alert_backtests")
    bt.add_argument("--json", action="store_true", help="one JSON object per alert")
    bt.set_defaults(func=alerts_backtest)

    ev = a_sub.add_parser(
        "evaluate",
        help="score the rules against known incidents: detection delay and false alerts",
    )
    _backtest_arguments(ev)
    ev.add_argument(
        "--incidents",
        required=True,
        help="incidents YAML: a list of {key, onset, name} (see examples/incidents.yaml)",
    )
    ev.add_argument(
        "--tolerance",
        default="6h",
        help="an alert up to this long before the onset still counts (default 6h)",
    )
    ev.add_argument(
        "--match-window",
        default="7d",
        help="alerts starting up to this long after the onset belong to the incident (default 7d)",
    )
    ev.add_argument(
        "--detect-within",
        default="24h",
        help="an incident is detected when its first alert fired within this (default 24h)",
    )
    ev.add_argument("--json", action="store_true", help="one JSON object with the whole scorecard")
    ev.set_defaults(func=alerts_evaluate)

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


def _backtest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", default=None, help="rules YAML (overrides FINSENT_RULES)")
    parser.add_argument(
        "--from", dest="start", required=True, help="first instant (ISO 8601, UTC if no offset)"
    )
    parser.add_argument("--to", dest="end", required=True, help="last instant (ISO 8601 or 'now')")
    parser.add_argument(
        "--step",
        "--interval",
        dest="step",
        default=None,
        help="evaluation step: a duration (30s, 5m) or seconds. Default: chosen from the rules "
        "(a quarter of the shortest window or 'for', a multiple of FINSENT_ALERT_INTERVAL_S, "
        "at most 15m); the live interval itself reproduces a live run exactly",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="do not print progress to stderr"
    )


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


def _duration_flag(flag: str, value: str) -> timedelta:
    from alerts.rules import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InputError(f"{flag} {value!r}: {exc}") from None


def _backtest(args: argparse.Namespace, settings: Settings, ruleset: RuleSet) -> BacktestResult:
    """Run the backtest the flags describe, reporting the step and progress on stderr."""
    from alerts.backtest import choose_step, count_instants, run_backtest
    from alerts.rules import format_duration

    start, end = parse_time(args.start), parse_time(args.end)
    if end < start:
        raise InputError("--to is before --from; give the earlier time to --from")
    if args.step is not None:
        step = _duration_flag("--step", args.step).total_seconds()
        if step <= 0:
            raise InputError("--step must be positive, e.g. 30s or 5m")
        why = "--step"
    else:
        choice = choose_step(ruleset, settings.alert_interval_s)
        step, why = choice.step_s, choice.reason

    def report(progress: Progress) -> None:
        print(progress.line(), file=sys.stderr, flush=True)

    if not args.no_progress:
        print(
            f"backtest: {len(ruleset.rules)} rules from {start.isoformat()} to {end.isoformat()}, "
            f"{count_instants(start, end, step):,} instants every "
            f"{format_duration(timedelta(seconds=step))} ({why})",
            file=sys.stderr,
            flush=True,
        )
    with _engine(settings) as services:
        result = run_backtest(
            services.engine,
            ruleset,
            start,
            end,
            step,
            progress=None if args.no_progress else report,
        )
        if getattr(args, "store", False):
            from alerts.backtest import store

            store(services.engine, ruleset, result)
    return result


def _summary(result: BacktestResult, stored: bool) -> str:
    from alerts.rules import format_duration

    return (
        f"backtest {result.run_id}: {result.instants:,} instants from {result.start.isoformat()} to "
        f"{result.end.isoformat()} every {format_duration(timedelta(seconds=result.step_s))} "
        f"({result.evaluations} rule evaluations, {result.elapsed_s:.1f}s); "
        f"{len(result.fired)} alerts fired"
        + (f"; stored in alert_backtests (run_id {result.run_id})" if stored else "")
    )


def alerts_backtest(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.service import rules_from_settings

    settings = _with_rules(args, settings)
    ruleset = rules_from_settings(settings, will_notify=False)
    result = _backtest(args, settings, ruleset)
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
    summary = _summary(result, args.store)
    print(summary if not args.json else json.dumps({"summary": summary}))
    return 0


def alerts_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from alerts.incidents import format_report, load_incidents, score
    from alerts.service import rules_from_settings

    settings = _with_rules(args, settings)
    ruleset = rules_from_settings(settings, will_notify=False)
    incidents = load_incidents(args.incidents)  # before the backtest: fail fast
    tolerance = _duration_flag("--tolerance", args.tolerance)
    match_window = _duration_flag("--match-window", args.match_window)
    detect_within = _duration_flag("--detect-within", args.detect_within)
    result = _backtest(args, settings, ruleset)
    card = score(
        incidents,
        result.episodes,
        start=result.start,
        end=result.end,
        tolerance=tolerance,
        match_window=match_window,
        detect_within=detect_within,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "backtest": {
                        "run_id": result.run_id,
                        "instants": result.instants,
                        "step_s": result.step_s,
                        "evaluations": result.evaluations,
                        "alerts_fired": len(result.fired),
                    },
                    **card.as_dict(),
                }
            )
        )
    else:
        print(format_report(card))
        print(_summary(result, stored=False))
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
