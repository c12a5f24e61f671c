"""Template consistency check, run at export: do training and serving tokenise a conversation the same way?

A model trained on one rendering and served with another (a different template in the saved tokenizer,
a GGUF whose tokenizer splits ``<|im_end|>`` into pieces, an EOS that is not the end-of-turn token)
answers badly or never stops.  On a fixed set of conversations this compares the token ids of

1. the training template: :func:`tunesmith.render.templates.render_conversation` / ``render_prompt`` with the
   tokenizer tunesmith trained with (what SFT computed its loss on);
2. the saved tokenizer: ``AutoTokenizer.from_pretrained(saved_dir).apply_chat_template(...)`` (plain transformers);
3. the GGUF: the tokenizer and ``tokenizer.chat_template`` transformers reads back from the GGUF file;

for the full conversation and for the generation prompt.  When the template renders tools, the fixed set includes a
conversation with tool specs, a tool call and a tool result (rendered with ``tools=``), and the call as the template
writes it must parse back (:mod:`tunesmith.render.tool_calls`) to the same name and arguments.  On the run's own eval
prompts (the serving contract's probes, :mod:`tunesmith.models.serving`) the prompt ids training rendered are compared
with each serving rendering: the loaded tokenizer (what ``chat``, ``generate`` and ``eval`` use), the saved tokenizer,
the GGUF's tokenizer and the Ollama Modelfile (TEMPLATE + SYSTEM, rendered and encoded); the trained system prompt is
added as serving adds it.  The Modelfile's TEMPLATE must also render the chat template's text on the fixed text
conversations; a tool TEMPLATE gets a structural check on the tool conversation
(:func:`tunesmith.export.ollama.modelfile_tools_check`).  It also checks that the end-of-turn token is an EOS id
in the saved ``generation_config.json`` and in the GGUF metadata.  A "does it stop" smoke test then runs
greedy generation on short prompts and passes when every reply ends with an EOS id the GGUF declares,
within ``max_new_tokens``.

Run it::

    tunesmith export --format gguf --model runs/sft --output model.gguf  # runs the check, writes model.consistency.json
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from tunesmith.data.records import Conversation, Message, ToolCall

CONVERSATIONS: list[list[tuple[str, str]]] = [
    [("user", "Hello!"), ("assistant", "Hi! How can I help you today?")],
    [("system", "You are a terse assistant."), ("user", "What is 2 + 2?"), ("assistant", "4")],
    [("user", "Name a colour."), ("assistant", "Blue."), ("user", "Another one, please."), ("assistant", "Green.")],
    [
        ("user", "Write a Python function that adds two numbers.\n\n```python\n"),
        ("assistant", "```python\ndef add(a, b):\n    return a + b\n```"),
    ],
    [
        ("user", "  Leading spaces, tabs\tand unicode: café, naïve, 東京, emoji 🙂 "),
        ("assistant", " Noted: café 東京 🙂\n"),
    ],
]
"""Fixed conversations: single and multi-turn, a system turn, code, whitespace and non-ASCII text."""

STOP_PROMPTS = ["Hello!", "What is the capital of France?", "Say one word."]
"""User turns for the "does it stop" smoke test."""


TOOL_SPEC = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}
"""The tool of the fixed tool conversation."""


def tool_conversation() -> Conversation:
    """A conversation with tool specs, an assistant tool call (non-ASCII argument), a tool result and the answer."""
    return Conversation(
        [
            Message("user", "What's the weather in Zürich, in celsius?"),
            Message("assistant", "", tool_calls=[ToolCall("get_weather", {"city": "Zürich", "unit": "celsius"})]),
            Message("tool", '{"temperature": 14, "sky": "cloudy"}'),
            Message("assistant", "It is 14 °C and cloudy in Zürich."),
        ],
        "consistency#tools",
        tools=[TOOL_SPEC],
    )


def fixed_conversations(tokenizer=None) -> list[Conversation]:
    """:data:`CONVERSATIONS` as :class:`Conversation` objects (source ``consistency#k``), plus
    :func:`tool_conversation` when ``tokenizer``'s chat template renders tool specs, calls and results."""
    convs = [Conversation([Message(r, c) for r, c in conv], f"consistency#{k}") for k, conv in enumerate(CONVERSATIONS)]
    if tokenizer is not None and tokenizer.chat_template:
        from tunesmith.render.features import template_features

        f = template_features(tokenizer)
        if f.tools and f.tool_calls and f.tool_results:
            convs.append(tool_conversation())
    return convs


@dataclass
class Check:
    """One consistency check.

    Attributes:
        name: stable id (``ids_saved_tokenizer``, ``ids_gguf``, ``eot_in_generation_config``, ``eot_in_gguf``,
            ``stops``, ...).
        ok: passed.
        detail: one sentence; for a token mismatch the conversation, position and the differing tokens.
    """

    name: str
    ok: bool
    detail: str


@dataclass
class ConsistencyReport:
    """All checks of one export. ``ok`` is True when every check passed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict:
        """``{"ok": bool, "checks": [{"name", "ok", "detail"}]}``."""
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def reference_ids(train_tokenizer, convs: list[Conversation]) -> list[tuple[list[int], list[int]]]:
    """Training-side ``(full ids, generation-prompt ids)`` per conversation (tunesmith's own renderer)."""
    from tunesmith.render.templates import render_conversation, render_prompt

    return [(render_conversation(train_tokenizer, c).input_ids, render_prompt(train_tokenizer, c)) for c in convs]


def serving_ids(tokenizer, convs: list[Conversation]) -> list[tuple[list[int], list[int]]]:
    """Serving-side ``(full ids, generation-prompt ids)``: ``tokenizer.apply_chat_template(..., tokenize=True)`` as a
    server calls it."""
    out = []
    for c in convs:
        msgs = c.to_template()
        full = tokenizer.apply_chat_template(msgs, tools=c.tools, tokenize=True, return_dict=False)
        prompt = tokenizer.apply_chat_template(
            msgs[:-1], tools=c.tools, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        out.append((list(full), list(prompt)))
    return out


def _first_diff(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def compare_ids(name: str, tokenizer, reference, other, convs) -> Check:
    """Compare ``other`` against ``reference`` (lists of ``(full, prompt)`` id lists); the detail names the first
    mismatch."""
    for conv, (ref_full, ref_prompt), (full, prompt) in zip(convs, reference, other):
        for part, a, b in (("conversation", ref_full, full), ("generation prompt", ref_prompt, prompt)):
            if a != b:
                k = _first_diff(a, b)
                show = lambda ids, k=k: tokenizer.convert_ids_to_tokens(ids[k : k + 3])  # noqa: E731
                return Check(
                    name,
                    False,
                    f"{conv.source} {part}: token {k} differs: training {show(a)} vs {show(b)} "
                    f"(lengths {len(a)} vs {len(b)})",
                )
    return Check(name, True, f"{len(convs)} conversations: identical token ids (full and generation prompt)")


def eot_check(name: str, eot: int | None, eos_ids: set[int], where: str) -> Check:
    """Pass when the template's end-of-turn id ``eot`` is among ``eos_ids``."""
    if eot is None:
        return Check(
            name,
            False,
            "the template writes no end-of-turn token after a reply; generation cannot stop at the end of a turn",
        )
    return Check(
        name,
        eot in eos_ids,
        f"end-of-turn id {eot} {'is' if eot in eos_ids else 'is NOT'} among the EOS ids {sorted(eos_ids)} of {where}",
    )


def stop_check(
    model,
    tokenizer,
    stop: set[int],
    *,
    max_new_tokens: int = 64,
    name: str = "stops",
    prompts: list[list[int]] | None = None,
) -> Check:
    """The "does it stop" smoke test: greedy replies to ``prompts`` (prompt ids; default :data:`STOP_PROMPTS` through
    ``tokenizer``'s chat template) must each end with an id of ``stop`` within ``max_new_tokens`` tokens."""
    from tunesmith.models.generation import generate_ids

    prompts = prompts or [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True, return_dict=False
            )
        )
        for p in STOP_PROMPTS
    ]
    outs = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, eos_ids=stop, batch_size=1)
    lengths = [len(o) for o in outs]
    stopped = [bool(o) and o[-1] in stop for o in outs]
    return Check(
        name,
        all(stopped),
        f"{sum(stopped)}/{len(outs)} greedy replies ended with an EOS id {sorted(stop)} "
        f"within {max_new_tokens} tokens (reply lengths {lengths})",
    )


def render_go_template(
    template: str, messages: list[dict], system: str | None = None, tools: list[dict] | None = None
) -> str:
    """Render an Ollama TEMPLATE as Ollama fills it for a chat request, with the Go-template emulation of
    :mod:`tunesmith.export.gotemplate`: ``.Messages`` (``system`` first when the conversation has no system message:
    Ollama adds the Modelfile's SYSTEM so), ``.System`` (the system messages' text) and ``.Tools`` (``tools``, else
    none, so ``{{ if .Tools }}`` branches are skipped).

    Raises:
        ValueError: for a template outside the emulated subset.
    """
    from tunesmith.export.gotemplate import execute

    if system and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}] + list(messages)
    joined = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return execute(template, {"Messages": list(messages), "System": joined, "Tools": tools or None})


