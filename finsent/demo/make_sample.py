"""Writes ``stream.jsonl``, the sample stream ``finsent demo`` replays (run it to rebuild;
the output is deterministic).

Headlines written for finsent about **fictional** companies (so a made-up scandal never
lands on a real one): two days of ordinary market news, and on the second day a negative
surge on Norvalex Aerospace (NVLX): a fuselage defect, a grounding, a regulator's probe,
downgrades. The watchlist next to this file maps the tickers to their names.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

COMPANIES = {
    "NVLX": "Norvalex Aerospace",
    "BRWL": "Brightwell Foods",
    "CSTR": "Castora Energy",
    "HLXB": "Helix Bancorp",
    "QNTR": "Quanterra Semiconductor",
    "MRVA": "Miravia Pharma",
    "TDLN": "Tidelane Logistics",
    "SOLQ": "Solquist Retail",
}

BULLISH = [
    "{name} beats quarterly earnings estimates, raises full-year outlook",
    "{name} shares jump after record revenue quarter",
    "Analyst upgrades {name} to buy, sees 25% upside",
    "${t} rallies as {name} wins multi-year supply contract",
    "{name} announces $2 billion share buyback",
    "{name} lifts dividend by 10% on strong cash flow",
    "{name} margins expand as costs fall; stock climbs",
    "${t} breaks out to a 52-week high on heavy volume",
    "{name} signs partnership with a major cloud provider, shares rise",
    "Strong demand pushes {name} order backlog to an all-time high",
    "{name} guidance tops Wall Street forecasts",
    "Bulls pile into ${t} after upbeat investor day",
]
BEARISH = [
    "{name} misses profit estimates, shares slide",
    "{name} cuts outlook citing weak demand",
    "Analyst downgrades {name} to sell on margin pressure",
    "${t} falls after {name} warns of supply problems",
    "{name} shares drop as sales disappoint",
    "{name} suspends dividend to preserve cash",
    "${t} hits a 52-week low as investors flee",
    "{name} faces lawsuit over delayed product launch",
]
NEUTRAL = [
    "{name} to report quarterly results on Thursday",
    "{name} names new chief financial officer",
    "{name} schedules annual shareholder meeting for May",
    "{name} to present at industry conference next week",
    "${t} trading volume in line with its 30-day average",
    "{name} opens new regional office",
    "{name} completes previously announced debt refinancing",
    "{name} files quarterly report with regulators",
    "What to watch in {name}'s earnings call",
    "{name} confirms board meeting date",
]
MARKET = [
    ("Fed holds rates steady, signals patience on cuts", "neutral"),
    ("Treasury yields edge higher ahead of jobs data", "neutral"),
    ("Oil climbs 2% as supply concerns mount", "bullish"),
    ("Stocks open higher as tech leads the rally", "bullish"),
    ("Dollar slips against the euro after soft inflation print", "neutral"),
    ("Gold steady near record as investors seek safety", "neutral"),
    ("Wall Street closes lower as bank shares slump", "bearish"),
    ("Jobless claims fall more than expected", "bullish"),
    ("Manufacturing activity contracts for a third month", "bearish"),
    ("European stocks end flat in quiet trading", "neutral"),
    ("Corporate bond issuance picks up after holiday lull", "neutral"),
    ("Crude slides as inventories build unexpectedly", "bearish"),
    ("IPO market heats up with three listings this week", "bullish"),
    ("Consumer confidence dips to a six-month low", "bearish"),
    ("Central bank minutes show officials split on next move", "neutral"),
]
SURGE = [
    "Norvalex Aerospace shares plunge after fuselage defect found in new jets",
    "Regulator grounds Norvalex NX-7 fleet pending safety inspection",
    "$NVLX tumbles 18% as airlines halt deliveries",
    "Norvalex faces federal probe over quality-control lapses",
    "Analysts slash Norvalex Aerospace price targets after grounding",
    "Norvalex Aerospace downgraded to sell; 'crisis could last quarters'",
    "Airlines seek compensation from Norvalex over grounded jets",
    "$NVLX selloff deepens as short interest spikes",
    "Norvalex suspends guidance, warns of heavy charges",
    "Whistleblower says Norvalex ignored defect warnings for months",
    "Norvalex Aerospace bonds slump as credit outlook cut to negative",
    "Second airline cancels Norvalex order after defect disclosure",
    "Norvalex shares hit lowest level in five years",
    "Lawsuits pile up against Norvalex Aerospace over jet defect",
    "Norvalex CEO under pressure as grounding costs mount",
    "Norvalex supplier halts production, deepening delivery crisis",
    "$NVLX: options traders bet on further losses",
    "Norvalex Aerospace misses delivery targets as probe widens",
    "Rating agency warns of Norvalex downgrade to junk",
    "Norvalex Aerospace loses defense contract amid safety review",
]
SOURCES = ("wire", "markets-daily", "social")


def build(seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    start = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    surge_start, surge_end = start + timedelta(hours=33), start + timedelta(hours=41)
    rows: list[dict[str, object]] = []
    count = 0

    def add(when: datetime, title: str, source: str) -> None:
        nonlocal count
        count += 1
        rows.append(
            {
                "id": f"sample-{count:04d}",
                "source": f"sample-{source}",
                "kind": "social" if source == "social" else "news",
                "published_at": when.isoformat().replace("+00:00", "Z"),
                "text": title,
                "url": f"https://news.example.com/finsent-sample/{count:04d}",
            }
        )

    # Ordinary news: about one document every 9 minutes for two days.
    when = start
    end = start + timedelta(days=2)
    while when < end:
        when += timedelta(minutes=rng.randint(3, 15))
        roll = rng.random()
        if roll < 0.25:
            title, _ = rng.choice(MARKET)
        else:
            ticker = rng.choice(list(COMPANIES))
            pool = rng.choices([BULLISH, NEUTRAL, BEARISH], weights=[0.4, 0.4, 0.2])[0]
            title = rng.choice(pool).format(name=COMPANIES[ticker], t=ticker)
        add(when, title, rng.choice(SOURCES))
    # The surge: Norvalex bad news every few minutes for eight hours, mostly distinct headlines.
    when = surge_start
    while when < surge_end:
        when += timedelta(minutes=rng.randint(4, 14))
        add(when, rng.choice(SURGE), rng.choice(SOURCES))
    rows.sort(key=lambda r: str(r["published_at"]))
    return rows


def main() -> None:
    path = Path(__file__).resolve().parent / "stream.jsonl"
    rows = build()
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} documents to {path}")


if __name__ == "__main__":
    main()
