"""The regex watchlist matcher finsent used before Aho–Corasick, kept verbatim as the
specification: ``tests/pipeline/test_entities.py`` checks the production matcher returns
what this returns, and ``bench/entities.py`` times it as the baseline. Not a production
path (124 ms/doc at 5,000 tickers: one alternation of every name, tried at every position).

One known difference: where a case-insensitive match's text case-folds to no watched form
(``İnitech`` for the alias ``Initech``: ``re`` matches ``İ`` as ``i``, but ``"İ".casefold()``
is ``"i̇"``), this raises ``KeyError``; the production matcher reports the ticker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.entities import SHOUTING_MIN_LETTERS, SHOUTING_UPPER_SHARE, WatchedTicker

_SHORT_CAPS = re.compile(r"^[A-Z0-9&.\-]{1,5}$")
_BEFORE = r"(?<!\w)"  # Unicode-aware: no letter, digit or underscore directly before
_AFTER = r"(?!\w)"
_NOT_LETTER = re.compile(r"[^A-Za-z]+")
_NOT_UPPER = re.compile(r"[^A-Z]+")


def shouting(text: str) -> bool:
    """Mostly capitals (ASCII letters counted): a headline in capitals, where "IT" or "ON"
    are words rather than tickers."""
    letters = len(_NOT_LETTER.sub("", text))
    if letters < SHOUTING_MIN_LETTERS:
        return False
    return len(_NOT_UPPER.sub("", text)) / letters >= SHOUTING_UPPER_SHARE


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    owners: dict[str, str]  # matched form (case-folded for insensitive) -> ticker


def _alternation(forms: Iterable[str]) -> str:
    # Longest first so "Boeing Co" wins over "Boeing" and the owner lookup sees the full form.
    return "|".join(re.escape(f) for f in sorted(set(forms), key=len, reverse=True))


class RegexWatchlist:
    """The pre-Aho–Corasick ``Watchlist`` matching: four compiled alternations."""

    def __init__(self, tickers: Iterable[WatchedTicker]) -> None:
        self.tickers: tuple[WatchedTicker, ...] = tuple(tickers)
        cashtags: dict[str, str] = {}
        symbols: dict[str, str] = {}
        sensitive: dict[str, str] = {}
        insensitive: dict[str, str] = {}
        for t in self.tickers:
            cashtags[t.ticker.casefold()] = t.ticker
            if t.match_symbol:
                symbols[t.ticker] = t.ticker
            for name in t.names:
                if _SHORT_CAPS.match(name):
                    sensitive[name] = t.ticker
                else:
                    insensitive[name.casefold()] = t.ticker
        self._cashtag = self._compile(cashtags, r"\$(?:", ")" + _AFTER, re.IGNORECASE)
        self._symbol = self._compile(symbols, _BEFORE + "(?<!\\$)(?:", ")" + _AFTER, 0)
        self._sensitive = self._compile(sensitive, _BEFORE + "(?:", ")" + _AFTER, 0)
        self._insensitive = self._compile(insensitive, _BEFORE + "(?:", ")" + _AFTER, re.IGNORECASE)

    @staticmethod
    def _compile(owners: dict[str, str], prefix: str, suffix: str, flags: int) -> _Pattern | None:
        if not owners:
            return None
        return _Pattern(re.compile(prefix + _alternation(owners) + suffix, flags), owners)

    def __len__(self) -> int:
        return len(self.tickers)

    def match(self, *texts: str | None) -> tuple[str, ...]:
        """The tickers mentioned in any of ``texts``, sorted, each once."""
        found: set[str] = set()
        for text in texts:
            if not text:
                continue
            if self._cashtag:
                found.update(
                    self._cashtag.owners[m.group(0)[1:].casefold()]
                    for m in self._cashtag.regex.finditer(text)
                )
            if self._insensitive:
                found.update(
                    self._insensitive.owners[m.group(0).casefold()]
                    for m in self._insensitive.regex.finditer(text)
                )
            exact: list[str] = []
            if self._symbol:
                exact.extend(
                    self._symbol.owners[m.group(0)] for m in self._symbol.regex.finditer(text)
                )
            if self._sensitive:
                exact.extend(
                    self._sensitive.owners[m.group(0)] for m in self._sensitive.regex.finditer(text)
                )
            if exact and not shouting(text):
                found.update(exact)
        return tuple(sorted(found))
