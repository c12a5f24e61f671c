"""What each training command trains and evaluates on: the data loaders :func:`tunesmith.train.lifecycle.start_run`
calls before any model loads (every record validated, split), and what happens when the eval split is empty.

    tunesmith sft CONFIG --set data.eval_fraction=0     # no eval rows: evaluation during training is switched off
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tunesmith.errors import ConfigError, DataError, Problem


@dataclass
class RunData:
    """What a command trains and evaluates on, split and validated.

    Attributes:
        train / eval: the records (``Conversation``, ``LabelRecord`` or ``PreferencePair``) after the split and caps.
        report: what loading read, kept and skipped (the loader's own report).
        names: the label set in id order (classification only).
    """

    train: list
    eval: list
    report: object = None
    names: list[str] | None = None
    eval_off: str | None = None
    """Why evaluation during training is switched off for this run (no eval rows), or None."""


def sft_data(cfg) -> RunData:
    """What ``sft`` trains on: conversations, validated and split
    (:func:`tunesmith.data.conversations.load_sft_data`); with no eval conversations, evaluation during training is
    switched off (``RunData.eval_off`` says why), unless ``eval.baseline`` needs them.

    Raises:
        ConfigError: no eval conversations while ``eval.baseline`` is on.
    """
    from tunesmith.data.conversations import load_sft_data

    train, evals, report = load_sft_data(cfg)
    data = RunData(train, evals, report)
    if not evals:
        data.eval_off = no_eval_rows(cfg)
    return data


def eval_source(cfg) -> str:
    """Where a config's eval rows come from, as the fields that say so (for messages about them)."""
    if cfg.data.eval_path:
        return f"data.eval_path={cfg.data.eval_path}"
    source = f"data.path={cfg.data.path}" if cfg.data.path else f"data.name={cfg.data.name}"
    cap = f", data.max_eval_examples={cfg.data.max_eval_examples}" if cfg.data.max_eval_examples else ""
    return f"data.eval_fraction={cfg.data.eval_fraction} of {source}{cap}"


def no_eval_rows(cfg) -> str | None:
    """The run has no eval conversation: stop when the decision order needs them (``eval.baseline``); else return
    what is switched off (None when nothing evaluates during training anyway).

    Raises:
        ConfigError: ``eval.baseline`` is on, naming the eval source.
    """
    if getattr(cfg.eval, "baseline", False):
        raise ConfigError(
            "No eval examples for the decision order",
            [
                Problem(
                    eval_source(cfg),
                    "the eval split is empty, and eval.baseline scores prompting and the trained model on it",
                    "set data.eval_fraction > 0 or data.eval_path, or eval.baseline=false",
                )
            ],
        )
    if cfg.train.eval_strategy == "no" and not cfg.eval.before_training:
        return None
    return (
        f"no eval rows ({eval_source(cfg)} is empty): eval_loss is not measured, and train.eval_strategy="
        f"{cfg.train.eval_strategy} is switched off for this run; set data.eval_fraction > 0 or data.eval_path to "
        "evaluate"
    )


def classify_data(cfg) -> RunData:
    """What ``classify`` trains on: label records read, cleaned, checked against the label set and split stratified.

    Raises:
        DataError: unreadable records (``file:line``), labels outside the set, or an empty train or eval set.
    """
    from tunesmith.data.labels import load_label_data

    train, evals, names, report = load_label_data(cfg)
    if not evals or not train:
        part = "eval" if train else "training"
        raise DataError(
            f"The {part} set is empty",
            [
                Problem(
                    "data",
                    f"{len(train)} training and {len(evals)} eval records after cleaning and the split",
                    "set data.eval_fraction > 0 (or data.eval_path) and check the label set",
                )
            ],
        )
    return RunData(train, evals, report, names)


def dpo_data(cfg) -> RunData:
    """What ``dpo`` trains on: preference pairs, validated and split
    (:func:`tunesmith.data.preference.load_pair_data`)."""
    from tunesmith.data.preference import load_pair_data

    train, evals, report = load_pair_data(cfg)
    return RunData(train, evals, report)


LOADERS: dict[str, Callable[[object], RunData]] = {"sft": sft_data, "classify": classify_data, "dpo": dpo_data}
"""Each training command's data loader, by command."""


def require_rows(cfg, max_length: int, train: tuple, evals: tuple, had_eval: bool) -> None:
    """Refuse an SFT run whose rendered rows are empty after truncation.

    Args:
        cfg: the run config.
        max_length: the resolved max_length (tokens).
        train, evals: ``(rows, TokenStats)`` of the rendered training and eval rows.
        had_eval: the run has eval conversations (an empty eval set on purpose is fine).

    Raises:
        DataError: naming the data, what was dropped and the max_length that keeps 95%.
    """
    (train_rows, train_stats), (eval_rows, eval_stats) = train, evals
    if had_eval and not eval_rows:
        raise DataError(
            "No eval row is left after truncation",
            [
                Problem(
                    eval_source(cfg),
                    f"all {eval_stats.examples} eval conversations are dropped at train.max_length={max_length} "
                    f"(data.truncation={cfg.data.truncation}: {eval_stats.dropped_long} longer than max_length, "
                    f"{eval_stats.dropped_empty} with no trained token left)",
                    f"raise train.max_length (to {eval_stats.max_length_for(policy=cfg.data.truncation)} to keep "
                    "95%), or set "
                    "train.eval_strategy=no and eval.before_training=false to train without evaluation",
                )
            ],
        )
    if not train_rows:
        raise DataError(
            "No training example has a trained token",
            [
                Problem(
                    f"train.max_length={cfg.train.max_length}",
                    f"all {train_stats.examples} training conversations ({cfg.data.path or cfg.data.name}) "
                    f"lose every assistant token to truncation (data.truncation={cfg.data.truncation})",
                    "raise train.max_length or check the assistant turns",
                )
            ],
        )
