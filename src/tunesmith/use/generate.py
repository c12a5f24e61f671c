"""``tunesmith generate``: a file of prompts or conversations -> JSONL of replies (batched, left padding, greedy).

Run it::

    tunesmith generate prompts.jsonl --model runs/sft -o replies.jsonl
    printf 'What is 2+2?\\nName a colour.\\n' | tunesmith generate - --model smollm2-135m-instruct

Input, one record per line: JSONL objects with ``prompt`` (a string, or a list of messages) or
``messages`` (OpenAI chat, tool calls and tool results included; a trailing assistant turn is dropped and becomes
``reference``), optional ``tools`` (function specs), ``id`` and ``reference``/``completion``; or plain text lines (each
is one user turn).  A ``.json`` file holding a list of such objects works too.  ``--tools FILE`` gives tool specs to
every record without its own.  Output, one line per input, in input order::

    {"id", "prompt", "prediction", "reference", "finish_reason": "stop"|"length", "new_tokens", "tool_calls"?}

``tool_calls`` (``[{"name", "arguments"}]``, parsed in the chat template's call layout by
:mod:`tunesmith.render.tool_calls`) is there when the record has tools or the reply holds a call.

Every prompt is rendered through the chat template with the generation prompt, as the model was trained: records
without a system turn get the system prompt of its serving contract (:mod:`tunesmith.models.serving`), or ``--system``
when given. Generation stops at the template's end-of-turn token (added to the generation config's eos ids when
missing).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.readers import bad_text, read_text_input
from tunesmith.data.records import Message
from tunesmith.errors import DataError, Problem


@dataclass
class PromptRecord:
    """One generation request.

    Attributes:
        id: the input's ``id``, else ``"<file>:<line>"``.
        messages: the conversation up to the reply to generate (system/user/assistant turns).
        reference: the expected reply when the input gave one, else None.
        tools: the function specs the model may call (rendered through the chat template), or None.
    """

    id: str
    messages: list[Message]
    reference: str | None = None
    tools: list[dict] | None = None

    @property
    def prompt(self) -> str:
        """The last user turn's text (what a reader of the output file wants to see next to the prediction)."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), self.messages[-1].content)


def _messages(value, where: str) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", value)]
    if not isinstance(value, list) or not value:
        raise DataError(
            "Bad prompt record",
            [
                Problem(
                    where,
                    "prompt/messages must be a string or a non-empty list of {role, content}",
                    'write {"prompt": "text"} or {"messages": [{"role": "user", "content": "text"}]}',
                )
            ],
        )
    from tunesmith.data.formats import message_from

    out = []
    for k, m in enumerate(value):
        content = m.get("content") if isinstance(m, dict) else None
        ok_content = isinstance(content, (str, list)) or (content is None and bool(m.get("tool_calls")))
        if not isinstance(m, dict) or not ok_content or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise DataError(
                "Bad prompt record",
                [
                    Problem(
                        f"{where} (message {k})",
                        "each message needs role (system/user/assistant/tool) and string content",
                        'e.g. {"role": "user", "content": "Hello"}',
                    )
                ],
            )
        msg, problems = message_from(m, f"{where} (message {k})", f"messages[{k}]")
        if problems:
            raise DataError("Bad prompt record", problems)
        out.append(msg)
    return out


def parse_record(obj, where: str) -> PromptRecord:
    """Turn one input object (or a plain text line) into a :class:`PromptRecord`.

    Raises:
        DataError: naming ``where`` (``file:line``) when the record has neither ``prompt`` nor ``messages``.
    """
    if isinstance(obj, str):
        return PromptRecord(where, [Message("user", obj)])
    if not isinstance(obj, dict) or not ({"prompt", "messages"} & obj.keys()):
        raise DataError(
            "Bad prompt record",
            [Problem(where, "a JSON object needs a prompt or messages field", 'e.g. {"id": 1, "prompt": "Hello"}')],
        )
    from tunesmith.data.tool_formats import normalise_tools

    msgs = _messages(obj.get("messages", obj.get("prompt")), where)
    tools, problems = normalise_tools(obj.get("tools"), where)
    if problems:
        raise DataError("Bad prompt record", problems)
    reference = obj.get("reference", obj.get("completion"))
    if msgs[-1].role == "assistant":
        reference = reference if reference is not None else msgs[-1].content
        msgs = msgs[:-1]
    if not msgs:
        raise DataError(
            "Bad prompt record",
            [Problem(where, "nothing is left to prompt with after the final assistant turn", "add a user turn")],
        )
    return PromptRecord(str(obj.get("id", where)), msgs, reference if isinstance(reference, str) else None, tools)


