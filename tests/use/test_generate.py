"""tunesmith generate / chat: prompt files, batched == one-at-a-time, end-of-turn stop, the chat loop.

PYTHONPATH=src pytest -q tests/use/test_generate.py
"""

import json
import subprocess
import sys

import pytest

from tunesmith.errors import DataError


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir):
    from tunesmith.models.for_use import load_for_use

    return load_for_use(str(tiny_llama_dir))


def test_read_prompts_formats(tmp_path):
    from tunesmith.use.generate import read_prompts

    f = tmp_path / "p.jsonl"
    f.write_text(
        '{"id": 7, "prompt": "Hi"}\n\nplain line\n'
        '{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, '
        '{"role": "assistant", "content": "A"}]}\n'
        '{"prompt": [{"role": "user", "content": "U"}], "reference": "R"}\n'
    )
    recs = read_prompts(str(f))
    assert [r.id for r in recs] == ["7", f"{f}:3", f"{f}:4", f"{f}:5"]
    assert [(m.role, m.content) for m in recs[2].messages] == [
        ("system", "S"),
        ("user", "Q"),
    ]  # trailing assistant -> reference
    assert recs[2].reference == "A" and recs[2].prompt == "Q"
    assert recs[1].messages[0].content == "plain line" and recs[3].reference == "R"
    j = tmp_path / "p.json"
    j.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b", "id": "B"}]))
    assert [r.id for r in read_prompts(str(j))] == [f"{j}#0", "B"]


def test_read_prompts_errors_name_every_line(tmp_path):
    from tunesmith.use.generate import read_prompts

    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(DataError) as exc:
        read_prompts(str(f))
    wheres = [p.where for p in exc.value.problems]
    assert wheres == [f"{f}:2", f"{f}:3 (message 0)"]
    with pytest.raises(DataError):
        read_prompts(str(tmp_path / "missing.jsonl"))


def test_batched_equals_one_at_a_time(loaded):
    """Left padding: a batch of prompts of different lengths gives the same greedy tokens as each prompt alone."""
    from tunesmith.data.records import Message
    from tunesmith.use.generate import PromptRecord, generate_records

    texts = [
        "Hi",
        "What is the capital of France? Answer briefly please.",
        "1 2 3",
        "Tell me a long story about a dragon and a knight.",
    ]
    recs = [PromptRecord(str(k), [Message("user", t)]) for k, t in enumerate(texts)]
    batched = generate_records(loaded, recs, max_new_tokens=12, batch_size=4)
    single = generate_records(loaded, recs, max_new_tokens=12, batch_size=1)
    assert [r["prediction"] for r in batched] == [r["prediction"] for r in single]
    assert all(r["new_tokens"] == 12 and r["finish_reason"] == "length" for r in batched)  # a random model never stops


def test_generation_cut_after_first_eos(loaded):
    """generate_ids stops each row at its first end-of-turn id (kept) and other rows go on."""
    from tunesmith.data.records import Conversation, Message
    from tunesmith.models.generation import generate_ids
    from tunesmith.render.templates import render_prompt

    tok = loaded.tokenizer
    prompts = [render_prompt(tok, Conversation([Message("user", t)])) for t in ("Hello", "Why is the sky blue?")]
    free = generate_ids(loaded.model, tok, prompts, max_new_tokens=10, eos_ids={-1})
    stop = free[0][3]
    cut = generate_ids(loaded.model, tok, prompts, max_new_tokens=10, eos_ids={stop})
    assert cut[0] == free[0][: free[0].index(stop) + 1]
    assert cut[1] == (free[1][: free[1].index(stop) + 1] if stop in free[1] else free[1])


