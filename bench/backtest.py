"""Backtest bench: a multi-year synthetic trend stream, replayed by ``finsent alerts backtest``,
and two rule sets scored against the incidents injected into it.

    .venv/bin/python bench/backtest.py                       # 20 keys, 50k documents, 2.5 years
    .venv/bin/python bench/backtest.py --documents 5000 --years 0.5 --baseline-days 1   # quick

Generates a deterministic (``--seed``) stream: 20 keys (topics and tickers), business-hour
weighted arrivals, a few incidents per key (bursts of mostly bearish documents with a
rising memory surge score), a few shorter false-alarm bursts and a few *echoes* (one or two
bearish stories, each repeated by three outlets within three hours: several bearish
documents, no incident). Every ``--day-every``-th key is **day-stamped** (its source gives
only a date: ``time_precision`` day, ``event_at`` the day's start; its incidents' onsets
are dates as well), and ``--copy-share`` of the stories are **repeated by other outlets**
(1-3 copies within 8 hours, one ``story_id``). It loads the stream with COPY straight into
what the evaluator reads (``documents``, ``predictions``, ``trend_points``) of a throwaway
database. Then it times ``run_backtest`` (what ``finsent alerts backtest`` runs) over the
whole span:

* with ``--rules`` (default ``examples/rules.yaml``, every kind the project ships) at the
  default step the rules give (``alerts.backtest.choose_step``), printing the progress
  lines the CLI prints;
* with the same rules at the live interval (30 s), which reproduces a live run exactly;
* with ``--old-rules`` (default ``bench/rules_round1.yaml``: the previous round's examples,
  before ``kind: anomaly``) at their default step;
* with ``NOISY_RULES`` (below: every rule at ``min_volume`` 1, thousands of alerts), the
  stress case;
* the previous algorithm (every rule at every 30 s grid instant, ``exhaustive=True``) over
  ``--baseline-days`` days, extrapolated to the whole span, and checks that the scheduled
  backtest raises exactly the same episodes over that slice, which holds an incident (and
  the old rules over a day, the noisy rules over two).

It scores both rule sets against the generated incidents (``alerts.incidents``: incidents
alerted within 24 h, median and longest delay, the worst false alerts per 30 days of an
entity and of a topic), on this stream and on the same stream as the previous round's
evaluator read it (every copy counted, a day-stamped document an instant at midnight: the
documents loaded without story ids and as ``second`` precision, which this evaluator
counts exactly as the previous one did), and writes ``bench/results/backtest.json``,
``backtest.md`` (the old-vs-new table first) and the incidents as
``backtest.incidents.yaml`` (with ``--keep-db`` you can run ``finsent alerts evaluate``
against the database yourself).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0] and bench/pipeline.py would shadow the package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)

import yaml  # noqa: E402

from alerts.backtest import Progress, choose_step, run_backtest  # noqa: E402
from alerts.evaluator import grid_instant  # noqa: E402
from alerts.incidents import Incident, Scorecard, format_delay, format_report, score  # noqa: E402
from alerts.rules import RuleSet, format_duration, load_rules, parse_rules  # noqa: E402
from pipeline import db  # noqa: E402
from tests.conftest import ADMIN_URL, create_database, drop_database  # noqa: E402

TOPICS = (
    "Earnings",
    "Markets",
    "Energy / Oil",
    "Gold / Metals / Materials",
    "Macro",
    "Financials",
    "Legal / Regulation",
    "M&A / Investments",
    "Fed / Central Banks",
    "Stock Movement",
)
TICKERS = (
    "AAPL",
    "MSFT",
    "NVDA",
    "ACME",
    "GLOBEX",
    "INITECH",
    "HOOLI",
    "UMBRELLA",
    "STARK",
    "WAYNE",
)
LIVE_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Burst:
    key: str
    onset: datetime
    hours: float
    documents: int
    bearish: float
    surge: float
    incident: bool
    echo: bool = False
    """A story or two repeated by several outlets: not an incident, one story each."""


@dataclass(frozen=True)
class Point:
    key: str
    at: datetime
    """When it was published (a day-stamped key stores the start of its day instead)."""
    sentiment: str
    p_bearish: float
    p_bullish: float
    surge: float
    expected: float
    uid: int = 0
    story: int = 0
    """The uid of the story's first copy (its own uid for a story of one)."""
    precision: str = "second"

    @property
    def event_at(self) -> datetime:
        """What the feed gives: the day (00:00 UTC) for a day-precision key."""
        if self.precision == "day":
            return self.at.replace(hour=0, minute=0, second=0, microsecond=0)
        return self.at


