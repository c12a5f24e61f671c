"""The one evaluation step behind `tunesmith baseline` and `tunesmith eval`: same examples, same prompts, same metrics.

    tunesmith baseline configs/sft/decision-chatterbot-json.yaml    # prompting the instruction-tuned model
    tunesmith eval configs/sft/decision-chatterbot-json.yaml --adapter runs/decision-chatterbot-json/adapter

Each eval conversation's last assistant turn is the reference; everything before it (the data's own system and user
turns, plus ``eval.k_shot`` train examples as user/assistant turns after the system turn) is the prompt, rendered by
:func:`tunesmith.render.templates.render_prompt`. Generation is :func:`tunesmith.models.generation.generate_ids`
(batched, left padding, greedy, stops at the template's end-of-turn token). ``eval_loss`` is the one eval_loss of
:mod:`tunesmith.evaluate.loss`: the mean token cross-entropy of the trained tokens of the eval conversations rendered
and truncated exactly as ``tunesmith sft`` renders them (:func:`loss_rows`; k-shot demonstrations are not part of
those rows, so every prompting variant of one model has the same eval_loss); ``perplexity = exp(eval_loss)``.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunesmith.config.metric_names import REFERENCE_METRICS, TOOL_METRICS, generation_metrics
from tunesmith.data.records import Conversation, Message
from tunesmith.errors import DataError, Problem
from tunesmith.evaluate.loss import row_losses
from tunesmith.evaluate.metrics import Scoring, aggregate, extract_label, score_example, tool_call_error
from tunesmith.evaluate.tool_metrics import expected_from_calls
from tunesmith.render.rows import render_all
from tunesmith.render.templates import Rendered, render_prompt
from tunesmith.render.tool_calls import call_format, format_calls, parse_reply
from tunesmith.runtime.console import Progress


@dataclass
class EvalExample:
    """One eval example, identical for every model evaluated on a config.

    Attributes:
        id: the record's source (``file:line`` or the bundled id).
        conversation: prompt turns plus the reference as the last assistant turn (earlier assistant turns ``weight=0``).
        reference: the reference answer text (a reference call written in the template's call layout).
        prompt_ids: ``list[int][seq]``, the rendered prompt with the generation prompt.
        source: the eval conversation as loaded (no demonstrations): what a custom metric sees and eval_loss scores.
        expected_calls: the reference calls in BFCL's ground-truth shape ``[{function: {param: [acceptable
            values]}}]``: the record's ``meta["ground_truth"]`` (BFCL) or the reference turn's calls; ``[]`` for none.
    """

    id: str
    conversation: Conversation
    reference: str
    prompt_ids: list[int]
    source: Conversation | None = None
    expected_calls: list[dict] = field(default_factory=list)

    @property
    def user_text(self) -> str:
        """The last user turn of the prompt (what "copy the prompt" copies)."""
        return next((m.content for m in reversed(self.conversation.messages[:-1]) if m.role == "user"), "")

    def as_dict(self) -> dict:
        """What a custom metric gets as ``example``: id, prompt (last user turn), messages before the reference
        (``[{role, content}]``), reference and the record's other fields (``meta``)."""
        conv = self.source or self.conversation
        return {
            "id": self.id,
            "prompt": self.user_text,
            "messages": [{"role": m.role, "content": m.content} for m in conv.messages[:-1]],
            "reference": self.reference,
            "meta": dict(conv.meta),
        }


def _demo_turns(train_convs: list[Conversation], k: int, seed: int) -> tuple[list[Message], list[dict]]:
    """Turns of ``k`` train conversations chosen with ``random.Random(seed)`` (system turns dropped, every turn masked),
    and the tool specs those turns call."""
    usable = [c for c in train_convs if c.kind in ("messages", "prompt_completion")]
    if k > len(usable):
        raise DataError(
            "Not enough train examples for k-shot",
            [Problem("eval.k_shot", f"k={k} but the train split has {len(usable)} conversations", "lower eval.k_shot")],
        )
    picked = [usable[i] for i in random.Random(seed).sample(range(len(usable)), k)]
    turns = [replace(m, weight=0) for c in picked for m in c.messages if m.role != "system"]
    return turns, [t for c in picked for t in c.tools or []]


def _merge_tools(own: list[dict] | None, demo: list[dict]) -> list[dict] | None:
    """The example's own tool specs, then the demonstrations' (one per function name)."""
    out, seen = [], set()
    for t in (own or []) + demo:
        if t["function"]["name"] not in seen:
            seen.add(t["function"]["name"])
            out.append(t)
    return out or None