def test_end_of_turn_added_to_generation_config(tmp_path, smol_tokenizer):
    """A model whose EOS is <|endoftext|> gets the template's end-of-turn id <|im_end|> (2) among its eos ids."""
    from transformers import AutoTokenizer

    from conftest import build_tiny_llama
    from tunesmith.models.for_use import load_for_use
    from tunesmith.models.generation import stop_ids

    tok = AutoTokenizer.from_pretrained(build_tiny_llama(smol_tokenizer, tmp_path / "a"))
    tok.eos_token = "<|endoftext|>"
    build_tiny_llama(tok, tmp_path / "m")
    loaded = load_for_use(str(tmp_path / "m"))
    assert loaded.tokenizer.eos_token_id == 0
    assert loaded.generation_config.eos_token_id == [0, 2]
    assert any("end-of-turn id 2" in n for n in loaded.notes)
    assert {0, 2} <= stop_ids(loaded)
    from conftest import make_adapter
    from tunesmith.export.merge import run_merge

    make_adapter(tmp_path / "m", None, tmp_path / "adapter")
    run_merge(str(tmp_path / "adapter"), model=str(tmp_path / "m"), output=str(tmp_path / "merged"), log=lambda s: None)
    assert json.loads((tmp_path / "merged" / "generation_config.json").read_text())["eos_token_id"] == [
        0,
        2,
    ]  # saved with it


def test_chat_loop_history_reset_and_system(loaded):
    """The chat keeps history, /reset forgets it, /system replaces the system prompt; streamed text == reply;
    each reply equals batched generation of the same conversation."""
    from tunesmith.data.records import Message
    from tunesmith.use.chat import ChatSession, chat_loop
    from tunesmith.use.generate import PromptRecord, generate_records

    session = ChatSession(loaded, temperature=0, max_new_tokens=8)
    out = []
    n = chat_loop(
        session,
        iter(["hello\n", "and again\n", "/reset\n", "/system Be brief.\n", "fresh\n", "/exit\n", "never\n"]),
        out.append,
    )
    text = "".join(out)
    assert n == 3 and "never" not in text and "(history cleared)" in text
    assert session.system == "Be brief." and [m.role for m in session.history] == ["user", "assistant"]
    assert session.history[0].content == "fresh"
    want = generate_records(
        loaded, [PromptRecord("x", [Message("user", "fresh")])], max_new_tokens=8, system="Be brief."
    )[0]
    assert session.history[1].content == want["prediction"]
    assert text.rstrip().endswith(want["prediction"])  # the streamed text is the reply


def test_chat_session_drops_oldest_turns(loaded):
    from tunesmith.data.records import Message
    from tunesmith.use.chat import ChatSession

    session = ChatSession(loaded, temperature=0, max_new_tokens=1000)  # context 1024 - 1000 = 24 tokens of prompt
    session.history = [
        Message("user", "one two three four five six"),
        Message("assistant", "ok ok ok ok ok"),
        Message("user", "seven"),
    ]
    ids = session.prompt_ids()
    assert [m.content for m in session.history] == ["seven"] and len(ids) <= 24