def stream_keys(n: int) -> list[str]:
    """``n`` keys, alternating topics and tickers."""
    out = []
    for i in range(n):
        pool, prefix = (TOPICS, "topic") if i % 2 == 0 else (TICKERS, "entity")
        name = pool[(i // 2) % len(pool)] + ("" if i < 2 * len(pool) else f"{i // (2 * len(pool))}")
        out.append(f"{prefix}:{name}")
    return out


def day_keys(keys: list[str], every: int) -> set[str]:
    """The keys whose source gives only a date: every ``every``-th key from the second
    (topics and tickers alike; 0: none)."""
    return {k for i, k in enumerate(keys) if every and i % every == 1}


def _business_time(rng: random.Random, start: datetime, span_s: float) -> datetime:
    """A time in ``[start, start + span)``, three times likelier on weekdays 08-20 UTC."""
    while True:
        t = start + timedelta(seconds=rng.random() * span_s)
        busy = t.weekday() < 5 and 8 <= t.hour < 20
        if busy or rng.random() < 1 / 3:
            return t


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson count by inversion: deterministic and dependency-free."""
    count, p, threshold = 0, rng.random(), math.exp(-mean)
    while p > threshold:
        count += 1
        p *= rng.random()
    return count


#: copies a repeated story gets besides its first (other outlets)
COPIES = (1, 2, 2, 3)


def synthetic_stream(
    *,
    seed: int,
    keys: int,
    documents: int,
    start: datetime,
    days: float,
    day_every: int = 0,
    copy_share: float = 0.0,
    echoes: float = 0.0,
) -> tuple[list[Point], list[Burst]]:
    """The documents of every key (time order) and the bursts injected into them.

    ``day_every``: every that-many-th key is day-stamped (:func:`day_keys`).
    ``copy_share``: the share of stories other outlets repeat (1-3 copies within 8 h, the
    same story; a copy is read as its original with probability 0.8, else its sentiment is
    drawn again). ``echoes``: the mean number per key of *echo* events -- one or two bearish
    stories each repeated by three outlets within three hours, on an otherwise ordinary
    day: several bearish documents, one or two stories, not an incident. ``documents``
    counts every copy (the stories are fewer)."""
    rng = random.Random(seed)
    span_s = days * 86400
    names = stream_keys(keys)
    by_day = day_keys(names, day_every)
    weights = [1 / (i + 1) ** 0.6 for i in range(len(names))]
    rng.shuffle(weights)
    total_w = sum(weights)
    bursts: list[Burst] = []
    for key in names:
        for incident, mean in ((True, 2.0), (False, 1.5)):
            for _ in range(_poisson(rng, mean)):
                onset = start + timedelta(seconds=rng.uniform(0.02, 0.98) * span_s)
                if incident:
                    hours = rng.uniform(8, 48)
                    bursts.append(
                        Burst(
                            key,
                            onset,
                            hours,
                            rng.randint(60, 160),
                            rng.uniform(0.6, 0.85),
                            rng.uniform(3.5, 6.0),
                            True,
                        )
                    )
                else:
                    hours = rng.uniform(1, 6)
                    bursts.append(
                        Burst(
                            key,
                            onset,
                            hours,
                            rng.randint(15, 40),
                            rng.uniform(0.45, 0.7),
                            rng.uniform(1.5, 3.5),
                            False,
                        )
                    )
        for _ in range(_poisson(rng, echoes)):
            onset = start + timedelta(seconds=rng.uniform(0.02, 0.98) * span_s)
            bursts.append(Burst(key, onset, 3.0, rng.choice((1, 2)), 1.0, 1.0, False, echo=True))
    bursts.sort(key=lambda b: (b.onset, b.key))
    mean_copies = sum(COPIES) / len(COPIES)
    echo_docs = sum(b.documents * 3 for b in bursts if b.echo)
    stories = (documents - echo_docs) / (1 + copy_share * mean_copies)
    baseline = max(0, round(stories) - sum(b.documents for b in bursts if not b.echo))
    points: list[Point] = []
    uids = iter(range(1, 1 << 62))

    def point(key: str, at: datetime, bearish: float, surge: float, story: int = 0) -> Point:
        roll = rng.random()
        sentiment = "bearish" if roll < bearish else ("bullish" if roll > 1 - 0.25 else "neutral")
        pb = rng.uniform(0.6, 0.95) if sentiment == "bearish" else rng.uniform(0.01, 0.3)
        pbull = rng.uniform(0.6, 0.95) if sentiment == "bullish" else rng.uniform(0.0, 1 - pb) * 0.5
        uid = next(uids)
        return Point(
            key,
            at,
            sentiment,
            round(pb, 4),
            round(min(pbull, 1 - pb), 4),
            round(max(0.0, surge + rng.gauss(0, 0.3)), 4),
            round(bearish, 4),
            uid=uid,
            story=story or uid,
            precision="day" if key in by_day else "second",
        )

    def story(key: str, at: datetime, bearish: float, surge: float, copies: int = -1) -> None:
        """A story and the copies other outlets make of it (``copies`` -1: by chance)."""
        first = point(key, at, bearish, surge)
        points.append(first)
        if copies < 0:
            copies = rng.choice(COPIES) if rng.random() < copy_share else 0
        for _ in range(copies):
            later = at + timedelta(seconds=rng.uniform(600, 8 * 3600))
            copy = point(key, later, bearish, surge, story=first.uid)
            if rng.random() < 0.8:  # read as the original
                copy = replace(
                    copy,
                    sentiment=first.sentiment,
                    p_bearish=first.p_bearish,
                    p_bullish=first.p_bullish,
                )
            points.append(copy)

    for i, key in enumerate(names):
        share = round(baseline * weights[i] / total_w)
        for _ in range(share):
            story(key, _business_time(rng, start, span_s), 0.12, abs(rng.gauss(0.4, 0.4)))
    for b in bursts:
        if b.echo:
            for _ in range(b.documents):  # each story three times within three hours
                first = point(b.key, b.onset, 1.0, 1.0)
                points.append(first)
                for _ in range(2):
                    later = b.onset + timedelta(seconds=rng.uniform(300, b.hours * 3600))
                    points.append(point(b.key, later, 1.0, 1.0, story=first.uid))
            continue
        for _ in range(b.documents):
            x = rng.betavariate(1.3, 2.5)  # front-loaded: most of the burst early on
            at = b.onset + timedelta(hours=x * b.hours)
            ramp = min(1.0, x * 4)  # the memory's score rises over the first quarter
            story(b.key, at, b.bearish, 0.5 + ramp * (b.surge - 0.5))
    end = start + timedelta(seconds=span_s)
    points = [p for p in points if p.at < end]
    # the order the documents get their ids in: the evaluator's order of each key's points
    points.sort(key=lambda p: (p.key, p.event_at, p.at, p.uid))
    return points, bursts


def load(url: str, points: list[Point], *, stories: bool = True, precision: bool = True) -> None:
    """COPY the points into documents, predictions and trend_points (one transaction).
    ``stories`` False: no story ids (grouping off); ``precision`` False: every point an
    instant at its stamp (how the previous round's evaluator read day-stamped data)."""
    engine = db.make_engine(url)
    ids = {p.uid: f"bench:{n:07d}" for n, p in enumerate(points)}
    try:
        raw = engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert conn is not None
            with conn.cursor() as cur:
                docs, negs, last_key = 0, 0, None
                with cur.copy(
                    "COPY documents (id, source, published_at, title, text, story_id,"
                    " time_precision) FROM STDIN"
                ) as copy:
                    for p in points:
                        copy.write_row(
                            (
                                ids[p.uid],
                                "bench",
                                p.event_at,
                                f"{p.key} story {p.story}",
                                "text",
                                ids.get(p.story) if stories else None,
                                p.precision if precision else "second",
                            )
                        )
                with cur.copy(
                    "COPY predictions (document_id, model_version, topic_id, topic, topic_confidence,"
                    " sentiment, p_bearish, p_neutral, p_bullish, scored_at) FROM STDIN"
                ) as copy:
                    for p in points:
                        copy.write_row(
                            (
                                ids[p.uid],
                                "bench",
                                5,
                                p.key.split(":", 1)[1],
                                0.9,
                                p.sentiment,
                                p.p_bearish,
                                max(0.0, 1 - p.p_bearish - p.p_bullish),
                                p.p_bullish,
                                p.at,
                            )
                        )
                with cur.copy(
                    "COPY trend_points (key, event_at, document_id, sentiment, p_bearish,"
                    " expected_negative_rate, surge_score, doc_count, negative_count, order_at,"
                    " p_neutral, p_bullish, topic_confidence, model_version, time_precision)"
                    " FROM STDIN"
                ) as copy:
                    for p in points:
                        if p.key != last_key:
                            docs, negs, last_key = 0, 0, p.key
                        docs += 1
                        negs += p.sentiment == "bearish"
                        copy.write_row(
                            (
                                p.key,
                                p.event_at,
                                ids[p.uid],
                                p.sentiment,
                                p.p_bearish,
                                p.expected,
                                p.surge,
                                docs,
                                negs,
                                p.event_at,
                                max(0.0, 1 - p.p_bearish - p.p_bullish),
                                p.p_bullish,
                                0.9,
                                "bench",
                                p.precision if precision else "second",
                            )
                        )
            conn.commit()
            with conn.cursor() as cur:
                conn.autocommit = True
                cur.execute("ANALYZE documents, predictions, trend_points")
        finally:
            raw.close()
    finally:
        engine.dispose()


NOISY_RULES = """
# A stress case: every rule at min_volume 1, firing thousands of times over the stream.
rules:
  - {name: noisy-share, kind: threshold, metric: negative_share, select: {min_volume: 1},
     window: 1h, value: 0.6, resolve: {value: 0.3}, for: 10m, notifiers: [log]}
  - {name: noisy-mean, kind: threshold, metric: mean_sentiment, op: "<",
     select: {key_kind: entity, min_volume: 1}, window: 2h, value: -0.4, notifiers: [log]}
  - {name: noisy-spike, kind: spike, select: {min_volume: 1}, window: 30m,
     reference_window: 3h, ratio: 4, min_reference_count: 2, notifiers: [log]}
  - {name: noisy-memory, kind: memory_surge, window: 30m, value: 3.0, resolve: {value: 1.0},
     notifiers: [log]}
"""


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def _scoreline(label: str, evaluator: str, card: Scorecard) -> dict[str, object]:
    """One row of the old-vs-new table."""
    totals = card.as_dict()["totals"]
    worst = totals["worst_false_per_30d"]
    return {
        "rules": label,
        "evaluator": evaluator,
        "incidents": totals["incidents"],
        "detected": totals["detected"],
        "late": totals["late"],
        "missed": totals["missed"],
        "median_delay_s": totals["median_delay_s"],
        "max_delay_s": totals["max_delay_s"],
        "worst_entity_false_per_30d": (worst["entity"] or {}).get("per_30d"),
        "worst_entity": (worst["entity"] or {}).get("key"),
        "worst_topic_false_per_30d": (worst["topic"] or {}).get("per_30d"),
        "worst_topic": (worst["topic"] or {}).get("key"),
        "false_alerts": totals["false_alerts"],
        "false_by_rule": card.false_by_rule,
        "by_precision": {},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--documents", type=int, default=50_000, help="documents, copies included")
    parser.add_argument("--years", type=float, default=2.5)
    parser.add_argument("--start", default="2024-01-01T00:00:00+00:00")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rules", type=Path, default=ROOT / "examples" / "rules.yaml", help="rules YAML"
    )
    parser.add_argument(
        "--old-rules",
        type=Path,
        default=ROOT / "bench" / "rules_round1.yaml",
        help="the rules to compare with (default: the previous round's examples)",
    )
    parser.add_argument(
        "--day-every",
        type=int,
        default=3,
        help="every that-many-th key is day-stamped (0: every key has times)",
    )
    parser.add_argument(
        "--copy-share", type=float, default=0.25, help="share of stories other outlets repeat"
    )
    parser.add_argument(
        "--echoes",
        type=float,
        default=2.0,
        help="mean echo events per key (a bearish story or two, repeated by three outlets)",
    )
    parser.add_argument(
        "--baseline-days",
        type=float,
        default=3.0,
        help="days the previous, exhaustive algorithm is timed over (0: skip)",
    )
    parser.add_argument("--skip-live-step", action="store_true", help="do not time the 30 s step")
    parser.add_argument(
        "--skip-noisy", action="store_true", help="do not time the noisy stress rules"
    )
    parser.add_argument(
        "--skip-previous-evaluator",
        action="store_true",
        help="do not score the rules on the stream as the previous round's evaluator read it",
    )
    parser.add_argument("--keep-db", action="store_true", help="keep the database; print its URL")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    start = datetime.fromisoformat(args.start).astimezone(UTC)
    days = args.years * 365.25
    end = start + timedelta(days=days)
    ruleset: RuleSet = load_rules(args.rules)
    old_rules: RuleSet = load_rules(args.old_rules)

    t0 = time.perf_counter()
    points, bursts = synthetic_stream(
        seed=args.seed,
        keys=args.keys,
        documents=args.documents,
        start=start,
        days=days,
        day_every=args.day_every,
        copy_share=args.copy_share,
        echoes=args.echoes,
    )
    generated_s = time.perf_counter() - t0
    by_day = day_keys(stream_keys(args.keys), args.day_every)
    stories = len({(p.key, p.story) for p in points})
    url = create_database(ADMIN_URL, prefix="finsent_bench_backtest")
    results: dict[str, object] = {}
    try:
        db.upgrade(url)
        t0 = time.perf_counter()
        load(url, points)
        loaded_s = time.perf_counter() - t0
        print(
            f"{len(points):,} documents ({stories:,} stories) on {args.keys} keys "
            f"({len(by_day)} day-stamped) over {days:.0f} days ({len(bursts)} bursts, "
            f"{sum(b.incident for b in bursts)} incidents, {sum(b.echo for b in bursts)} echoes): "
            f"generated in {generated_s:.1f}s, loaded in {loaded_s:.1f}s",
            flush=True,
        )

        def report(p: Progress) -> None:
            print(p.line(), file=sys.stderr, flush=True)

        engine = db.make_engine(url)
        noisy = parse_rules(yaml.safe_load(NOISY_RULES), source="bench/backtest.py NOISY_RULES")
        choice = choose_step(ruleset, LIVE_INTERVAL_S)
        old_choice = choose_step(old_rules, LIVE_INTERVAL_S)
        noisy_choice = choose_step(noisy, LIVE_INTERVAL_S)
        plan = [("rules, default step", ruleset, choice.step_s, choice.reason)]
        if not args.skip_live_step:
            plan.append(
                ("rules, live step", ruleset, LIVE_INTERVAL_S, "the live interval: a live run")
            )
        plan.append(("old rules, default step", old_rules, old_choice.step_s, old_choice.reason))
        if not args.skip_noisy:
            plan.append(
                ("noisy rules, default step", noisy, noisy_choice.step_s, noisy_choice.reason)
            )
        runs = []
        by_label = {}
        for label, rules, step, why in plan:
            print(
                f"{label}: backtest at {format_duration(timedelta(seconds=step))} ({why})",
                flush=True,
            )
            t0 = time.perf_counter()
            result = run_backtest(engine, rules, start, end, step, progress=report)
            wall = time.perf_counter() - t0
            by_label[label] = result
            runs.append(
                {
                    "label": label,
                    "rules": [r.name for r in rules.rules],
                    "step_s": step,
                    "why": why,
                    "instants": result.instants,
                    "evaluations": result.evaluations,
                    "evaluations_by_rule": result.evaluations_by_rule,
                    "episodes": len(result.episodes),
                    "fired": len(result.fired),
                    "wall_s": round(wall, 2),
                }
            )
            print(
                f"  {result.instants:,} instants, {result.evaluations:,} rule evaluations, "
                f"{len(result.fired)} alerts fired: {wall:.1f}s",
                flush=True,
            )

        baseline: dict[str, object] | None = None
        if args.baseline_days > 0:
            # a slice around an incident (in the second half: the anomaly rules' baselines
            # are full there), so that the two algorithms have alerts to agree on
            mid = start + (end - start) / 2
            onset = min((b.onset for b in bursts if b.incident and b.onset >= mid), default=mid)
            b_start = grid_instant(onset - timedelta(days=1), 3600)
            b_end = b_start + timedelta(days=args.baseline_days)
            t0 = time.perf_counter()
            old = run_backtest(engine, ruleset, b_start, b_end, LIVE_INTERVAL_S, exhaustive=True)
            old_wall = time.perf_counter() - t0
            new = run_backtest(engine, ruleset, b_start, b_end, LIVE_INTERVAL_S)
            full_instants = (end - start) / timedelta(seconds=LIVE_INTERVAL_S)
            checks = {"rules, 30 s": old.episodes == new.episodes}
            o_end = b_start + timedelta(days=1)
            step = old_choice.step_s
            checks[f"old rules, {step:g} s, 1 day"] = (
                run_backtest(engine, old_rules, b_start, o_end, step, exhaustive=True).episodes
                == run_backtest(engine, old_rules, b_start, o_end, step).episodes
            )
            if not args.skip_noisy:
                n_end = b_start + timedelta(days=2)
                step = noisy_choice.step_s
                checks[f"noisy rules, {step:g} s, 2 days"] = (
                    run_backtest(engine, noisy, b_start, n_end, step, exhaustive=True).episodes
                    == run_backtest(engine, noisy, b_start, n_end, step).episodes
                )
            baseline = {
                "days": args.baseline_days,
                "from": b_start.isoformat(),
                "step_s": LIVE_INTERVAL_S,
                "instants": old.instants,
                "evaluations": old.evaluations,
                "episodes": len(old.episodes),
                "fired": len(old.fired),
                "wall_s": round(old_wall, 2),
                "extrapolated_full_span_s": round(old_wall / old.instants * full_instants, 1),
                "new_evaluations": new.evaluations,
                "same_episodes": checks,
            }
            print(
                f"previous algorithm (every rule at every 30s instant) over {args.baseline_days:g} "
                f"days: {old_wall:.1f}s for {old.instants:,} instants -> about "
                f"{baseline['extrapolated_full_span_s']:,.0f}s for the whole span; the scheduled "
                f"backtest raises the same episodes as evaluating every instant: {checks}",
                flush=True,
            )
            if not all(checks.values()):
                print("MISMATCH between the exhaustive and the scheduled backtest", file=sys.stderr)
        engine.dispose()

        # a day-stamped source's incident is known by its date, as its documents are
        incidents = [
            Incident(
                b.key,
                (
                    b.onset.replace(hour=0, minute=0, second=0, microsecond=0)
                    if b.key in by_day
                    else b.onset.replace(microsecond=0)
                ),
                f"burst {i}",
            )
            for i, b in enumerate(b for b in bursts if b.incident)
        ]

        def scored(episodes: tuple) -> Scorecard:
            return score(incidents, episodes, start=start, end=end)

        cards = {
            ("rules", "this"): scored(by_label["rules, default step"].episodes),
            ("old rules", "this"): scored(by_label["old rules, default step"].episodes),
        }
        previous: dict[str, float] = {}
        if not args.skip_previous_evaluator:
            # the same stream as the previous round's evaluator read it: every document
            # counted (no stories) and a day-stamped one an instant at midnight -- which is
            # what this evaluator computes on rows without story ids and of second precision
            url_prev = create_database(ADMIN_URL, prefix="finsent_bench_backtest_prev")
            try:
                db.upgrade(url_prev)
                load(url_prev, points, stories=False, precision=False)
                engine_prev = db.make_engine(url_prev)
                for label, rules, step in (
                    ("rules", ruleset, choice.step_s),
                    ("old rules", old_rules, old_choice.step_s),
                ):
                    t0 = time.perf_counter()
                    result = run_backtest(engine_prev, rules, start, end, step)
                    previous[label] = round(time.perf_counter() - t0, 2)
                    cards[(label, "previous")] = scored(result.episodes)
                engine_prev.dispose()
            finally:
                drop_database(ADMIN_URL, url_prev)

        names = {"rules": _rel(args.rules), "old rules": _rel(args.old_rules)}
        evaluators = {
            "this": "stories once, day stamps spread over the day",
            "previous": "every copy counted, day stamps at midnight",
        }
        comparison = []
        for (label, which), card in sorted(
            cards.items(), key=lambda item: (item[0][0] == "rules", item[0][1] == "this")
        ):
            row = _scoreline(names[label], evaluators[which], card)
            for kind in ("day", "second"):
                mine = [d for d in card.counted if (d.incident.key in by_day) == (kind == "day")]
                row["by_precision"][kind] = {  # type: ignore[index]
                    "incidents": len(mine),
                    "detected": sum(d.status == "detected" for d in mine),
                }
            comparison.append(row)
        for row in comparison:
            print(
                f"{row['rules']} ({row['evaluator']}): {row['detected']}/{row['incidents']} "
                f"detected within 24h, delay median {format_delay(_td(row['median_delay_s']))} "
                f"max {format_delay(_td(row['max_delay_s']))}, worst false/30d entity "
                f"{row['worst_entity_false_per_30d']} topic {row['worst_topic_false_per_30d']}",
                flush=True,
            )

        results = {
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "stream": {
                "seed": args.seed,
                "keys": args.keys,
                "day_keys": sorted(by_day),
                "documents": len(points),
                "stories": stories,
                "copy_share": args.copy_share,
                "days": round(days, 2),
                "start": start.isoformat(),
                "bursts": len(bursts),
                "incidents": len(incidents),
                "echoes": sum(b.echo for b in bursts),
                "generated_s": round(generated_s, 2),
                "loaded_s": round(loaded_s, 2),
            },
            "rules": names["rules"],
            "old_rules": names["old rules"],
            "runs": runs,
            "previous_evaluator_wall_s": previous,
            "baseline": baseline,
            "comparison": comparison,
            "incident_score": cards[("rules", "this")].as_dict()["totals"],
            "old_incident_score": cards[("old rules", "this")].as_dict()["totals"],
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "backtest.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "backtest.incidents.yaml").write_text(
            f"# generated by bench/backtest.py (seed {args.seed}): the incidents injected into the stream\n"
            + yaml.safe_dump(
                {
                    "incidents": [
                        {"key": i.key, "onset": i.onset.isoformat(), "name": i.name}
                        for i in incidents
                    ]
                },
                sort_keys=False,
                allow_unicode=True,
            )
        )
        (args.out / "backtest.md").write_text(
            _markdown(
                results,
                format_report(cards[("rules", "this")]),
                format_report(cards[("old rules", "this")]),
            )
        )
        print(f"wrote {args.out / 'backtest.json'} and backtest.md")
    finally:
        if args.keep_db:
            print(f"database kept: {url}")
        else:
            drop_database(ADMIN_URL, url)
    return 0


def _td(seconds: float | None) -> timedelta | None:
    return None if seconds is None else timedelta(seconds=seconds)


def _markdown(r: dict, report: str, old_report: str) -> str:
    s = r["stream"]
    out = io.StringIO()
    out.write("# backtest bench\n\n")
    out.write(
        f"`bench/backtest.py`: {s['documents']:,} synthetic documents ({s['stories']:,} "
        f"stories: {s['copy_share']:.0%} of stories repeated by 1-3 other outlets) on "
        f"{s['keys']} keys over {s['days']:.0f} days (seed {s['seed']}, {s['incidents']} "
        f"incidents, {s['bursts'] - s['incidents'] - s['echoes']} false-alarm bursts, "
        f"{s['echoes']} echoes: a bearish story or two repeated by three outlets within "
        f"three hours); {len(s['day_keys'])} keys are day-stamped (their documents carry only "
        f"a date, time_precision day; their incidents' onsets are dates too). Rules "
        f"`{r['rules']}` and the previous round's `{r['old_rules']}`, and the noisy stress "
        f"rules of the script; {r['machine']['cpus']} CPUs, load average at the end "
        f"{r['machine']['loadavg_at_end']}.\n\n"
    )
    out.write("## Rules scored against the injected incidents, old vs new\n\n")
    out.write(
        "Detected: the first alert on the incident's key fired within 24 h of its onset "
        "(delays over the incidents an alert caught, late ones included). False alerts: "
        "episodes starting outside every [onset - 6 h, onset + 7 d] of an incident on the "
        "key; worst key of each kind, per 30 days. *Previous evaluator*: the same stream as "
        "the previous round read it (every copy counted, a day-stamped document an instant "
        "at midnight).\n\n"
    )
    out.write(
        "| rule set | evaluator | incidents alerted <= 24 h | of them day-stamped | "
        "median / max detection delay | worst false alerts / 30 days / entity | "
        "worst topic false alerts / 30 days |\n"
    )
    out.write("| --- | --- | ---: | ---: | ---: | ---: | ---: |\n")
    for row in r["comparison"]:
        day = row["by_precision"]["day"]
        out.write(
            f"| `{row['rules']}` | {row['evaluator']} | {row['detected']} of "
            f"{row['incidents']} | {day['detected']} of {day['incidents']} | "
            f"{format_delay(_td(row['median_delay_s']))} / "
            f"{format_delay(_td(row['max_delay_s']))} | "
            f"{row['worst_entity_false_per_30d']:.2f} ({row['worst_entity'] or '-'}) | "
            f"{row['worst_topic_false_per_30d']:.2f} ({row['worst_topic'] or '-'}) |\n"
        )
    out.write("\n## Backtest time\n\n")
    out.write("| run | step | instants | rule evaluations | alerts fired | wall |\n")
    out.write("| --- | ---: | ---: | ---: | ---: | ---: |\n")
    for run in r["runs"]:
        out.write(
            f"| {run['label']} | {run['step_s']:g} s | {run['instants']:,} | "
            f"{run['evaluations']:,} | {run['fired']} | {run['wall_s']:.1f} s |\n"
        )
    b = r.get("baseline")
    if b:
        out.write(
            f"| previous algorithm (every rule at every instant), rules, {b['days']:g} days | "
            f"{b['step_s']:g} s | {b['instants']:,} | {b['evaluations']:,} | {b['fired']} | "
            f"{b['wall_s']:.1f} s (whole span: about {b['extrapolated_full_span_s']:,.0f} s) |\n"
        )
        out.write(
            f"\nOver that {b['days']:g}-day slice the scheduled backtest made "
            f"{b['new_evaluations']:,} rule evaluations instead of {b['evaluations']:,} "
            f"({b['episodes']} episodes, {b['fired']} fired). "
            "Same episodes (states, times, values, figures) as evaluating every instant: "
            + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in b["same_episodes"].items())
            + ".\n"
        )
    out.write(
        "\nThe default-step alerts of the rules scored against the injected incidents:\n\n```\n"
    )
    out.write(report + "\n```\n")
    out.write("\nThe same for the previous round's rules:\n\n```\n")
    out.write(old_report + "\n```\n")
    return out.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
