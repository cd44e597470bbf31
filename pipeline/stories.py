"""One story, one count: near-duplicate grouping of headlines across sources.

Wire services and newspapers repeat the same story; counted once per outlet, one event looks
like a surge. Every document keeps its row, and gets a ``story_id``: the id of the first
document of its story (a document that matches nothing starts its own story, so its
``story_id`` is its own id).

How a document finds its story (:class:`StoryConfig` holds the knobs, defaults measured by
``bench/stories.py`` on ``tests/data/stories_eval.csv``):

1. its headline (the title, else the start of the text) is normalised
   (:func:`normalise_headline`: case folded, punctuation dropped, numbers kept in one
   canonical form so ``90,000`` = ``90k`` and ``$2.1bn`` = ``$2.1 billion``, ``%`` =
   ``per cent``, optional stop-words and a light suffix stemmer);
2. it is cut into shingles (:func:`shingle`: word n-grams and/or character n-grams);
3. a MinHash signature (:class:`MinHasher`) is cut into LSH bands; the stories in the
   buckets of its band hashes are its candidates (:func:`rank_candidates`, bounded: a few
   per bucket, a few in all, those naming the document's entities first);
4. a candidate story qualifies when it began within ``horizon`` of the document's event
   time, the *mean* exact Jaccard similarity of the document's shingles to the story's
   members reaches ``threshold`` (average linkage: measured better than joining on the best
   single copy, which chains one event into the next) and, when ``require_shared_entity`` is
   on and both name entities (tickers), they share one (:func:`choose_story`);
5. the document joins the best qualifying story (highest similarity; ties go to the older
   story, then the smaller story id), else starts its own.

Deterministic: hashing uses BLAKE2b and fixed MinHash parameters derived from
``StoryConfig.seed`` (not Python's salted ``hash()`` nor a NumPy random stream), so the same
documents in the same order give the same story ids in every process, on every machine.

Two ways to run it, with the same decisions (:func:`choose_story`):

* :class:`StoryIndex`: in memory, pure (the benchmark and the pure tests);
* :func:`assign_stories`: in PostgreSQL, called by the scorer inside the transaction that
  stores the documents, so a story assignment commits with its document or not at all
  (``kill -9`` at any point: the batch is redone and assigned once). LSH band hashes live in
  the ``story_bands`` table, so a restarted scorer or another scorer process sees earlier
  stories. Concurrency: see :func:`assign_stories`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from pipeline.documents import Document

#: characters of a title-less document's text that stand for its headline
HEADLINE_CHARS = 300
#: ``pg_advisory_xact_lock`` key serialising story assignment across scorers
#: (int64 of BLAKE2b("finsent.stories"), fixed so every process takes the same lock)
STORY_LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"finsent.stories", digest_size=8).digest(), "big", signed=True
)

STOP_WORDS = frozenset(
    """a an the and or but nor of to in on at for from by with as into onto over about
    is are was were be been being am it its this that these those their his her our your
    will would shall should can could may might must has have had do does did
    than then so such very just also says said say amid after before while""".split()
)

_MAGNITUDE = {
    "k": 10**3,
    "thousand": 10**3,
    "m": 10**6,
    "mn": 10**6,
    "mln": 10**6,
    "million": 10**6,
    "b": 10**9,
    "bn": 10**9,
    "bln": 10**9,
    "billion": 10**9,
    "tn": 10**12,
    "trillion": 10**12,
}
_TOKEN = re.compile(
    r"(?P<num>\d+(?:[.,]\d+)*)(?:\s?(?P<mag>"
    + "|".join(sorted(_MAGNITUDE, key=len, reverse=True))
    + r")\b)?|(?P<word>[^\W\d_]+)|(?P<pct>%)"
)
_PER_CENT = re.compile(r"\bper\s?cent\b|\bpct\b|\bpercent\b")
_POSSESSIVE = re.compile(r"(?<=[^\W\d_])'s\b")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _number(digits: str, magnitude: str | None) -> str:
    """One canonical spelling of a number: ``90,000`` / ``90k`` -> ``90000``; ``4.50`` ->
    ``4.5``; ``2.1bn`` -> ``2100000000``. A comma followed by three digits separates
    thousands; any other comma is a decimal point."""
    text = digits.replace(",", "") if _THOUSANDS.match(digits) else digits.replace(",", ".")
    if text.count(".") > 1:  # "1.2.3": a version or a date, not a number; keep the digits
        return text
    try:
        value = Decimal(text) * _MAGNITUDE.get(magnitude or "", 1)
    except InvalidOperation:
        return text
    rendered = format(value.normalize(), "f")
    return rendered.rstrip("0").rstrip(".") if "." in rendered else rendered


def stem(word: str) -> str:
    """A light suffix stemmer for headline words (plural, -ed, -ing, final e, doubled
    consonant), enough for rewrites to meet: ``stranded`` = ``stranding`` = ``strand``.

    >>> [stem(w) for w in ("collapses", "collapse", "collapsed", "cutting", "cuts", "losses", "loss")]
    ['collaps', 'collaps', 'collaps', 'cut', 'cut', 'loss', 'loss']
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                continue
            word = word[: -len(suffix)]
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
        word = word[:-1]
    return word


