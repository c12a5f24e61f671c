"""Preference formats (chosen/rejected pairs) converted to the canonical
:class:`~tunesmith.data.records.PreferencePair`, each problem with its record's ``file:line``.

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

Validation names pairs whose prompts differ, an empty final reply, identical chosen and rejected replies, unknown
roles and wrong types."""

from __future__ import annotations

import re

from tunesmith.data.records import ROLES, TOO_LONG_FIX, Message, PreferencePair, too_long
from tunesmith.errors import Problem

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
    where = pair.source
    texts = [(f"prompt turn {k}", m.content) for k, m in enumerate(pair.prompt)] if pair.conversational else []
    texts += [("prompt", pair.prompt)] if not pair.conversational else []
    texts += [("chosen", pair.chosen), ("rejected", pair.rejected)]
    problems = [
        Problem(where, reason, TOO_LONG_FIX)
        for label, t in texts
        if isinstance(t, str) and (reason := too_long(t, label))
    ]
    if problems:
        return problems
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
