"""Token-exact assistant-only masks for three real chat templates (fixtures), plus the template checks."""

from __future__ import annotations

import copy

import pytest

from conftest import FIXTURES
from tunesmith.data.records import Conversation, Message
from tunesmith.errors import DataError, TemplateError
from tunesmith.render.chat_templates import apply_chat_template_option, resolve_chat_template
from tunesmith.render.checks import check_template, default_system_prompt, fix_generation_config, template_eot_id
from tunesmith.render.rows import render_all, resolve_max_length, truncate
from tunesmith.render.templates import IGNORE_INDEX, render_conversation, render_prompt

M = IGNORE_INDEX
CHATML = (FIXTURES / "smollm2_chatml.jinja").read_text()
LLAMA3 = (FIXTURES / "llama3_instruct.jinja").read_text()
QWEN = (FIXTURES / "qwen2_5.jinja").read_text()
QWEN_DEFAULT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def conv(*turns, weights=None):
    weights = weights or {}
    return Conversation([Message(r, c, weights.get(i)) for i, (r, c) in enumerate(turns)], "test:1")


def expected(tok, segments):
    """Encode (text, trained) segments one by one: ids, and labels = ids where trained else -100."""
    ids, labels = [], []
    for text, trained in segments:
        seg = tok(text, add_special_tokens=False)["input_ids"]
        ids += seg
        labels += seg if trained else [M] * len(seg)
    return ids, labels


@pytest.fixture(scope="module")
def llama_tok(smol_tokenizer):
    """SmolLM2's tokenizer plus the Llama-3 special tokens, so <|eot_id|> is one token as in Llama 3."""
    tok = copy.deepcopy(smol_tokenizer)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tok.bos_token = "<|begin_of_text|>"
    tok.chat_template = LLAMA3
    return tok


