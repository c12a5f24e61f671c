"""Tool calling in the data: OpenAI tools/tool_calls, glaive ShareGPT, typed parts, BFCL question files, per-file
tools; every malformed record reported with its physical line."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, needs_shared
from tunesmith.config.base import DataSection
from tunesmith.data.conversations import load_conversations, load_file
from tunesmith.data.records import ToolCall
from tunesmith.data.tool_formats import cast_bfcl_schema
from tunesmith.errors import DataError

WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_openai_tools_tool_calls_tool_results_and_reasoning(tmp_path):
    rec = {
        "tools": [{"type": "function", "function": WEATHER}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "I should call the tool.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": '{"temp": 21}'},
            {"role": "assistant", "content": "21 degrees."},
        ],
    }
    (c,), rep = load_file(write_jsonl(tmp_path / "d.jsonl", [rec]))
    assert rep.format == "messages" and rep.skipped == []
    assert c.tools == [{"type": "function", "function": WEATHER}] and "tools" not in c.meta
    call = c.messages[1]
    assert call.content == "" and call.tool_calls == [ToolCall("get_weather", {"city": "Paris"}, "c1")]
    assert call.reasoning_content == "I should call the tool."
    assert call.to_template()["tool_calls"] == [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "c1"}
    ]
    assert (c.messages[2].tool_call_id, c.messages[2].name) == ("c1", "get_weather")


def test_glaive_sharegpt_tools_as_json_string(tmp_path):
    rec = {
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": '{"temp": 3}'},
            {"from": "gpt", "value": "3 degrees."},
        ],
        "tools": json.dumps([WEATHER]),
    }
    p = tmp_path / "g.json"
    p.write_text(json.dumps([rec], indent=2))
    (c,), rep = load_file(p)
    assert rep.format == "sharegpt" and c.tools[0]["function"]["name"] == "get_weather"
    assert [m.role for m in c.messages] == ["user", "assistant", "tool", "assistant"]
    assert c.messages[1].tool_calls == [ToolCall("get_weather", {"city": "Oslo"})]


def test_typed_parts_reasoning_and_parallel_tool_calls(tmp_path):
    rec = {
        "tools": json.dumps([{"type": "function", "function": WEATHER}]),
        "messages": [
            {"role": "user", "content": [{"type": "text", "value": "Paris and Rome?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "reasoning", "value": "Two cities."},
                    {"type": "tool_call", "value": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
                    {"type": "tool_call", "value": '{"name": "get_weather", "arguments": {"city": "Rome"}}'},
                ],
            },
            {"role": "tool", "content": [{"type": "text", "value": "21 / 25"}]},
            {
                "role": "assistant",
                "content": [{"type": "reasoning", "value": "Both warm."}, {"type": "text", "value": "Warm."}],
            },
        ],
    }
    (c,), rep = load_file(write_jsonl(tmp_path / "d.jsonl", [rec]))
    assert rep.skipped == []
    assert [x.arguments["city"] for x in c.messages[1].tool_calls] == ["Paris", "Rome"]
    assert (c.messages[1].reasoning_content, c.messages[3].reasoning_content) == ("Two cities.", "Both warm.")
    assert c.messages[3].content == "Warm."


def _bfcl(tmp_path, answers=True):
    q = [
        {
            "id": "live_simple_0-0-0",
            "question": [[{"role": "user", "content": "User 7890, special black?"}]],
            "function": [
                {
                    "name": "get_user_info",
                    "description": "Details of a user.",
                    "parameters": {
                        "type": "dict",
                        "required": ["user_id"],
                        "properties": {
                            "user_id": {"type": "integer", "description": "id"},
                            "special": {"type": "string", "description": "extra"},
                            "ratio": {"type": "float", "description": "r"},
                        },
                    },
                }
            ],
        },
        {
            "id": "live_simple_1-0-1",
            "question": [[{"role": "system", "content": "Be exact."}, {"role": "user", "content": "User 5?"}]],
            "function": [
                {"name": "get_user_info", "description": "d", "parameters": {"type": "dict", "properties": {}}}
            ],
        },
    ]
    a = [
        {"id": "live_simple_0-0-0", "ground_truth": [{"get_user_info": {"user_id": [7890], "special": ["", "black"]}}]},
        {"id": "live_simple_1-0-1", "ground_truth": [{"get_user_info": {"user_id": [5], "special": [""]}}]},
    ]
    qp = tmp_path / "BFCL_v4_live_simple.json"
    qp.write_text("\n".join(json.dumps(r) for r in q))  # JSON Lines under .json, no trailing newline, as upstream
    if answers:
        (tmp_path / "possible_answer").mkdir()
        write_jsonl(tmp_path / "possible_answer" / qp.name, a)
    return qp


def test_bfcl_question_file_with_its_possible_answer_file(tmp_path):
    qp = _bfcl(tmp_path)
    (a, b), rep = load_file(qp)
    assert rep.format == "bfcl" and (a.source, b.source) == (f"{qp}:1", f"{qp}:2")
    params = a.tools[0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["ratio"]["type"] == "number"  # BFCL types cast
    assert params["properties"]["ratio"]["description"] == "r This is a float type value."
    assert [m.role for m in b.messages] == ["system", "user", "assistant"]
    # the reference call: first acceptable non-empty value of each parameter; "" only -> left out
    assert a.messages[-1].tool_calls == [ToolCall("get_user_info", {"user_id": 7890, "special": "black"})]
    assert b.messages[-1].tool_calls == [ToolCall("get_user_info", {"user_id": 5})]
    assert a.meta["ground_truth"] == [{"get_user_info": {"user_id": [7890], "special": ["", "black"]}}]


def test_bfcl_without_answers_says_what_is_missing(tmp_path):
    qp = _bfcl(tmp_path, answers=False)
    convs, rep = load_file(qp)
    assert convs == [] and rep.skipped[0].where == f"{qp}:1" and "no assistant turn" in rep.skipped[0].reason
    with pytest.raises(DataError) as e:
        load_file(qp, answers=tmp_path / "nope.json")
    assert "answer file not found" in str(e.value)


def test_cast_bfcl_schema_nested():
    out = cast_bfcl_schema(
        {
            "type": "dict",
            "properties": {
                "t": {"type": "tuple", "items": {"type": "float"}},
                "d": {"type": "dict", "properties": {"x": {"type": "any"}}},
                "u": {"description": "no type"},
            },
        }
    )
    assert out["properties"]["t"]["type"] == "array" and out["properties"]["t"]["items"]["type"] == "number"
    assert out["properties"]["d"]["type"] == "object" and out["properties"]["d"]["properties"]["x"]["type"] == "string"
    assert out["properties"]["u"]["type"] == "string"


def test_every_malformed_tool_record_has_its_line(tmp_path):
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}
    rows = [
        {"messages": [{"role": "user", "content": "q"}, call]},  # 1: arguments not JSON
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": "[oops"},
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "other", "arguments": {}}]},
            ],
            "tools": [WEATHER],
        },  # 3: calls an undeclared tool
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]},  # 4: result without a call
        {"messages": [{"role": "user", "content": [{"type": "image_url", "value": "x"}]}]},  # 5: unknown part
        {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "not json"}]},  # 6
    ]
    p = write_jsonl(tmp_path / "d.jsonl", rows)
    convs, rep = load_file(p, "auto")
    reasons = {}
    for x in rep.skipped:
        reasons[int(x.where.rsplit(":", 1)[1])] = reasons.get(int(x.where.rsplit(":", 1)[1]), "") + x.reason + "; "
    assert convs == [] and sorted(reasons) == [1, 2, 3, 4, 5, 6]
    assert "'messages' is not a list" in reasons[6]  # ShareGPT in a messages file
    assert "arguments is a string but not JSON" in reasons[1] and "tools is a string but not JSON" in reasons[2]
    assert "'other', which is not among" in reasons[3] and "follows no tool call" in reasons[4]
    assert "image_url" in reasons[5]
    _, rep = load_file(write_jsonl(tmp_path / "s.jsonl", rows[5:]), "sharegpt")
    assert rep.skipped[0].where == f"{tmp_path / 's.jsonl'}:1" and "not JSON" in rep.skipped[0].reason


def test_bfcl_malformed_questions_and_answers_have_lines(tmp_path):
    qp = tmp_path / "q.json"
    write_jsonl(
        qp,
        [
            {"id": "a", "question": "not turns", "function": []},
            {"id": "b", "question": [[{"role": "user", "content": "q"}]], "function": "nope"},
            {"id": "c", "question": [[{"role": "user", "content": "q"}]], "function": [WEATHER]},
        ],
    )
    (tmp_path / "possible_answer").mkdir()
    write_jsonl(tmp_path / "possible_answer" / "q.json", [{"id": "c", "ground_truth": "bad"}, {"no": "id"}])
    convs, rep = load_file(qp)
    where = {x.where: x.reason for x in rep.skipped}
    assert convs == []
    assert "question is not a list of turns" in where[f"{qp}:1"] and "function is not" in where[f"{qp}:2"]
    assert "ground_truth is not a non-empty list" in where[f"{qp}:3"]
    assert "needs id and ground_truth" in where[f"{tmp_path / 'possible_answer' / 'q.json'}:2"]


def test_per_file_tools_from_config(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
    )
    spec = tmp_path / "tools.json"
    spec.write_text(json.dumps([WEATHER]))
    (c,), _ = load_conversations(DataSection(name=None, path=str(p), tools=str(spec)))
    assert c.tools == [{"type": "function", "function": WEATHER}]
    spec.write_text('[{"description": "no name"}]')
    with pytest.raises(DataError) as e:
        load_conversations(DataSection(name=None, path=str(p), tools=str(spec)))
    assert e.value.problems[0].where == f"data.tools={spec}" and "no function name" in e.value.problems[0].reason


@needs_shared("bfcl_v4_live_simple")
def test_bfcl_live_simple_loads_with_ground_truth():
    convs, rep = load_file(SHARED_DATA / "bfcl_v4_live_simple" / "BFCL_v4_live_simple.json")
    assert rep.format == "bfcl" and rep.kept == rep.rows_read == 219
    assert all(c.meta["ground_truth"] and c.messages[-1].tool_calls for c in convs)
    assert sum(1 for c in convs if c.messages[0].role == "system") == 9