def build_examples(
    tokenizer,
    eval_convs: list[Conversation],
    train_convs: list[Conversation] | None = None,
    *,
    k_shot: int = 0,
    seed: int = 0,
    chat_template: str | None = None,
) -> list[EvalExample]:
    """Turn eval conversations into :class:`EvalExample` (the prompt and reference every model is scored on).

    Args:
        tokenizer: the config's tokenizer (its chat template renders every prompt).
        eval_convs: eval conversations; each must end with an assistant turn (the reference).
        train_convs: source of the k-shot demonstrations.
        k_shot: number of demonstrations, inserted after the leading system turns; the tool specs they call are
            added after the example's own.
        seed: ``random.Random`` seed choosing them (the same demonstrations for every example).

    Returns:
        One :class:`EvalExample` per eval conversation, in eval-set order.

    Raises:
        DataError: a conversation without a final assistant turn (or plain ``text``), or too few train examples for k.
    """
    demos, demo_tools = _demo_turns(train_convs or [], k_shot, seed) if k_shot else ([], [])
    fmt = call_format(chat_template or tokenizer.chat_template)
    out = []
    for conv in eval_convs:
        if conv.kind == "text" or not conv.messages or conv.messages[-1].role != "assistant":
            raise DataError(
                "An eval record has no reference answer",
                [
                    Problem(
                        conv.source or "eval record",
                        "the last turn is not an assistant turn"
                        if conv.kind != "text"
                        else "plain text records have no prompt/answer split",
                        "end each eval conversation with the assistant's reference answer",
                    )
                ],
            )
        if demos and conv.kind == "completion":
            raise DataError(
                "k-shot needs chat conversations",
                [
                    Problem(
                        conv.source or "eval record",
                        "plain prompt/completion records have no turns to put demonstrations in",
                        "set eval.k_shot: 0, or use chat-formatted data",
                    )
                ],
            )
        *context, last = conv.messages
        context = [replace(m, weight=0) if m.role == "assistant" else m for m in context]
        n_sys = next((i for i, m in enumerate(context) if m.role != "system"), len(context))
        turns = context[:n_sys] + demos + context[n_sys:] + [replace(last, weight=None)]
        tools = _merge_tools(conv.tools, demo_tools) if demos else conv.tools
        full = Conversation(turns, conv.source, dict(conv.meta), conv.kind, tools=tools)
        reference = last.content
        if last.tool_calls:
            reference = (f"{last.content}\n" if last.content else "") + format_calls(last.tool_calls, fmt)
        expected = conv.meta.get("ground_truth") or expected_from_calls(last.tool_calls)
        prompt = render_prompt(tokenizer, full, chat_template=chat_template)
        out.append(EvalExample(conv.source, full, reference, prompt, conv, expected))
    return out


def ids_digest(ids: list[int]) -> str:
    """SHA-256 (hex, 16 chars) of a token-id list: equal digests mean identical prompt ids."""
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def loss_rows(
    tokenizer,
    eval_convs: list[Conversation],
    max_length: int,
    *,
    truncation: str = "keep_start",
    generation_config=None,
) -> list[Rendered | None]:
    """The eval rows eval_loss is computed on, one per eval conversation: rendered, masked and truncated by
    :func:`tunesmith.render.rows.render_all` exactly as ``tunesmith sft`` renders its eval set (None where the policy
    or truncation left no trained token).

    Raises:
        DataError: a conversation the template refuses; with ``truncation="error"``, conversations over max_length.
    """
    rows, stats = render_all(
        tokenizer, eval_convs, max_length, generation_config=generation_config, truncation=truncation
    )
    out: list[Rendered | None] = [None] * len(eval_convs)
    for k, row in zip(stats.kept_index, rows):
        out[k] = row
    return out


def _generate(model, tokenizer, examples, eval_cfg, *, batch_size, eot_ids) -> tuple[list[str], int, float]:
    """Greedy replies of every example (shortest prompts first), with progress; (predictions, new tokens, seconds)."""
    import time

    from tunesmith.models.generation import decode_reply, generate_ids

    predictions, n_tokens = [""] * len(examples), 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids))
    t0 = time.perf_counter()
    with Progress("generate", len(examples)) as bar:
        gen = generate_ids(
            model,
            tokenizer,
            [examples[i].prompt_ids for i in order],
            max_new_tokens=eval_cfg.max_new_tokens,
            eos_ids=eot_ids,
            batch_size=batch_size,
            progress=bar,
        )
    for i, ids in zip(order, gen):
        predictions[i] = decode_reply(tokenizer, ids)
        n_tokens += len(ids)
    return predictions, n_tokens, time.perf_counter() - t0


def _losses(model, tokenizer, rows, batch_size: int) -> tuple[list[tuple[float, int]], float]:
    """eval_loss terms of every row (``(0.0, 0)`` for a dropped row), with progress; (terms, seconds)."""
    import time

    kept = [r for r in rows if r is not None]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    t0 = time.perf_counter()
    with Progress("eval_loss", len(kept), unit="rows") as bar:
        terms = iter(row_losses(model, kept, pad_id=pad, batch_size=batch_size, progress=bar))
    return [next(terms) if r is not None else (0.0, 0) for r in rows], time.perf_counter() - t0


