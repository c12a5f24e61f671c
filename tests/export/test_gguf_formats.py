"""GGUF export beyond f32/f16: q8_0 (written by the gguf package), llama.cpp types through llama-quantize, the model
families of the architecture table (Qwen2 with its q/k/v biases, Mistral written as llama), --overwrite for every file
export writes, and the umask's file modes.

    .venv/bin/python -m pytest -q tests/export/test_gguf_formats.py
"""

import os
import stat

import pytest
import torch

from conftest import build_tiny_llama, logits, tiny_bpe_tokenizer
from tunesmith.errors import ModelError, TunesmithError


def quiet(_):
    return None


def build_tiny(family: str, tokenizer, out_dir, *, seed: int = 0):
    """A tiny random model of ``family`` (hidden 64, 2 layers, 4 heads, 2 kv heads) saved with ``tokenizer``."""
    from transformers import AutoModelForCausalLM, GenerationConfig, MistralConfig, Qwen2Config

    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "qwen2":
        cfg = Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False)
    else:
        cfg = MistralConfig(**common, tie_word_embeddings=False, sliding_window=None)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # non-zero biases, so a lost bias shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model.eval()


@pytest.fixture(scope="module")
def bpe(smol_tokenizer):
    return tiny_bpe_tokenizer(smol_tokenizer.chat_template)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, bpe):
    return build_tiny_llama(bpe, tmp_path_factory.mktemp("llama") / "base")


@pytest.mark.parametrize(("family", "arch"), [("qwen2", "qwen2"), ("mistral", "llama")])
def test_family_round_trips_through_the_gguf_reader(tmp_path, bpe, family, arch):
    """A tiny random model of each table family exports (f32), reloads with transformers' GGUF reader to the same
    logits and greedy replies, and carries its architecture's tensors (Qwen2: q/k/v biases; Mistral: untied output)."""
    from gguf import GGUFReader

    from tunesmith.export.gguf import run_export

    model = build_tiny(family, bpe, tmp_path / "base")
    report = run_export(str(tmp_path / "base"), output=str(tmp_path / "m.gguf"), stop_check=False, log=quiet)
    assert report["consistency"]["ok"], report["consistency"]
    assert report["round_trip"]["max_abs_logit_diff"] <= 1e-5
    reader = GGUFReader(str(tmp_path / "m.gguf"))
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields[f"{arch}.block_count"].contents() == 2
    names = {t.name for t in reader.tensors}
    if family == "qwen2":
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.1.attn_v.bias"} <= names
        assert "output.weight" not in names  # tied
    else:
        assert "output.weight" in names and not any(n.endswith(".bias") for n in names)
    from tunesmith.export.gguf_io import load_gguf

    g_model, g_tok = load_gguf(tmp_path / "m.gguf")
    assert (logits(g_model, g_tok) - logits(model, bpe)).abs().max() < 1e-4


def test_q8_0_is_written_and_its_greedy_agreement_reported(tmp_path, llama_dir):
    """--outtype q8_0: matrices in 8-bit blocks (about a quarter of f32), norms f32; reloaded logits stay close and
    the report states the share of greedy replies identical to the source."""
    from gguf import GGUFReader

    from tunesmith.export.gguf import run_export

    f32 = run_export(str(llama_dir), output=str(tmp_path / "f.gguf"), stop_check=False, log=quiet)
    lines = []
    q8 = run_export(str(llama_dir), output=str(tmp_path / "q.gguf"), outtype="q8_0", stop_check=False, log=lines.append)
    types = {t.name: t.tensor_type.name for t in GGUFReader(str(tmp_path / "q.gguf")).tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert types["output_norm.weight"] == "F32" and types["blk.1.ffn_norm.weight"] == "F32"
    assert q8["bytes"] < 0.35 * f32["bytes"]
    assert 0 < q8["round_trip"]["max_abs_logit_diff"] < 0.1
    rt = q8["round_trip"]
    n = len(rt["greedy"])
    assert (
        rt["greedy_identical"].endswith(f"/{n}") and rt["greedy_identical_share"] == int(rt["greedy_identical"][0]) / n
    )
    assert "greedy_round_trip" not in {
        c["name"] for c in q8["consistency"]["checks"]
    }  # quantised: reported, not required
    assert any(line.startswith("q8_0: ") and "greedy replies identical" in line for line in lines)


def test_llama_cpp_types_name_llama_quantize_when_it_is_missing(tmp_path, llama_dir, monkeypatch):
    from tunesmith.export.gguf import run_export

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelError) as exc:
        run_export(str(llama_dir), output=str(tmp_path / "q4.gguf"), outtype="q4_k_m", log=quiet)
    assert "llama-quantize" in str(exc.value) and "q8_0" in exc.value.problems[0].fix
    assert not (tmp_path / "q4.gguf").exists()
    with pytest.raises(TunesmithError, match="Unknown GGUF tensor type"):
        run_export(str(llama_dir), output=str(tmp_path / "x.gguf"), outtype="q9", log=quiet)


def test_q4_k_m_through_llama_quantize(tmp_path, llama_dir):
    """Where llama.cpp's llama-quantize exists (make test-runtime builds it), q4_k_m is written from an f32 file."""
    from gguf import GGUFReader

    from tunesmith.export.gguf import run_export
    from tunesmith.export.gguf_io import find_llama_quantize

    if find_llama_quantize() is None:
        pytest.skip("llama-quantize is not installed (scripts/build-llama-cpp.sh builds it)")
    report = run_export(str(llama_dir), output=str(tmp_path / "q4.gguf"), outtype="q4_k_m", stop_check=False, log=quiet)
    reader = GGUFReader(str(tmp_path / "q4.gguf"))
    assert reader.fields["general.file_type"].contents() == 15  # MOSTLY_Q4_K_M
    assert report["outtype"] == "q4_k_m" and report["consistency"]["ok"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the f32 intermediate is gone


def test_every_export_file_respects_overwrite_and_the_umask(tmp_path, llama_dir):
    from tunesmith.export.gguf import run_export

    out = tmp_path / "out"
    out.mkdir()
    (out / "Modelfile").write_text("mine\n")
    with pytest.raises(TunesmithError) as exc:
        run_export(str(llama_dir), output=str(out / "m.gguf"), modelfile=True, stop_check=False, log=quiet)
    assert [p.where for p in exc.value.problems] == [str(out / "Modelfile")]
    assert (out / "Modelfile").read_text() == "mine\n" and not (out / "m.gguf").exists()
    old = os.umask(0o022)
    try:
        run_export(
            str(llama_dir), output=str(out / "m.gguf"), modelfile=True, overwrite=True, stop_check=False, log=quiet
        )
    finally:
        os.umask(old)
    assert (out / "Modelfile").read_text().startswith("FROM ./m.gguf")
    for name in ("m.gguf", "m.consistency.json", "Modelfile"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    with pytest.raises(TunesmithError) as exc:  # the report alone existing is refused too
        (out / "m.gguf").unlink()
        run_export(str(llama_dir), output=str(out / "m.gguf"), stop_check=False, log=quiet)
    assert [p.where for p in exc.value.problems] == [str(out / "m.consistency.json")]
