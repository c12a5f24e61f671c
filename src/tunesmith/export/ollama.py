"""The Ollama Modelfile of ``tunesmith export --format gguf --modelfile``: its TEMPLATE (Go, translated from the chat
template) and the Modelfile text.

A ChatML template that renders tools, tool calls and tool results in the Hermes / Qwen2.5 layout (``chatml-tools``)
gets :data:`CHATML_TOOLS_GO`: Ollama's tool variables (``.Tools``, ``.ToolCalls``, ``.Function.Name``,
``.Function.Arguments``, role ``tool``) in the ``chatml-tools`` text layout, JSON written by Ollama's ``json``
function. Without tools it renders exactly the plain ChatML text. The consistency check
(:mod:`tunesmith.export.consistency`) renders both with :mod:`tunesmith.export.gotemplate`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tunesmith.errors import Problem, TunesmithError

if TYPE_CHECKING:
    from tunesmith.export.consistency import Check

CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
"""Plain ChatML: every message as a turn, then the generation prompt."""

_TOOLS_SYSTEM = (
    "{{- if .Tools }}<|im_start|>system\n"
    '{{ if eq (index .Messages 0).Role "system" }}{{ (index .Messages 0).Content }}\n\n{{ end }}'
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{{ range $tool := .Tools }}\n{{ json $tool }}{{ end }}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
    'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{{ end }}"
)
# Each call in its own <tool_call> block, a newline between blocks and after non-empty content. The {{ if .ToolCalls }}
# block starts with the text "<tool_call>": Ollama takes the first text inside it as the tag that opens a call.
_TOOLS_TURNS = (
    '{{ $prev := "" }}{{ range $i, $_ := .Messages }}'
    '{{ if and (eq $prev "tool") (ne .Role "tool") }}<|im_end|>\n{{ end }}'
    '{{ if eq .Role "tool" }}{{ if ne $prev "tool" }}<|im_start|>user{{ end }}'
    "\n<tool_response>\n{{ .Content }}\n</tool_response>"
    '{{ else if and $.Tools (eq $i 0) (eq .Role "system") }}'
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}'
    "{{ if .Content }}{{ with .ToolCalls }}\n{{ end }}{{ end }}"
    "{{ if .ToolCalls }}<tool_call>\n{{ range $j, $call := .ToolCalls }}"
    "{{ if $j }}\n</tool_call>\n<tool_call>\n{{ end }}"
    '{"name": {{ json .Function.Name }}, "arguments": {{ json .Function.Arguments }}}{{ end }}\n</tool_call>{{ end }}'
    "<|im_end|>\n"
    "{{ else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "{{ $prev = .Role }}{{ end }}"
    '{{ if eq $prev "tool" }}<|im_end|>\n{{ end }}<|im_start|>assistant\n'
)
CHATML_TOOLS_GO = _TOOLS_SYSTEM + _TOOLS_TURNS
"""ChatML with tools in the ``chatml-tools`` layout: the ``<tools>`` block (one ``{{ json $tool }}`` a line) in the
system turn, after the first system message's text; each call as ``<tool_call>\\n{"name": ..., "arguments":
...}\\n</tool_call>``; consecutive ``tool`` results as ``<tool_response>`` blocks in one user turn."""


def renders_tools(tokenizer) -> bool:
    """True when the tokenizer's chat template renders tool specs, calls and results in the Hermes / Qwen2.5 layout
    (``<tool_call>`` and ``<tool_response>``), as ``chatml-tools`` does."""
    from tunesmith.render.features import template_features

    tpl = tokenizer.chat_template or ""
    if "<tool_call>" not in tpl or "<tool_response>" not in tpl:
        return False
    f = template_features(tokenizer)
    return f.tools and f.tool_calls and f.tool_results


def ollama_template(tokenizer) -> tuple[str, str | None]:
    """Ollama's Go TEMPLATE for the tokenizer's chat template (ChatML, ChatML with tools, or Llama-3) and the
    template's default system prompt.

    Raises:
        TunesmithError: for a chat template that is neither ChatML nor Llama-3 (no translation known).
    """
    from tunesmith.render.checks import default_system_prompt

    tpl = tokenizer.chat_template or ""
    if "<|im_start|>" in tpl:
        go = CHATML_TOOLS_GO if renders_tools(tokenizer) else CHATML_GO
    elif "<|start_header_id|>" in tpl:
        go = (
            (tokenizer.bos_token or "")
            + "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
            "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    else:
        raise TunesmithError(
            "No Ollama template for this chat template",
            [
                Problem(
                    "--modelfile",
                    "tunesmith translates ChatML and Llama-3 templates to Ollama's Go templates only",
                    "write the Modelfile's TEMPLATE by hand, or export without --modelfile",
                )
            ],
        )
    default = default_system_prompt(tokenizer)
    return go, default.strip() if default else None


def modelfile_text(gguf_name: str, go_template: str, system: str | None, eot_token: str, contract=None) -> str:
    """An Ollama Modelfile: ``FROM`` the GGUF, ``TEMPLATE``, ``SYSTEM`` (the trained system prompt, else the
    template's default, if any), ``PARAMETER stop`` at the end-of-turn token, and the serving contract's generation
    defaults (greedy: ``temperature 0``; ``num_predict``)."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines.append(f'PARAMETER stop "{eot_token}"')
    gen = contract.generation if contract is not None else {}
    if not gen.get("do_sample", False):
        lines.append("PARAMETER temperature 0")
    if gen.get("max_new_tokens"):
        lines.append(f"PARAMETER num_predict {int(gen['max_new_tokens'])}")
    return "\n".join(lines) + "\n"


def _json_normalised(text: str) -> str:
    """``text`` with every JSON object in it re-serialised one way (keys sorted, one spacing)."""
    dec, out, k = json.JSONDecoder(), [], 0
    while (j := text.find("{", k)) != -1:
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError:
            out.append(text[k : j + 1])
            k = j + 1
            continue
        out.append(text[k:j] + json.dumps(obj, sort_keys=True, ensure_ascii=False))
        k = end
    return "".join(out) + text[k:]


def modelfile_tools_check(tokenizer, go_template: str, system: str | None, convs: list) -> Check | None:
    """Structural, not token-exact: on each conversation with tools, the Modelfile's TEMPLATE (+ SYSTEM) given the
    tools as Ollama's ``.Tools`` (rendered by :func:`render_go_template`) must name every tool inside ``<tools>``, hold
    each call of the conversation as a ``<tool_call>`` block whose JSON has the call's name and arguments, and equal the
    chat template's generation-prompt text once every JSON object in both texts is re-serialised one way: Go's JSON
    (emulated) and Jinja's ``tojson`` differ in key order and spacing, which is not compared.

    Returns:
        The check (``modelfile_tools_structure``), or None when no conversation has tools.
    """
    import re

    from tunesmith.export.consistency import Check, _first_diff, render_go_template
    from tunesmith.models.serving import with_system

    convs, name = [c for c in convs if c.tools], "modelfile_tools_structure"
    for conv in convs:
        msgs = conv.to_template()[:-1]
        served = [m.to_template() for m in with_system(conv.messages[:-1], system)]
        want = tokenizer.apply_chat_template(served, tools=conv.tools, tokenize=False, add_generation_prompt=True)
        got = render_go_template(go_template, msgs, system, conv.tools)
        block = got.partition("<tools>\n")[2].partition("\n</tools>")[0]
        missing = [t["function"]["name"] for t in conv.tools if t["function"]["name"] not in block]
        if missing:
            return Check(name, False, f"{conv.source}: the Modelfile TEMPLATE does not list the tool(s) {missing}")
        calls = [
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
            for m in msgs
            for c in m.get("tool_calls", [])
        ]
        written = []
        for text in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", got, re.S):
            try:
                written.append(json.loads(text))
            except ValueError:  # the instruction's {"name": <function-name>, ...} pattern
                continue
        if written != calls:
            return Check(name, False, f"{conv.source}: the Modelfile TEMPLATE writes the calls {written}, not {calls}")
        a, b = _json_normalised(want), _json_normalised(got)
        if a != b:
            k = _first_diff(list(a), list(b))
            return Check(
                name,
                False,
                f"{conv.source}: with JSON re-serialised, the Modelfile TEMPLATE renders {b[k : k + 30]!r} where the "
                f"chat template renders {a[k : k + 30]!r} (char {k})",
            )
    if not convs:
        return None
    return Check(
        name,
        True,
        f"{len(convs)} tool conversation(s), structural: the Modelfile TEMPLATE lists the tools in <tools>, writes "
        "each call as a <tool_call> block with its name and arguments, and renders the chat template's generation "
        "prompt text once every JSON object is re-serialised (JSON key order and spacing not compared)",
    )