def tool_parse_check(tokenizer, convs: list[Conversation]) -> Check | None:
    """The tool calls of each conversation, as the chat template writes them in the trained reply, parse back
    (:func:`tunesmith.render.tool_calls.parse_reply`, the parser of generate, chat and eval) to the same calls.

    Returns:
        The check, or None when no conversation holds a tool call.
    """
    from tunesmith.render.templates import IGNORE_INDEX, render_conversation
    from tunesmith.render.tool_calls import call_format, parse_reply

    fmt, checked = call_format(tokenizer.chat_template), 0
    for conv in convs:
        for k, m in enumerate(conv.messages):
            if not m.tool_calls:
                continue
            weights = [
                replace(x, weight=0 if i != k and x.role == "assistant" else x.weight)
                for i, x in enumerate(conv.messages)
            ]
            r = render_conversation(tokenizer, replace(conv, messages=weights[: k + 1]))
            text = tokenizer.decode([t for t in r.labels if t != IGNORE_INDEX], skip_special_tokens=True)
            got = parse_reply(text, fmt)
            checked += 1
            if got.calls != [replace(c, id=None) for c in m.tool_calls]:
                return Check("tool_call_parse", False, f"{conv.source}: the reply {text!r} parses to {got.to_json()}")
    if not checked:
        return None
    return Check("tool_call_parse", True, f"{checked} tool-call turn(s): the template's call text parses back ({fmt})")


