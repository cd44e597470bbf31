"""The retraining job: the promotion gate, and whole runs on a tiny model against real
PostgreSQL (a challenger worse than the champion is rejected and the champion keeps serving;
a failed run says why and changes nothing). A better challenger being promoted, with
feedback labels, over the shipped model and into a running scorer, is in
test_retrain_hot_reload.py.

The data is synthetic and easy (a keyword decides each label), so a tiny encoder trained a
few dozen steps learns it and one trained a single step does not: that is what makes a
"better" and a "worse" challenger without faking any metric.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import registry
from pipeline.settings import Settings
from training.retrain_gate import decide

SENTIMENT_WORDS = {0: "plunge slump crash", 1: "soar rally surge", 2: "meeting schedule agenda"}


def write_easy_data(root: Path, per_sentiment: int = 30, per_topic: int = 12) -> tuple[Path, Path]:
    """Sentiment and topic CSVs (data-file label ids) where one keyword decides the label."""
    from pipeline.records import TOPICS

    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    s_csv, t_csv = root / "sentiment.csv", root / "topic.csv"
    with s_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for label, words in SENTIMENT_WORDS.items():
            for i in range(per_sentiment):
                shuffled = words.split()
                rng.shuffle(shuffled)
                writer.writerow([f"$T{i} {' '.join(shuffled)} item {i}", label])
    with t_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for label, name in enumerate(TOPICS):
            for i in range(per_topic):
                writer.writerow(
                    [f"topic{label} {name.split()[0].lower()} word{label} note {i}", label]
                )
    return s_csv, t_csv


def tiny_config(steps: int) -> Any:
    from training.train import TrainConfig

    return TrainConfig(
        tiny=True,
        epochs=50,
        max_steps=steps,
        batch_size=16,
        max_tokens=32,
        save_checkpoints=False,
        progress=False,
        lr=3e-3,
        head_lr=3e-3,
        seed=1,
    )


GOOD_STEPS = 40  # learns the easy data (macro-F1 ~0.9+ on both heads)
BAD_STEPS = 1  # near chance


def retrain_settings(
    settings: Settings, data: tuple[Path, Path], tmp_path: Path, **extra: Any
) -> Settings:
    return settings.model_copy(
        update={
            "train_sentiment_csv": data[0],
            "train_topic_csv": data[1],
            "model_dir": tmp_path / "no-shipped-model",
            **extra,
        }
    )


def runs(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.text("select * from training_runs order by id")).all()


# --- the gate (pure) ----------------------------------------------------------------------


def head(f1: float, **recall: float) -> dict[str, Any]:
    return {"macro_f1": f1, "accuracy": f1, "recall": recall}


def test_gate_promotes_a_challenger_within_the_margin() -> None:
    champion = {"sentiment": head(0.80, bearish=0.7, bullish=0.8), "topic": head(0.60, a=0.5)}
    challenger = {"sentiment": head(0.796, bearish=0.66, bullish=0.9), "topic": head(0.70, a=0.5)}
    decision = decide(challenger, champion, margin=0.005, max_recall_drop=0.05)
    assert decision.promote, decision.reason
    assert "sentiment macro-F1 0.7960 vs champion 0.8000 (-0.0040)" in decision.reason


def test_gate_rejects_a_worse_macro_f1_on_either_head() -> None:
    champion = {"sentiment": head(0.80, bearish=0.7), "topic": head(0.60, a=0.5)}
    challenger = {"sentiment": head(0.90, bearish=0.9), "topic": head(0.59, a=0.5)}
    decision = decide(challenger, champion, margin=0.005, max_recall_drop=0.05)
    assert not decision.promote
    assert decision.reasons == [
        "topic macro-F1 0.5900 is worse than the champion's 0.6000 by 0.0100 (allowed: 0.005)"
    ]


def test_gate_rejects_a_class_whose_recall_drops_too_much() -> None:
    champion = {"sentiment": head(0.80, bearish=0.70, bullish=0.8)}
    challenger = {"sentiment": head(0.85, bearish=0.64, bullish=0.99)}
    decision = decide(challenger, champion, margin=0.0, max_recall_drop=0.05)
    assert not decision.promote
    assert "recall of 'bearish' drops 0.7000 -> 0.6400" in decision.reason


def test_gate_without_a_champion_promotes_and_a_missing_head_rejects() -> None:
    assert decide({"sentiment": head(0.1)}, None, margin=0, max_recall_drop=0).promote
    decision = decide(
        {"sentiment": head(0.9)},
        {"sentiment": head(0.5), "topic": head(0.5)},
        margin=0,
        max_recall_drop=0,
    )
    assert not decision.promote and "no topic metrics" in decision.reason


# --- whole runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def easy_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_easy_data(tmp_path_factory.mktemp("easy"))


@pytest.fixture(scope="module")
def good_model_dir(easy_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that learned the easy data: the champion a one-step challenger cannot beat."""
    pytest.importorskip("torch")
    from training.train_run import train_and_export

    return train_and_export(
        tmp_path_factory.mktemp("good") / "good",
        sentiment_csv=easy_data[0],
        topic_csv=easy_data[1],
        config=tiny_config(GOOD_STEPS),
        version="good-champion",
    )