def evaluate_examples(
    model,
    tokenizer,
    examples: list[EvalExample],
    eval_cfg,
    *,
    batch_size: int = 8,
    eot_ids=None,
    json_schema: dict | None = None,
    scoring: Scoring | None = None,
    rows_for_loss: list[Rendered | None] | None = None,
) -> tuple[list[dict], dict, dict]:
    """Generate, score and aggregate: the shared evaluation step (progress lines for generation and eval_loss).

    Args:
        model: a causal LM in eval mode.
        examples: from :func:`build_examples`.
        eval_cfg: the ``eval`` section (metrics, max_new_tokens and the scoring options).
        json_schema: the loaded schema for the ``json_schema`` metric (when ``scoring`` is not given).
        scoring: the metric options and custom metric functions (default: from ``eval_cfg``).
        rows_for_loss: the eval_loss row of each example (:func:`loss_rows`); needed for eval_loss/perplexity.

    Returns:
        (rows, task_metrics, timing): ``rows`` are ``predictions.jsonl`` lines (id, input, prompt, prediction,
        reference, scores, and labels / answers / reference_nll / reference_tokens / prompt_ids_sha256);
        ``task_metrics`` ``{metric: float}``; ``timing`` ``{"generated_tokens", "generation_seconds",
        "loss_seconds"}``.

    Raises:
        TunesmithError: a custom metric that fails.
    """
    scoring = scoring or Scoring.from_eval(eval_cfg, json_schema)
    metrics = list(eval_cfg.metrics)
    gen_metrics = generation_metrics(metrics)
    predictions, n_tokens, gen_s = [""] * len(examples), 0, 0.0
    if gen_metrics:
        predictions, n_tokens, gen_s = _generate(
            model, tokenizer, examples, eval_cfg, batch_size=batch_size, eot_ids=eot_ids
        )
    losses, loss_s = None, 0.0
    if any(m in REFERENCE_METRICS for m in metrics):
        losses, loss_s = _losses(model, tokenizer, rows_for_loss or [None] * len(examples), batch_size)
    rows = [
        _row(tokenizer, ex, predictions[i], gen_metrics, scoring, losses[i] if losses else None, metrics)
        for i, ex in enumerate(examples)
    ]
    timing = {"generated_tokens": n_tokens, "generation_seconds": gen_s, "loss_seconds": loss_s}
    return rows, aggregate(rows, metrics), timing


def _row(tokenizer, ex: EvalExample, prediction: str, gen_metrics, scoring: Scoring, loss, metrics) -> dict:
    """One ``predictions.jsonl`` line."""
    fmt = call_format(tokenizer.chat_template)
    scores = score_example(
        prediction,
        ex.reference,
        gen_metrics,
        scoring,
        example=ex.as_dict(),
        expected_calls=ex.expected_calls,
        tools=ex.conversation.tools,
        call_fmt=fmt,
    )
    row = {
        "id": ex.id,
        "input": ex.user_text,
        "prompt": tokenizer.decode(ex.prompt_ids),
        "prediction": prediction,
        "reference": ex.reference,
        "scores": scores,
        "prompt_ids_sha256": ids_digest(ex.prompt_ids),
        "prompt_tokens": len(ex.prompt_ids),
    }
    if loss is not None:
        nll, toks = loss
        row["reference_nll"], row["reference_tokens"] = nll, toks
        if toks:
            scores["eval_loss"] = nll / toks
            scores["perplexity"] = math.exp(scores["eval_loss"])
    if "label_accuracy" in metrics or "label_macro_f1" in metrics:
        row["labels"] = {
            "prediction": extract_label(prediction, scoring.label_field),
            "reference": extract_label(ex.reference, scoring.label_field),
        }
    if set(TOOL_METRICS) & set(metrics):
        row["tool_calls"] = parse_reply(prediction, fmt).to_json()
        row["tool_call_error"] = tool_call_error(prediction, ex.expected_calls, ex.conversation.tools, fmt)
    if "answer_match" in metrics:
        row["answers"] = {"prediction": scoring.answer(prediction), "reference": scoring.answer(ex.reference)}
    return row


def load_schema(eval_cfg) -> dict | None:
    """The JSON Schema of ``eval.json_schema`` (a mapping, or a .json file), checked to be a valid schema.

    Raises:
        ConfigError: unreadable file, invalid JSON, or not a valid JSON Schema.
    """
    import json

    import jsonschema

    from tunesmith.errors import ConfigError

    spec = eval_cfg.json_schema
    if spec is None:
        return None
    where = "eval.json_schema" + (f"={spec}" if isinstance(spec, str) else "")
    try:
        schema = json.loads(Path(spec).read_text(encoding="utf-8")) if isinstance(spec, str) else spec
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except OSError as exc:
        raise ConfigError(
            "Cannot read the JSON Schema",
            [Problem(where, exc.strerror or str(exc), "give a readable .json file or write the schema inline")],
        ) from None
    except ValueError as exc:
        raise ConfigError("The JSON Schema file is not JSON", [Problem(where, str(exc), "fix the JSON")]) from None
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            "Not a valid JSON Schema", [Problem(where, exc.message, "fix the schema (see json-schema.org)")]
        ) from None
    return schema