def read_prompts(source: str) -> list[PromptRecord]:
    """Read prompt records from a file (``.jsonl``/``.json``/text) or ``-`` (stdin); blank lines are skipped.

    Raises:
        DataError: a missing or unreadable file, no prompt at all, or a bad record (every bad line is reported, with
            ``file:line``).
    """
    name, text = read_text_input(source)
    if source != "-" and Path(source).suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError("Malformed JSON", [Problem(f"{name}:{exc.lineno}", exc.msg, "fix the file")]) from None
        except (ValueError, RecursionError):
            raise DataError(
                "Unreadable JSON", [Problem(name, "nested too deeply or a number too long", "fix the file")]
            ) from None
        items = items if isinstance(items, list) else [items]
        records = _collect((f"{name}#{k}", item) for k, item in enumerate(items))
        if not records:
            raise DataError("No prompts", [Problem(name, "the JSON list is empty", "give at least one prompt")])
        return records
    lines = [(f"{name}:{no}", line) for no, line in enumerate(text.splitlines(), start=1) if line.strip()]
    records = _collect((where, _json_or_text(line, where)) for where, line in lines)
    if not records:
        raise DataError(
            "No prompts",
            [
                Problem(
                    name, "the input holds no prompt (it is empty or has only blank lines)", "give one prompt a line"
                )
            ],
        )
    return records


def _json_or_text(line: str, where: str):
    if not line.lstrip().startswith("{"):
        return line
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            "Malformed JSON line",
            [Problem(where, f"{exc.msg} (column {exc.colno})", "each line must be one JSON object or plain text")],
        ) from None
    except (ValueError, RecursionError):
        raise DataError(
            "Unreadable JSON line", [Problem(where, "nested too deeply or a number too long", "fix this line")]
        ) from None
    bad = bad_text(obj)
    if bad is not None:
        raise DataError(
            "Text that is not valid Unicode",
            [Problem(where, f"an unpaired surrogate escape near {bad}", "remove the \\ud800-\\udfff escape")],
        )
    return obj


def _collect(items) -> list[PromptRecord]:
    out, problems = [], []
    for where, item in items:
        try:
            out.append(parse_record(item, where))
        except DataError as exc:
            problems += exc.problems
    if problems:
        raise DataError(f"{len(problems)} bad prompt record(s)", problems)
    return out


def record_prompt_ids(
    loaded, records: list[PromptRecord], system: str | None = None, tools: list[dict] | None = None
) -> list[list[int]]:
    """Prompt ids of each record as served: the trained system prompt (or ``system``) added to records without one,
    rendered through the chat template with the generation prompt and the record's tool specs (else ``tools``)
    (:func:`tunesmith.models.serving.serving_prompt_ids`).

    Returns:
        ``list[list[int]]``, one per record.
    """
    from tunesmith.models.serving import serving_prompt_ids

    system = loaded.system_prompt(system) or None
    return [serving_prompt_ids(loaded.tokenizer, r.messages, system, r.id, tools=r.tools or tools) for r in records]