def normalise_headline(text: str, *, stop_words: bool = True, stemming: bool = True) -> list[str]:
    """The headline as comparable tokens: NFKC, case folded, possessives and punctuation
    dropped, numbers canonical (:func:`_number`), ``%``/``per cent``/``pct`` -> ``pct``,
    stop-words removed (optional), words stemmed (optional).

    >>> normalise_headline("ACME AIR COLLAPSE: 90,000 ABROAD")
    ['acme', 'air', 'collaps', '90000', 'abroad']
    >>> normalise_headline("Acme's shares up 4.50 per cent to $2.1bn", stemming=False)
    ['acme', 'shares', 'up', '4.5', 'pct', '2100000000']
    """
    folded = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()
    folded = _POSSESSIVE.sub("", folded)
    folded = _PER_CENT.sub(" % ", folded)
    tokens: list[str] = []
    for match in _TOKEN.finditer(folded):
        if match.group("num") is not None:
            tokens.append(_number(match.group("num"), match.group("mag")))
        elif match.group("pct") is not None:
            tokens.append("pct")
        else:
            word = match.group("word")
            if stop_words and word in STOP_WORDS:
                continue
            tokens.append(stem(word) if stemming else word)
    return tokens


def shingle(tokens: Sequence[str], scheme: str) -> frozenset[str]:
    """Shingles of normalised tokens. ``scheme`` joins parts with ``+``: ``w1`` words,
    ``w2`` word bigrams (``wN`` word N-grams), ``cN`` character N-grams of the tokens
    joined by spaces (with a space at each end, so short words still count).

    >>> sorted(shingle(["acme", "air", "bust"], "w1+w2"))
    ['w1:acme', 'w1:air', 'w1:bust', 'w2:acme air', 'w2:air bust']
    >>> len(shingle(["air"], "c4"))
    2
    """
    out: set[str] = set()
    for part in scheme.split("+"):
        kind, n = part[:1], int(part[1:])
        if n < 1 or kind not in "wc":
            raise ValueError(f"unknown shingle part {part!r} in {scheme!r} (use wN or cN)")
        if kind == "w":
            out.update(f"{part}:" + " ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
        elif tokens:
            joined = " " + " ".join(tokens) + " "
            out.update(f"{part}:" + joined[i : i + n] for i in range(len(joined) - n + 1))
    return frozenset(out)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """``|a & b| / |a | b|`` (0.0 for two empty sets)."""
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


def _blake64(data: bytes, *, signed: bool = False) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=signed)


