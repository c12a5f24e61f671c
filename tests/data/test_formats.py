"""Every data format to the canonical Conversation, every validation error with its physical line number."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, needs_shared
from tunesmith.config.base import DataSection
from tunesmith.data.conversations import load_conversations, load_file
from tunesmith.errors import DataError


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def turns(conv):
    return [(m.role, m.content) for m in conv.messages]


def test_openai_messages_with_weight_and_name(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "U", "name": "ann"},
                    {"role": "assistant", "content": "A0", "weight": 0},
                    {"role": "user", "content": "U2"},
                    {"role": "assistant", "content": "A1", "weight": 1},
                ],
                "topic": "x",
            }
        ],
    )
    (c,), rep = load_file(p)
    assert rep.format == "messages" and c.source == f"{p}:1" and c.meta == {"topic": "x"}
    assert turns(c) == [("system", "S"), ("user", "U"), ("assistant", "A0"), ("user", "U2"), ("assistant", "A1")]
    assert [m.weight for m in c.messages] == [None, None, 0, None, 1] and c.messages[1].name == "ann"
    assert c.messages[1].to_template() == {"role": "user", "content": "U", "name": "ann"}


def test_sharegpt_json_roles_and_element_lines(tmp_path):
    data = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {
            "system": "Be terse.",
            "conversations": [
                {"from": "human", "value": "Weather?"},
                {"from": "function_call", "value": '{"name": "w"}'},
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "Sunny."},
            ],
        },
    ]
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data, indent=2))
    (a, b), rep = load_file(p)
    assert rep.format == "sharegpt" and a.source == f"{p}:2" and b.source == f"{p}:14"
    assert turns(b) == [
        ("system", "Be terse."),
        ("user", "Weather?"),
        ("assistant", ""),
        ("tool", "sunny"),
        ("assistant", "Sunny."),
    ]
    assert b.messages[2].tool_calls[0].name == "w" and b.messages[2].tool_calls[0].arguments == {}


def test_alpaca_with_response_column_and_system_column(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"instruction": "Add", "input": "2 3", "resp": "5", "sys": "You add."},
            {"instruction": "Say hi", "input": "", "resp": "hi", "sys": ""},
        ],
    )
    (a, b), rep = load_file(p, "alpaca", {"output": "resp", "system": "sys"})
    assert turns(a) == [("system", "You add."), ("user", "Add\n\n2 3"), ("assistant", "5")]
    assert turns(b) == [("user", "Say hi"), ("assistant", "hi")]


def test_prompt_completion_plain_and_conversational(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "2+2=", "completion": " 4"}])
    (c,), rep = load_file(p)
    assert (
        rep.format == "prompt_completion"
        and c.kind == "completion"
        and turns(c) == [("user", "2+2="), ("assistant", " 4")]
    )
    p2 = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {
                "prompt": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
                "completion": [{"role": "assistant", "content": "d"}],
            }
        ],
    )
    (c2,), _ = load_file(p2)
    assert c2.kind == "messages" and [m.weight for m in c2.messages] == [None, 0, None, None]  # completion-only loss


def test_text_csv_with_multiline_records_keeps_physical_lines(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"first line\nsecond line",a\nplain,b\n"",c\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_file_strict(p)
    assert [(x.where, x.reason) for x in e.value.problems] == [(f"{p}:5", "text is empty")]
    convs, rep = load_file(p)
    assert rep.format == "text" and [c.source for c in convs] == [f"{p}:2", f"{p}:4"] and convs[0].kind == "text"


def load_file_strict(p, **kw):
    return load_conversations(DataSection(path=str(p), **kw))


def test_parquet_and_saved_dataset(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_dict({"instruction": ["q1", "q2"], "output": ["a1", "a2"]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "d.parquet", tmp_path / "saved"):
        convs, rep = load_file(path)
        assert rep.format == "alpaca" and [turns(c) for c in convs] == [
            [("user", "q1"), ("assistant", "a1")],
            [("user", "q2"), ("assistant", "a2")],
        ]
        assert convs[1].source == f"{path}#1"


def test_every_validation_error_collected_with_its_line(tmp_path):
    ok = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    lines = [
        json.dumps(ok),  # 1 ok
        '{"messages": [oops',  # 2 malformed JSON
        json.dumps({"messages": [{"role": "wizard", "content": "u"}, {"role": "assistant", "content": "a"}]}),  # 3
        json.dumps({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}),  # 4
        json.dumps({"messages": [{"role": "user", "content": "u"}]}),  # 5 no assistant
        json.dumps({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}]}),  # 6
        "",  # 7 blank: ignored
        json.dumps(ok),
    ]  # 8 ok
    p = tmp_path / "d.jsonl"
    p.write_bytes(("\n".join(lines) + "\n").encode() + b'{"messages": "caf\xe9"}\n')  # 9 invalid UTF-8
    with pytest.raises(DataError) as e:
        load_file_strict(p)
    got = {x.where.rsplit(":", 1)[1]: x.reason for x in e.value.problems}
    assert sorted(got, key=int) == ["2", "3", "4", "5", "6", "9"]
    assert "malformed JSON" in got["2"] and "unknown role 'wizard'" in got["3"] and "empty content" in got["4"]
    assert "no assistant turn" in got["5"] and "int, not a string" in got["6"] and "invalid UTF-8" in got["9"]
    assert all(x.fix for x in e.value.problems)
    convs, rep = load_file_strict(p, skip_invalid=True)
    assert [c.source for c in convs] == [f"{p}:1", f"{p}:8"]
    assert rep.rows_read == 8 and rep.kept == 2 and rep.skipped_records == 6


def test_typed_content_parts(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                    {"role": "assistant", "content": [{"type": "text", "value": "Hello"}]},
                ]
            },
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "value": "Q"}]},
                    {
                        "role": "assistant",
                        "content": [{"type": "reasoning", "value": "hmm"}, {"type": "text", "value": "A"}],
                    },
                ]
            },
        ],
    )
    convs, rep = load_file(p)
    assert turns(convs[0]) == [("user", "Hi there"), ("assistant", "Hello")]
    assert turns(convs[1]) == [("user", "Q"), ("assistant", "A")] and convs[1].messages[1].reasoning_content == "hmm"
    assert rep.skipped == []


def test_oasst_tree_follows_best_ranked_reply(tmp_path):
    tree = {
        "message_tree_id": "t",
        "prompt": {
            "role": "prompter",
            "text": "Q",
            "replies": [
                {"role": "assistant", "text": "worse", "rank": 1, "replies": []},
                {
                    "role": "assistant",
                    "text": "best",
                    "rank": 0,
                    "replies": [{"role": "prompter", "text": "thanks", "replies": []}],
                },
            ],
        },
    }
    (c,), rep = load_file(write_jsonl(tmp_path / "d.jsonl", [tree]))
    assert rep.format == "oasst" and turns(c) == [("user", "Q"), ("assistant", "best")]


def test_unknown_format_explains_fix(tmp_path):
    with pytest.raises(DataError) as e:
        load_file(write_jsonl(tmp_path / "d.jsonl", [{"question_text": "q", "reply": "a"}]))
    assert e.value.problems[0].where == f"{tmp_path / 'd.jsonl'}:1" and "data.format" in e.value.problems[0].fix


@needs_shared("gpteacher_codegen", "glaive_toolcall_en_demo", "reason_tool_use_demo")
def test_real_files_load(tmp_path):
    convs, rep = load_file(
        SHARED_DATA / "gpteacher_codegen" / "codegen-instruct.json", "alpaca", {"output": "response"}
    )
    assert rep.kept == rep.rows_read == 3855 and convs[0].messages[1].content.startswith("#include <iostream>")
    convs, rep = load_file(SHARED_DATA / "glaive_toolcall_en_demo" / "glaive_toolcall_en_demo.json")
    assert (
        rep.format == "sharegpt"
        and rep.kept == 255
        and {m.role for c in convs for m in c.messages} == {"user", "assistant", "tool"}
    )
    assert sum(len(m.tool_calls or []) for c in convs for m in c.messages) == 179
    assert sum(1 for c in convs if c.tools) == 158
    convs, rep = load_file(SHARED_DATA / "reason_tool_use_demo" / "reason_tool_use_demo_50.jsonl")
    assert rep.kept == 42 and rep.skipped == []
    assert sum(1 for c in convs for m in c.messages if m.reasoning_content) == 88
    assert sum(len(m.tool_calls or []) for c in convs for m in c.messages) == 58
