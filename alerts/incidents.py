"""Rules scored against known incidents (``finsent alerts evaluate``).

An incidents file says what the rules should have caught (``examples/incidents.yaml``)::

    incidents:
      - key: entity:ACME              # topic:<name> or entity:<TICKER>, as the alert keys
        onset: 2026-03-14T09:30       # ISO 8601; UTC without an offset; a date is 00:00 UTC
        name: accounting probe        # optional, shown in the report

:func:`load_incidents` validates it (errors name the file, the incident and the field).
:func:`score` is a pure function of the incidents and a backtest's episodes; only episodes
that fired count as *alerts*. With ``tolerance`` (default 6 h), ``match_window`` (7 d)
and ``detect_within`` (24 h):

* an incident is **detected** by the first alert on its key that fired in
  ``[onset - tolerance, onset + match_window]``; its *delay* is ``fired_at - onset``
  (negative when it fired up to ``tolerance`` early). ``detected`` when the delay is at
  most ``detect_within``, ``late`` when longer, ``missed`` when no alert fired in that
  span. An incident whose onset lies outside the backtest's ``[start, end]`` is
  ``outside`` and left out of the totals (the rules could not have seen it);
* an alert is **false** when its episode start (``pending_since``) lies in no
  ``[onset - tolerance, onset + match_window]`` of an incident on its key, and it is not
  the alert that detected an incident (an episode that began just before the tolerance
  but fired inside it is a detection, never also a false alert);
* false alerts are reported per key and per 30 days of the backtest's span, and the
  totals give the worst key of each kind (entity, topic) and the median and longest
  delay of the incidents an alert caught (detected or late).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from alerts.lifecycle import Episode
from alerts.rules import format_duration, key_kind_of
from pipeline.errors import ConfigurationError

DEFAULT_TOLERANCE = timedelta(hours=6)
DEFAULT_MATCH_WINDOW = timedelta(days=7)
DEFAULT_DETECT_WITHIN = timedelta(hours=24)
THIRTY_DAYS = timedelta(days=30)
_FIELDS = ("key", "onset", "name")

Status = Literal["detected", "late", "missed", "outside"]


class IncidentError(ConfigurationError):
    """The incidents file is unreadable or invalid; the message names the file, the
    incident and the field."""


@dataclass(frozen=True)
class Incident:
    """Something the rules should alert on: ``key`` turned bad at ``onset`` (UTC)."""

    key: str
    onset: datetime
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"{self.key} at {self.onset:%Y-%m-%d %H:%M}"


# --- the file ----------------------------------------------------------------------------


def parse_onset(value: Any) -> datetime:
    """An incident's onset as an aware UTC datetime.

    >>> parse_onset("2026-03-14T09:30")
    datetime.datetime(2026, 3, 14, 9, 30, tzinfo=datetime.timezone.utc)
    >>> parse_onset("2026-03-14T10:30+01:00")
    datetime.datetime(2026, 3, 14, 9, 30, tzinfo=datetime.timezone.utc)
    >>> parse_onset(date(2026, 3, 14))
    datetime.datetime(2026, 3, 14, 0, 0, tzinfo=datetime.timezone.utc)
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"{value!r} is not a time; write ISO 8601 such as 2026-03-14T09:30 "
                "(UTC without an offset) or a date such as 2026-03-14"
            ) from None
    else:
        raise ValueError(f"must be a time such as 2026-03-14T09:30, got {value!r}")
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _check_key(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a key such as entity:ACME or topic:Earnings, got {value!r}")
    kind, _, name = value.partition(":")
    if kind not in ("topic", "entity") or not name.strip():
        raise ValueError(
            f"{value!r} is not a key; write topic:<topic name> or entity:<TICKER>, "
            "as the alerts' 'key' label (e.g. entity:ACME)"
        )
    return value


def parse_incidents(data: Any, *, source: str = "<memory>") -> tuple[Incident, ...]:
    """Validate an already-parsed incidents document (a mapping with an ``incidents``
    list, or the list itself). IncidentError lists every problem found."""
    if isinstance(data, dict):
        unknown = set(data) - {"incidents"}
        if unknown:
            raise IncidentError(
                f"{source}: unknown top-level section(s) {sorted(map(str, unknown))}; "
                "only 'incidents' exists"
            )
        data = data.get("incidents")
    if data is None:
        raise IncidentError(
            f"{source}: no incidents; add an 'incidents:' list of {{key, onset, name}} "
            "(see examples/incidents.yaml)"
        )
    if not isinstance(data, list):
        raise IncidentError(f"{source}: 'incidents' must be a list of {{key, onset, name}}")
    if not data:
        raise IncidentError(f"{source}: the incidents list is empty; add at least one incident")
    problems: list[str] = []
    incidents: list[Incident] = []
    seen: dict[tuple[str, datetime], int] = {}
    for index, raw in enumerate(data):
        name = raw.get("name") if isinstance(raw, dict) else None
        where = (
            f"{source}: incident {name!r} (incidents[{index}])"
            if isinstance(name, str)
            else f"{source}: incidents[{index}]"
        )
        if not isinstance(raw, dict):
            problems.append(f"{where}: each incident must be a mapping with key and onset")
            continue
        bad = len(problems)
        for extra in sorted(set(map(str, raw)) - set(_FIELDS)):
            problems.append(
                f"{where}, field '{extra}': unknown field; an incident has {', '.join(_FIELDS)}"
            )
        values: dict[str, Any] = {}
        for field_name, check in (("key", _check_key), ("onset", parse_onset)):
            if field_name not in raw or raw[field_name] is None:
                problems.append(f"{where}, field '{field_name}': is required")
                continue
            try:
                values[field_name] = check(raw[field_name])
            except ValueError as exc:
                problems.append(f"{where}, field '{field_name}': {exc}")
        if name is not None and not isinstance(name, str):
            problems.append(f"{where}, field 'name': must be text, got {name!r}")
        if len(problems) > bad:
            continue
        incident = Incident(values["key"], values["onset"], name or None)
        ident = (incident.key, incident.onset)
        if ident in seen:
            problems.append(
                f"{where}: duplicate of incidents[{seen[ident]}] (same key and onset); "
                "list each incident once"
            )
            continue
        seen[ident] = index
        incidents.append(incident)
    if problems:
        raise IncidentError("invalid incidents:\n  " + "\n  ".join(problems))
    return tuple(incidents)


def load_incidents(path: str | Path) -> tuple[Incident, ...]:
    """Read and validate an incidents YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IncidentError(f"{path}: incidents file not found; check --incidents") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IncidentError(f"{path}: cannot read the incidents file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise IncidentError(
            f"{path}:{at}: not valid YAML: {problem}; fix the indentation or quoting there"
        ) from None
    return parse_incidents(data, source=str(path))


# --- scoring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """How the rules did on one incident."""

    incident: Incident
    status: Status
    alert: Episode | None = None
    """The first alert on the incident's key that fired in its span (None: missed)."""

    @property
    def delay(self) -> timedelta | None:
        if self.alert is None or self.alert.fired_at is None:
            return None
        return self.alert.fired_at - self.incident.onset


@dataclass(frozen=True)
class KeyScore:
    key: str
    alerts: int
    false_alerts: int
    false_per_30d: float
    incidents: int
    detected: int

    @property
    def kind(self) -> str:
        return key_kind_of(self.key)


@dataclass(frozen=True)
class Scorecard:
    start: datetime
    end: datetime
    tolerance: timedelta
    match_window: timedelta
    detect_within: timedelta
    detections: tuple[Detection, ...]
    keys: tuple[KeyScore, ...]
    false_by_rule: dict[str, int]

    @property
    def counted(self) -> tuple[Detection, ...]:
        """The detections of incidents inside the backtest's span."""
        return tuple(d for d in self.detections if d.status != "outside")

    def count(self, status: Status) -> int:
        return sum(d.status == status for d in self.detections)

    def delays(self) -> list[timedelta]:
        """The delays of the counted incidents an alert caught (detected or late), in
        order."""
        return sorted(d.delay for d in self.counted if d.delay is not None)

    def median_delay(self) -> timedelta | None:
        """The median of :meth:`delays` (the mean of the middle two for an even count)."""
        found = self.delays()
        if not found:
            return None
        mid = len(found) // 2
        return found[mid] if len(found) % 2 else (found[mid - 1] + found[mid]) / 2

    def worst(self, kind: str) -> KeyScore | None:
        """The key of ``kind`` (entity / topic) with the most false alerts per 30 days."""
        of_kind = [k for k in self.keys if k.kind == kind]
        return max(of_kind, key=lambda k: (k.false_per_30d, k.key)) if of_kind else None

    def as_dict(self) -> dict[str, Any]:
        """The scorecard as JSON-ready data (times ISO 8601 UTC, durations in seconds)."""

        def worst(kind: str) -> dict[str, Any] | None:
            found = self.worst(kind)
            if found is None:
                return None  # no key of that kind had an alert or an incident
            return {
                "key": found.key if found.false_alerts else None,
                "per_30d": found.false_per_30d,
            }

        delays, median = self.delays(), self.median_delay()
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "tolerance_s": self.tolerance.total_seconds(),
            "match_window_s": self.match_window.total_seconds(),
            "detect_within_s": self.detect_within.total_seconds(),
            "incidents": [
                {
                    "key": d.incident.key,
                    "onset": d.incident.onset.isoformat(),
                    "name": d.incident.name,
                    "status": d.status,
                    "rule": d.alert.rule_name if d.alert else None,
                    "pending_since": d.alert.pending_since.isoformat() if d.alert else None,
                    "fired_at": d.alert.fired_at.isoformat()
                    if d.alert and d.alert.fired_at
                    else None,
                    "delay_s": d.delay.total_seconds() if d.delay is not None else None,
                }
                for d in self.detections
            ],
            "keys": [
                {
                    "key": k.key,
                    "kind": k.kind,
                    "alerts": k.alerts,
                    "false_alerts": k.false_alerts,
                    "false_per_30d": k.false_per_30d,
                    "incidents": k.incidents,
                    "detected": k.detected,
                }
                for k in self.keys
            ],
            "false_by_rule": dict(sorted(self.false_by_rule.items())),
            "totals": {
                "incidents": len(self.counted),
                "detected": self.count("detected"),
                "late": self.count("late"),
                "missed": self.count("missed"),
                "outside": self.count("outside"),
                "false_alerts": sum(k.false_alerts for k in self.keys),
                "median_delay_s": median.total_seconds() if median is not None else None,
                "max_delay_s": delays[-1].total_seconds() if delays else None,
                "worst_false_per_30d": {"entity": worst("entity"), "topic": worst("topic")},
            },
        }


