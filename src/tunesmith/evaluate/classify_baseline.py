"""Prompting baseline of a classification task: the instruction-tuned model picks a label.

Run it::

    tunesmith classify-baseline configs/classify/chatterbot-topics.yaml    # -> runs/classify-chatterbot-baseline/

Each eval example becomes one user turn (``eval.baseline_prompt`` listing the labels), rendered
through the model's chat template with the generation prompt; greedy generation; the answer is
mapped to a label by :func:`parse_label` (else ``"unparsed"``).  The eval set, its ids and the
metric code are those of ``tunesmith classify``, so the decision report can pair the two runs.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from tunesmith.config.classify import ClassifyConfig
from tunesmith.config.load import config_inputs, dump_config
from tunesmith.data.labels import load_label_data
from tunesmith.data.records import Conversation, LabelRecord, Message
from tunesmith.errors import ConfigError, Problem
from tunesmith.evaluate.classification import UNPARSED, write_eval_artifacts
from tunesmith.models.adapters import count_parameters
from tunesmith.models.generation import decode_reply, generate_ids
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.models.sources import resolve_model
from tunesmith.render.templates import end_of_turn_ids, render_prompt
from tunesmith.runtime.console import Progress, Timer, console
from tunesmith.runtime.files import atomic_write_json, atomic_write_text
from tunesmith.runtime.manifest import write_manifest
from tunesmith.runtime.memory import reset_peak_memory
from tunesmith.runtime.rundir import prepare_run_dir


def normalise(text: str) -> str:
    """Lower-case, turn ``_``/``-`` into spaces, drop other punctuation and collapse whitespace."""
    text = re.sub(r"[_\-]+", " ", text.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def parse_label(answer: str, names: list[str]) -> str:
    """Map a generated answer to a label name.

    Rules, in order: the normalised answer equals a normalised label; it starts with exactly one
    label (longest first); exactly one label occurs in it as whole words.

    Returns:
        The label name, or ``"unparsed"``.
    """
    ans = normalise(answer)
    table = {normalise(n): n for n in names}
    if ans in table:
        return table[ans]
    for key in sorted(table, key=len, reverse=True):
        if ans.startswith(key + " ") or ans == key:
            return table[key]
    found = [table[k] for k in table if re.search(rf"\b{re.escape(k)}\b", ans)]
    return found[0] if len(found) == 1 else UNPARSED


def build_prompts(
    tokenizer, records: list[LabelRecord], names: list[str], template: str, chat_template: str | None = None
) -> list[list[int]]:
    """Render one user turn per record through the chat template, with the generation prompt.

    Returns:
        ``list[list[int]]`` prompt ids.

    Raises:
        ConfigError: when ``template`` has a placeholder other than ``{labels}``, ``{text}``, ``{text_pair}``.
    """
    labels = ", ".join(names)
    out = []
    for r in records:
        try:
            content = template.format(labels=labels, text=r.text, text_pair=r.text_pair or "")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                "Bad baseline prompt",
                [
                    Problem(
                        "eval.baseline_prompt",
                        f"cannot fill it: {exc!r}",
                        "use only {labels}, {text} and {text_pair}; write {{ and }} for literal braces",
                    )
                ],
            ) from None
        out.append(
            render_prompt(tokenizer, Conversation([Message("user", content)], r.id), chat_template=chat_template)
        )
    return out


def predict_by_prompting(
    model,
    tokenizer,
    records: list[LabelRecord],
    names: list[str],
    template: str,
    *,
    max_new_tokens: int = 12,
    batch_size: int = 16,
) -> tuple[list[str], list[str], int]:
    """Ask the chat model for a label per record (greedy).

    Returns:
        (parsed labels or ``"unparsed"``, raw answers, number of generated tokens).
    """
    prompts = build_prompts(tokenizer, records, names, template)
    eot = end_of_turn_ids(tokenizer, model.generation_config)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with Progress("generate", len(prompts)) as bar:
        gen = generate_ids(
            model,
            tokenizer,
            [prompts[i] for i in order],
            max_new_tokens=max_new_tokens,
            eos_ids=eot,
            batch_size=batch_size,
            progress=bar,
        )
    answers = [""] * len(prompts)
    n_tokens = 0
    for i, ids in zip(order, gen):
        answers[i] = decode_reply(tokenizer, ids)
        n_tokens += len(ids)
    return [parse_label(a, names) for a in answers], answers, n_tokens


def baseline_dir(cfg: ClassifyConfig) -> Path:
    """The baseline's run directory: ``<train.output_dir>-baseline``."""
    return Path(str(cfg.train.output_dir).rstrip("/") + "-baseline")


