"""tunesmith export --format gguf: GGUF metadata, exact f32 round trip through transformers' GGUF loader,
template consistency check (passes, and catches a wrong template / a model that does not stop), Modelfile.

    PYTHONPATH=src pytest -q tests/export/test_gguf.py
"""

import json

import pytest
import torch

from conftest import build_tiny_llama, logits, make_adapter, tiny_bpe_tokenizer
from tunesmith.errors import ModelError


@pytest.fixture(scope="module")
def exported(tmp_path_factory, smol_tokenizer):
    """A tiny llama (325-token BPE vocabulary, SmolLM2's chat template) + random LoRA adapter exported to GGUF (f32)
    with a Modelfile; stop check off (random model)."""
    from tunesmith.export.gguf import run_export

    tmp = tmp_path_factory.mktemp("export")
    base_dir = build_tiny_llama(tiny_bpe_tokenizer(smol_tokenizer.chat_template), tmp / "base", tie=True)
    peft_model, tok = make_adapter(base_dir, None, tmp / "adapter")
    report = run_export(
        str(base_dir),
        str(tmp / "adapter"),
        output=str(tmp / "out" / "tiny.gguf"),
        modelfile=True,
        stop_check=False,
        max_new_tokens=8,
        log=lambda s: None,
    )
    return tmp, report, logits(peft_model, tok), tok


def test_permute_matches_transformers_reverse():
    """Our q/k permutation is undone exactly by transformers' GGUF loader (LlamaTensorProcessor)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from tunesmith.export.architectures import permute_qk

    w = torch.arange(12 * 8 * 5, dtype=torch.float32).reshape(12 * 8 // 2 * 2, 5)  # 96 rows: 12 heads x head_dim 8
    proc = LlamaTensorProcessor(config={"num_attention_heads": 12, "num_key_value_heads": 4})
    for name, kv in (("blk.0.attn_q.weight", None), ("blk.0.attn_k.weight", 4)):
        rows = w[: (kv or 12) * 8]
        permuted = permute_qk(rows, 12, kv)
        assert not torch.equal(permuted, rows)
        back = proc.process(permuted.numpy(), name).weights
        assert torch.equal(torch.from_numpy(back), rows)


def test_gguf_metadata(exported, smol_tokenizer):
    from gguf import GGUFReader

    tmp, report, _, tok = exported
    r = GGUFReader(str(tmp / "out" / "tiny.gguf"))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "llama" and f["llama.block_count"] == 2 and f["llama.embedding_length"] == 64
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert (
        f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "default"
    )  # GPT-2 byte-level split (no source GGUF to copy from)
    assert f["tokenizer.chat_template"] == smol_tokenizer.chat_template
    assert f["tokenizer.ggml.eos_token_id"] == 2 and f["tokenizer.ggml.bos_token_id"] == 1
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert (
        len(tokens) == f["llama.vocab_size"] == 325
        and tokens[2] == "<|im_end|>"
        and types[:3] == [3, 3, 3]
        and types[100] == 1
    )
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [" ".join(m) for m in merges] and len(merges) > 50
    names = {t.name for t in r.tensors}
    assert "token_embd.weight" in names and "blk.1.attn_q.weight" in names and "output.weight" not in names  # tied
    assert all(t.tensor_type.name == "F32" for t in r.tensors)


def test_gguf_round_trip_and_consistency(exported):
    """Reloaded by transformers, the GGUF gives the merged model's logits (f32: <= 1e-5) and the same greedy tokens;
    every consistency check passed."""
    from tunesmith.export.gguf_io import load_gguf

    tmp, report, want, tok = exported
    assert report["round_trip"]["max_abs_logit_diff"] <= 1e-5
    checks = {c["name"]: c for c in report["consistency"]["checks"]}
    assert set(checks) == {
        "greedy_round_trip",
        "ids_saved_tokenizer",
        "ids_gguf",
        "template_gguf",
        "eot_in_generation_config",
        "eot_in_gguf",
        "modelfile_template",
    }
    assert all(c["ok"] for c in checks.values()), checks
    model, gtok = load_gguf(tmp / "out" / "tiny.gguf")
    assert (logits(model, gtok) - want).abs().max() < 1e-4  # GGUF == base + adapter
    saved = json.loads((tmp / "out" / "tiny.consistency.json").read_text())
    assert saved["consistency"]["ok"] is True and saved["adapter"].endswith("adapter")


def test_modelfile(exported):
    """A plain ChatML model (no tools in its template) keeps the plain ChatML TEMPLATE, without a tools branch."""
    tmp, report, _, _ = exported
    text = (tmp / "out" / "Modelfile").read_text()
    assert text.splitlines()[0] == "FROM ./tiny.gguf"
    assert (
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
        '<|im_start|>assistant\n"""\n' in text
    )
    assert ".Tools" not in text and ".ToolCalls" not in text
    assert "modelfile_tools_structure" not in {c["name"] for c in report["consistency"]["checks"]}
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert text.rstrip().endswith('PARAMETER stop "<|im_end|>"\nPARAMETER temperature 0')  # greedy, as served


