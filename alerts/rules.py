"""Alert rules: the pydantic models and the YAML loader (``FINSENT_RULES``).

A rules file has two sections::

    notifiers:                      # optional; 'email' and 'webhook' always exist and use
      risk-desk:                    # FINSENT_SMTP__* / FINSENT_WEBHOOK__* settings; 'log'
                                    # writes a log line (demos, dry runs)
        type: email
        to: [risk@example.com]
      ops-hook:
        type: webhook
        url: https://hooks.example.com/finsent
        secret_env: OPS_HOOK_SECRET # or `secret: ...`; default FINSENT_WEBHOOK__SECRET
    rules:
      - name: negative-share-by-topic
        kind: threshold             # threshold | spike | memory_surge | anomaly
        ...

See ``examples/rules.yaml`` for every field, documented. Everything is validated at load
time; a mistake raises :class:`alerts.errors.RuleError` whose message names the file, the
rule (by name and position) and the field, and says what to write instead, so a bad file
fails when the service starts rather than at 3 a.m. when the rule first matches.

Durations are written ``90s``, ``15m``, ``2h``, ``1d``, ``1w`` or as a number of seconds.
Windows are in event time (the documents' published time), see ``alerts/evaluator.py``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from alerts.errors import RuleError
from pipeline.settings import Settings, secret_value

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
RESERVED_LABELS = ("alertname", "rule", "key", "key_kind", "name", "severity")
BUILTIN_NOTIFIERS = ("email", "webhook", "log")
WEEK = timedelta(days=7)


def parse_duration(value: Any) -> timedelta:
    """``'90s'``, ``'15m'``, ``'2h'``, ``'1d'``, ``'1w'``, a number of seconds, or a
    timedelta. Negative durations are refused (a window cannot end before it starts)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(f"must be a duration such as 30m, 2h or 1d, got {value!r}")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            if value.strip().startswith("-"):
                raise ValueError(f"must not be negative, got {value!r}; write e.g. 30m, 2h or 1d")
            raise ValueError(f"must be a duration such as 90s, 30m, 2h or 1d, got {value!r}")
        unit = match.group(2).lower() if match.group(2) else None
        seconds = float(match.group(1)) * _UNIT_SECONDS[unit]
    else:
        raise ValueError(f"must be a duration such as 30m, 2h or 1d, got {value!r}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}; write e.g. 30m, 2h or 1d")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of a duration (``'2h'``, ``'90s'``)."""
    seconds = delta.total_seconds()
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.6f}".rstrip("0") + "s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _positive(value: timedelta) -> timedelta:
    if value.total_seconds() <= 0:
        raise ValueError("must be a positive duration such as 30m or 2h")
    return value


PositiveDuration = Annotated[timedelta, BeforeValidator(lambda v: _positive(parse_duration(v)))]


def key_kind_of(key: str) -> str:
    """``'topic'`` or ``'entity'``: keys are ``topic:<name>`` or ``entity:<TICKER>``."""
    return key.split(":", 1)[0] if ":" in key else "topic"


def key_name_of(key: str) -> str:
    """The part after the kind prefix (``'Earnings'`` of ``'topic:Earnings'``)."""
    return key.split(":", 1)[1] if ":" in key else key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Selector(_Strict):
    """Which keys a rule watches. Names and globs match the key's name case-insensitively;
    with neither, every key of ``key_kind`` is watched. ``min_volume`` is the fewest
    documents in the window for the key to be judged at all (too few = no verdict, and a
    firing alert resolves, as Prometheus does when a series disappears)."""

    key_kind: Literal["topic", "entity", "any"] = "any"
    names: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    min_volume: int = Field(1, ge=1)

    def sql_prefix(self) -> str:
        """A LIKE pattern narrowing the keys in SQL (the rest is matched in Python)."""
        return "%" if self.key_kind == "any" else f"{self.key_kind}:%"

    def matches(self, key: str) -> bool:
        if self.key_kind != "any" and key_kind_of(key) != self.key_kind:
            return False
        if not self.names and not self.globs:
            return True
        name = key_name_of(key).casefold()
        if any(name == n.casefold() for n in self.names):
            return True
        return any(fnmatch.fnmatchcase(name, g.casefold()) for g in self.globs)


class ValueResolve(_Strict):
    """The separate resolve condition of threshold and memory_surge rules: a firing alert
    resolves only once the metric is back on the far side of ``value`` (hysteresis)."""

    value: float


class RatioResolve(_Strict):
    """The resolve condition of spike rules: the ratio back at or below ``ratio``."""

    ratio: float = Field(gt=0)


class RuleBase(_Strict):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    description: str = ""
    select: Selector = Selector.model_validate({})
    window: PositiveDuration
    for_: Duration = Field(timedelta(0), alias="for")
    cooldown: Duration = timedelta(0)
    renotify: Duration | None = None
    severity: Literal["info", "warning", "critical"] = "warning"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    group_by: tuple[str, ...] = ("rule",)
    notifiers: tuple[str, ...] = Field(min_length=1)
    notify_resolved: bool = True

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name in RESERVED_LABELS:
                raise ValueError(
                    f"label {name!r} is set by finsent itself; reserved: {', '.join(RESERVED_LABELS)}"
                )
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"label name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
        return value

    @field_validator("renotify")
    @classmethod
    def _renotify(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value.total_seconds() <= 0:
            raise ValueError(
                "must be a positive duration (or leave it out to notify once per episode)"
            )
        return value

    @model_validator(mode="after")
    def _group_by(self) -> RuleBase:
        allowed = set(RESERVED_LABELS) | set(self.labels)
        for name in self.group_by:
            if name not in allowed:
                raise ValueError(
                    f"group_by: {name!r} is not a label of this rule; use one of {sorted(allowed)}"
                )
        return self

    @property
    def for_duration(self) -> timedelta:
        return self.for_

    def fingerprint(self, key: str) -> str:
        """Identity of an alert: rule + key + the rule's labels (not its thresholds, so
        tuning a threshold continues the same episode)."""
        basis = json.dumps(
            {"rule": self.name, "key": key, "labels": dict(sorted(self.labels.items()))},
            sort_keys=True,
        )
        return hashlib.sha256(basis.encode()).hexdigest()[:16]

    def alert_labels(self, key: str) -> dict[str, str]:
        """The labels an alert of this rule on ``key`` carries (silences match these)."""
        return {
            "alertname": self.name,
            "rule": self.name,
            "key": key,
            "key_kind": key_kind_of(key),
            "name": key_name_of(key),
            "severity": self.severity,
            **self.labels,
        }

    def group_key(self, key: str) -> str:
        labels = self.alert_labels(key)
        return "{" + ",".join(f'{n}="{labels[n]}"' for n in self.group_by) + "}"


Comparison = Literal[">", ">=", "<", "<="]


def compare(op: str, left: float, right: float) -> bool:
    return {">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right}[op]


class ThresholdRule(RuleBase):
    """A window metric compared with a value, e.g. negative_share > 0.6 over 1h."""

    kind: Literal["threshold"]
    metric: Literal["negative_share", "negative_count", "mean_sentiment"] = "negative_share"
    op: Comparison = ">"
    value: float
    resolve: ValueResolve | None = None

    @model_validator(mode="after")
    def _hysteresis(self) -> ThresholdRule:
        _check_band(self.op, self.value, self.resolve)
        if self.metric == "negative_share" and not 0 <= self.value <= 1:
            raise ValueError("value: negative_share is a fraction; write a value between 0 and 1")
        return self


class SpikeRule(RuleBase):
    """The current window against the reference window right before it (ElastAlert2's
    spike): fires when the metric's rate is ``ratio`` times the reference rate or more,
    and only when the reference holds at least ``min_reference_count`` events."""

    kind: Literal["spike"]
    metric: Literal["negative_count", "negative_share"] = "negative_count"
    reference_window: PositiveDuration | None = None
    ratio: float = Field(gt=1)
    min_reference_count: int = Field(5, ge=1)
    resolve: RatioResolve | None = None

    @model_validator(mode="after")
    def _hysteresis(self) -> SpikeRule:
        if self.resolve is not None and self.resolve.ratio > self.ratio:
            raise ValueError(
                f"resolve.ratio ({self.resolve.ratio}) must not exceed ratio ({self.ratio}), "
                "or the alert would resolve while still breaching"
            )
        return self

    @property
    def reference(self) -> timedelta:
        return self.reference_window or self.window


class MemorySurgeRule(RuleBase):
    """One of the recurrent memory's surge scores (newest trend point of the key inside the
    window) compared with a value: ``score: negativity`` (the default, column
    ``surge_score``: the key's bearish rate lifted against its own level, blind to how many
    documents arrive) or ``score: volume`` (``volume_surge_score``: documents arriving at
    least twice as fast as usual; NULL, so never breaching, under a cell from before the
    split)."""

    kind: Literal["memory_surge"]
    score: Literal["negativity", "volume"] = "negativity"
    op: Comparison = ">"
    value: float
    resolve: ValueResolve | None = None

    @model_validator(mode="after")
    def _hysteresis(self) -> MemorySurgeRule:
        _check_band(self.op, self.value, self.resolve)
        return self

    @property
    def score_column(self) -> str:
        """The trend_points column this rule reads."""
        return "surge_score" if self.score == "negativity" else "volume_surge_score"


class AnomalyResolve(_Strict):
    """The resolve condition of anomaly rules: the tail probability back above
    ``p_value`` (the evidence has faded), not merely above the firing level."""

    p_value: float = Field(gt=0, lt=1)


class AnomalyRule(RuleBase):
    """The key's bearish count or share in the window against its own trailing baseline:
    fires when the one-sided tail probability of the baseline's predictive is below
    ``p_value`` and the change is at least ``min_lift`` (the maths: ``alerts/anomaly.py``).
    The test's evidence replaces ``select.min_volume``, which these rules refuse."""

    kind: Literal["anomaly"]
    metric: Literal["negative_count", "negative_share"] = "negative_count"
    seasonality: Literal["none", "weekly"] = "none"
    baseline: PositiveDuration = Field(timedelta(days=30), validate_default=True)
    p_value: float = Field(0.001, gt=0, lt=1)
    min_lift: float = Field(1.5, ge=1)
    min_share_lift: float = Field(1.25, ge=1)
    min_count: int = Field(3, ge=1)
    resolve: AnomalyResolve | None = None

    @field_validator("select")
    @classmethod
    def _no_min_volume(cls, value: Selector) -> Selector:
        if "min_volume" in value.model_fields_set:
            raise ValueError(
                "min_volume does not apply to anomaly rules: the test weighs the evidence of "
                "few documents itself; remove it (min_count sets the fewest bearish documents)"
            )
        return value

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        window = info.data.get("window")
        if info.data.get("seasonality") == "weekly":
            if value < WEEK:
                raise ValueError(
                    f"seasonality weekly compares with the same window in earlier weeks; "
                    f"the baseline ({format_duration(value)}) must be at least 1w"
                )
            if window is not None and window > WEEK:
                raise ValueError(
                    f"seasonality weekly needs a window of at most 1w, got {format_duration(window)}"
                )
        elif window is not None and value < window:
            raise ValueError(
                f"the baseline ({format_duration(value)}) must be at least the window "
                f"({format_duration(window)}): it is the key's history the window is compared with"
            )
        return value

    @field_validator("min_share_lift")
    @classmethod
    def _share_lift(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("metric") == "negative_share":
            raise ValueError(
                "applies to metric negative_count only; with negative_share, min_lift is the share lift"
            )
        return value

    @field_validator("resolve")
    @classmethod
    def _resolve(cls, value: AnomalyResolve | None, info: ValidationInfo) -> AnomalyResolve | None:
        p_value = info.data.get("p_value")
        if value is not None and p_value is not None and value.p_value < p_value:
            raise ValueError(
                f"resolve.p_value ({value.p_value}) must be >= p_value ({p_value}): "
                "the resolve level sits on the calm side of the firing level"
            )
        return value


def _check_band(op: str, value: float, resolve: ValueResolve | None) -> None:
    if resolve is None:
        return
    if op in (">", ">=") and resolve.value > value:
        raise ValueError(
            f"resolve.value ({resolve.value}) must be <= value ({value}) for op '{op}': "
            "the resolve level sits on the calm side of the firing level"
        )
    if op in ("<", "<=") and resolve.value < value:
        raise ValueError(
            f"resolve.value ({resolve.value}) must be >= value ({value}) for op '{op}': "
            "the resolve level sits on the calm side of the firing level"
        )


AnyRule = ThresholdRule | SpikeRule | MemorySurgeRule | AnomalyRule
Rule = Annotated[AnyRule, Field(discriminator="kind")]
RULE_KINDS = ("threshold", "spike", "memory_surge", "anomaly")
_RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)