def test_champion_teaches_the_challenger_unless_switched_off_or_the_config_names_a_teacher(
    settings: Settings, tmp_path: Path
) -> None:
    from training.retrain_run import with_champion_teacher

    champion = registry.ModelVersion(
        version="v1", status="champion", path=tmp_path / "v1", metrics={}
    )
    config = tiny_config(1)
    assert with_champion_teacher(config, champion, settings).teacher == str(tmp_path / "v1")
    assert with_champion_teacher(config, None, settings).teacher == ""
    off = settings.model_copy(update={"retrain_distill": False})
    assert with_champion_teacher(config, champion, off).teacher == ""
    own_teacher = dataclasses.replace(config, teacher="/elsewhere")
    assert with_champion_teacher(own_teacher, champion, settings).teacher == "/elsewhere"


def test_worse_challenger_is_rejected_and_the_champion_keeps_serving(
    engine: sa.Engine,
    settings: Settings,
    easy_data: tuple[Path, Path],
    good_model_dir: Path,
    tmp_path: Path,
) -> None:
    from training.retrain_run import run_retraining

    with engine.begin() as conn:
        registry.register_version(conn, "good-champion", good_model_dir, {})
        registry.promote(conn, "good-champion")
    outcome = run_retraining(
        retrain_settings(settings, easy_data, tmp_path),
        config=tiny_config(BAD_STEPS),
        engine=engine,
    )
    assert outcome.status == "rejected", outcome.summary()
    assert "worse than the champion's" in outcome.reason
    assert registry.current_champion(engine).version == "good-champion"  # type: ignore[union-attr]
    challenger = registry.get_version(engine, outcome.challenger_version)  # type: ignore[arg-type]
    assert challenger is not None and challenger.status == "rejected"
    assert challenger.metrics["sentiment"]["macro_f1"] < 0.9
    (run,) = runs(engine)
    assert (run.status, run.champion_version, run.challenger_version) == (
        "rejected",
        "good-champion",
        outcome.challenger_version,
    )
    assert run.reason == outcome.reason and run.finished_at is not None
    assert run.config["teacher"] == str(good_model_dir)  # the champion taught the challenger
    # both models measured on the same evaluation rows
    assert run.champion_metrics["sentiment"]["n"] == run.challenger_metrics["sentiment"]["n"] > 0
    assert (
        run.champion_metrics["sentiment"]["macro_f1"]
        > run.challenger_metrics["sentiment"]["macro_f1"]
    )
    # the champion's empty registry metrics were filled in from this evaluation
    assert (
        registry.current_champion(engine).metrics["topic"]["n"]
        == run.champion_metrics["topic"]["n"]
    )  # type: ignore[union-attr]
    assert "the champion (good-champion) keeps serving" in outcome.summary()
    # artefacts beside the run's metrics
    assert outcome.run_dir is not None
    saved = json.loads((outcome.run_dir / "metrics.json").read_text())
    assert saved["status"] == "rejected" and saved["champion_version"] == "good-champion"
    for png in (
        "training_curve.png",
        "confusion_challenger_sentiment.png",
        "confusion_champion_topic.png",
    ):
        assert (outcome.run_dir / png).stat().st_size > 1000, png


