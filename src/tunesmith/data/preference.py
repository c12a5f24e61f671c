"""Preference data (chosen/rejected pairs) in the common formats, normalised to :class:`PreferencePair`.

    tunesmith dpo configs/dpo_chatterbot.yaml     # loads data through load_pairs()

Formats (``data.format``; ``auto`` detects from the first record's keys):

- ``prompt_chosen_rejected``: TRL's explicit-prompt format, ``{"prompt", "chosen", "rejected"}``, either as text
  (three strings) or conversational (``prompt`` a list of messages, ``chosen``/``rejected`` one assistant message
  each, as a list or a plain string).
- ``openai``: OpenAI's DPO fine-tuning format, ``{"input": {"messages": [...]}, "preferred_output": [{"role":
  "assistant", "content"}], "non_preferred_output": [...]}``.
- ``hh``: Anthropic HH-RLHF, ``{"chosen", "rejected"}`` each a whole dialogue
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. Both are split into turns; the turns before the last ``Assistant:`` turn
  are the prompt and must be equal in both, the last assistant turn is the response.
- ``implicit``: TRL's implicit-prompt conversational format, ``{"chosen": [messages], "rejected": [messages]}``:
  the shared leading messages are the prompt, the final assistant message the response.

Every problem names the record's ``file:line`` (as for SFT data): pairs whose prompts differ, an empty final reply,
identical chosen and rejected replies, unknown roles, wrong types.  Bundled: ``chatterbot-pairs``.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.config.dpo import DPORunConfig
from tunesmith.data.bundled import load_bundled
from tunesmith.data.records import ROLES, Message, PreferencePair
from tunesmith.data.split import split
from tunesmith.errors import DataError, Problem

PREFERENCE_FORMATS = ("prompt_chosen_rejected", "openai", "hh", "implicit")
"""Formats :func:`to_pair` understands."""

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def detect_preference_format(record) -> str | None:
    """Guess the format of one record from its keys.

    Returns:
        One of :data:`PREFERENCE_FORMATS`, or None when no format matches.
    """
    if not isinstance(record, dict):
        return None
    if "preferred_output" in record or "non_preferred_output" in record:
        return "openai"
    if "prompt" in record and "chosen" in record and "rejected" in record:
        return "prompt_chosen_rejected"
    if "chosen" in record and "rejected" in record:
        return "implicit" if isinstance(record["chosen"], list) else "hh"
    return None


def to_pair(record, fmt: str, where: str) -> tuple[PreferencePair | None, list[Problem]]:
    """Convert one record of format ``fmt`` and validate it.

    Args:
        record: the parsed record (a dict).
        fmt: one of :data:`PREFERENCE_FORMATS`.
        where: ``"path:line"``, put on every problem.

    Returns:
        (pair, problems); the pair is None when there is any problem.
    """
    if not isinstance(record, dict):
        return None, [
            Problem(where, f"record is a {type(record).__name__}, not an object", "write one JSON object per record")
        ]
    pair, problems = _CONVERTERS[fmt](record, where)
    if pair is not None and not problems:
        problems = validate_pair(pair)
    return (pair if not problems else None), problems


def _messages(raw, where: str, label: str) -> tuple[list[Message], list[Problem]]:
    if not isinstance(raw, list) or not raw:
        return [], [
            Problem(
                where,
                f"{label} is {'an empty list' if raw == [] else type(raw).__name__}, not a list of messages",
                'write it as [{"role": "user", "content": "..."}]',
            )
        ]
    msgs, problems = [], []
    for k, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            problems.append(
                Problem(
                    where,
                    f"{label}[{k}] is not a {{role, content}} object with string values",
                    "each message is {role, content}",
                )
            )
            continue
        msgs.append(Message(m["role"], m["content"], name=m.get("name") if isinstance(m.get("name"), str) else None))
    return msgs, problems


def _reply(raw, where: str, label: str) -> tuple[str | None, list[Problem]]:
    """A response given as a string, one message, or a one-message list; it must be an assistant message."""
    if isinstance(raw, str):
        return raw, []
    if isinstance(raw, dict):
        raw = [raw]
    msgs, problems = _messages(raw, where, label)
    if problems:
        return None, problems
    if len(msgs) != 1 or msgs[0].role != "assistant":
        roles = [m.role for m in msgs]
        return None, [
            Problem(
                where,
                f"{label} has messages with roles {roles}; a response is one assistant message",
                'write it as [{"role": "assistant", "content": "..."}]',
            )
        ]
    return msgs[0].content, []


def _meta(record: dict, *used: str) -> dict:
    return {k: v for k, v in record.items() if k not in used}


def _from_prompt_chosen_rejected(record: dict, where: str):
    prompt = record.get("prompt")
    (chosen, p1), (rejected, p2) = (
        _reply(record.get("chosen"), where, "chosen"),
        _reply(record.get("rejected"), where, "rejected"),
    )
    problems = p1 + p2
    if isinstance(prompt, str):
        if not all(isinstance(record.get(k), str) for k in ("chosen", "rejected")):
            return PreferencePair(
                [Message("user", prompt)],
                chosen or "",
                rejected or "",
                where,
                _meta(record, "prompt", "chosen", "rejected"),
            ), problems
        return PreferencePair(prompt, chosen, rejected, where, _meta(record, "prompt", "chosen", "rejected")), problems
    msgs, p3 = _messages(prompt, where, "prompt")
    return PreferencePair(
        msgs, chosen or "", rejected or "", where, _meta(record, "prompt", "chosen", "rejected")
    ), problems + p3


def _from_openai(record: dict, where: str):
    inp = record.get("input")
    problems = []
    if not isinstance(inp, dict):
        problems.append(
            Problem(
                where,
                f"input is {type(inp).__name__}, not an object with messages",
                'write "input": {"messages": [...]}',
            )
        )
        msgs = []
    else:
        msgs, problems = _messages(inp.get("messages"), where, "input.messages")
    (chosen, p1), (rejected, p2) = (
        _reply(record.get("preferred_output"), where, "preferred_output"),
        _reply(record.get("non_preferred_output"), where, "non_preferred_output"),
    )
    return PreferencePair(
        msgs, chosen or "", rejected or "", where, _meta(record, "input", "preferred_output", "non_preferred_output")
    ), problems + p1 + p2


def split_hh(dialogue: str) -> list[Message]:
    """Split an HH-RLHF dialogue ``"\\n\\nHuman: a\\n\\nAssistant: b"`` into messages (contents stripped).

    Returns:
        ``[Message("user", "a"), Message("assistant", "b")]``; text before the first marker is ignored when blank,
        otherwise kept as a leading user turn.
    """
    parts = _HH_TURN.split(dialogue)
    msgs = [Message("user", parts[0].strip())] if parts[0].strip() else []
    for k in range(1, len(parts) - 1, 2):
        msgs.append(Message(_HH_ROLES[parts[k]], parts[k + 1].strip()))
    return msgs


def _split_last_reply(turns: list[Message], where: str, label: str) -> tuple[list[Message], str | None, list[Problem]]:
    if not turns or turns[-1].role != "assistant":
        return (
            turns,
            None,
            [
                Problem(
                    where, f"{label} does not end with an assistant turn", "end the dialogue with the assistant's reply"
                )
            ],
        )
    if not turns[-1].content.strip():
        return (
            turns[:-1],
            None,
            [Problem(where, f"{label}'s final assistant reply is empty", "remove the pair or give the reply text")],
        )
    return turns[:-1], turns[-1].content, []


def _same_prompt(a: list[Message], b: list[Message], where: str) -> list[Problem]:
    for k in range(max(len(a), len(b))):
        if k >= len(a) or k >= len(b) or (a[k].role, a[k].content) != (b[k].role, b[k].content):
            return [
                Problem(
                    where,
                    f"chosen and rejected prompts differ at turn {k} "
                    f"(chosen has {len(a)} prompt turns, rejected {len(b)})",
                    "the two dialogues must share every turn before the final assistant reply; fix or remove the pair",
                )
            ]
    return []


def _from_dialogues(record: dict, where: str, turns_of) -> tuple[PreferencePair | None, list[Problem]]:
    pieces, problems = {}, []
    for label in ("chosen", "rejected"):
        turns, probs = turns_of(record.get(label), label)
        if probs:
            problems += probs
            continue
        prompt, reply, probs = _split_last_reply(turns, where, label)
        problems += probs
        pieces[label] = (prompt, reply)
    if problems:
        return None, problems
    (pc, chosen), (pr, rejected) = pieces["chosen"], pieces["rejected"]
    problems = _same_prompt(pc, pr, where)
    return PreferencePair(pc, chosen, rejected, where, _meta(record, "chosen", "rejected")), problems


def _from_hh(record: dict, where: str):
    def turns_of(raw, label):
        if not isinstance(raw, str):
            return [], [
                Problem(
                    where,
                    f"{label} is {type(raw).__name__}, not a dialogue string",
                    'write "\\n\\nHuman: ...\\n\\nAssistant: ..."',
                )
            ]
        if "Assistant:" not in raw:
            return [], [
                Problem(where, f"{label} has no 'Assistant:' turn", 'write "\\n\\nHuman: ...\\n\\nAssistant: ..."')
            ]
        return split_hh(raw), []

    return _from_dialogues(record, where, turns_of)


def _from_implicit(record: dict, where: str):
    return _from_dialogues(record, where, lambda raw, label: _messages(raw, where, label))


_CONVERTERS = {
    "prompt_chosen_rejected": _from_prompt_chosen_rejected,
    "openai": _from_openai,
    "hh": _from_hh,
    "implicit": _from_implicit,
}


def validate_pair(pair: PreferencePair) -> list[Problem]:
    """Check a converted pair; every problem names ``pair.source``.

    Returns:
        Problems (empty when valid): empty prompt, empty chosen/rejected reply, identical replies (no preference
        signal), unknown roles or empty turns in the prompt, a prompt that does not end with a user (or tool) turn.
    """
    where, problems = pair.source, []
    if pair.conversational:
        if not pair.prompt:
            problems.append(Problem(where, "prompt has no messages", "give at least one user message"))
        for k, m in enumerate(pair.prompt):
            if m.role not in ROLES:
                problems.append(
                    Problem(where, f"prompt turn {k} has unknown role {m.role!r}", f"use one of {', '.join(ROLES)}")
                )
            elif not m.content.strip():
                problems.append(
                    Problem(where, f"prompt turn {k} ({m.role}) is empty", "remove the turn or give it text")
                )
        if pair.prompt and pair.prompt[-1].role in ROLES and pair.prompt[-1].role not in ("user", "tool"):
            problems.append(
                Problem(
                    where,
                    f"prompt's last turn is {pair.prompt[-1].role!r}; the response must answer a user (or tool) turn",
                    "end the prompt with the user's message",
                )
            )
    elif not pair.prompt.strip():
        problems.append(Problem(where, "prompt is empty", "give the prompt text"))
    for label, text in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem(where, f"{label} reply is empty", "remove the pair or give the reply text"))
    if isinstance(pair.chosen, str) and pair.chosen.strip() and pair.chosen.strip() == (pair.rejected or "").strip():
        problems.append(
            Problem(
                where, "chosen and rejected replies are identical, so the pair carries no preference", "remove the pair"
            )
        )
    return problems


def load_pair_file(path: str | Path, fmt: str = "auto") -> tuple[list[PreferencePair], list[Problem], str, int]:
    """Read a preference file (JSONL/JSON/CSV/Parquet/saved dataset, optionally ``.gz``) and convert every record.

    Returns:
        (valid pairs, problems of invalid records with ``path:line``, the format used, records read).

    Raises:
        DataError: when the format cannot be detected or is unknown.
    """
    from tunesmith.data.readers import read_records

    records, problems = read_records(path)
    read = len(records) + len({p.where for p in problems})
    if fmt == "auto":
        first = next((r for _, r in records if isinstance(r, dict)), None)
        fmt = detect_preference_format(first)
        if fmt is None:
            keys = sorted(first)[:12] if isinstance(first, dict) else []
            raise DataError(
                f"Cannot tell the preference format of {path}",
                [
                    Problem(
                        records[0][0] if records else str(path),
                        f"no preference format matches the record keys {keys}",
                        f"set data.format to one of {', '.join(PREFERENCE_FORMATS)}: prompt/chosen/rejected, OpenAI "
                        "input/preferred_output/non_preferred_output, HH chosen/rejected dialogues, or "
                        "chosen/rejected message lists",
                    )
                ],
            )
    elif fmt not in PREFERENCE_FORMATS:
        raise DataError(
            "Unsupported preference format",
            [Problem("data.format", f"{fmt!r}", f"use one of {', '.join(PREFERENCE_FORMATS)} (or auto)")],
        )
    pairs = []
    for where, obj in records:
        pair, probs = to_pair(obj, fmt, where)
        problems += probs
        if pair is not None:
            pairs.append(pair)
    return pairs, problems, fmt, read


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