class EmailNotifierConfig(_Strict):
    type: Literal["email"]
    to: tuple[str, ...] = Field(min_length=1)

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            if "@" not in address:
                raise ValueError(f"{address!r} is not an e-mail address")
        return value


class WebhookNotifierConfig(_Strict):
    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr | None = None  # SecretStr: a parsed RuleSet shows up in logs and reprs
    secret_env: str | None = None
    timeout_s: float | None = Field(None, gt=0)

    def resolved_secret(self, settings: Settings | None) -> str | None:
        """The plain secret to sign with: ``secret``, else ``$secret_env``, else the settings'."""
        if self.secret is not None:
            return secret_value(self.secret)
        if self.secret_env:
            return os.environ.get(self.secret_env)
        return secret_value(settings.webhook.secret) if settings is not None else None


NotifierConfig = Annotated[EmailNotifierConfig | WebhookNotifierConfig, Field(discriminator="type")]
_NOTIFIER_ADAPTER: TypeAdapter[NotifierConfig] = TypeAdapter(NotifierConfig)


@dataclass(frozen=True)
class RuleSet:
    """A loaded, validated rules file."""

    rules: tuple[AnyRule, ...]
    notifiers: dict[str, EmailNotifierConfig | WebhookNotifierConfig] = field(default_factory=dict)
    source: str = "<memory>"

    def rule(self, name: str) -> AnyRule | None:
        return next((r for r in self.rules if r.name == name), None)