def test_run_without_training_data_fails_with_the_reason_and_changes_nothing(
    engine: sa.Engine, settings: Settings, tmp_path: Path
) -> None:
    from training.retrain_run import run_retraining

    s = settings.model_copy(update={"model_dir": tmp_path / "none"})
    outcome = run_retraining(s, config=tiny_config(BAD_STEPS), engine=engine)
    assert outcome.status == "failed" and "FINSENT_TRAIN_SENTIMENT_CSV" in outcome.reason
    (run,) = runs(engine)
    assert run.status == "failed" and run.reason == outcome.reason
    assert registry.list_versions(engine) == []
    assert not [p for p in Path(s.model_registry_dir).iterdir() if p.name != "runs"]


def test_a_candidate_trained_elsewhere_passes_the_same_gate_and_is_promoted_over_a_worse_champion(
    engine: sa.Engine,
    settings: Settings,
    easy_data: tuple[Path, Path],
    good_model_dir: Path,
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    from training.retrain_run import run_retraining
    from training.train_run import train_and_export

    bad = train_and_export(
        tmp_path / "bad",
        sentiment_csv=easy_data[0],
        topic_csv=easy_data[1],
        config=tiny_config(BAD_STEPS),
        version="bad-champion",
    )
    with engine.begin() as conn:
        registry.register_version(conn, "bad-champion", bad, {})
        registry.promote(conn, "bad-champion")
    candidate = tmp_path / "candidate"
    shutil.copytree(good_model_dir, candidate)
    manifest = json.loads((candidate / "manifest.json").read_text())
    (candidate / "manifest.json").write_text(json.dumps({**manifest, "version": "cand-v9"}))
    s = retrain_settings(settings, easy_data, tmp_path)
    outcome = run_retraining(s, engine=engine, candidate=candidate, trigger="candidate")
    assert outcome.status == "promoted", outcome.summary()
    assert outcome.challenger_version == "cand-v9"  # the candidate's own version
    champion = registry.current_champion(engine)
    assert champion is not None and champion.version == "cand-v9"
    assert Path(champion.path) != candidate  # served from the registry's copy
    assert (Path(champion.path) / "manifest.json").is_file()
    (run,) = runs(engine)
    assert (run.trigger, run.status, run.champion_version) == (
        "candidate",
        "promoted",
        "bad-champion",
    )
    # the same version cannot be registered twice
    from pipeline.errors import ModelError

    with pytest.raises(ModelError, match="registered already"):
        run_retraining(s, engine=engine, candidate=candidate, trigger="candidate")


def test_gate_ignores_a_recall_drop_within_the_noise_of_a_small_class_but_not_a_real_loss() -> None:
    def with_support(f1: float, n: int, **recall: float) -> dict[str, Any]:
        return {**head(f1, **recall), "support": dict.fromkeys(recall, n)}

    # one miss among 7 rows: recall 1.0 -> 0.857 is noise, not a lost class
    small = decide(
        {"topic": with_support(0.90, 7, gold=6 / 7)},
        {"topic": with_support(0.90, 7, gold=1.0)},
        margin=0.005,
        max_recall_drop=0.05,
    )
    assert small.promote, small.reason
    assert "within the noise of 7 rows" in small.reason
    # the same drop on 600 rows is a lost class
    large = decide(
        {"topic": with_support(0.90, 600, gold=6 / 7)},
        {"topic": with_support(0.90, 600, gold=1.0)},
        margin=0.005,
        max_recall_drop=0.05,
    )
    assert not large.promote and "recall of 'gold' drops" in large.reason
    # a bearish class of 144 rows losing 0.15 of its recall still vetoes
    bearish = decide(
        {"sentiment": with_support(0.90, 144, bearish=0.57)},
        {"sentiment": with_support(0.80, 144, bearish=0.72)},
        margin=0.005,
        max_recall_drop=0.05,
    )
    assert not bearish.promote and "noise" in bearish.reason