def test_modelfile_check_on_llama3_and_a_broken_template(smol_tokenizer):
    """The Go TEMPLATE is rendered (Ollama's semantics for range/Role/Content) and compared with the chat template's
    text: Llama-3's template trims message content and Ollama's does not, which the check reports for a
    whitespace-padded turn."""
    import copy

    from tunesmith.export.consistency import fixed_conversations, modelfile_check, render_go_template
    from tunesmith.export.gguf import ollama_template
    from tunesmith.render.chat_templates import resolve_chat_template

    convs = fixed_conversations()
    go, system = ollama_template(smol_tokenizer)
    assert render_go_template(go, [{"role": "user", "content": "Hi"}], system) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (
        modelfile_check(
            smol_tokenizer, go.replace("{{ .Content }}<|im_end|>\n", "{{ .Content }}<|im_end|>"), system, convs
        ).ok
        is False
    )
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = resolve_chat_template("llama3")
    go, system = ollama_template(tok)
    assert modelfile_check(tok, go, system, convs[:3]).ok
    bad = modelfile_check(tok, go, system, convs)
    assert not bad.ok and bad.detail.startswith("consistency#3")  # a user turn ending in a newline


def test_consistency_catches_a_different_template(exported):
    """Serving with another chat template than the one in the GGUF is reported with the first differing token."""
    from tunesmith.export.consistency import compare_ids, fixed_conversations, reference_ids, serving_ids
    from tunesmith.export.gguf_io import load_gguf

    tmp, _, _, tok = exported
    _, gtok = load_gguf(tmp / "out" / "tiny.gguf")
    convs = fixed_conversations()
    ok = compare_ids("ids_gguf", tok, reference_ids(tok, convs), serving_ids(gtok, convs), convs)
    assert ok.ok
    gtok.chat_template = tok.chat_template.replace("<|im_end|>", "<|endoftext|>")
    bad = compare_ids("ids_gguf", tok, reference_ids(tok, convs), serving_ids(gtok, convs), convs)
    assert not bad.ok and "consistency#0" in bad.detail and "<|im_end|>" in bad.detail


def test_export_stop_check_fails_for_model_that_never_stops(exported, tmp_path):
    """A random model does not end its replies: the smoke test fails the export (exit 2) and says why."""
    from tunesmith.export.gguf import run_export
    from tunesmith.export.merge import ExportCheckError

    tmp, _, _, _ = exported
    with pytest.raises(ExportCheckError) as exc:
        run_export(str(tmp / "base"), output=str(tmp_path / "x.gguf"), max_new_tokens=6, log=lambda s: None)
    assert [p.where for p in exc.value.problems] == ["stops"]
    assert "0/3 greedy replies ended" in exc.value.problems[0].reason
    assert (tmp_path / "x.consistency.json").is_file()


def test_export_refuses_non_llama_and_existing_output(exported, tmp_path):
    from transformers import AutoConfig

    from tunesmith.errors import TunesmithError
    from tunesmith.export.architectures import check_supported
    from tunesmith.export.gguf import run_export

    tmp, _, _, _ = exported
    cfg = AutoConfig.from_pretrained(tmp / "base")
    cfg.model_type, cfg.attention_bias = "phi3", True
    with pytest.raises(ModelError) as exc:
        check_supported(cfg)
    assert [p.where for p in exc.value.problems] == ["config.model_type", "config.attention_bias"]
    assert "ARCHITECTURES" in exc.value.problems[0].fix  # a new family is a table entry
    cfg.model_type = "llama"  # llama carries no biases
    with pytest.raises(ModelError) as exc:
        check_supported(cfg)
    assert [p.where for p in exc.value.problems] == ["config.attention_bias"]
    cfg.model_type = "qwen2"  # qwen2's q/k/v biases are exported
    check_supported(cfg)
    with pytest.raises(TunesmithError, match="Refusing to write"):
        run_export(str(tmp / "base"), output=str(tmp / "out" / "tiny.gguf"))
    with pytest.raises(TunesmithError, match="Unknown export format"):
        run_export(str(tmp / "base"), output=str(tmp_path / "a.bin"), fmt="onnx")


