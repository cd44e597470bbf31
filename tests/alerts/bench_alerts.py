"""Measure the alert engine on a throwaway database (not collected by pytest).

    nice -n 10 .venv/bin/python -m tests.alerts.bench_alerts --keys 200 --hours 24 --per-hour 12

Prints: rows inserted, one live evaluation pass (3 rules over every key), a backtest over
the whole history, and webhook dispatch throughput to a local receiver.
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sqlalchemy as sa

from alerts.backtest import run_backtest
from alerts.dispatcher import Dispatcher
from alerts.lifecycle import LiveEvaluator
from alerts.rules import parse_rules
from pipeline import db
from tests.alerts.conftest import T0, Point, alert_settings, insert_points
from tests.conftest import ADMIN_URL, create_database, drop_database

RULES = {
    "rules": [
        {
            "name": "share",
            "kind": "threshold",
            "metric": "negative_share",
            "select": {"min_volume": 5},
            "window": "1h",
            "value": 0.6,
            "resolve": {"value": 0.3},
            "for": "10m",
            "notifiers": ["webhook"],
        },
        {
            "name": "spike",
            "kind": "spike",
            "select": {"min_volume": 3},
            "window": "30m",
            "reference_window": "3h",
            "ratio": 4,
            "min_reference_count": 2,
            "notifiers": ["webhook"],
        },
        {
            "name": "memory",
            "kind": "memory_surge",
            "window": "30m",
            "value": 3.0,
            "resolve": {"value": 1.0},
            "notifiers": ["webhook"],
        },
    ]
}


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--per-hour", type=int, default=12)
    ap.add_argument("--interval", type=float, default=300.0)
    args = ap.parse_args()
    url = create_database(ADMIN_URL, prefix="finsent_bench")
    try:
        db.upgrade(url)
        engine = db.make_engine(url)
        started = time.perf_counter()
        step = 3600 / args.per_hour
        total = 0
        for k in range(args.keys):
            surge_at = (k * 7) % args.hours  # every key surges for an hour somewhere
            points = []
            for i in range(args.hours * args.per_hour):
                at = T0 + timedelta(seconds=i * step + 17)
                hour = i // args.per_hour
                surging = hour == surge_at
                bearish = (i % 10) < (8 if surging else 1)
                points.append(
                    Point(at, "bearish" if bearish else "neutral", surge=4.0 if surging else 0.3)
                )
            total += insert_points(engine, f"{'entity' if k % 2 else 'topic'}:K{k}", points)
        print(
            f"inserted {total} documents+predictions+trend points on {args.keys} keys "
            f"in {time.perf_counter() - started:.1f}s"
        )

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        settings = alert_settings(url, webhook_url=f"http://127.0.0.1:{httpd.server_address[1]}/")
        ruleset = parse_rules(RULES)
        end = T0 + timedelta(hours=args.hours)

        t = time.perf_counter()
        result = run_backtest(engine, ruleset, T0, end, args.interval)
        bt = time.perf_counter() - t
        print(
            f"backtest: {result.instants} instants x {len(ruleset.rules)} rules over {args.keys} keys in {bt:.2f}s "
            f"({result.instants / bt:.1f} instants/s); {len(result.fired)} alerts fired"
        )

        live = LiveEvaluator(engine, ruleset, settings)
        passes = []
        t_all = time.perf_counter()
        for at in [T0 + timedelta(seconds=args.interval * i) for i in range(result.instants)]:
            t = time.perf_counter()
            live.evaluate(at)
            passes.append(time.perf_counter() - t)
        live_s = time.perf_counter() - t_all
        passes.sort()
        with engine.connect() as conn:
            fired = conn.execute(
                sa.text("SELECT count(*) FROM alerts WHERE fired_at IS NOT NULL")
            ).scalar_one()
            queued = conn.execute(sa.text("SELECT count(*) FROM alert_deliveries")).scalar_one()
        print(
            f"live: {len(passes)} evaluation passes in {live_s:.2f}s; per pass median {passes[len(passes) // 2] * 1000:.0f} ms, "
            f"p95 {passes[int(len(passes) * 0.95)] * 1000:.0f} ms; {fired} alerts fired (backtest: {len(result.fired)}), "
            f"{queued} deliveries queued"
        )

        t = time.perf_counter()
        sent = Dispatcher(engine, settings, ruleset).dispatch_once(max_deliveries=100_000)
        d = time.perf_counter() - t
        print(
            f"dispatch: {sent.delivered} webhooks delivered in {d:.2f}s ({sent.delivered / d:.0f}/s, one at a time)"
        )
        httpd.shutdown()
        engine.dispose()
    finally:
        drop_database(ADMIN_URL, url)


if __name__ == "__main__":
    main()