class MinHasher:
    """MinHash signatures and LSH band hashes, deterministic across processes.

    Each shingle is hashed with BLAKE2b to 64 bits; permutation ``i`` is the
    multiply-add-shift hash ``((a_i * x + b_i) mod 2**64) >> 32`` with odd ``a_i`` and ``b_i``
    taken from BLAKE2b of ``(seed, i)``: no random stream, so NumPy versions cannot change
    them. A band hash is BLAKE2b of the band number and its rows (little-endian), as a signed
    64-bit integer (a PostgreSQL ``bigint``).
    """

    def __init__(self, bands: int, rows: int, seed: int = 1) -> None:
        if bands < 1 or rows < 1:
            raise ValueError("bands and rows must be at least 1")
        self.bands, self.rows = bands, rows
        n = bands * rows
        params = [_blake64(f"finsent-minhash:{seed}:{i}".encode()) for i in range(2 * n)]
        self._a = np.array([p | 1 for p in params[:n]], dtype=np.uint64)[:, None]
        self._b = np.array(params[n:], dtype=np.uint64)[:, None]

    def signature(self, shingles: Iterable[str]) -> np.ndarray:
        """``bands * rows`` unsigned 32-bit minima (all ``2**32 - 1`` for no shingles)."""
        x = np.array(sorted(_blake64(s.encode()) for s in shingles), dtype=np.uint64)
        if x.size == 0:
            return np.full(self.bands * self.rows, 2**32 - 1, dtype=np.uint32)
        hashed = (self._a * x[None, :] + self._b) >> np.uint64(32)  # wraps mod 2**64
        return hashed.min(axis=1).astype(np.uint32)

    def band_hashes(self, signature: np.ndarray) -> list[tuple[int, int]]:
        """``(band, hash)`` per band of ``signature``."""
        rows = signature.astype("<u4").reshape(self.bands, self.rows)
        return [
            (band, _blake64(band.to_bytes(2, "little") + rows[band].tobytes(), signed=True))
            for band in range(self.bands)
        ]


@dataclass(frozen=True)
class StoryConfig:
    """The story grouping's knobs (defaults chosen with ``bench/stories.py``).

    Bounded work per document, whatever the stream: per band key, ``per_key`` stories that
    began within the horizon are candidates (those whose first document shares an entity
    with the document first, then the most recent); of those, ``max_candidates`` are scored
    (:func:`rank_candidates`), each against its ``max_members`` earliest documents (by event
    time, then id), whose entities are the story's entities and whose band keys are the
    story's keys.

    A band row is kept ``2 * horizon`` past its story's first document (the newest event
    time seen, capped at the wall clock, is the reference), so a document more than one
    horizon late may start a story of its own instead of joining the old one.
    """

    shingles: str = "w1"
    stop_words: bool = True
    stemming: bool = True
    bands: int = 24
    rows: int = 2
    threshold: float = 0.3
    horizon: timedelta = timedelta(hours=72)
    require_shared_entity: bool = True
    per_key: int = 2
    max_candidates: int = 4
    max_members: int = 8
    seed: int = 1

    @property
    def retention(self) -> timedelta:
        return 2 * self.horizon

    def hasher(self) -> MinHasher:
        return _hasher(self.bands, self.rows, self.seed)

    def shingles_of(self, headline: str) -> frozenset[str]:
        """The headline's shingle set (cached: a pure function of the headline)."""
        return _shingles_of(self.shingles, self.stop_words, self.stemming, headline)


@functools.lru_cache(maxsize=65536)
def _shingles_of(scheme: str, stop_words: bool, stemming: bool, headline: str) -> frozenset[str]:
    return shingle(normalise_headline(headline, stop_words=stop_words, stemming=stemming), scheme)


@functools.lru_cache(maxsize=16)
def _hasher(bands: int, rows: int, seed: int) -> MinHasher:
    return MinHasher(bands, rows, seed)


DEFAULT_CONFIG = StoryConfig()


def headline_of(title: str | None, text: str | None) -> str:
    """What story grouping compares: the title, else the first ``HEADLINE_CHARS`` of the
    text (a social post has no title)."""
    if title and title.strip():
        return title
    return (text or "")[:HEADLINE_CHARS]