MULTI = conv(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4"))


def test_chatml_smollm2_multi_turn_mask_token_by_token(smol_tokenizer):
    r = render_conversation(smol_tokenizer, MULTI, chat_template=CHATML)
    ids, labels = expected(
        smol_tokenizer,
        [
            ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
            ("Hello!<|im_end|>", True),
            ("\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", False),
            ("4<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert r.input_ids == ids
    assert r.labels == labels
    # the end-of-turn token <|im_end|> (id 2) closes each reply and is trained
    trained = [t for t in r.labels if t != M]
    assert trained.count(2) == 2 and trained[-1] == 2


def test_llama3_multi_turn_mask_and_single_bos(llama_tok):
    r = render_conversation(llama_tok, MULTI)
    h = lambda role: f"<|start_header_id|>{role}<|end_header_id|>\n\n"  # noqa: E731
    ids, labels = expected(
        llama_tok,
        [
            (
                "<|begin_of_text|>" + h("system") + "Be brief.<|eot_id|>" + h("user") + "Hi<|eot_id|>" + h("assistant"),
                False,
            ),
            ("Hello!<|eot_id|>", True),
            (h("user") + "2+2?<|eot_id|>" + h("assistant"), False),
            ("4<|eot_id|>", True),
        ],
    )
    assert r.input_ids == ids and r.labels == labels
    bos = llama_tok.bos_token_id
    assert r.input_ids[0] == bos and r.input_ids.count(bos) == 1  # no double BOS


def test_qwen_injected_default_system_prompt_is_masked(smol_tokenizer):
    c = conv(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Bye!"))
    r = render_conversation(smol_tokenizer, c, chat_template=QWEN)
    ids, labels = expected(
        smol_tokenizer,
        [
            (
                f"<|im_start|>system\n{QWEN_DEFAULT}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                False,
            ),
            ("Hello!<|im_end|>", True),
            ("\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", False),
            ("Bye!<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert r.input_ids == ids and r.labels == labels
    assert default_system_prompt(smol_tokenizer, QWEN) == QWEN_DEFAULT
    assert (
        default_system_prompt(smol_tokenizer, CHATML)
        == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    )
    assert default_system_prompt(smol_tokenizer, LLAMA3) is None


def test_weight_zero_masks_that_reply(smol_tokenizer):
    c = conv(("user", "Hi"), ("assistant", "Bad answer"), ("user", "Again"), ("assistant", "Good"), weights={1: 0})
    r = render_conversation(smol_tokenizer, c, chat_template=CHATML)
    trained = [t for t in r.labels if t != M]
    assert trained == smol_tokenizer("Good<|im_end|>", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", [CHATML, QWEN, LLAMA3])
def test_trained_tokens_equal_inference_tokens(smol_tokenizer, llama_tok, template):
    tok = llama_tok if template is LLAMA3 else smol_tokenizer
    c = conv(("user", "What is the capital of France?"), ("assistant", "Paris."))
    r = render_conversation(tok, c, chat_template=template)
    prompt = render_prompt(tok, c, chat_template=template)
    eot = template_eot_id(tok, template)
    reply = tok("Paris.", add_special_tokens=False)["input_ids"] + [eot]
    # what the model sees at inference (prompt with generation header), then what it must generate
    assert r.input_ids[: len(prompt) + len(reply)] == prompt + reply
    assert [t for t in r.labels[: len(prompt)] if t != M] == []  # generation-prompt header masked
    assert r.labels[len(prompt) : len(prompt) + len(reply)] == reply


def test_plain_prompt_completion_eos_exactly_once(smol_tokenizer):
    eos = smol_tokenizer.eos_token_id
    for completion in (" Paris", " Paris<|im_end|>"):
        c = Conversation(
            [Message("user", "Capital of France:"), Message("assistant", completion)], "t:1", kind="completion"
        )
        r = render_conversation(smol_tokenizer, c)
        p = smol_tokenizer("Capital of France:")["input_ids"]
        comp = smol_tokenizer(" Paris", add_special_tokens=False)["input_ids"] + [eos]
        assert r.input_ids == p + comp and r.labels == [M] * len(p) + comp


def test_text_kind_trains_every_token(smol_tokenizer):
    r = render_conversation(smol_tokenizer, Conversation([Message("assistant", "Hello world")], "t:1", kind="text"))
    assert r.labels == r.input_ids == smol_tokenizer("Hello world")["input_ids"] + [smol_tokenizer.eos_token_id]


def test_missing_template_error_and_builtin_option(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    with pytest.raises(TemplateError) as e:
        apply_chat_template_option(tok, None)
    assert e.value.problems[0].where == "model.chat_template" and "chatml" in e.value.problems[0].fix
    apply_chat_template_option(tok, "chatml")
    r = render_conversation(tok, conv(("user", "Hi"), ("assistant", "Yo")))
    assert [t for t in r.labels if t != M] == tok("Yo<|im_end|>", add_special_tokens=False)["input_ids"]
    assert resolve_chat_template(str(FIXTURES / "qwen2_5.jinja")) == QWEN
    with pytest.raises(TemplateError):
        resolve_chat_template("no-such-template")


def test_eot_not_eos_is_found_and_fixed(llama_tok):
    from transformers import GenerationConfig

    gc = GenerationConfig(eos_token_id=llama_tok.eos_token_id)
    eot = llama_tok.convert_tokens_to_ids("<|eot_id|>")
    codes = {f.code for f in check_template(llama_tok, gc)}
    assert "eot_not_eos" in codes
    assert fix_generation_config(gc, llama_tok) == eot
    assert gc.eos_token_id == [llama_tok.eos_token_id, eot]
    assert "eot_not_eos" not in {f.code for f in check_template(llama_tok, gc)}
    assert fix_generation_config(gc, llama_tok) is None  # idempotent


def test_template_that_refuses_same_role_turns_is_reported_with_line(smol_tokenizer):
    strict = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    good = conv(("user", "a"), ("assistant", "b"))
    bad = Conversation([Message("user", "a"), Message("user", "b"), Message("assistant", "c")], "data.jsonl:7")
    with pytest.raises(DataError) as e:
        render_all(smol_tokenizer, [good, bad], 64, chat_template=strict)
    assert [p.where for p in e.value.problems] == ["data.jsonl:7"] and "alternate" in e.value.problems[0].reason
    kept, stats = render_all(smol_tokenizer, [good, bad], 64, chat_template=strict, skip_invalid=True)
    assert len(kept) == 1 and len(stats.invalid) == 1
    # ChatML takes consecutive same-role turns: no problem there
    assert len(render_all(smol_tokenizer, [bad], 64, chat_template=CHATML)[0]) == 1


def test_truncation_drops_examples_without_trained_tokens_and_counts_loss(smol_tokenizer):
    long_user = conv(("user", "word " * 100), ("assistant", "short"))
    long_reply = conv(("user", "q"), ("assistant", "answer " * 50))
    full = render_conversation(smol_tokenizer, long_reply, chat_template=CHATML)
    kept, stats = render_all(smol_tokenizer, [long_user, long_reply], 40, chat_template=CHATML)
    assert stats.dropped_empty == 1 and stats.kept == 1 and stats.truncated == 2
    _, lost = truncate(full, 40)
    assert lost == full.num_trained - kept[0].num_trained > 0
    short = len(smol_tokenizer("short<|im_end|>", add_special_tokens=False)["input_ids"])
    assert short == 2 and stats.trained_tokens_lost == lost + short  # + the trained tokens of the dropped example
    assert all(r.num_trained > 0 for r in kept)


def test_max_length_ignores_placeholder_model_max_length(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.model_max_length = int(1e30)
    n, why = resolve_max_length(512, tok, None)
    assert n == 512 and why == "512 tokens (from train.max_length)"

    class Cfg:
        max_position_embeddings = 256

    assert resolve_max_length(512, tok, Cfg())[0] == 256


def test_pad_equal_to_eot_is_masked_by_attention_not_id(smol_tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    assert smol_tokenizer.pad_token_id == template_eot_id(smol_tokenizer) == 2
    a = render_conversation(
        smol_tokenizer, conv(("user", "Hi"), ("assistant", "Hello there, friend!")), chat_template=CHATML
    )
    b = render_conversation(smol_tokenizer, conv(("user", "Hi"), ("assistant", "Yo")), chat_template=CHATML)
    batch = DataCollatorForLanguageModeling(pad_token_id=2)(
        [{"input_ids": a.input_ids, "labels": a.labels}, {"input_ids": b.input_ids, "labels": b.labels}]
    )
    n = len(b.input_ids)
    assert batch["labels"][1, :n].tolist() == b.labels and 2 in b.labels  # eot trained although it equals pad
    assert (batch["labels"][1, n:] == M).all() and (batch["attention_mask"][1, n:] == 0).all()


@pytest.mark.parametrize("template", [CHATML, QWEN])
def test_multi_turn_last_reply_matches_inference(smol_tokenizer, template):
    r = render_conversation(smol_tokenizer, MULTI, chat_template=template)
    prompt = render_prompt(
        smol_tokenizer, MULTI, chat_template=template
    )  # history + generation prompt, as at inference
    reply = smol_tokenizer("4<|im_end|>", add_special_tokens=False)["input_ids"]
    assert r.input_ids[: len(prompt)] == prompt and r.labels[len(prompt) : len(prompt) + len(reply)] == reply
