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
    from tunesmith.models.loading import load_for_use

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
    from tunesmith.models.loading import load_for_use, stop_ids

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