def band_keys(shingles: frozenset[str], config: StoryConfig) -> list[tuple[int, int]]:
    """The LSH ``(band, hash)`` keys of a shingle set under ``config``."""
    hasher = config.hasher()
    return hasher.band_hashes(hasher.signature(shingles))


@dataclass(frozen=True)
class StoryMember:
    """A document already assigned to a story."""

    document_id: str
    event_at: datetime
    shingles: frozenset[str]
    entities: frozenset[str] = frozenset()


@dataclass
class Story:
    """A story as a candidate for a new document: its id (the first document's), the event
    time and the entities of its first document, and its earliest members (at most
    ``max_members``, by event time then id)."""

    story_id: str
    story_at: datetime
    named: frozenset[str] = frozenset()
    members: list[StoryMember] = field(default_factory=list)

    def add(self, member: StoryMember, max_members: int) -> bool:
        """Keep the ``max_members`` earliest members (what the database query selects);
        True when ``member`` is one of them (its band keys then become the story's)."""
        self.members.append(member)
        self.members.sort(key=lambda m: (m.event_at, m.document_id))
        del self.members[max_members:]
        return member in self.members

    def similarity(self, shingles: frozenset[str]) -> float:
        """Mean Jaccard similarity to the members (average linkage: a document must
        resemble the story, not one copy of it, so stories do not chain from one event to
        the next through a single shared phrase). ``fsum``: order-independent."""
        if not self.members:
            return 0.0
        return math.fsum(jaccard(shingles, m.shingles) for m in self.members) / len(self.members)

    @property
    def entities(self) -> frozenset[str]:
        return frozenset().union(*(m.entities for m in self.members))


def choose_story(
    shingles: frozenset[str],
    entities: frozenset[str],
    event_at: datetime,
    candidates: Iterable[Story],
    config: StoryConfig,
) -> Story | None:
    """The story the document joins, or None (it starts one).

    A candidate qualifies when it began within ``config.horizon`` of ``event_at`` (either
    side: documents arrive out of order), the document's mean Jaccard similarity to its
    members reaches ``config.threshold`` and, with ``require_shared_entity``, the document and
    the story share an entity whenever both name one. The best is the highest similarity,
    then the older story, then the smaller story id: a total order, so the choice is
    deterministic.
    """
    best: tuple[float, datetime, str] | None = None
    chosen: Story | None = None
    for story in candidates:
        if abs(story.story_at - event_at) > config.horizon:
            continue
        if config.require_shared_entity and entities:
            named = story.entities
            if named and not entities & named:
                continue
        score = story.similarity(shingles)
        if score < config.threshold:
            continue
        rank = (-score, story.story_at, story.story_id)
        if best is None or rank < best:
            best, chosen = rank, story
    return chosen


#: one story in an LSH bucket: (story id, story_at, entities of the story's first document)
BucketEntry = tuple[str, datetime, frozenset[str]]


def rank_candidates(
    keys: Iterable[tuple[int, int]],
    bucket: Callable[[tuple[int, int]], Iterable[BucketEntry]],
    event_at: datetime,
    entities: frozenset[str],
    config: StoryConfig,
) -> list[str]:
    """The ids of the stories the document is scored against.

    Per band key, ``config.per_key`` of the bucket's stories that began within the horizon:
    those whose first document shares an entity with the document first, then the most
    recent; of
    all these, the ``config.max_candidates`` best by (shares an entity, number of keys shared
    with the document, older story, smaller id). Entities come first because in a dense
    stream the buckets of a template headline ("X to cut 2,000 jobs") fill with the same
    template about other companies, which the entity rule would reject anyway.
    """
    shared: dict[str, int] = defaultdict(int)
    named: dict[str, bool] = defaultdict(bool)
    started: dict[str, datetime] = {}
    for key in keys:
        within = sorted(
            (
                (bool(entities & ents), at, sid)
                for sid, at, ents in bucket(key)
                if abs(at - event_at) <= config.horizon
            ),
            reverse=True,
        )
        for match, at, sid in within[: config.per_key]:
            shared[sid] += 1
            named[sid] = named[sid] or match
            started[sid] = at
    ranked = sorted(shared, key=lambda sid: (not named[sid], -shared[sid], started[sid], sid))
    return ranked[: config.max_candidates]