def test_generate_cli_writes_jsonl(tmp_path, tiny_llama_dir):
    src = tmp_path / "p.txt"
    src.write_text("Hello\nHow are you?\n")
    out = tmp_path / "o.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "tunesmith",
        "generate",
        str(src),
        "--model",
        str(tiny_llama_dir),
        "-o",
        str(out),
        "--max-new-tokens",
        "4",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Hello", "How are you?"] and all(r["new_tokens"] == 4 for r in rows)
    # stderr is not a terminal: plain progress lines (prompts done, tokens/s, ETA) instead of a bar
    progress = [x for x in proc.stderr.splitlines() if x.startswith("generate: ")]
    assert progress and progress[-1].startswith("generate: 2/2 prompts (100%), ") and "tokens/s" in progress[-1]
    assert "ETA 0s" in progress[-1]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_chat_cli_reads_piped_stdin(tiny_llama_dir):
    """Not a terminal: each stdin line is a user turn; /exit ends the chat (exit code 0)."""
    cmd = [
        sys.executable,
        "-m",
        "tunesmith",
        "chat",
        "--model",
        str(tiny_llama_dir),
        "--temperature",
        "0",
        "--max-new-tokens",
        "3",
    ]
    proc = subprocess.run(cmd, input="hi\n/reset\nagain\n/exit\nnever\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("> ", "assistant:", "("))]
    assert [line.split(":")[0] if line.startswith("assistant") else line for line in lines] == [
        "> hi",
        "assistant",
        "(history cleared)",
        "> again",
        "assistant",
    ]


@pytest.fixture(scope="module")
def tools_model_dir(smol_tokenizer, tmp_path_factory):
    """The tiny Llama saved with the built-in chatml-tools template."""
    import copy

    from conftest import build_tiny_llama
    from tunesmith.render.chat_templates import resolve_chat_template

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = resolve_chat_template("chatml-tools")
    return build_tiny_llama(tok, tmp_path_factory.mktemp("tiny-tools"))


WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def test_chat_session_with_tools_shows_and_keeps_parsed_calls(tools_model_dir):
    from tunesmith.data.records import Message
    from tunesmith.models.for_use import load_for_use
    from tunesmith.use.chat import ChatSession, chat_loop

    session = ChatSession(load_for_use(str(tools_model_dir)), tools=[{"type": "function", "function": WEATHER}])
    session.history.append(Message("user", "Paris?"))
    shown = []
    session._remember(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', shown.append
    )
    assert shown == ['tool call: get_weather({"city": "Paris"})\n']
    last = session.history[-1]
    assert last.content == "" and [(c.name, c.arguments) for c in last.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    out = []
    session.max_new_tokens = 2
    assert chat_loop(session, iter(["/tool 21 degrees"]), out.append) == 1
    assert [m.role for m in session.history] == ["user", "assistant", "tool", "assistant"]
    text = session.loaded.tokenizer.decode(session.prompt_ids())  # the prompt of that last reply
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text  # the tools are in the prompt
    assert text.endswith(
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n21 degrees\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert session.history[2].content == "21 degrees"


def test_chat_and_generate_refuse_tools_the_template_cannot_render(tmp_path, tiny_llama_dir):
    spec = tmp_path / "tools.json"
    spec.write_text(json.dumps([WEATHER]))
    base = [sys.executable, "-m", "tunesmith"]
    chat = subprocess.run(
        base + ["chat", "--model", str(tiny_llama_dir), "--tools", str(spec)],
        input="hi\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chat.returncode == 2 and "chatml-tools" in chat.stderr and "Traceback" not in chat.stderr
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "Weather in Oslo?", "tools": [WEATHER]}) + "\n")
    gen = subprocess.run(
        base + ["generate", str(src), "--model", str(tiny_llama_dir)], capture_output=True, text=True, timeout=300
    )
    assert gen.returncode == 2 and "does not render" in gen.stderr and "chatml-tools" in gen.stderr


def test_generate_with_tools_parses_calls(tmp_path, tools_model_dir):
    from tunesmith.models.for_use import load_for_use
    from tunesmith.use.generate import generate_records, read_prompts

    src = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "Weather in Oslo?", "tools": [WEATHER]},
        {
            "messages": [
                {"role": "user", "content": "Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
                },
                {"role": "tool", "content": "3"},
            ]
        },
        {"prompt": "Hi"},
    ]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = read_prompts(str(src))
    assert (
        recs[0].tools[0]["function"]["name"] == "get_weather"
        and recs[1].messages[1].tool_calls[0].name == "get_weather"
    )
    out = generate_records(
        load_for_use(str(tools_model_dir)), recs, max_new_tokens=3, tools=[{"type": "function", "function": WEATHER}]
    )
    assert [("tool_calls" in r) for r in out] == [True, True, True]  # every record has tools (its own or --tools)
    assert all(r["tool_calls"] == [] for r in out)  # a random model writes no call
    out = generate_records(load_for_use(str(tools_model_dir)), recs[2:], max_new_tokens=3)
    assert "tool_calls" not in out[0]


def test_chat_stream_yields_growing_text_and_ends_with_the_reply(loaded):
    """ChatSession.stream (the web page's chat): each yield extends the last, the final one is what reply() returns
    for the same history, and the turn is kept in the history."""
    from tunesmith.use.chat import ChatSession

    streamed = ChatSession(loaded, system="Be brief.", temperature=0, max_new_tokens=12)
    parts = list(streamed.stream("Hello there"))
    assert len(parts) >= 2 and all(b.startswith(a) for a, b in zip(parts[:-2], parts[1:-1]))
    plain = ChatSession(loaded, system="Be brief.", temperature=0, max_new_tokens=12)
    assert parts[-1] == plain.reply("Hello there")
    assert [(m.role, m.content) for m in streamed.history] == [("user", "Hello there"), ("assistant", parts[-1])]