def _span(
    incident: Incident, tolerance: timedelta, match_window: timedelta
) -> tuple[datetime, datetime]:
    return incident.onset - tolerance, incident.onset + match_window


def score(
    incidents: Iterable[Incident],
    episodes: Iterable[Episode],
    *,
    start: datetime,
    end: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
    match_window: timedelta = DEFAULT_MATCH_WINDOW,
    detect_within: timedelta = DEFAULT_DETECT_WITHIN,
) -> Scorecard:
    """Score a backtest's ``episodes`` over ``[start, end]`` against ``incidents`` (see
    the module docstring). Pure: no database, no clock."""
    if end < start:
        raise ValueError("end must not be before start")
    if tolerance < timedelta(0) or match_window < timedelta(0):
        raise ValueError("tolerance and match window must not be negative")
    listed = sorted(incidents, key=lambda i: (i.onset, i.key))
    alerts = sorted(
        (e for e in episodes if e.fired_at is not None),
        key=lambda e: (e.fired_at or e.pending_since, e.rule_name, e.key),
    )
    by_key: dict[str, list[Episode]] = {}
    for alert in alerts:
        by_key.setdefault(alert.key, []).append(alert)

    detections: list[Detection] = []
    detecting: set[int] = set()
    for incident in listed:
        lo, hi = _span(incident, tolerance, match_window)
        first = next(
            (
                a
                for a in by_key.get(incident.key, [])
                if a.fired_at is not None and lo <= a.fired_at <= hi
            ),
            None,
        )
        if first is not None:
            detecting.add(id(first))
        if not start <= incident.onset <= end:
            status: Status = "outside"
        elif first is None:
            status = "missed"
        else:
            assert first.fired_at is not None
            status = "detected" if first.fired_at - incident.onset <= detect_within else "late"
        detections.append(Detection(incident, status, first))

    months = max((end - start) / THIRTY_DAYS, 1e-9)
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for incident in listed:
        spans.setdefault(incident.key, []).append(_span(incident, tolerance, match_window))
    false_by_rule: dict[str, int] = {}
    scores = []
    for key in sorted(set(by_key) | {i.key for i in listed}):
        false = [
            a
            for a in by_key.get(key, [])
            if id(a) not in detecting
            and not any(lo <= a.pending_since <= hi for lo, hi in spans.get(key, []))
        ]
        for a in false:
            false_by_rule[a.rule_name] = false_by_rule.get(a.rule_name, 0) + 1
        mine = [d for d in detections if d.incident.key == key and d.status != "outside"]
        scores.append(
            KeyScore(
                key=key,
                alerts=len(by_key.get(key, [])),
                false_alerts=len(false),
                false_per_30d=round(len(false) / months, 4),
                incidents=len(mine),
                detected=sum(d.status == "detected" for d in mine),
            )
        )
    return Scorecard(
        start=start,
        end=end,
        tolerance=tolerance,
        match_window=match_window,
        detect_within=detect_within,
        detections=tuple(detections),
        keys=tuple(scores),
        false_by_rule=false_by_rule,
    )