def modelfile_check(tokenizer, go_template: str, system: str | None, convs: list[Conversation]) -> Check:
    """The Modelfile's TEMPLATE (+ SYSTEM) gives the same generation-prompt text as the chat template on ``convs``, each
    served with ``system`` when it has no system turn (as Ollama adds SYSTEM, and tunesmith the trained prompt).
    Conversations with tools are left out: Ollama renders tool specs and calls with its own Go JSON encoding (a tool
    TEMPLATE is checked structurally on them, :func:`tunesmith.export.ollama.modelfile_tools_check`)."""
    from tunesmith.models.serving import with_system

    convs = [c for c in convs if not c.tools]
    for conv in convs:
        msgs = conv.to_template()[:-1]
        served = [m.to_template() for m in with_system(conv.messages[:-1], system)]
        want = tokenizer.apply_chat_template(served, tokenize=False, add_generation_prompt=True)
        got = render_go_template(go_template, msgs, system)
        if got != want:
            k = _first_diff(list(want), list(got))
            return Check(
                "modelfile_template",
                False,
                f"{conv.source}: the Modelfile TEMPLATE renders {got[k : k + 30]!r} "
                f"where the chat template renders {want[k : k + 30]!r} (char {k})",
            )
    return Check(
        "modelfile_template",
        True,
        f"{len(convs)} conversations: the Modelfile TEMPLATE renders the chat template's generation prompt text",
    )


def probe_ids_check(name: str, contract, tokenizer, *, where: str) -> Check:
    """The run's own eval prompts (the serving contract's probes), rendered as ``where`` serves them (the trained system
    prompt added, :func:`tunesmith.models.serving.serving_prompt_ids` through ``tokenizer``), must give exactly the
    prompt ids training rendered.

    Returns:
        A :class:`Check`; the detail names the first differing probe, position and tokens.
    """
    from tunesmith.models.serving import serving_prompt_ids

    probes = contract.probes
    for probe, conv in zip(probes, contract.probe_conversations()):
        got = serving_prompt_ids(tokenizer, conv.messages, contract.system_prompt, conv.source)
        want = probe["prompt_ids"]
        if got != want:
            k = _first_diff(want, got)
            a, b = tokenizer.convert_ids_to_tokens(want[k : k + 3]), tokenizer.convert_ids_to_tokens(got[k : k + 3])
            return Check(
                name,
                False,
                f"{where}: eval prompt {conv.source}: token {k} differs: training {a} vs {b} "
                f"(lengths {len(want)} vs {len(got)})",
            )
    return Check(name, True, f"{where}: {len(probes)} of the run's eval prompts render the training prompt ids")


def modelfile_probe_check(contract, tokenizer, go_template: str, system: str | None) -> Check:
    """The Modelfile's TEMPLATE and SYSTEM, rendered on the run's eval prompts and encoded, give the prompt ids
    training rendered (Ollama renders the text; llama.cpp tokenises it)."""
    probes = contract.probes
    for probe, conv in zip(probes, contract.probe_conversations()):
        text = render_go_template(go_template, conv.to_template(), system)
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != probe["prompt_ids"]:
            k = _first_diff(probe["prompt_ids"], got)
            return Check(
                "modelfile_eval_prompts",
                False,
                f"{conv.source}: the Modelfile renders token {k} as {tokenizer.convert_ids_to_tokens(got[k : k + 3])} "
                f"where training has {tokenizer.convert_ids_to_tokens(probe['prompt_ids'][k : k + 3])}",
            )
    return Check(
        "modelfile_eval_prompts",
        True,
        f"{len(probes)} of the run's eval prompts: the Modelfile (TEMPLATE + SYSTEM) renders the training prompt ids",
    )
