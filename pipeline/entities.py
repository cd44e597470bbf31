"""The entity watchlist: which tickers a document mentions.

A watchlist is a YAML mapping from a ticker to the names and aliases that mean it::

    BA: [Boeing, "737 MAX"]
    AAPL: [Apple, "Apple Inc."]
    F:                       # a one-letter ticker: never matched as a bare word
      names: [Ford, Ford Motor]
    IT:
      names: [Gartner]
      symbol: false          # "IT" is a common word in capitals: match only $IT and names

A document mentions a ticker when its title or text contains

* the **cashtag** (``$BA``, any case; ``$BAX`` does not match ``BA``);
* the **bare symbol** as a whole word, **case-sensitive** (``BA`` but not ``ba``, ``Ba``
  or the ``BA`` inside ``BANK``/``OBAMA``), for symbols of two or more characters unless
  ``symbol: false``; skipped in text written in capitals (a shouted headline says "IT"
  and "ON" without meaning tickers);
* an **alias** as a whole word or phrase: case-sensitive when the alias is a short
  all-capitals token (``GE``, ``AT&T``: up to 5 characters), case-insensitive otherwise
  (``Boeing``, ``boeing``, ``BOEING``). Word boundaries are "no letter, digit or
  underscore directly before or after", so aliases that end in punctuation work too.

Keys of the recurrent memory are the predicted topic and every matched ticker, so a false
hit moves a ticker's memory: when in doubt the rules prefer missing a mention.
Loading validates the file with pydantic; an error names the file, the ticker and the
field, and says how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import ConfigurationError

_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,14}$")
_SHORT_CAPS = re.compile(r"^[A-Z0-9&.\-]{1,5}$")
_BEFORE = r"(?<!\w)"  # Unicode-aware: no letter, digit or underscore directly before
_AFTER = r"(?!\w)"
SHOUTING_MIN_LETTERS = 20
SHOUTING_UPPER_SHARE = 0.8


class WatchedTicker(BaseModel):
    """One ticker of the watchlist and how to recognise it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticker: str
    names: tuple[str, ...] = ()
    symbol: bool | None = Field(
        None, description="match the bare symbol as a word (default: yes for 2+ characters)"
    )

    @field_validator("ticker")
    @classmethod
    def _ticker(cls, value: str) -> str:
        value = value.strip()
        if not _TICKER.match(value):
            raise ValueError(
                f"{value!r} is not a ticker: use capital letters, digits, '.' or '-' "
                "(at most 15 characters), e.g. BA or BRK.B"
            )
        return value

    @field_validator("names")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = []
        for i, name in enumerate(value):
            name = " ".join(name.split())
            if len(name) < 2:
                raise ValueError(
                    f"name {i} ({name!r}) is shorter than 2 characters: it would match everywhere"
                )
            cleaned.append(name)
        return tuple(dict.fromkeys(cleaned))

    @property
    def match_symbol(self) -> bool:
        return self.symbol if self.symbol is not None else len(self.ticker) >= 2


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    owners: dict[str, str]  # matched form (case-folded for insensitive) -> ticker


def _alternation(forms: Iterable[str]) -> str:
    # Longest first so "Boeing Co" wins over "Boeing" and the owner lookup sees the full form.
    return "|".join(re.escape(f) for f in sorted(set(forms), key=len, reverse=True))


_NOT_LETTER = re.compile(r"[^A-Za-z]+")
_NOT_UPPER = re.compile(r"[^A-Z]+")


def _shouting(text: str) -> bool:
    """Mostly capitals (ASCII letters counted): a headline in capitals, where "IT" or "ON"
    are words rather than tickers."""
    letters = len(_NOT_LETTER.sub("", text))
    if letters < SHOUTING_MIN_LETTERS:
        return False
    return len(_NOT_UPPER.sub("", text)) / letters >= SHOUTING_UPPER_SHARE


class Watchlist:
    """Compiled matching rules for a set of tickers. Thread-safe (immutable after build)."""

    def __init__(self, tickers: Iterable[WatchedTicker], origin: str = "<watchlist>") -> None:
        self.tickers: tuple[WatchedTicker, ...] = tuple(tickers)
        self.origin = origin
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
            if exact and not _shouting(text):
                found.update(exact)
        return tuple(sorted(found))

    @classmethod
    def from_mapping(cls, data: Any, origin: str = "<watchlist>") -> Watchlist:
        """Validate a parsed YAML document; ConfigurationError names origin, ticker and field."""
        if data is None:
            return cls((), origin)
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"watchlist {origin}: the top level must be a mapping of ticker to names "
                f"(e.g. 'BA: [Boeing, \"737 MAX\"]'), got {type(data).__name__}"
            )
        tickers: list[WatchedTicker] = []
        seen: set[str] = set()
        for raw_ticker, spec in data.items():
            label = str(raw_ticker)
            if isinstance(raw_ticker, bool):
                raise ConfigurationError(
                    f"watchlist {origin}: ticker {label!r}: YAML reads ON, OFF, YES, NO, Y and N as "
                    "booleans; quote the ticker, e.g. 'ON': [onsemi]"
                )
            if isinstance(raw_ticker, int | float):
                raw_ticker = label
            if spec is None:
                fields: dict[str, Any] = {}
            elif isinstance(spec, str):
                fields = {"names": [spec]}
            elif isinstance(spec, list):
                fields = {"names": spec}
            elif isinstance(spec, Mapping):
                fields = {str(k): v for k, v in spec.items()}
                if "ticker" in fields:
                    raise ConfigurationError(
                        f"watchlist {origin}: ticker {label!r}: field 'ticker' is not allowed here; "
                        "the mapping key is the ticker"
                    )
            else:
                raise ConfigurationError(
                    f"watchlist {origin}: ticker {label!r}: expected a list of names or a mapping "
                    f"with 'names' and 'symbol', got {type(spec).__name__}"
                )
            try:
                ticker = WatchedTicker(ticker=raw_ticker, **fields)
            except ValidationError as exc:
                problems = "; ".join(
                    f"field '{'.'.join(str(p) for p in err['loc']) or 'ticker'}': {err['msg']}"
                    for err in exc.errors()
                )
                raise ConfigurationError(
                    f"watchlist {origin}: ticker {label!r}: {problems}"
                ) from None
            if ticker.ticker in seen:
                raise ConfigurationError(
                    f"watchlist {origin}: ticker {label!r} appears twice; merge its names"
                )
            seen.add(ticker.ticker)
            tickers.append(ticker)
        return cls(tickers, origin)

    @classmethod
    def load(cls, path: Path | str) -> Watchlist:
        """Read and validate a watchlist YAML file (FINSENT_WATCHLIST)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigurationError(
                f"watchlist {path} does not exist: fix FINSENT_WATCHLIST or --watchlist "
                "(see examples/watchlist.yaml)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"watchlist {path} cannot be read: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"watchlist {path} is not valid YAML: {exc}") from None
        return cls.from_mapping(data, origin=str(path))


def load_watchlist(path: Path | str | None) -> Watchlist | None:
    """The watchlist at ``path``, or None when no watchlist is configured."""
    return Watchlist.load(path) if path else None
