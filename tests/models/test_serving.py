"""The serving contract (serving.json): what training writes and what every serving path reads back.

.venv/bin/python -m pytest -q tests/models/test_serving.py
"""

import json

import pytest

from tunesmith.data.records import Conversation, Message
from tunesmith.errors import ModelError

SYSTEM = "Solve the problem. End with #### <number>."


def _convs():
    return [
        Conversation(
            [Message("system", SYSTEM), Message("user", "What is 2 + 3?"), Message("assistant", "2 + 3 = 5\n#### 5")],
            "gsm.jsonl:1",
        ),
        Conversation(
            [Message("system", "A record's own system turn."), Message("user", "Hi"), Message("assistant", "Hello")],
            "gsm.jsonl:2",
        ),
    ]  # as trained: data.system_prompt was added to every conversation without a system turn


def test_contract_probes_are_the_training_prompts_as_a_user_sends_them(smol_tokenizer):
    from transformers import GenerationConfig

    from tunesmith.models.serving import build_contract, serving_prompt_ids, training_prompts
    from tunesmith.render.templates import render_prompt

    convs = _convs()
    gen = GenerationConfig(eos_token_id=2)
    contract = build_contract(
        smol_tokenizer,
        gen,
        system_prompt=SYSTEM,
        prompts=training_prompts(convs),
        max_new_tokens=96,
        trained_with={"command": "sft"},
    )
    assert contract.system_prompt == SYSTEM and contract.end_of_turn == {"token": "<|im_end|>", "id": 2}
    assert contract.generation == {"do_sample": False, "max_new_tokens": 96}
    assert contract.chat_template == smol_tokenizer.chat_template and contract.tool_template is None
    # the trained system turn is left out of what a user sends; a record's own system turn stays
    assert [m["role"] for m in contract.probes[0]["messages"]] == ["user"]
    assert [m["role"] for m in contract.probes[1]["messages"]] == ["system", "user"]
    for conv, probe, sent in zip(convs, contract.probes, contract.probe_conversations(), strict=True):
        assert probe["prompt_ids"] == render_prompt(smol_tokenizer, conv)
        assert serving_prompt_ids(smol_tokenizer, sent.messages, SYSTEM) == probe["prompt_ids"]
    # served without the contract's system prompt, SmolLM2's template injects its own default: a different prompt
    plain = serving_prompt_ids(smol_tokenizer, contract.probe_conversations()[0].messages, None)
    assert plain != contract.probes[0]["prompt_ids"]
    assert "SmolLM" in smol_tokenizer.decode(plain) and SYSTEM in smol_tokenizer.decode(
        contract.probes[0]["prompt_ids"]
    )


def test_contract_files_round_trip_and_greedy_defaults(tmp_path, smol_tokenizer):
    from transformers import GenerationConfig

    from tunesmith.models.serving import SERVING_FILE, build_contract, contract_files, read_contract

    gen = GenerationConfig(eos_token_id=2, do_sample=True, temperature=0.7, top_p=0.9)
    contract = build_contract(
        smol_tokenizer, gen, system_prompt=None, prompts=[], max_new_tokens=32, trained_with={"command": "dpo"}
    )
    for name, text in contract_files(contract, gen).items():
        (tmp_path / name).write_text(text)
    back = read_contract(tmp_path)
    assert back == contract and back.system_for(None) is None and back.system_for("mine") == "mine"
    saved = json.loads((tmp_path / SERVING_FILE).read_text())
    assert saved["format"] == 1 and len(saved["chat_template_sha256"]) == 16
    written = GenerationConfig.from_pretrained(tmp_path)
    assert written.do_sample is False and written.max_new_tokens == 32 and written.temperature is None
    assert gen.do_sample is True  # the trainer's own config is not changed
    assert read_contract(tmp_path / "nowhere") is None


def test_unreadable_or_newer_contract_is_a_clear_error(tmp_path):
    from tunesmith.models.serving import SERVING_FILE, read_contract

    (tmp_path / SERVING_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="Unreadable serving contract"):
        read_contract(tmp_path)
    (tmp_path / SERVING_FILE).write_text(json.dumps({"format": 99}))
    with pytest.raises(ModelError, match="Unknown serving contract"):
        read_contract(tmp_path)


def test_with_system_keeps_a_conversation_s_own_system_turn():
    from tunesmith.models.serving import with_system

    user = [Message("user", "hi")]
    assert [m.content for m in with_system(user, "S")] == ["S", "hi"]
    own = [Message("system", "mine"), Message("user", "hi")]
    assert [m.content for m in with_system(own, "S")] == ["mine", "hi"]
    assert with_system(user, None) == user


def test_adapter_home_of_a_named_adapter(tmp_path):
    from tunesmith.models.adapters import adapter_home, find_adapter

    run = tmp_path / "run"
    (run / "adapter" / "myada").mkdir(parents=True)
    (run / "adapter" / "myada" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "tokenizer.json").write_text("{}")
    (run / "adapter" / "serving.json").write_text("{}")
    found = find_adapter(run)
    assert found == run / "adapter" / "myada"
    assert adapter_home(found) == run / "adapter"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "adapter_config.json").write_text("{}")
    assert adapter_home(plain) == plain