def generate_records(
    loaded,
    records: list[PromptRecord],
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    system: str | None = None,
    tools: list[dict] | None = None,
) -> list[dict]:
    """Generate a reply for every record, batched with left padding; greedy when ``temperature == 0``. Progress
    (prompts done, tokens/s, ETA) goes to stderr.

    Args:
        loaded: :class:`tunesmith.models.for_use.Loaded`.
        records: the prompts, in output order.
        max_new_tokens: budget per reply, in tokens; None takes the serving contract's default (else 128).
        batch_size: prompts per ``generate`` call.
        temperature, top_p: sampling settings (used only when ``temperature > 0``).
        system: system prompt for records without one; None serves the one the model was trained with.
        tools: tool specs for records without their own.

    Returns:
        One dict per record: ``{"id", "prompt", "prediction", "reference", "finish_reason", "new_tokens"}``, plus
        ``tool_calls`` (``[{"name", "arguments"}]``) when the record has tools or the reply holds a call.
    """
    from tunesmith.models.generation import decode_reply, generate_ids, stop_ids
    from tunesmith.render.tool_calls import call_format, parse_reply
    from tunesmith.runtime.console import Progress

    eos = stop_ids(loaded)
    prompts = record_prompt_ids(loaded, records, system, tools)
    max_new_tokens = max_new_tokens or getattr(loaded.generation_config, "max_new_tokens", None) or 128
    with Progress("generate", len(prompts), unit="prompts") as bar:
        outs = generate_ids(
            loaded.model,
            loaded.tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            eos_ids=eos,
            batch_size=batch_size,
            do_sample=temperature > 0,
            temperature=temperature or 1.0,
            top_p=top_p,
            progress=bar,
        )
    fmt = call_format(loaded.tokenizer.chat_template)
    rows = []
    for r, o in zip(records, outs):
        text = decode_reply(loaded.tokenizer, o)
        row = {
            "id": r.id,
            "prompt": r.prompt,
            "prediction": text,
            "reference": r.reference,
            "finish_reason": "stop" if o and o[-1] in eos else "length",
            "new_tokens": len(o),
        }
        parsed = parse_reply(text, fmt)
        if r.tools or tools or parsed.attempted:
            row["tool_calls"] = parsed.to_json()
        rows.append(row)
    return rows


def run_generate(
    source: str,
    *,
    model: str | None,
    adapter: str | None = None,
    output: str | None = None,
    overwrite: bool = False,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    system: str | None = None,
    tools: str | None = None,
    seed: int = 0,
    log=None,
) -> list[dict]:
    """Entry of ``tunesmith generate``: read prompts, load the model, generate, write JSONL (``output`` atomically, else
    stdout).

    Returns:
        The rows written.

    Raises:
        DataError: bad input file; TunesmithError: ``output`` exists without ``overwrite``; ModelError: model/adapter.
    """
    import torch

    from tunesmith.data.conversations import file_tools
    from tunesmith.errors import TunesmithError
    from tunesmith.models.for_use import load_for_use
    from tunesmith.runtime.files import atomic_write_jsonl, write_errors
    from tunesmith.runtime.rundir import file_refusals

    inputs = tuple(x for x in (source, model, adapter, tools) if x and x != "-")
    problems = file_refusals(Path(output), overwrite=overwrite, inputs=inputs) if output else []
    if problems:
        raise TunesmithError(f"Refusing to write {output}", problems)

    records = read_prompts(source)
    specs = file_tools(tools)
    torch.manual_seed(seed)
    loaded = load_for_use(model, adapter)
    start = time.perf_counter()
    rows = generate_records(
        loaded,
        records,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        temperature=temperature,
        top_p=top_p,
        system=system,
        tools=specs,
    )
    seconds = time.perf_counter() - start
    if output:
        with write_errors(Path(output).parent):
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_jsonl(output, rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    if log is not None:
        tokens = sum(r["new_tokens"] for r in rows)
        log(
            f"{len(rows)} replies, {tokens} new tokens in {seconds:.1f}s ({tokens / max(seconds, 1e-9):.1f} tokens/s); "
            f"stopped at end-of-turn: {sum(r['finish_reason'] == 'stop' for r in rows)}/{len(rows)}"
            + (f"; wrote {output}" if output else "")
        )
    return rows