def test_export_f16(exported, tmp_path):
    """--outtype f16: matrices in half precision, norms in f32; logits stay within 1e-2 and greedy replies agree."""
    from gguf import GGUFReader

    from tunesmith.export.gguf import run_export

    tmp, _, _, _ = exported
    report = run_export(
        str(tmp / "base"),
        str(tmp / "adapter"),
        output=str(tmp_path / "h.gguf"),
        outtype="f16",
        stop_check=False,
        max_new_tokens=8,
        log=lambda s: None,
    )
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / "h.gguf")).tensors}
    assert (
        types["blk.0.attn_q.weight"] == "F16"
        and types["token_embd.weight"] == "F16"
        and types["output_norm.weight"] == "F32"
    )
    assert 0 < report["round_trip"]["max_abs_logit_diff"] < 1e-2
    assert report["bytes"] < (tmp / "out" / "tiny.gguf").stat().st_size * 0.6


def test_export_cli_shows_progress_without_a_terminal(exported, tmp_path):
    """`tunesmith export` in a subprocess (stderr is a pipe): one progress line per step, then the checks."""
    import subprocess
    import sys

    tmp, _, _, _ = exported
    cmd = [sys.executable, "-m", "tunesmith", "export", "--model", str(tmp / "base"), "--adapter", str(tmp / "adapter")]
    cmd += ["-o", str(tmp_path / "p.gguf"), "--no-stop-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("export: ")]
    assert [x.split(",")[0] for x in lines] == [
        "export: 1/3 steps (33%)",
        "export: 2/3 steps (67%)",
        "export: 3/3 steps (100%)",
    ]
    assert "step loaded and merged" in lines[0] and "step wrote p.gguf" in lines[1] and "ETA 0s" in lines[2]
    assert (tmp_path / "p.gguf").is_file()


def test_export_with_the_tool_template_checks_a_tool_conversation(tmp_path):
    """A model trained with chatml-tools: the GGUF carries that template, the saved and GGUF tokenizers render the tool
    conversation (tools=, a call, a result) token for token as training did, and the call text parses back."""
    from gguf import GGUFReader

    from tunesmith.export.consistency import fixed_conversations, tool_parse_check
    from tunesmith.export.gguf import run_export
    from tunesmith.render.chat_templates import resolve_chat_template

    template = resolve_chat_template("chatml-tools")
    tok = tiny_bpe_tokenizer(template)
    assert [c.source for c in fixed_conversations(tok)][-1] == "consistency#tools"
    assert "consistency#tools" not in [c.source for c in fixed_conversations(tiny_bpe_tokenizer("{{ 'x' }}"))]
    base = build_tiny_llama(tok, tmp_path / "base")
    report = run_export(
        str(base), output=str(tmp_path / "t.gguf"), modelfile=True, stop_check=False, max_new_tokens=4, log=print
    )
    checks = {c["name"]: c for c in report["consistency"]["checks"]}
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["ids_gguf"]["detail"].startswith("6 conversations") and "tool_call_parse" in checks
    f = GGUFReader(str(tmp_path / "t.gguf")).fields["tokenizer.chat_template"].contents()
    assert f == template and "<tool_call>" in f
    go = (tmp_path / "Modelfile").read_text().split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    for part in ("{{- if .Tools }}", "{{ json $tool }}", "{{ if .ToolCalls }}<tool_call>", ".Function.Arguments"):
        assert part in go
    assert "<tool_response>" in go and '{{ if eq .Role "tool" }}' in go
    assert checks["modelfile_template"]["detail"].startswith("5 conversations")  # the text ones, exact
    assert checks["modelfile_tools_structure"]["detail"].startswith("1 tool conversation(s), structural")
    broken = tiny_bpe_tokenizer(template.replace('{"name": ', '{"function": '))
    bad = tool_parse_check(broken, fixed_conversations(broken))
    assert not bad.ok and "consistency#tools" in bad.detail


def test_the_tool_modelfile_template_renders_like_chatml_tools():
    """The Go TEMPLATE for chatml-tools, rendered by the Go-template emulation: without tools exactly the plain ChatML
    text; with tools, several calls after text and two results in a row, the chatml-tools text once JSON is
    re-serialised (structural); a template that lays a result out differently fails the structural check."""
    from tunesmith.data.records import Conversation, Message, ToolCall
    from tunesmith.export.consistency import TOOL_SPEC, fixed_conversations, modelfile_check, render_go_template
    from tunesmith.export.ollama import CHATML_GO, CHATML_TOOLS_GO, modelfile_tools_check, ollama_template
    from tunesmith.render.chat_templates import resolve_chat_template

    tok = tiny_bpe_tokenizer(resolve_chat_template("chatml-tools"))
    assert ollama_template(tok) == (CHATML_TOOLS_GO, None)
    assert ollama_template(tiny_bpe_tokenizer(resolve_chat_template("chatml")))[0] == CHATML_GO
    for conv in fixed_conversations():
        for system in (None, "Be brief."):
            msgs = conv.to_template()
            assert render_go_template(CHATML_TOOLS_GO, msgs, system) == render_go_template(CHATML_GO, msgs, system)
    assert modelfile_check(tok, CHATML_TOOLS_GO, "Be brief.", fixed_conversations(tok)).ok
    calls = [ToolCall("get_weather", {"city": "Zürich"}), ToolCall("get_weather", {"city": "Bern", "unit": "<&>"})]
    busy = Conversation(
        [
            Message("system", "Answer in French."),
            Message("user", "Weather?"),
            Message("assistant", "Checking both.", tool_calls=calls),
            Message("tool", "14"),
            Message("tool", "12"),
            Message("assistant", "14 and 12."),
            Message("user", "Thanks"),
            Message("assistant", "De rien."),
        ],
        "busy",
        tools=[TOOL_SPEC],
    )
    convs = fixed_conversations(tok) + [busy]
    for system in (None, "Be brief."):
        ok = modelfile_tools_check(tok, CHATML_TOOLS_GO, system, convs)
        assert ok.ok and ok.detail.startswith("2 tool conversation(s), structural"), ok.detail
    text = render_go_template(CHATML_TOOLS_GO, busy.to_template(), None, busy.tools)
    assert "<|im_start|>system\nAnswer in French.\n\n# Tools" in text and '"name":"get_weather"' in text
    assert '{"name": "get_weather", "arguments": {"city":"Bern","unit":"\\u003c\\u0026\\u003e"}}' in text
    assert "<tool_response>\n14\n</tool_response>\n<tool_response>\n12\n</tool_response><|im_end|>" in text
    bad = modelfile_tools_check(tok, CHATML_TOOLS_GO.replace("\n<tool_response>\n", "<tool_response>"), None, convs)
    assert not bad.ok and bad.detail.startswith("consistency#tools: with JSON re-serialised")
    assert modelfile_tools_check(tok, CHATML_TOOLS_GO, None, fixed_conversations()) is None


def test_go_template_emulation_covers_what_it_claims():
    """The emulated subset: trimming, else/else if, with, range over a list (with its else), variables assigned across
    iterations, index/slice/len, lazy and/or; anything else is refused rather than guessed."""
    from tunesmith.export.gotemplate import execute

    data = {"Messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "Tools": None}
    tpl = (
        '{{ $n := 0 }}{{ range $i, $m := .Messages }}{{ if eq .Role "user" }}U{{ else if eq $m.Role "tool" }}T'
        "{{ else }}?{{ end }}{{ $n = $i }}{{ end }} {{ $n }} {{- with .Tools }}x{{ else }} none{{ end }}"
        "{{ range .Tools }}y{{ else }} empty{{ end }} {{ len (slice .Messages 1) }} {{ (index .Messages 1).Content }}"
        ' {{ if and .Tools (index .Tools 0) }}z{{ end }}{{ or .Tools "d" }}'
    )
    assert execute(tpl, data) == "UT 1 none empty 1 b d"
    for unsupported in ("{{ .Role | printf }}", "{{ printf .Role }}", "{{ if .Tools }}", '{{ template "x" }}'):
        with pytest.raises(ValueError):
            execute(unsupported, data)