def run_classify_baseline(cfg: ClassifyConfig, *, output_dir: str | None = None, overwrite: bool = False) -> dict:
    """Score the prompting baseline on the classify eval set and write metrics.json (``kind="baseline"``),
    predictions.jsonl, answers.jsonl and confusion_matrix.png.

    Returns:
        The metrics dict.

    Raises:
        TunesmithError: bad config, data or model.
    """
    run_dir = prepare_run_dir(
        output_dir or baseline_dir(cfg), overwrite=overwrite, inputs=config_inputs(cfg), kind="classify-baseline"
    )
    _, eval_recs, names, data_report = load_label_data(cfg)
    if not eval_recs:
        raise ConfigError(
            "No eval examples",
            [Problem("data.eval_fraction", "the eval set is empty", "set data.eval_fraction > 0 or data.eval_path")],
        )
    reset_peak_memory()
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)
    model = load_causal_lm(
        source,
        dtype=torch.float32,
        attn_implementation=cfg.model.attn_implementation,
        trust_remote_code=cfg.model.trust_remote_code,
        allow_pickle=cfg.model.allow_pickle,
        revision=cfg.model.revision,
    )
    console.print(
        f"[bold]tunesmith classify-baseline[/] model={source.name}: prompting for {len(names)} labels on "
        f"{len(eval_recs)} eval examples"
    )
    with Timer() as t:
        preds, answers, n_tokens = predict_by_prompting(
            model,
            tokenizer,
            eval_recs,
            names,
            cfg.eval.baseline_prompt,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.train.per_device_eval_batch_size,
        )
    from tunesmith.runtime.files import atomic_write_jsonl
    from tunesmith.runtime.memory import peak_memory_bytes

    atomic_write_jsonl(
        run_dir / "answers.jsonl",
        [{"id": r.id, "answer": a, "parsed": p} for r, a, p in zip(eval_recs, answers, preds)],
    )
    _, total = count_parameters(model)
    cost = {
        "parameters": total,
        "trainable_parameters": 0,
        "generation_tokens_per_second": n_tokens / max(t.seconds, 1e-9),
        "peak_memory_bytes": peak_memory_bytes(),
    }
    extra = {
        "method": "prompting",
        "prompt_template": cfg.eval.baseline_prompt,
        "eval_seconds": t.seconds,
        "data": data_report,
    }
    metrics = write_eval_artifacts(
        run_dir,
        kind="baseline",
        model=source.name,
        records=eval_recs,
        predictions=preds,
        names=names,
        extra=extra,
        cost=cost,
    )
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    write_manifest(
        run_dir,
        config=cfg.model_dump(mode="json"),
        seed=cfg.train.seed,
        dataset_fingerprint=None,
        tokenizer=tokenizer,
        extra={"model_source": dataclasses.asdict(source), "labels": names},
    )
    atomic_write_json(run_dir / "metrics.json", metrics)
    console.print(
        f"[bold green]baseline[/] in {t.seconds:.0f}s: accuracy {metrics['accuracy']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f}, unparsed {metrics['unparsed_rate']:.1%}\n  artifacts: {run_dir}/"
    )
    return metrics
