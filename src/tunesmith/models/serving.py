"""The serving contract: what a model was trained with, saved once beside it and read back by every command that
serves it.

``tunesmith sft`` and ``tunesmith dpo`` write ``serving.json`` into the adapter (or model) folder, next to the
tokenizer (which carries the chat template) and ``generation_config.json`` (which carries the end-of-turn id among
``eos_token_id`` and the generation defaults)::

    {"format": 1, "system_prompt": "End with #### <number>.", "chat_template": "...", "chat_template_sha256": "...",
     "end_of_turn": {"token": "<|im_end|>", "id": 2}, "eos_token_ids": [2], "tool_template": null,
     "generation": {"do_sample": false, "max_new_tokens": 128},
     "probes": [{"source": "train.jsonl:12", "messages": [{"role": "user", "content": "..."}], "prompt_ids": [...]}],
     "trained_with": {"command": "sft", "model": "...", "dataset_fingerprint": "..."}}

:func:`tunesmith.models.for_use.load_for_use` reads it (``Loaded.serving``) for ``chat``, ``generate``, ``eval``,
``merge`` and ``export``; the system prompt applies to every conversation without a system turn, and a user's
``--system`` replaces it. ``probes`` are up to :data:`NUM_PROBES` of the run's own eval prompts as a user sends them
(the system turn the training data added is left out) with the prompt ids training rendered for them: the export's
consistency check renders each probe through every serving path and compares the ids.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.data.records import Conversation, Message
from tunesmith.errors import ModelError, Problem

SERVING_FILE = "serving.json"
"""File name of the contract inside an adapter, model or merged folder."""

FORMAT = 1
"""Version of the ``serving.json`` layout."""

NUM_PROBES = 8
"""Eval prompts of the run kept in the contract for the consistency check."""


@dataclass
class ServingContract:
    """What a model was trained with (see the module doc for the file layout).

    Attributes:
        system_prompt: the system prompt training added to every conversation without one (``data.system_prompt``), or
            None (the template's own default, if any, applied in training and applies in serving).
        chat_template: the Jinja chat template the training data was rendered with.
        end_of_turn: ``{"token": str, "id": int}`` closing an assistant reply, or None.
        eos_token_ids: ids generation stops at (``generation_config.eos_token_id`` plus the end-of-turn id).
        tool_template: the template that renders tool schemas (a ``tool_use`` template, or the chat template when it
            renders ``tools``), else None.
        generation: generation defaults (``do_sample``, ``max_new_tokens``).
        probes: ``[{"source", "messages", "prompt_ids"}]`` eval prompts and their training prompt ids.
        trained_with: ``{"command", "model", "dataset_fingerprint"}``.
    """

    system_prompt: str | None = None
    chat_template: str | None = None
    end_of_turn: dict | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    tool_template: str | None = None
    generation: dict = field(default_factory=lambda: {"do_sample": False})
    probes: list[dict] = field(default_factory=list)
    trained_with: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The ``serving.json`` content (with ``format`` and the template's SHA-256)."""
        out = {"format": FORMAT, **asdict(self)}
        out["chat_template_sha256"] = template_sha256(self.chat_template)
        return out

    @classmethod
    def from_json(cls, data: dict) -> ServingContract:
        """Read the ``serving.json`` content; unknown keys are ignored (a newer file still loads)."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def system_for(self, override: str | None) -> str | None:
        """The system prompt to serve with: ``override`` (a user's ``--system``) when given, else the trained one."""
        return override if override is not None else self.system_prompt

    def probe_conversations(self) -> list[Conversation]:
        """The probes as :class:`Conversation` objects (the messages a user sends, no trained system turn)."""
        return [
            Conversation([Message(m["role"], m["content"]) for m in p["messages"]], p.get("source", f"probe#{k}"))
            for k, p in enumerate(self.probes)
        ]


def template_sha256(template) -> str | None:
    """SHA-256 (hex, 16 chars) of a chat template (text, or a dict of named templates), or None."""
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """The conversation as served: a system turn ``system`` first when given and the conversation has none."""
    if system is None or (messages and messages[0].role == "system"):
        return list(messages)
    return [Message("system", system)] + list(messages)


def serving_prompt_ids(
    tokenizer, messages: list[Message], system: str | None, source: str = "", *, tools: list[dict] | None = None
) -> list[int]:
    """Prompt ids of a conversation as every serving path renders it: :func:`with_system`, then
    :func:`tunesmith.render.templates.render_prompt` (through the generation prompt; a final assistant turn dropped),
    with ``tools`` (OpenAI-shaped specs) rendered by the template.

    Returns:
        ``list[int][seq]``.
    """
    from tunesmith.render.templates import render_prompt

    return render_prompt(tokenizer, Conversation(with_system(messages, system), source, tools=tools or None))


def tool_template(tokenizer) -> str | None:
    """The template that renders tool schemas: a named ``tool_use`` template, or the chat template when it reads
    ``tools``; else None."""
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        return tpl.get("tool_use")
    return tpl if tpl and "tools" in tpl else None


def training_prompts(records) -> list[tuple[str, list[Message]]]:
    """``(source, messages)`` of the prompts in training records, as trained (system turn included, reply dropped):
    a conversation's messages before its last assistant turn, a conversational preference pair's prompt; plain text
    and completion records have none."""
    out = []
    for r in records:
        if isinstance(getattr(r, "prompt", None), list):
            out.append((r.source, list(r.prompt)))
        elif getattr(r, "kind", None) in ("messages", "prompt_completion") and r.messages:
            msgs = r.messages[:-1] if r.messages[-1].role == "assistant" else r.messages
            if msgs:
                out.append((r.source, list(msgs)))
    return out


def _user_messages(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """A training prompt as a user sends it: the system turn training added (``system_prompt``) is left out."""
    if system_prompt is not None and messages and messages[0].role == "system":
        if messages[0].content == system_prompt:
            return list(messages[1:])
    return list(messages)


def build_contract(
    tokenizer,
    generation_config,
    *,
    system_prompt: str | None,
    prompts: list[tuple[str, list[Message]]],
    max_new_tokens: int,
    trained_with: dict,
) -> ServingContract:
    """The contract of a training run.

    Args:
        tokenizer: the tokenizer trained with (its chat template as installed for training).
        generation_config: the generation config saved with the model (end-of-turn id among ``eos_token_id``).
        system_prompt: ``data.system_prompt``.
        prompts: ``(source, messages)`` of the run's eval prompts as trained (system turn included, no reply); the
            first :data:`NUM_PROBES` become probes with their training prompt ids.
        max_new_tokens: the generation budget default (``eval.max_new_tokens``).
        trained_with: ``{"command", "model", "dataset_fingerprint"}``.

    Returns:
        :class:`ServingContract`.
    """
    from tunesmith.render.checks import eos_ids, template_eot_id
    from tunesmith.render.templates import render_prompt

    template = tokenizer.chat_template or None
    eot = template_eot_id(tokenizer) if template else None
    probes = []
    for source, msgs in prompts[:NUM_PROBES] if template else []:
        ids = render_prompt(tokenizer, Conversation(list(msgs), source))
        user = _user_messages(msgs, system_prompt)
        probes.append(
            {"source": source, "messages": [{"role": m.role, "content": m.content} for m in user], "prompt_ids": ids}
        )
    return ServingContract(
        system_prompt=system_prompt,
        chat_template=template if isinstance(template, str) else None,
        end_of_turn={"token": tokenizer.convert_ids_to_tokens(eot), "id": eot} if eot is not None else None,
        eos_token_ids=sorted(eos_ids(tokenizer, generation_config)),
        tool_template=tool_template(tokenizer),
        generation={"do_sample": False, "max_new_tokens": int(max_new_tokens)},
        probes=probes,
        trained_with=trained_with,
    )


def apply_generation_defaults(generation_config, contract: ServingContract) -> None:
    """Write the contract's generation defaults into a ``GenerationConfig`` (greedy: sampling fields cleared)."""
    gen = contract.generation or {}
    generation_config.do_sample = bool(gen.get("do_sample", False))
    if not generation_config.do_sample:
        generation_config.temperature = generation_config.top_p = generation_config.top_k = None
    if gen.get("max_new_tokens"):
        generation_config.max_new_tokens = int(gen["max_new_tokens"])


def contract_files(contract: ServingContract, generation_config) -> dict[str, str]:
    """File name -> text of what a training run saves beside its weights: ``serving.json`` and the
    ``generation_config.json`` with the contract's generation defaults."""
    import copy

    gen = copy.deepcopy(generation_config)
    apply_generation_defaults(gen, contract)
    return {
        SERVING_FILE: json.dumps(contract.to_json(), indent=2) + "\n",
        "generation_config.json": gen.to_json_string(),
    }


def read_contract(folder: str | Path | None) -> ServingContract | None:
    """The contract saved in ``folder`` (``serving.json``), or None when there is none.

    Raises:
        ModelError: a ``serving.json`` that is not the contract (unreadable JSON, a newer format).
    """
    if folder is None or not (Path(folder) / SERVING_FILE).is_file():
        return None
    path = Path(folder) / SERVING_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(
            "Unreadable serving contract",
            [
                Problem(
                    str(path),
                    f"{type(exc).__name__}: {exc}",
                    "restore it from the run, or delete it to serve "
                    "without the trained system prompt and generation defaults",
                )
            ],
        ) from None
    if not isinstance(data, dict) or int(data.get("format", 0)) > FORMAT:
        raise ModelError(
            "Unknown serving contract",
            [
                Problem(
                    str(path),
                    f"format {data.get('format') if isinstance(data, dict) else '?'} is newer than {FORMAT}",
                    "upgrade tunesmith",
                )
            ],
        )
    return ServingContract.from_json(data)
