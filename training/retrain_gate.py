"""The champion/challenger gate of retraining: a pure function of both models' metrics on
the same evaluation rows, so the promotion rule is testable without training anything.

Promote only when, on each head the champion was evaluated on, the challenger's macro-F1 is
not worse by more than ``margin`` and no class's recall drops by more than
``max_recall_drop`` (``Settings.retrain_promote_margin`` / ``retrain_max_recall_drop``): a
model that is better on average but loses a class (say, bearish) would hide the surges the
alerts exist for.

A recall is measured on the class's dev rows only, so on a small class it is mostly noise (one
miss among the 7 "Gold / Metals / Materials" rows of the tweets dev split moves recall by
0.14). When the metrics carry the class's support n, a drop vetoes only when it exceeds
``max_recall_drop`` by more than its sampling noise: ``drop > max_recall_drop + z * se``,
``se = sqrt(r_old (1 - r_old) / n + r_new (1 - r_new) / n)``, ``z`` = :data:`RECALL_Z` (one-sided
95 %). A 144-row bearish class at recall 0.72 still vetoes a drop of about 0.14 or more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: ``news_sentiment``: the hand-labelled news dev set, compared when the champion was evaluated on it
HEADS = ("sentiment", "topic", "news_sentiment")
EPSILON = 1e-9
#: one-sided 95 % normal quantile: how many standard errors of noise a recall drop may carry
RECALL_Z = 1.645


@dataclass
class Decision:
    """Whether the challenger replaces the champion, and every reason why (or why not)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _recall_se(old: float, new: float, n: Any) -> float:
    """Standard error of the difference of two recalls on ``n`` rows (0 when n is unknown)."""
    try:
        rows = int(n)
    except (TypeError, ValueError):
        return 0.0
    if rows <= 0:
        return 0.0
    return float((old * (1 - old) / rows + new * (1 - new) / rows) ** 0.5)


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    *,
    margin: float,
    max_recall_drop: float,
) -> Decision:
    """The champion/challenger gate, a pure function of both models' metrics on the same rows.

    ``metrics[head]`` has ``macro_f1`` and ``recall`` (class -> recall). A head the champion
    was not evaluated on is not compared; a head the champion has and the challenger lacks
    rejects it. With no champion at all, the challenger is promoted.
    """
    if not champion:
        return Decision(
            True, ["no champion to compare with: the challenger becomes the first champion"]
        )
    problems: list[str] = []
    notes: list[str] = []
    for head in HEADS:
        if head not in champion:
            continue
        if head not in challenger:
            problems.append(f"the challenger has no {head} metrics")
            continue
        new, old = float(challenger[head]["macro_f1"]), float(champion[head]["macro_f1"])
        if new < old - margin - EPSILON:
            problems.append(
                f"{head} macro-F1 {new:.4f} is worse than the champion's {old:.4f} "
                f"by {old - new:.4f} (allowed: {margin})"
            )
        else:
            notes.append(f"{head} macro-F1 {new:.4f} vs champion {old:.4f} ({new - old:+.4f})")
        new_recall = challenger[head].get("recall") or {}
        support = challenger[head].get("support") or champion[head].get("support") or {}
        for cls, old_r in (champion[head].get("recall") or {}).items():
            new_r = float(new_recall.get(cls, 0.0))
            allowed = max_recall_drop + RECALL_Z * _recall_se(float(old_r), new_r, support.get(cls))
            if float(old_r) - new_r > allowed + EPSILON:
                problems.append(
                    f"{head} recall of {cls!r} drops {float(old_r):.4f} -> {new_r:.4f} "
                    f"(allowed drop: {max_recall_drop}"
                    + (
                        f" + noise {allowed - max_recall_drop:.4f}"
                        if allowed > max_recall_drop
                        else ""
                    )
                    + ")"
                )
            elif float(old_r) - new_r > max_recall_drop + EPSILON:
                notes.append(
                    f"{head} recall of {cls!r} {float(old_r):.4f} -> {new_r:.4f}: within the "
                    f"noise of {support.get(cls)} rows (allowed {allowed:.4f})"
                )
    if problems:
        return Decision(False, problems)
    return Decision(
        True, notes + [f"no class's recall dropped by more than {max_recall_drop} beyond its noise"]
    )
