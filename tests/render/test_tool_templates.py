"""Token-exact masks with tools: the built-in chatml-tools template and Qwen2.5's, tool calls trained, tool results
masked, reasoning trained or masked by data.train_reasoning, and templates without tool support refused."""

from __future__ import annotations

import json

import pytest

from conftest import FIXTURES
from tunesmith.data.records import Conversation, Message, ToolCall
from tunesmith.render.chat_templates import resolve_chat_template
from tunesmith.render.features import MissingFeatures, template_features
from tunesmith.render.rows import render_all, render_examples
from tunesmith.render.templates import IGNORE_INDEX, render_conversation, render_prompt

M = IGNORE_INDEX
TOOLS_TPL = resolve_chat_template("chatml-tools")
QWEN = (FIXTURES / "qwen2_5.jinja").read_text()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOLS_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps(WEATHER)
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def call(city):
    return ToolCall("get_weather", {"city": city})


def tool_conv(reasoning=None, system=True):
    msgs = [Message("system", "Be brief.")] if system else []
    msgs += [
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls=[call("Paris")], reasoning_content=reasoning),
        Message("tool", '{"temp": 21}'),
        Message("assistant", "It is 21 degrees."),
    ]
    return Conversation(msgs, "tools:1", tools=[WEATHER])


def expected(tok, segments):
    ids, labels = [], []
    for text, trained in segments:
        seg = tok(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if trained else [M] * len(seg)
    return ids, labels


def trained_text(tok, r):
    return tok.decode([t for t, lab in zip(r.input_ids, r.labels) if lab != M])


def test_builtin_tool_template_masks_token_by_token(smol_tokenizer):
    r = render_conversation(smol_tokenizer, tool_conv(), chat_template=TOOLS_TPL)
    ids, labels = expected(
        smol_tokenizer,
        [
            (
                "<|im_start|>system\nBe brief.\n\n" + TOOLS_BLOCK + "<|im_start|>user\nWeather in Paris?<|im_end|>\n",
                False,
            ),
            ("<|im_start|>assistant\n", False),
            (CALL + "<|im_end|>", True),  # the tool call and its end-of-turn token are trained
            ('\n<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n', False),  # result masked
            ("<|im_start|>assistant\n", False),
            ("It is 21 degrees.<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert r.input_ids == ids and r.labels == labels
    assert (
        render_prompt(smol_tokenizer, tool_conv(), chat_template=TOOLS_TPL)
        == ids[: len(ids) - len(smol_tokenizer("It is 21 degrees.<|im_end|>\n", add_special_tokens=False)["input_ids"])]
    )


def test_qwen25_template_with_tools_and_parallel_calls(smol_tokenizer):
    conv = Conversation(
        [
            Message("user", "Paris and Rome?"),
            Message("assistant", "", tool_calls=[call("Paris"), call("Rome")]),
            Message("tool", "21"),
            Message("tool", "25"),
            Message("assistant", "21 and 25."),
        ],
        "qwen:1",
        tools=[WEATHER],
    )
    r = render_conversation(smol_tokenizer, conv, chat_template=QWEN)
    system = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n"
    ids, labels = expected(
        smol_tokenizer,
        [
            (system + TOOLS_BLOCK + "<|im_start|>user\nParis and Rome?<|im_end|>\n<|im_start|>assistant\n", False),
            (CALL + "\n" + CALL.replace("Paris", "Rome") + "<|im_end|>", True),
            (
                "\n<|im_start|>user\n<tool_response>\n21\n</tool_response>\n<tool_response>\n25\n</tool_response>"
                "<|im_end|>\n<|im_start|>assistant\n",
                False,
            ),
            ("21 and 25.<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert r.input_ids == ids and r.labels == labels


def test_reasoning_trained_by_default_and_masked_with_train_reasoning_false(smol_tokenizer):
    conv = tool_conv(reasoning="I need the weather tool.")
    trained = render_conversation(smol_tokenizer, conv, chat_template=TOOLS_TPL)
    masked = render_conversation(smol_tokenizer, conv, chat_template=TOOLS_TPL, train_reasoning=False)
    assert trained.input_ids == masked.input_ids  # masking never changes the tokens
    think = "<think>\nI need the weather tool.\n</think>\n\n"
    assert trained_text(smol_tokenizer, trained) == think + CALL + "<|im_end|>It is 21 degrees.<|im_end|>"
    assert trained_text(smol_tokenizer, masked) == CALL + "<|im_end|>It is 21 degrees.<|im_end|>"
    hidden = [t for t, a, b in zip(trained.input_ids, trained.labels, masked.labels) if a != M and b == M]
    assert smol_tokenizer.decode(hidden) == think


# A template that drops the reasoning of past turns (Qwen3's habit): reasoning shows only after the last user turn.
DROPS_PAST = (
    "{%- set ns = namespace(last=0) %}{%- for m in messages %}"
    "{%- if m.role == 'user' %}{%- set ns.last = loop.index0 %}"
    "{%- endif %}{%- endfor %}{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' }}"
    "{%- if m.role == 'assistant' and m.reasoning_content and loop.index0 > ns.last %}"
    "{{- '<think>\\n' + m.reasoning_content + '\\n</think>\\n\\n' }}{%- endif %}{{- m.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_template_dropping_past_reasoning(smol_tokenizer):
    conv = Conversation(
        [
            Message("user", "A?"),
            Message("assistant", "a", reasoning_content="first thought"),
            Message("user", "B?"),
            Message("assistant", "b", reasoning_content="second thought"),
        ],
        "r:1",
    )
    r = render_conversation(smol_tokenizer, conv, chat_template=DROPS_PAST)
    assert r.dropped_reasoning == [1]  # as at inference: the past turn renders without its reasoning
    assert trained_text(smol_tokenizer, r) == "a<|im_end|><think>\nsecond thought\n</think>\n\nb<|im_end|>"
    assert len(render_examples(smol_tokenizer, conv, chat_template=DROPS_PAST)) == 1
    main, first = render_examples(smol_tokenizer, conv, chat_template=DROPS_PAST, train_reasoning=True)
    assert trained_text(smol_tokenizer, main) == "<think>\nsecond thought\n</think>\n\nb<|im_end|>"
    assert trained_text(smol_tokenizer, first) == "<think>\nfirst thought\n</think>\n\na<|im_end|>"
    assert first.source == "r:1 (turn 1)"


def test_template_without_tool_support_is_refused(smol_tokenizer):
    assert template_features(smol_tokenizer) == template_features(smol_tokenizer, None)
    f = template_features(smol_tokenizer)  # SmolLM2's ChatML: renders role "tool", drops tools= and tool_calls
    assert (f.tools, f.tool_calls, f.reasoning) == (False, False, False)
    assert template_features(smol_tokenizer, TOOLS_TPL).tool_calls and template_features(smol_tokenizer, QWEN).tools
    with pytest.raises(MissingFeatures) as e:
        render_all(smol_tokenizer, [tool_conv(), tool_conv()], 2048)
    p = e.value.problems[0]
    assert p.where == "model.chat_template" and "2 record(s)" in p.reason and "chatml-tools" in p.fix
    with pytest.raises(MissingFeatures):  # reasoning the template cannot show, when asked to train it
        render_conversation(
            smol_tokenizer,
            Conversation([Message("user", "q"), Message("assistant", "a", reasoning_content="t")], "x:1"),
            train_reasoning=True,
        )
