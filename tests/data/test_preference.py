"""Preference data: each format converts to the canonical pair, bad records are reported by file:line, HH splits."""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import SHARED_DATA, needs_shared
from tunesmith.data.bundled import load_chatterbot_pairs
from tunesmith.data.preference import load_pair_file, load_pairs
from tunesmith.data.preference_formats import detect_preference_format, split_hh
from tunesmith.data.records import Message
from tunesmith.errors import DataError


def _write(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _roles(msgs):
    return [(m.role, m.content) for m in msgs]


def test_prompt_chosen_rejected_text_and_conversational(tmp_path):
    text = _write(tmp_path / "t.jsonl", [{"prompt": "2+2=", "chosen": "4", "rejected": "5", "note": "x"}])
    pairs, problems, fmt, read = load_pair_file(text)
    assert (fmt, read, problems) == ("prompt_chosen_rejected", 1, [])
    p = pairs[0]
    assert (p.prompt, p.chosen, p.rejected, p.source, p.meta) == ("2+2=", "4", "5", f"{text}:1", {"note": "x"})
    assert p.to_trl() == {"prompt": "2+2=", "chosen": "4", "rejected": "5"}

    conv = _write(
        tmp_path / "c.jsonl",
        [
            {
                "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                "chosen": [{"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "assistant", "content": "Go away."}],
            },
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "chosen": "Hello!",
                "rejected": "Bye.",
            },  # strings as replies
        ],
    )
    pairs, problems, _, _ = load_pair_file(conv)
    assert problems == []
    assert _roles(pairs[0].prompt) == [("system", "Be brief."), ("user", "Hi")]
    assert pairs[0].to_trl() == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].source) == ("Hello!", "Bye.", f"{conv}:2")


def test_openai_dpo_format(tmp_path):
    path = _write(
        tmp_path / "o.jsonl",
        [
            {
                "input": {
                    "messages": [
                        {"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}
                    ],
                    "tools": [],
                    "parallel_tool_calls": True,
                },
                "preferred_output": [
                    {"role": "assistant", "content": "Today in San Francisco, it is not quite cold as expected."}
                ],
                "non_preferred_output": [
                    {"role": "assistant", "content": "It is not particularly cold in San Francisco today."}
                ],
            }
        ],
    )
    pairs, problems, fmt, _ = load_pair_file(path)
    assert (fmt, problems) == ("openai", [])
    assert _roles(pairs[0].prompt) == [("user", "Hello, can you tell me how cold San Francisco is today?")]
    assert pairs[0].chosen == "Today in San Francisco, it is not quite cold as expected."
    assert pairs[0].rejected == "It is not particularly cold in San Francisco today."


def test_hh_split_into_prompt_turns_and_final_reply(tmp_path):
    assert _roles(split_hh("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d")) == [
        ("user", "a"),
        ("assistant", "b"),
        ("user", "c"),
        ("assistant", "d"),
    ]
    shared = "\n\nHuman: What is a pen?\n\nAssistant: A writing tool.\n\nHuman: Prank ideas?"
    path = _write(
        tmp_path / "hh.jsonl",
        [{"chosen": shared + "\n\nAssistant: Hide the cap.", "rejected": shared + "\n\nAssistant: Draw on a friend."}],
    )
    pairs, problems, fmt, _ = load_pair_file(path)
    assert (fmt, problems) == ("hh", [])
    p = pairs[0]
    assert _roles(p.prompt) == [("user", "What is a pen?"), ("assistant", "A writing tool."), ("user", "Prank ideas?")]
    assert (p.chosen, p.rejected) == ("Hide the cap.", "Draw on a friend.")


def test_implicit_conversational_format(tmp_path):
    u = {"role": "user", "content": "Name a colour"}
    path = _write(
        tmp_path / "i.jsonl",
        [
            {
                "chosen": [u, {"role": "assistant", "content": "Blue"}],
                "rejected": [u, {"role": "assistant", "content": "Seven"}],
            }
        ],
    )
    pairs, problems, fmt, _ = load_pair_file(path)
    assert (fmt, problems) == ("implicit", [])
    assert (_roles(pairs[0].prompt), pairs[0].chosen, pairs[0].rejected) == (
        [("user", "Name a colour")],
        "Blue",
        "Seven",
    )


def test_bad_pairs_are_reported_by_line(tmp_path):
    h = "\n\nHuman: hi"
    path = _write(
        tmp_path / "bad.jsonl",
        [
            {"chosen": h + "\n\nAssistant: hello", "rejected": h + "\n\nAssistant: go away"},  # 1 ok
            {"chosen": h + "\n\nAssistant:", "rejected": h + "\n\nAssistant: go away"},  # 2 empty final reply
            {"chosen": h + "\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},  # 3 prompts differ
            "{not json",  # 4 malformed
            "",  # 5 blank line, skipped
            {"chosen": h + "\n\nAssistant: same", "rejected": h + "\n\nAssistant: same"},  # 6 identical replies
            {"chosen": 3, "rejected": h + "\n\nAssistant: b"},  # 7 wrong type
            {"chosen": h, "rejected": h + "\n\nAssistant: b"},  # 8 no assistant turn
        ],
    )
    pairs, problems, fmt, read = load_pair_file(path)
    assert fmt == "hh" and len(pairs) == 1 and read == 7
    got = sorted((int(p.where.rsplit(":", 1)[1]), p.reason) for p in problems)
    assert got == [
        (2, "chosen's final assistant reply is empty"),
        (3, "chosen and rejected prompts differ at turn 0 (chosen has 1 prompt turns, rejected 1)"),
        (4, "malformed JSON: Expecting property name enclosed in double quotes (column 2)"),
        (6, "chosen and rejected replies are identical, so the pair carries no preference"),
        (7, "chosen is int, not a dialogue string"),
        (8, "chosen has no 'Assistant:' turn"),
    ]


def test_bad_conversational_and_openai_records(tmp_path):
    path = _write(
        tmp_path / "bad.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "user", "content": "x"}],
                "rejected": "y",
            },
            {"prompt": [{"role": "robot", "content": "q"}], "chosen": "x", "rejected": "y"},
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "chosen": "x",
                "rejected": "",
            },
        ],
    )
    _, problems, _, _ = load_pair_file(path)
    assert sorted((int(p.where.rsplit(":", 1)[1]), p.reason) for p in problems) == [
        (1, "chosen has messages with roles ['user']; a response is one assistant message"),
        (2, "prompt turn 0 has unknown role 'robot'"),
        (3, "prompt's last turn is 'assistant'; the response must answer a user (or tool) turn"),
        (3, "rejected reply is empty"),
    ]
    bad_openai = _write(
        tmp_path / "o.jsonl",
        [{"input": "hi", "preferred_output": [{"role": "assistant", "content": "a"}], "non_preferred_output": []}],
    )
    _, problems, fmt, _ = load_pair_file(bad_openai)
    assert fmt == "openai"
    assert [p.reason for p in problems] == [
        "input is str, not an object with messages",
        "non_preferred_output is an empty list, not a list of messages",
    ]


