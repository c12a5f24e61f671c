"""Load preference pairs (chosen/rejected) for ``tunesmith dpo``: a file in any preference format, or a bundled set,
validated (every problem with its ``file:line``) and split into train and held-out pairs.

    tunesmith dpo configs/dpo/chatterbot-pairs.yaml     # loads data through load_pair_data()

The formats and their conversion are in :mod:`tunesmith.data.preference_formats`.  Bundled: ``chatterbot-pairs``.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.config.dpo import DPORunConfig
from tunesmith.data.bundled import load_bundled
from tunesmith.data.loader import read_and_convert
from tunesmith.data.preference_formats import PREFERENCE_FORMATS, detect_preference_format, to_pair
from tunesmith.data.records import Message, PreferencePair
from tunesmith.data.split import split
from tunesmith.errors import DataError, Problem


def load_pair_file(path: str | Path, fmt: str = "auto") -> tuple[list[PreferencePair], list[Problem], str, int]:
    """Read a preference file (JSONL/JSON/CSV/Parquet/saved dataset, optionally ``.gz``) and convert every record.

    Returns:
        (valid pairs, problems of invalid records with ``path:line``, the format used, records read).

    Raises:
        DataError: when the format cannot be detected or is unknown.
    """
    return read_and_convert(
        path, fmt, formats=PREFERENCE_FORMATS, detect=detect_preference_format, convert=to_pair, what="preference"
    )


def load_pairs(data_cfg) -> tuple[list[PreferencePair], dict]:
    """Load the pairs ``data_cfg`` names (``path`` first, else bundled ``name``), validated.

    Args:
        data_cfg: a :class:`tunesmith.config.dpo.DPODataSection` (path, name, format, skip_invalid, system_prompt).

    Returns:
        (pairs, report) with report ``{"rows_read", "kept", "skipped", "format", "conversational"}``.

    Raises:
        DataError: every invalid record with its ``file:line`` (unless ``skip_invalid``), pairs that mix text and
            conversational prompts, an unknown bundled name.
    """
    if data_cfg.path:
        pairs, problems, fmt, read = load_pair_file(data_cfg.path, data_cfg.format)
        if problems and not data_cfg.skip_invalid:
            bad = len({p.where for p in problems})
            raise DataError(
                f"{data_cfg.path}: {bad} invalid preference pair(s) of {read}; nothing was trained "
                "(fix them, or pass --skip-invalid / data.skip_invalid=true to skip them)",
                problems,
            )
    else:
        pairs, problems, fmt = load_bundled(data_cfg.name, "pairs"), [], "bundled"
        read = len(pairs)
    kinds = {p.conversational for p in pairs}
    if len(kinds) > 1:
        first_text = next(p for p in pairs if not p.conversational)
        raise DataError(
            "Pairs mix text and conversational prompts",
            [
                Problem(
                    first_text.source,
                    "this pair's prompt is a string while others are message lists",
                    "use one kind for the whole file",
                )
            ],
        )
    if data_cfg.system_prompt:
        for p in pairs:
            if p.conversational and p.prompt[0].role != "system":
                p.prompt.insert(0, Message("system", data_cfg.system_prompt))
    report = {
        "rows_read": read,
        "kept": len(pairs),
        "skipped": len({p.where for p in problems}),
        "format": fmt,
        "conversational": bool(pairs) and pairs[0].conversational,
        "skipped_reasons": [str(p) for p in problems[:20]],
    }
    return pairs, report


def load_pair_data(cfg: DPORunConfig) -> tuple[list[PreferencePair], list[PreferencePair], dict]:
    """Load and validate the pairs, then hold out ``data.eval_fraction`` (or read ``data.eval_path``).

    Returns:
        (train pairs, eval pairs, load report).

    Raises:
        DataError: invalid records (``file:line``), no training pair, or no held-out pair.
    """
    pairs, report = load_pairs(cfg.data)
    if cfg.data.eval_path:
        train, (evals, _) = pairs, load_pairs(cfg.data.model_copy(update={"path": cfg.data.eval_path}))
    else:
        train, evals = split(pairs, cfg.data.eval_fraction, cfg.data.split_seed)
    train = train[: cfg.data.max_train_examples] if cfg.data.max_train_examples else train
    evals = evals[: cfg.data.max_eval_examples] if cfg.data.max_eval_examples else evals
    where = f"data.path={cfg.data.path}" if cfg.data.path else f"data.name={cfg.data.name}"
    if not train:
        raise DataError(
            "No training pairs",
            [
                Problem(
                    where,
                    f"{report['kept']} valid pairs, none left for training",
                    "give more pairs or lower data.eval_fraction",
                )
            ],
        )
    if not evals:
        raise DataError(
            "No held-out pairs",
            [Problem(where, "reward accuracy needs held-out pairs", "set data.eval_fraction > 0 or data.eval_path")],
        )
    return train, evals, report
