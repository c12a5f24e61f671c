"""Batched labels and probabilities from a trained classifier run.

Run it::

    tunesmith predict --model runs/classify-chatterbot texts.jsonl > labels.jsonl
    echo "who wrote Hamlet" | tunesmith predict --model runs/classify-chatterbot -

Input: JSONL objects (the run's ``labels.text_column``, optional ``id``), CSV/TSV/Parquet files
(columns as in the run's config), or plain text, one example per line.  Output: one JSON line per
example, ``{"id", "text", "label", "probabilities": {label: float}}``, in input order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from tunesmith.config.classify import ClassifyConfig
from tunesmith.data.labels import clean, read_table
from tunesmith.data.readers import bad_text, read_text_input
from tunesmith.data.records import LabelRecord
from tunesmith.errors import DataError, ModelError, Problem
from tunesmith.models.adapters import find_adapter
from tunesmith.models.loading import from_pretrained, load_adapter
from tunesmith.models.sources import ModelSource, resolve_model


def load_run_classifier(run_dir: str | Path):
    """Load the classifier of a ``tunesmith classify`` run (plain transformers + peft, through the one loading gate).

    Returns:
        (model in eval mode, tokenizer, the run's ClassifyConfig).

    Raises:
        ModelError: when ``run_dir`` is not a classify run (no ``model/`` or ``adapter/``, or another command's
            config), or its weights cannot be loaded (pickle-only weights need ``model.allow_pickle`` in its config).
    """
    from pydantic import ValidationError
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"
    not_classify = ModelError(
        "Not a classify run",
        [
            Problem(
                str(run_dir),
                "no classifier here (predict reads the model/ or adapter/ folder and config.yaml of "
                "`tunesmith classify`)",
                "pass the train.output_dir of a finished `tunesmith classify` run; for SFT runs use "
                "`tunesmith generate`",
            )
        ],
    )
    try:
        cfg = (
            ClassifyConfig.model_validate(yaml.safe_load(cfg_file.read_text()) or {})
            if cfg_file.is_file()
            else ClassifyConfig()
        )
    except (ValidationError, yaml.YAMLError, OSError):
        raise not_classify from None
    adapter = find_adapter(run_dir) if (run_dir / "adapter").is_dir() else None
    path = run_dir / "model" if (run_dir / "model").is_dir() else adapter
    if path is None:
        raise not_classify
    config = AutoConfig.from_pretrained(path)
    if not getattr(config, "id2label", None) or "ForSequenceClassification" not in "".join(config.architectures or []):
        raise not_classify
    opts = dict(allow_pickle=cfg.model.allow_pickle, trust_remote_code=cfg.model.trust_remote_code)
    verbosity = hf_logging.get_verbosity()
    # the adapter restores the head: the base's "score newly initialized" notice is moot
    hf_logging.set_verbosity_error()
    try:
        if adapter is None:
            model = from_pretrained(
                AutoModelForSequenceClassification, ModelSource(str(path), str(path), "local"), **opts
            )
        else:
            base_name = (
                cfg.model.name
                if cfg_file.is_file()
                else json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
            )
            base = from_pretrained(AutoModelForSequenceClassification, resolve_model(base_name), config=config, **opts)
            model = load_adapter(base, adapter, allow_pickle=cfg.model.allow_pickle)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer, cfg


def read_inputs(source: str, labels_cfg) -> list[LabelRecord]:
    """Read examples to classify from a file or ``-`` (stdin).

    Returns:
        Records with empty labels; ids are the input's ``id`` field, else ``"<source>:<line>"``.
    """
    if source != "-" and Path(source).suffix.lower() in (".csv", ".tsv", ".parquet"):
        rows = read_table(source, labels_cfg)
        return [
            LabelRecord(
                str(row.get("id", where)),
                clean(str(row.get(labels_cfg.text_column, ""))),
                "",
                clean(str(row[labels_cfg.text_pair_column]))
                if labels_cfg.text_pair_column and row.get(labels_cfg.text_pair_column)
                else None,
            )
            for where, row in rows
        ]
    name, text = read_text_input(source)
    lines = text.splitlines()
    out = []
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = None
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):  # not JSON after all: the line is the text
                obj = None
            if bad_text(obj) is not None:
                raise DataError(
                    "Text that is not valid Unicode",
                    [Problem(f"{name}:{no}", "an unpaired surrogate escape", "remove the \\ud800-\\udfff escape")],
                )
        if isinstance(obj, dict):
            pair = obj.get(labels_cfg.text_pair_column) if labels_cfg.text_pair_column else None
            out.append(
                LabelRecord(
                    str(obj.get("id", f"{name}:{no}")),
                    clean(str(obj.get(labels_cfg.text_column, ""))),
                    "",
                    clean(str(pair)) if pair else None,
                )
            )
        else:
            out.append(LabelRecord(f"{name}:{no}", clean(line), ""))
    return out


def run_predict(run_dir: str, source: str, *, output: str | None = None, batch_size: int = 32) -> list[dict]:
    """Classify every example of ``source`` with the run's model and write JSONL (stdout or ``output``); progress
    (examples done, tokens/s, ETA) goes to stderr.

    Returns:
        The rows written: ``{"id", "text", "label", "probabilities": {label: float}}``.

    Raises:
        ModelError: ``run_dir`` is not a classify run.
    """
    from tunesmith.models.classifier import encode, predict_proba
    from tunesmith.runtime.files import atomic_write_jsonl

    model, tokenizer, cfg = load_run_classifier(run_dir)
    records = read_inputs(source, cfg.labels)
    if not records:
        raise DataError(
            "Nothing to classify",
            [
                Problem(
                    "stdin" if source == "-" else source,
                    "the input is empty (or only blank lines)",
                    "give one text a line",
                )
            ],
        )
    rows, _ = encode(tokenizer, records, None, cfg.train.max_length)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    from tunesmith.runtime.console import Progress

    probs = None
    if rows:
        with Progress("predict", len(rows)) as bar:
            probs = predict_proba(model, rows, model.config.pad_token_id, batch_size=batch_size, progress=bar)
    out = [
        {
            "id": r.id,
            "text": r.text,
            "label": names[int(p.argmax())],
            "probabilities": {n: round(float(v), 6) for n, v in zip(names, p)},
        }
        for r, p in zip(records, probs if probs is not None else [])
    ]
    if output:
        atomic_write_jsonl(output, out)
    else:
        for row in out:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out
