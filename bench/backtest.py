"""Backtest bench: a multi-year synthetic trend stream, replayed by ``finsent alerts backtest``.

    .venv/bin/python bench/backtest.py                       # 20 keys, 50k documents, 2.5 years
    .venv/bin/python bench/backtest.py --documents 5000 --years 0.5 --baseline-days 1   # quick

Generates a deterministic (``--seed``) stream: 20 keys (topics and tickers), business-hour
weighted arrivals, a few incidents per key (bursts of mostly bearish documents with a
rising memory surge score) and a few shorter false-alarm bursts, and loads it with COPY
straight into what the evaluator reads (``documents``, ``predictions``, ``trend_points``)
of a throwaway database. Then it times ``run_backtest`` (what ``finsent alerts backtest``
runs) over the whole span:

* with ``--rules`` (default ``examples/rules.yaml``, every kind the project ships) at the
  default step the rules give (``alerts.backtest.choose_step``), printing the progress
  lines the CLI prints;
* with the same rules at the live interval (30 s), which reproduces a live run exactly;
* with ``NOISY_RULES`` (below: every rule at ``min_volume`` 1, thousands of alerts), the
  stress case;
* the previous algorithm (every rule at every 30 s grid instant, ``exhaustive=True``) over
  ``--baseline-days`` days, extrapolated to the whole span, and checks that the scheduled
  backtest raises exactly the same episodes over that slice, which holds an incident (and
  the noisy rules over two days).

It scores the default-step alerts against the generated incidents (``alerts.incidents``),
and writes ``bench/results/backtest.json``, ``backtest.md`` and the incidents as
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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0] and bench/pipeline.py would shadow the package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)

import yaml  # noqa: E402

from alerts.backtest import Progress, choose_step, run_backtest  # noqa: E402
from alerts.evaluator import grid_instant  # noqa: E402
from alerts.incidents import Incident, format_report, score  # noqa: E402
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


@dataclass(frozen=True)
class Point:
    key: str
    at: datetime
    sentiment: str
    p_bearish: float
    p_bullish: float
    surge: float
    expected: float


def stream_keys(n: int) -> list[str]:
    """``n`` keys, alternating topics and tickers."""
    out = []
    for i in range(n):
        pool, prefix = (TOPICS, "topic") if i % 2 == 0 else (TICKERS, "entity")
        name = pool[(i // 2) % len(pool)] + ("" if i < 2 * len(pool) else f"{i // (2 * len(pool))}")
        out.append(f"{prefix}:{name}")
    return out


def _business_time(rng: random.Random, start: datetime, span_s: float) -> datetime:
    """A time in ``[start, start + span)``, three times likelier on weekdays 08-20 UTC."""
    while True:
        t = start + timedelta(seconds=rng.random() * span_s)
        busy = t.weekday() < 5 and 8 <= t.hour < 20
        if busy or rng.random() < 1 / 3:
            return t


def synthetic_stream(
    *, seed: int, keys: int, documents: int, start: datetime, days: float
) -> tuple[list[Point], list[Burst]]:
    """The documents of every key (time order) and the bursts injected into them."""
    rng = random.Random(seed)
    span_s = days * 86400
    names = stream_keys(keys)
    weights = [1 / (i + 1) ** 0.6 for i in range(len(names))]
    rng.shuffle(weights)
    total_w = sum(weights)
    bursts: list[Burst] = []
    for key in names:
        for incident, mean in ((True, 2.0), (False, 1.5)):
            # Poisson counts by inversion: deterministic and dependency-free
            count, p, threshold = 0, rng.random(), math.exp(-mean)
            while p > threshold:
                count += 1
                p *= rng.random()
            for _ in range(count):
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
    bursts.sort(key=lambda b: (b.onset, b.key))
    baseline = max(0, documents - sum(b.documents for b in bursts))
    points: list[Point] = []

    def point(key: str, at: datetime, bearish: float, surge: float) -> Point:
        roll = rng.random()
        sentiment = "bearish" if roll < bearish else ("bullish" if roll > 1 - 0.25 else "neutral")
        pb = rng.uniform(0.6, 0.95) if sentiment == "bearish" else rng.uniform(0.01, 0.3)
        pbull = rng.uniform(0.6, 0.95) if sentiment == "bullish" else rng.uniform(0.0, 1 - pb) * 0.5
        return Point(
            key,
            at,
            sentiment,
            round(pb, 4),
            round(min(pbull, 1 - pb), 4),
            round(max(0.0, surge + rng.gauss(0, 0.3)), 4),
            round(bearish, 4),
        )

    for i, key in enumerate(names):
        share = round(baseline * weights[i] / total_w)
        for _ in range(share):
            points.append(
                point(key, _business_time(rng, start, span_s), 0.12, abs(rng.gauss(0.4, 0.4)))
            )
    for b in bursts:
        for _ in range(b.documents):
            x = rng.betavariate(1.3, 2.5)  # front-loaded: most of the burst early on
            at = b.onset + timedelta(hours=x * b.hours)
            ramp = min(1.0, x * 4)  # the memory's score rises over the first quarter
            points.append(point(b.key, at, b.bearish, 0.5 + ramp * (b.surge - 0.5)))
    end = start + timedelta(seconds=span_s)
    points = [p for p in points if p.at < end]
    points.sort(key=lambda p: (p.key, p.at))
    return points, bursts


def load(url: str, points: list[Point]) -> None:
    """COPY the points into documents, predictions and trend_points (one transaction)."""
    engine = db.make_engine(url)
    try:
        raw = engine.raw_connection()
        try:
            conn = raw.driver_connection
            assert conn is not None
            with conn.cursor() as cur:
                docs, negs, last_key = 0, 0, None
                with cur.copy(
                    "COPY documents (id, source, published_at, title, text) FROM STDIN"
                ) as copy:
                    for n, p in enumerate(points):
                        copy.write_row((f"bench:{n}", "bench", p.at, f"{p.key} story {n}", "text"))
                with cur.copy(
                    "COPY predictions (document_id, model_version, topic_id, topic, topic_confidence,"
                    " sentiment, p_bearish, p_neutral, p_bullish, scored_at) FROM STDIN"
                ) as copy:
                    for n, p in enumerate(points):
                        copy.write_row(
                            (
                                f"bench:{n}",
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
                    " p_neutral, p_bullish, topic_confidence, model_version) FROM STDIN"
                ) as copy:
                    for n, p in enumerate(points):
                        if p.key != last_key:
                            docs, negs, last_key = 0, 0, p.key
                        docs += 1
                        negs += p.sentiment == "bearish"
                        copy.write_row(
                            (
                                p.key,
                                p.at,
                                f"bench:{n}",
                                p.sentiment,
                                p.p_bearish,
                                p.expected,
                                p.surge,
                                docs,
                                negs,
                                p.at,
                                max(0.0, 1 - p.p_bearish - p.p_bullish),
                                p.p_bullish,
                                0.9,
                                "bench",
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--documents", type=int, default=50_000)
    parser.add_argument("--years", type=float, default=2.5)
    parser.add_argument("--start", default="2024-01-01T00:00:00+00:00")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rules", type=Path, default=ROOT / "examples" / "rules.yaml", help="rules YAML"
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
    parser.add_argument("--keep-db", action="store_true", help="keep the database; print its URL")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    start = datetime.fromisoformat(args.start).astimezone(UTC)
    days = args.years * 365.25
    end = start + timedelta(days=days)
    ruleset: RuleSet = load_rules(args.rules)

    t0 = time.perf_counter()
    points, bursts = synthetic_stream(
        seed=args.seed, keys=args.keys, documents=args.documents, start=start, days=days
    )
    generated_s = time.perf_counter() - t0
    url = create_database(ADMIN_URL, prefix="finsent_bench_backtest")
    results: dict[str, object] = {}
    try:
        db.upgrade(url)
        t0 = time.perf_counter()
        load(url, points)
        loaded_s = time.perf_counter() - t0
        print(
            f"{len(points):,} documents on {args.keys} keys over {days:.0f} days "
            f"({len(bursts)} bursts, {sum(b.incident for b in bursts)} incidents): "
            f"generated in {generated_s:.1f}s, loaded in {loaded_s:.1f}s",
            flush=True,
        )

        def report(p: Progress) -> None:
            print(p.line(), file=sys.stderr, flush=True)

        engine = db.make_engine(url)
        noisy = parse_rules(yaml.safe_load(NOISY_RULES), source="bench/backtest.py NOISY_RULES")
        choice = choose_step(ruleset, LIVE_INTERVAL_S)
        noisy_choice = choose_step(noisy, LIVE_INTERVAL_S)
        plan = [("rules, default step", ruleset, choice.step_s, choice.reason)]
        if not args.skip_live_step:
            plan.append(
                ("rules, live step", ruleset, LIVE_INTERVAL_S, "the live interval: a live run")
            )
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

        incidents = [
            Incident(b.key, b.onset.replace(microsecond=0), f"burst {i}")
            for i, b in enumerate(b for b in bursts if b.incident)
        ]
        card = score(incidents, by_label["rules, default step"].episodes, start=start, end=end)
        summary = card.as_dict()["totals"]
        print(format_report(card).splitlines()[-1], flush=True)

        results = {
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "stream": {
                "seed": args.seed,
                "keys": args.keys,
                "documents": len(points),
                "days": round(days, 2),
                "start": start.isoformat(),
                "bursts": len(bursts),
                "incidents": len(incidents),
                "generated_s": round(generated_s, 2),
                "loaded_s": round(loaded_s, 2),
            },
            "rules": str(
                args.rules.relative_to(ROOT) if args.rules.is_relative_to(ROOT) else args.rules
            ),
            "runs": runs,
            "baseline": baseline,
            "incident_score": summary,
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
        (args.out / "backtest.md").write_text(_markdown(results, format_report(card)))
        print(f"wrote {args.out / 'backtest.json'} and backtest.md")
    finally:
        if args.keep_db:
            print(f"database kept: {url}")
        else:
            drop_database(ADMIN_URL, url)
    return 0


def _markdown(r: dict, report: str) -> str:
    s = r["stream"]
    out = io.StringIO()
    out.write("# backtest bench\n\n")
    out.write(
        f"`bench/backtest.py`: {s['documents']:,} synthetic documents on {s['keys']} keys over "
        f"{s['days']:.0f} days (seed {s['seed']}, {s['incidents']} incidents, "
        f"{s['bursts'] - s['incidents']} false-alarm bursts), rules `{r['rules']}` and the "
        f"noisy stress rules of the script; {r['machine']['cpus']} CPUs shared with a model "
        f"training, load average at the end {r['machine']['loadavg_at_end']}.\n\n"
    )
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
    return out.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