def _where(path: str, index: int | None = None, name: Any = None) -> str:
    if index is None:
        return path
    return (
        f"{path}: rule {name!r} (rules[{index}])"
        if isinstance(name, str)
        else f"{path}: rules[{index}]"
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [
        str(p)
        for p in loc
        if p not in RULE_KINDS and p not in ("email", "webhook", "function-after[_positive()]")
    ]
    return ".".join(parts) or "(rule)"


def _format(where: str, exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling against examples/rules.yaml"
        elif err["type"] == "missing":
            msg = "is required"
        problems.append(f"{where}, field '{_field_name(tuple(err['loc']))}': {msg}")
    return problems


def parse_rules(
    data: Any, *, source: str = "<memory>", settings: Settings | None = None
) -> RuleSet:
    """Validate an already-parsed rules document; RuleError lists every problem found."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RuleError(
            f"{source}: the top level must be a mapping with a 'rules' list (and optionally 'notifiers')"
        )
    unknown = set(data) - {"rules", "notifiers"}
    if unknown:
        problems.append(
            f"{source}: unknown top-level section(s) {sorted(unknown)}; only 'rules' and 'notifiers' exist"
        )

    notifiers: dict[str, EmailNotifierConfig | WebhookNotifierConfig] = {}
    raw_notifiers = data.get("notifiers") or {}
    if not isinstance(raw_notifiers, dict):
        problems.append(
            f"{source}: 'notifiers' must be a mapping of name -> {{type: email|webhook, ...}}"
        )
        raw_notifiers = {}
    for name, raw in raw_notifiers.items():
        where = f"{source}: notifier {name!r}"
        if not isinstance(raw, dict) or raw.get("type") not in ("email", "webhook"):
            problems.append(f"{where}, field 'type': must be 'email' or 'webhook'")
            continue
        try:
            notifiers[str(name)] = _NOTIFIER_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            problems.extend(_format(where, exc))

    raw_rules = data.get("rules")
    if raw_rules is None:
        raw_rules = []
        problems.append(
            f"{source}: no 'rules' list; add `rules:` with at least one rule (see examples/rules.yaml)"
        )
    if not isinstance(raw_rules, list):
        problems.append(f"{source}: 'rules' must be a list of rules")
        raw_rules = []

    known_notifiers = set(BUILTIN_NOTIFIERS) | set(notifiers)
    rules: list[AnyRule] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        name = raw.get("name") if isinstance(raw, dict) else None
        where = _where(source, index, name)
        if not isinstance(raw, dict):
            problems.append(f"{where}: each rule must be a mapping of fields")
            continue
        if isinstance(name, str):
            if name in seen:
                problems.append(
                    f"{where}, field 'name': duplicate of rules[{seen[name]}]; rule names must be unique"
                )
            seen.setdefault(name, index)
        kind = raw.get("kind")
        if kind not in RULE_KINDS:
            got = "missing" if kind is None else f"{kind!r}"
            problems.append(
                f"{where}, field 'kind': unknown kind {got}; use one of {', '.join(RULE_KINDS)}"
            )
            continue
        try:
            rule = _RULE_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            problems.extend(_format(where, exc))
            raw_names = raw.get("notifiers")
            for notifier in raw_names if isinstance(raw_names, list) else []:
                if isinstance(notifier, str) and notifier not in known_notifiers:
                    problems.append(
                        f"{where}, field 'notifiers': notifier {notifier!r} is not defined; define "
                        f"it under 'notifiers:' or use one of {sorted(known_notifiers)}"
                    )
            continue
        for notifier in rule.notifiers:
            if notifier not in known_notifiers:
                problems.append(
                    f"{where}, field 'notifiers': notifier {notifier!r} is not defined; define it under "
                    f"'notifiers:' or use one of {sorted(known_notifiers)}"
                )
            elif (
                settings is not None
                and notifier == "webhook"
                and "webhook" not in notifiers
                and not settings.webhook.url
            ):
                problems.append(
                    f"{where}, field 'notifiers': 'webhook' needs FINSENT_WEBHOOK__URL to be set"
                )
            elif (
                settings is not None
                and notifier == "email"
                and "email" not in notifiers
                and not settings.smtp.recipients
            ):
                problems.append(
                    f"{where}, field 'notifiers': 'email' needs FINSENT_SMTP__RECIPIENTS to be set"
                )
        rules.append(rule)
    if problems:
        raise RuleError("invalid alert rules:\n  " + "\n  ".join(problems))
    return RuleSet(rules=tuple(rules), notifiers=notifiers, source=source)


def load_rules(path: str | Path, settings: Settings | None = None) -> RuleSet:
    """Read and validate a rules YAML file. RuleError names the file, rule and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleError(f"{path}: rules file not found; check FINSENT_RULES / --rules") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}: cannot read the rules file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RuleError(
            f"{path}:{at}: not valid YAML: {problem}; fix the indentation or quoting there"
        ) from None
    return parse_rules(data, source=str(path), settings=settings)
