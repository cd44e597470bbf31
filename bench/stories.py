"""Story grouping benchmark: pairwise precision / recall / F1 of ``pipeline.stories`` on the
hand-written set ``tests/data/stories_eval.csv`` (invented headlines: cross-outlet rewrites
of one made-up event share a ``group_id``; other events about the same company on nearby
days, template twins about other companies and a repeated headline days apart do not).

Usage (from the repository root):

    .venv/bin/python bench/stories.py

Headlines are fed in event-time order (``hours_offset`` after a fixed start, file order
within a tie), as a scorer would see them. A document's entities are the companies whose
first name-word appears in its headline (what a watchlist matcher would tag; the macro
headlines name none). Pairwise: a pair of headlines is predicted together when they get one
story id, truly together when they share a ``group_id``.

The table covers shingle schemes x thresholds x the entity rule at the LSH default
(32 bands x 2 rows), an exact (no LSH, every earlier document a candidate) column for the
loss LSH costs, LSH shapes for the chosen setting, and a two-fold check: the threshold
picked on half the groups, scored on the other half. Deterministic: a rerun gives the same
numbers (timings aside). Writes ``bench/results/stories.json`` and ``stories.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from itertools import combinations
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, bench/ is sys.path[0] and bench/pipeline.py would shadow the package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(ROOT)

from pipeline.stories import (  # noqa: E402
    DEFAULT_CONFIG,
    Story,
    StoryConfig,
    StoryIndex,
    StoryMember,
    choose_story,
    normalise_headline,
)

START = datetime(2026, 3, 2, tzinfo=UTC)
SCHEMES = ("w1", "w1-nostem", "w1+w2", "c3", "c4", "c5", "w1+c4")
THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4)
LSH_SHAPES = ((16, 1, 2), (16, 2, 2), (24, 2, 1), (24, 2, 2), (24, 2, 8), (32, 2, 2), (48, 3, 2))


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    aliases = sorted({r["company"].split()[0].casefold() for r in rows if r["company"]})
    docs = []
    for i, r in enumerate(rows):
        words = set(normalise_headline(r["headline"], stop_words=False, stemming=False))
        docs.append(
            {
                "id": f"d{i:04d}",
                "group": r["group_id"],
                "headline": r["headline"],
                "event_at": START + timedelta(hours=float(r["hours_offset"])),
                "entities": tuple(a.upper() for a in aliases if a in words),
                "alias": r["company"].split()[0] if r["company"] else "",
            }
        )
    docs.sort(key=lambda d: d["event_at"])  # stable: file order within a tie
    return docs


def scale_stream(
    base: list[dict[str, Any]], n: int = 6000, events: int = 300, seed: int = 0
) -> list[dict[str, Any]]:
    """A dense stream built from the evaluation set: ``events`` of its groups re-issued
    under invented company names (every rewrite of the group, as one true story, within a
    few hours) among distractors (single headlines of random groups under other invented
    names: template twins of the true stories), ``n`` documents over 72 hours. It measures
    what the small set cannot: crowded LSH buckets (each bucket keeps its ``per_key`` most
    recent stories). Seeded: the same stream every run."""
    import random

    rng = random.Random(seed)
    syllables = "ka lo mer vin tas dor el quin bra sol ter nix pa rud gel hor".split()
    names = sorted(
        {"".join(rng.choice(syllables) for _ in range(4)).capitalize() for _ in range(3 * n)}
    )
    rng.shuffle(names)
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in base:
        by_group[d["group"]].append(d)

    def named(d: dict[str, Any]) -> bool:
        return bool(d["alias"]) and d["alias"].casefold() in d["headline"].casefold()

    groups = sorted(g for g, ds in by_group.items() if any(named(d) for d in ds))
    docs: list[dict[str, Any]] = []

    def reissue(d: dict[str, Any], name: str, at: datetime, group: str) -> None:
        alias = d["alias"]
        headline = d["headline"].replace(alias.upper(), name.upper()).replace(alias, name)
        others = tuple(e for e in d["entities"] if e != alias.upper())
        docs.append(
            {
                "id": f"s{len(docs):05d}",
                "group": group,
                "headline": headline,
                "event_at": at,
                "entities": (name.upper(), *others),
            }
        )

    for e in range(events):
        group, name = rng.choice(groups), names.pop()
        start = START + timedelta(hours=rng.uniform(0, 70))
        for d in by_group[group]:
            if named(d):
                reissue(d, name, start + timedelta(hours=rng.uniform(0, 2)), f"e{e}")
    while len(docs) < n:
        d = rng.choice(base)
        if named(d) and len(d["entities"]) == 1:  # a twin naming a second company is news about it
            reissue(d, names.pop(), START + timedelta(hours=rng.uniform(0, 72)), f"x{len(docs)}")
    docs.sort(key=lambda d: (d["event_at"], d["id"]))
    return docs


def config_for(scheme: str, threshold: float, entity_rule: bool, **extra: Any) -> StoryConfig:
    stemming = not scheme.endswith("-nostem")
    return replace(
        DEFAULT_CONFIG,
        shingles=scheme.removesuffix("-nostem"),
        stemming=stemming,
        threshold=threshold,
        require_shared_entity=entity_rule,
        **extra,
    )


def group_lsh(docs: list[dict[str, Any]], config: StoryConfig) -> dict[str, str]:
    index = StoryIndex(config)
    return {
        d["id"]: index.assign(d["id"], d["headline"], d["event_at"], d["entities"]) for d in docs
    }


def group_exact(docs: list[dict[str, Any]], config: StoryConfig) -> dict[str, str]:
    """Every story so far is a candidate (what LSH approximates)."""
    stories: dict[str, Story] = {}
    assigned: dict[str, str] = {}
    for d in docs:
        shingles = config.shingles_of(d["headline"])
        ents = frozenset(d["entities"])
        if not shingles:
            assigned[d["id"]] = d["id"]
            continue
        match = choose_story(shingles, ents, d["event_at"], list(stories.values()), config)
        story = match or stories.setdefault(d["id"], Story(d["id"], d["event_at"]))
        story.add(StoryMember(d["id"], d["event_at"], shingles, ents), config.max_members)
        assigned[d["id"]] = story.story_id
    return assigned


def pairwise(docs: list[dict[str, Any]], stories: dict[str, str]) -> dict[str, float]:
    tp = fp = fn = 0
    for a, b in combinations(docs, 2):
        same_true = a["group"] == b["group"]
        same_pred = stories[a["id"]] == stories[b["id"]]
        tp += same_true and same_pred
        fp += same_pred and not same_true
        fn += same_true and not same_pred
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "stories": len(set(stories.values())),
    }


def evaluate(
    docs: list[dict[str, Any]], config: StoryConfig, exact: bool = False
) -> dict[str, Any]:
    started = time.perf_counter()
    stories = (group_exact if exact else group_lsh)(docs, config)
    elapsed = time.perf_counter() - started
    result = pairwise(docs, stories)
    result["ms_per_doc"] = 1000 * elapsed / max(len(docs), 1)
    return result


def database_cost(admin_url: str, docs: list[dict[str, Any]], batch: int = 32) -> dict[str, Any]:
    """Time :func:`pipeline.stories.assign_stories` per scorer-sized batch (documents inserted
    first, in the same transaction, as the scorer does) in a throwaway database created and
    dropped on the server of ``admin_url``."""
    import statistics
    import uuid

    import sqlalchemy as sa

    from pipeline import db
    from pipeline.documents import Document
    from pipeline.stories import assign_stories

    name = f"finsent_bench_stories_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    insert = sa.text(
        "INSERT INTO documents (id, source, published_at, title, text, entities) "
        "VALUES (:id, 'bench', :published_at, :title, :text, :entities)"
    )
    times = []
    try:
        db.upgrade(url)
        engine = db.make_engine(url)
        documents = [
            Document(
                id=d["id"],
                source="bench",
                published_at=d["event_at"],
                title=d["headline"],
                text=d["headline"],
                entities=d["entities"],
            )
            for d in docs
        ]
        for start in range(0, len(documents), batch):
            chunk = documents[start : start + batch]
            with engine.begin() as conn:
                conn.execute(
                    insert,
                    [
                        {
                            "id": d.id,
                            "published_at": d.published_at,
                            "title": d.title,
                            "text": d.text,
                            "entities": list(d.entities),
                        }
                        for d in chunk
                    ],
                )
                started = time.perf_counter()
                assign_stories(conn, chunk)
                times.append(time.perf_counter() - started)
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    ordered = sorted(times)
    return {
        "documents": len(docs),
        "batch": batch,
        "batches": len(times),
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
        "max_ms": 1000 * ordered[-1],
        "ms_per_document": 1000 * sum(times) / len(docs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "tests" / "data" / "stories_eval.csv")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--database-url",
        default=None,
        help="also time the PostgreSQL assignment on the dense stream, in a throwaway database "
        "created through this (admin) URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    )
    args = parser.parse_args(argv)

    docs = load(args.data)
    groups = {d["group"] for d in docs}
    true_pairs = sum(
        n * (n - 1) // 2 for n in [sum(1 for d in docs if d["group"] == g) for g in groups]
    )
    grid = []
    for entity_rule in (True, False):
        for scheme in SCHEMES:
            for threshold in THRESHOLDS:
                config = config_for(scheme, threshold, entity_rule)
                lsh = evaluate(docs, config)
                exact = evaluate(docs, config, exact=True)
                grid.append(
                    {
                        "shingles": scheme,
                        "threshold": threshold,
                        "entity_rule": entity_rule,
                        "lsh": lsh,
                        "exact": exact,
                    }
                )
    default = {
        "shingles": DEFAULT_CONFIG.shingles + ("" if DEFAULT_CONFIG.stemming else "-nostem"),
        "threshold": DEFAULT_CONFIG.threshold,
        "entity_rule": DEFAULT_CONFIG.require_shared_entity,
    }
    dense = scale_stream(docs)
    shapes = []
    for bands, rows, per_key in LSH_SHAPES:
        config = replace(DEFAULT_CONFIG, bands=bands, rows=rows, per_key=per_key)
        shapes.append(
            {
                "bands": bands,
                "rows": rows,
                "per_key": per_key,
                **evaluate(docs, config),
                "dense": evaluate(dense, config),
            }
        )
    # The same dense stream with no entities: only the headlines' words tell stories apart.
    dense_no_entities = evaluate([dict(d, entities=()) for d in dense], DEFAULT_CONFIG)

    # Two folds over the groups: pick scheme+threshold (entity rule as the default) by F1 on
    # one half, score it on the other.
    ordered = sorted(groups)
    halves = [set(ordered[0::2]), set(ordered[1::2])]
    folds = []
    for pick, score in ((0, 1), (1, 0)):
        pick_docs = [d for d in docs if d["group"] in halves[pick]]
        score_docs = [d for d in docs if d["group"] in halves[score]]
        best = max(
            (
                (
                    evaluate(pick_docs, config_for(s, t, DEFAULT_CONFIG.require_shared_entity))[
                        "f1"
                    ],
                    s,
                    t,
                )
                for s in SCHEMES
                for t in THRESHOLDS
            ),
            key=lambda x: (x[0], -THRESHOLDS.index(x[2])),
        )
        held = evaluate(
            score_docs, config_for(best[1], best[2], DEFAULT_CONFIG.require_shared_entity)
        )
        default_held = evaluate(score_docs, DEFAULT_CONFIG)
        folds.append(
            {
                "picked_on": f"half {pick + 1}",
                "shingles": best[1],
                "threshold": best[2],
                "f1_on_pick_half": best[0],
                "held_out": held,
                "default_held_out": default_held,
            }
        )

    cost = database_cost(args.database_url, dense) if args.database_url else None
    result = {
        "database_cost": cost,
        "data": str(args.data.relative_to(ROOT))
        if args.data.is_relative_to(ROOT)
        else str(args.data),
        "headlines": len(docs),
        "groups": len(groups),
        "true_pairs": true_pairs,
        "default": {
            **default,
            "config": {
                k: f"{v.total_seconds() / 3600:g} h" if isinstance(v, timedelta) else v
                for k, v in asdict(DEFAULT_CONFIG).items()
            },
        },
        "grid": grid,
        "lsh_shapes": shapes,
        "dense_stream_without_entities": dense_no_entities,
        "dense_stream": {
            "documents": len(dense),
            "events": len({d["group"] for d in dense if d["group"].startswith("e")}),
            "true_pairs": sum(
                n * (n - 1) // 2
                for n in [
                    sum(1 for d in dense if d["group"] == g) for g in {d["group"] for d in dense}
                ]
            ),
        },
        "folds": folds,
        "machine": platform.platform(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stories.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "stories.md").write_text(render(result), encoding="utf-8")
    chosen = next(g for g in grid if all(g[k] == v for k, v in default.items()))
    lsh = chosen["lsh"]
    print(
        f"default {default}: precision {lsh['precision']:.3f} recall {lsh['recall']:.3f} "
        f"F1 {lsh['f1']:.3f} ({lsh['stories']} stories for {len(groups)} groups)"
    )
    print(f"wrote {args.out / 'stories.md'}")
    return 0


def _prf(r: dict[str, Any]) -> str:
    return f"{r['precision']:.3f} / {r['recall']:.3f} / **{r['f1']:.3f}**"


def render(result: dict[str, Any]) -> str:
    d = result["default"]
    lines = [
        "# Story grouping: pairwise precision / recall / F1",
        "",
        f"Data: `{result['data']}`: {result['headlines']} invented headlines in "
        f"{result['groups']} groups (same made-up event, different outlets), "
        f"{result['true_pairs']} same-story pairs. Produced by `bench/stories.py`; "
        "deterministic (timings aside).",
        "",
        f"Default: shingles `{d['shingles']}`, Jaccard threshold {d['threshold']}, entity rule "
        f"{'on' if d['entity_rule'] else 'off'}, LSH {d['config']['bands']} bands x "
        f"{d['config']['rows']} rows, horizon {d['config']['horizon']}.",
        "",
        "Shingles: `w1` stemmed words without stop-words, `w1-nostem` the same unstemmed, "
        "`w1+w2` words and word bigrams, `cN` character N-grams of the normalised words, "
        "`w1+c4` words and character 4-grams. Entity rule: two documents that both name "
        "entities must share one. Cells: precision / recall / **F1** at the default LSH "
        f"({d['config']['bands']} x {d['config']['rows']}); *exact* = every earlier story a "
        "candidate (no LSH). A document joins a story when its mean Jaccard similarity to the "
        "story's members reaches the threshold.",
        "",
    ]
    for entity_rule in (True, False):
        lines += [
            f"## Entity rule {'on' if entity_rule else 'off'}",
            "",
            "| shingles | " + " | ".join(f"J >= {t}" for t in THRESHOLDS) + " | exact F1 at each |",
            "|---|" + "---|" * len(THRESHOLDS) + "---|",
        ]
        for scheme in SCHEMES:
            rows = [
                g
                for g in result["grid"]
                if g["shingles"] == scheme and g["entity_rule"] == entity_rule
            ]
            cells = [_prf(g["lsh"]) for g in rows]
            exact = " ".join(f"{g['exact']['f1']:.3f}" for g in rows)
            lines.append(f"| `{scheme}` | " + " | ".join(cells) + f" | {exact} |")
        lines.append("")
    dense = result["dense_stream"]
    lines += [
        "## LSH shape and bucket depth at the default shingles and threshold",
        "",
        f"*eval*: the set above. *dense*: {dense['documents']} documents in 72 h, "
        f"{dense['true_pairs']} same-story pairs: {dense['events']} of the set's events re-issued "
        "under invented company names among single-headline template twins under other names "
        "(`scale_stream`, seeded); it shows what crowded buckets cost. `per_key`: stories kept "
        "per band key (naming the document's entities first, then the most recent). "
        "ms / document: in-memory index on this machine.",
        "",
        "| bands x rows | per_key | eval P / R / F1 | dense P / R / F1 | dense stories | dense ms / document |",
        "|---|---|---|---|---|---|",
    ]
    for s in result["lsh_shapes"]:
        lines.append(
            f"| {s['bands']} x {s['rows']} | {s['per_key']} | {_prf(s)} | {_prf(s['dense'])} | "
            f"{s['dense']['stories']} | {s['dense']['ms_per_doc']:.2f} |"
        )
    ne = result["dense_stream_without_entities"]
    lines += [
        "",
        f"The dense stream with its entities removed, at the default: P / R / F1 {_prf(ne)}, "
        f"{ne['stories']} stories. Without entities, template twins about different companies "
        '("X to cut 2,000 jobs" / "Y to cut 2,000 jobs") differ by one word and merge: the '
        "entity rule is what keeps them apart, so story counts are only as good as the entity "
        "tagging (the watchlist). Weighting rare words (names) above template words would be the "
        "next step.",
    ]
    lines += [
        "",
        "## Two-fold check (groups split in halves; pick on one, score on the other)",
        "",
        "| picked on | picked | F1 there | held-out P / R / F1 | default held-out P / R / F1 |",
        "|---|---|---|---|---|",
    ]
    for f in result["folds"]:
        lines.append(
            f"| {f['picked_on']} | `{f['shingles']}` J >= {f['threshold']} | "
            f"{f['f1_on_pick_half']:.3f} | {_prf(f['held_out'])} | {_prf(f['default_held_out'])} |"
        )
    cost = result.get("database_cost")
    if cost:
        lines += [
            "",
            "## PostgreSQL assignment cost (the scorer's store step)",
            "",
            f"`assign_stories` on the dense stream ({cost['documents']} documents) in batches of "
            f"{cost['batch']}, documents inserted first in the same transaction: median "
            f"{cost['median_ms']:.1f} ms, p90 {cost['p90_ms']:.1f} ms, max {cost['max_ms']:.0f} ms per "
            f"batch, {cost['ms_per_document']:.2f} ms per document. It runs under the story lock, "
            "so it is a serial section across scorer processes. Measured while another job kept "
            "this 2-core machine busy (load average about 4): treat it as an upper bound.",
        ]
    lines += ["", f"Machine: {result['machine']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