@dataclass
class StoryIndex:
    """In-memory story grouping (pure; the database version is :func:`assign_stories`,
    with the same decisions).

    Feed documents in the order the scorer would see them; :meth:`assign` returns each one's
    story id.
    """

    config: StoryConfig = DEFAULT_CONFIG
    _buckets: dict[tuple[int, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    _story_keys: dict[str, set[tuple[int, int]]] = field(default_factory=lambda: defaultdict(set))
    _stories: dict[str, Story] = field(default_factory=dict)
    _assigned: dict[str, str] = field(default_factory=dict)
    _newest: datetime | None = None

    def assign(
        self,
        document_id: str,
        headline: str,
        event_at: datetime,
        entities: Iterable[str] = (),
    ) -> str:
        """The story id of ``document_id``; assigning a document twice returns its first
        answer (the scorer's idempotency on redelivery)."""
        if document_id in self._assigned:
            return self._assigned[document_id]
        config = self.config
        self._newest = event_at if self._newest is None else max(self._newest, event_at)
        shingles = config.shingles_of(headline)
        ents = frozenset(e.strip().upper() for e in entities)
        if not shingles:
            self._assigned[document_id] = document_id
            return document_id
        keys = band_keys(shingles, config)

        def bucket(key: tuple[int, int]) -> list[BucketEntry]:
            stories = [self._stories[sid] for sid in self._buckets.get(key, ())]
            return [(story.story_id, story.story_at, story.named) for story in stories]

        ranked = rank_candidates(keys, bucket, event_at, ents, config)
        match = choose_story(shingles, ents, event_at, [self._stories[s] for s in ranked], config)
        story = match or self._stories.setdefault(document_id, Story(document_id, event_at, ents))
        if story.add(StoryMember(document_id, event_at, shingles, ents), config.max_members):
            for key in keys:
                self._buckets[key].add(story.story_id)
            self._story_keys[story.story_id].update(keys)
        self._assigned[document_id] = story.story_id
        return story.story_id

    def prune(self) -> None:
        """Forget stories that began more than ``retention`` before the newest document
        (what the database's pruning does)."""
        if self._newest is None:
            return
        cutoff = self._newest - self.config.retention
        for sid in [s for s, story in self._stories.items() if story.story_at < cutoff]:
            for key in self._story_keys.pop(sid, ()):
                self._buckets[key].discard(sid)
                if not self._buckets[key]:
                    del self._buckets[key]
            del self._stories[sid]


# --- PostgreSQL --------------------------------------------------------------------------

_LOCK = sa.text("SELECT pg_advisory_xact_lock(:key)")
_STORED = sa.text("SELECT id, story_id FROM documents WHERE id = ANY(:ids)")
# Rows travel as one JSON document per statement (as in the scorer): typed arrays of a
# thousand timestamps cost more to adapt than the query costs to run.
# Per (document, band key): the most recent stories in the bucket within the document's
# horizon (rank_candidates: sharing an entity first, then the most recent), off the
# primary key (band, hash, story_at, story_id).
_BAND_HITS = sa.text("""
    SELECT k.i, k.band, k.hash, b.story_id, b.story_at, b.entities
    FROM jsonb_to_recordset(cast(:probes AS jsonb)) AS k(i integer, band integer, hash bigint,
         low timestamptz, high timestamptz, entities text[])
    CROSS JOIN LATERAL (
        SELECT s.story_id, s.story_at, s.entities FROM story_bands s
        WHERE s.band = k.band AND s.hash = k.hash AND s.story_at BETWEEN k.low AND k.high
        ORDER BY s.entities && k.entities DESC, s.story_at DESC, s.story_id DESC
        LIMIT :per_key
    ) b
""")
# The earliest members of each story (index documents_story_id_idx).
_MEMBERS = sa.text("""
    SELECT m.id, m.story_id, m.published_at, m.title, m.text, m.entities
    FROM unnest(cast(:story_ids AS text[])) AS s(story_id)
    CROSS JOIN LATERAL (
        SELECT id, story_id, published_at, title, text, entities FROM documents d
        WHERE d.story_id = s.story_id ORDER BY d.published_at, d.id LIMIT :limit
    ) m
""")
_INSERT_BANDS = sa.text("""
    INSERT INTO story_bands (band, hash, story_id, document_id, event_at, story_at, entities)
    SELECT band, hash, story_id, document_id, event_at, story_at, entities
    FROM jsonb_to_recordset(cast(:rows AS jsonb)) AS r(band integer, hash bigint, story_id text,
         document_id text, event_at timestamptz, story_at timestamptz, entities text[])
    ON CONFLICT (band, hash, story_at, story_id) DO NOTHING
""")
_SET_STORY = sa.text("""
    UPDATE documents d SET story_id = v.story_id
    FROM unnest(cast(:ids AS text[]), cast(:story_ids AS text[])) AS v(id, story_id)
    WHERE d.id = v.id AND d.story_id IS NULL
""")
_PRUNE = sa.text("""
    DELETE FROM story_bands
    WHERE story_at < least(cast(:newest AS timestamptz), now()) - cast(:retention AS interval)
""")


def assign_stories(
    conn: Connection, documents: Sequence[Document], config: StoryConfig = DEFAULT_CONFIG
) -> dict[str, str]:
    """Give each stored document of the batch its ``story_id`` (in batch order), inside the
    caller's transaction; returns ``{document id: story id}``.

    The scorer calls it *before* inserting the batch's documents and writes each new row
    with its story id, so a row is never rewritten (no dead tuple per document; autovacuum
    is off on some hosts). Rows already stored without a story (before grouping was turned
    on) are updated. It takes the transaction-level advisory lock :data:`STORY_LOCK_KEY`,
    held until commit, so the documents insert after it runs under the lock too.

    * Exactly once: a document whose row already has a ``story_id`` (a redelivery, a re-score
      by a new model) keeps it; the assignment, the band rows and the document rows commit
      together, so a crash anywhere leaves either all of them or none.
    * Two scorers racing on one story: the lock serialises assignment across processes, and
      under READ COMMITTED the candidate query runs after the lock is granted, so the second
      scorer sees the first one's committed band rows and joins its story. One lock rather
      than one per band hash: a batch carries ``batch size x bands`` hashes (hundreds to
      thousands), more advisory locks than PostgreSQL's lock table is sized for, and taking
      them batch by batch in different orders would deadlock; the cost is that assignment
      (milliseconds per batch) and the commit run one scorer at a time.
    * ``story_bands`` holds one row per (band, hash, story); rows whose story began more than
      ``config.retention`` before the batch's newest event time (capped at now) are deleted
      here. A story's members are read from ``documents.story_id``.
    """
    if not documents:
        return {}
    conn.execute(_LOCK, {"key": STORY_LOCK_KEY})
    unique = list({d.id: d for d in documents}.values())
    stored = {
        row.id: row.story_id for row in conn.execute(_STORED, {"ids": [d.id for d in unique]})
    }
    result = {doc_id: story for doc_id, story in stored.items() if story is not None}
    # new documents (no row yet) and rows stored without a story
    todo = [d for d in unique if stored.get(d.id) is None]
    if not todo:
        return result

    prepared = []
    for doc in todo:
        shingles = config.shingles_of(headline_of(doc.title, doc.text))
        keys = band_keys(shingles, config) if shingles else []
        entities = frozenset(str(e).strip().upper() for e in doc.entities)
        prepared.append((doc, shingles, keys, entities))

    # Per document and band key, the stories stored before this batch (see _BAND_HITS).
    stored_hits: dict[tuple[int, tuple[int, int]], list[BucketEntry]] = defaultdict(list)
    probes = [(i, key) for i, (_, _, keys, _) in enumerate(prepared) for key in keys]
    if probes:
        windows = [
            (
                (d.published_at - config.horizon).isoformat(),
                (d.published_at + config.horizon).isoformat(),
            )
            for d, _, _, _ in prepared
        ]
        rows = conn.execute(
            _BAND_HITS,
            {
                "probes": json.dumps(
                    [
                        {
                            "i": i,
                            "band": band,
                            "hash": h,
                            "low": windows[i][0],
                            "high": windows[i][1],
                            "entities": sorted(prepared[i][3]),
                        }
                        for i, (band, h) in probes
                    ]
                ),
                "per_key": config.per_key,
            },
        )
        for row in rows:
            stored_hits[(row.i, (row.band, row.hash))].append(
                (row.story_id, row.story_at, frozenset(row.entities or ()))
            )
    # Stories of this batch (new ones, or stored ones that gained keys) join in as it goes.
    batch_buckets: dict[tuple[int, int], set[str]] = defaultdict(set)
    stories: dict[str, Story] = {}
    loaded: set[str] = set()

    def load(story_ids: Iterable[str]) -> None:
        missing = sorted(set(story_ids) - loaded)
        if not missing:
            return
        loaded.update(missing)
        rows = conn.execute(_MEMBERS, {"story_ids": missing, "limit": config.max_members})
        for row in rows:
            stories[row.story_id].add(
                StoryMember(
                    row.id,
                    row.published_at,
                    config.shingles_of(headline_of(row.title, row.text)),
                    frozenset(row.entities or ()),
                ),
                config.max_members,
            )

    for sid, at, named in (hit for hits in stored_hits.values() for hit in hits):
        stories.setdefault(sid, Story(sid, at, named))

    # One query for the members of every stored story some document ranks on stored hits
    # alone; a story the batch itself leads to is read when needed.
    def stored_bucket(i: int) -> Callable[[tuple[int, int]], list[BucketEntry]]:
        return lambda key: stored_hits.get((i, key), [])

    load(
        sid
        for i, (doc, _, keys, entities) in enumerate(prepared)
        for sid in rank_candidates(keys, stored_bucket(i), doc.published_at, entities, config)
    )
    bands: list[tuple[tuple[int, int], str, str, datetime]] = []
    for i, (doc, shingles, keys, entities) in enumerate(prepared):
        if not shingles:
            result[doc.id] = doc.id
            continue

        def bucket(key: tuple[int, int], i: int = i) -> list[BucketEntry]:
            found = {entry[0]: entry for entry in stored_hits.get((i, key), ())}
            for sid in batch_buckets.get(key, ()):
                found[sid] = (sid, stories[sid].story_at, stories[sid].named)
            return list(found.values())

        candidates = rank_candidates(keys, bucket, doc.published_at, entities, config)
        load(candidates)
        match = choose_story(
            shingles, entities, doc.published_at, [stories[s] for s in candidates], config
        )
        if match is None:
            match = stories[doc.id] = Story(doc.id, doc.published_at, entities)
            loaded.add(doc.id)
        result[doc.id] = match.story_id
        member = StoryMember(doc.id, doc.published_at, shingles, entities)
        if match.add(member, config.max_members):
            for key in keys:
                if match.story_id not in batch_buckets[key]:
                    batch_buckets[key].add(match.story_id)
                    bands.append((key, match.story_id, doc.id, doc.published_at))

    if bands:
        conn.execute(
            _INSERT_BANDS,
            {
                "rows": json.dumps(
                    [
                        {
                            "band": key[0],
                            "hash": key[1],
                            "story_id": story_id,
                            "document_id": doc_id,
                            "event_at": event_at.isoformat(),
                            "story_at": stories[story_id].story_at.isoformat(),
                            "entities": sorted(stories[story_id].named),
                        }
                        for key, story_id, doc_id, event_at in bands
                    ]
                )
            },
        )
    conn.execute(
        _SET_STORY,
        {"ids": [d.id for d in todo], "story_ids": [result[d.id] for d in todo]},
    )
    conn.execute(
        _PRUNE,
        {"newest": max(d.published_at for d in todo), "retention": config.retention},
    )
    return result