# --- the report --------------------------------------------------------------------------


def format_delay(delay: timedelta | None) -> str:
    """A signed, short delay.

    >>> format_delay(timedelta(hours=1, minutes=30))
    '+1h30m'
    >>> format_delay(timedelta(hours=-2, minutes=-5))
    '-2h05m'
    >>> format_delay(timedelta(days=3, hours=4, minutes=10))
    '+3d04h'
    >>> format_delay(timedelta(seconds=45))
    '+0m45s'
    >>> format_delay(None)
    '-'
    """
    if delay is None:
        return "-"
    sign = "-" if delay < timedelta(0) else "+"
    total = int(abs(delay.total_seconds()))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours:02d}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    return f"{sign}{minutes}m{seconds:02d}s"


def format_span(delta: timedelta) -> str:
    """A duration as the flags write it: hours up to two days, then days.

    >>> format_span(timedelta(hours=24)), format_span(timedelta(days=7)), format_span(timedelta(minutes=90))
    ('24h', '7d', '90m')
    """
    seconds = delta.total_seconds()
    if seconds and seconds % 86400 == 0 and seconds > 2 * 86400:
        return f"{int(seconds // 86400)}d"
    if seconds and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return format_duration(delta)


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def format_report(card: Scorecard) -> str:
    """The scorecard as readable tables (what ``finsent alerts evaluate`` prints)."""
    tol, match = format_span(card.tolerance), format_span(card.match_window)
    within = format_span(card.detect_within)
    lines = [
        f"incidents: the first alert on the key that fired in [onset - {tol}, onset + {match}]; "
        f"detected = within {within} of the onset"
    ]
    lines += _table(
        ["key", "onset (UTC)", "incident", "first alert", "fired at (UTC)", "delay", "result"],
        [
            [
                d.incident.key,
                _when(d.incident.onset),
                d.incident.name or "-",
                d.alert.rule_name if d.alert else "-",
                _when(d.alert.fired_at) if d.alert else "-",
                format_delay(d.delay),
                d.status,
            ]
            for d in card.detections
        ],
        right={5},
    )
    days = (card.end - card.start) / timedelta(days=1)
    lines.append("")
    lines.append(
        f"false alerts: episode start outside every [onset - {tol}, onset + {match}] of an "
        f"incident on the key, over {days:,.1f} days"
    )
    if card.keys:
        lines += _table(
            ["key", "alerts", "false", "false/30d", "incidents", "detected"],
            [
                [
                    k.key,
                    str(k.alerts),
                    str(k.false_alerts),
                    f"{k.false_per_30d:.2f}",
                    str(k.incidents),
                    str(k.detected),
                ]
                for k in card.keys
            ],
            right={1, 2, 3, 4, 5},
        )
    else:
        lines.append("  no alerts")
    if card.false_by_rule:
        lines.append(
            "  false alerts by rule: "
            + ", ".join(f"{rule} {n}" for rule, n in sorted(card.false_by_rule.items()))
        )
    worst = []
    for kind in ("entity", "topic"):
        found = card.worst(kind)
        if found is None:
            worst.append(f"{kind} -")
        elif not found.false_alerts:
            worst.append(f"{kind} 0.00")
        else:
            worst.append(f"{kind} {found.false_per_30d:.2f} ({found.key})")
    outside = card.count("outside")
    delays = card.delays()
    delay = (
        f"; delay median {format_delay(card.median_delay())}, max {format_delay(delays[-1])}"
        if delays
        else ""
    )
    lines.append("")
    lines.append(
        f"totals: {card.count('detected')}/{len(card.counted)} incidents detected within {within} "
        f"({card.count('late')} late, {card.count('missed')} missed"
        + (f"; {outside} outside the backtest's span, not counted" if outside else "")
        + f"){delay}; worst false alerts per 30 days: {', '.join(worst)}"
    )
    return "\n".join(lines)