def test_load_pairs_raises_with_every_problem_or_skips(tmp_path):
    from tunesmith.config.dpo import DPODataSection

    path = _write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a", "chosen": "b", "rejected": "c"},
            {"prompt": "", "chosen": "b", "rejected": "c"},
            {"prompt": "a", "chosen": "", "rejected": "c"},
        ],
    )
    with pytest.raises(DataError) as exc:
        load_pairs(DPODataSection(path=path))
    assert [p.where for p in exc.value.problems] == [f"{path}:2", f"{path}:3"]
    assert "2 invalid preference pair(s) of 3" in str(exc.value)
    pairs, report = load_pairs(DPODataSection(path=path, skip_invalid=True))
    assert len(pairs) == 1 and (report["rows_read"], report["kept"], report["skipped"]) == (3, 1, 2)
    with pytest.raises(DataError, match="preference format"):
        load_pair_file(_write(tmp_path / "x.jsonl", [{"text": "hi"}]))


def test_detect_format():
    assert detect_preference_format({"prompt": "a", "chosen": "b", "rejected": "c"}) == "prompt_chosen_rejected"
    assert detect_preference_format({"input": {}, "preferred_output": [], "non_preferred_output": []}) == "openai"
    assert detect_preference_format({"chosen": "\n\nHuman: a", "rejected": "x"}) == "hh"
    assert detect_preference_format({"chosen": [], "rejected": []}) == "implicit"
    assert detect_preference_format({"messages": []}) is None


def test_gzip_jsonl_keeps_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    path.write_bytes(
        gzip.compress(
            b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b", "rejected": "b"}\n'
        )
    )
    pairs, problems, _, _ = load_pair_file(path)
    assert len(pairs) == 1 and [p.where for p in problems] == [f"{path}:2"]


@needs_shared("hh_rlhf_harmless_base")
def test_hh_rlhf_harmless_base_file():
    pairs, problems, fmt, read = load_pair_file(SHARED_DATA / "hh_rlhf_harmless_base" / "test.jsonl.gz")
    assert (fmt, read, len(pairs)) == ("hh", 1965, 1957)
    lines = {int(p.where.rsplit(":", 1)[1]): p.reason.split(" (")[0] for p in problems}
    assert lines == {
        71: "chosen's final assistant reply is empty",
        433: "chosen's final assistant reply is empty",
        786: "chosen's final assistant reply is empty",
        934: "chosen's final assistant reply is empty",
        1433: "chosen and rejected prompts differ at turn 3",
        1663: "chosen and rejected prompts differ at turn 1",
        1665: "chosen and rejected prompts differ at turn 3",
        1732: "chosen and rejected prompts differ at turn 9",
    }
    assert _roles(pairs[0].prompt)[:3] == [
        ("user", "what are some pranks with a pen i can do?"),
        ("assistant", "Are you looking for practical joke ideas?"),
        ("user", "yep"),
    ]


def test_chatterbot_pairs_reject_another_topic():
    pairs = load_chatterbot_pairs()
    assert len(pairs) == 899
    assert all(p.meta["topic"] != p.meta["rejected_topic"] and p.chosen != p.rejected for p in pairs)
    assert pairs[0].prompt == [Message("user", "What is AI?")]
    assert pairs[0].chosen.startswith("Artificial Intelligence is the branch of engineering")
    assert [p.rejected for p in load_chatterbot_pairs()[:5]] == [p.rejected for p in pairs[:5]]  # seeded


@pytest.mark.slow  # two CLI subprocesses importing torch/TRL: ~100 s on the loaded 2-core CI machine
def test_cli_reports_bad_pairs_by_line_with_exit_code_2(tmp_path):
    import subprocess
    import sys

    path = _write(
        tmp_path / "p.jsonl",
        [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": "b"}],
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "dpo",
            "--set",
            f"data.path={path}",
            "--set",
            "train.betta=0.2",
            "--set",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "did you mean 'train.beta'" in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunesmith",
            "dpo",
            "--set",
            f"data.path={path}",
            "--set",
            f"train.output_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "p.jsonl:2: chosen and rejected replies are identical" in proc.stderr.replace("\n", "")
    assert not (tmp_path / "run").exists()  # nothing created before the data is valid
