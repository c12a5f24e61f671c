"""Safe loading defaults: safetensors only unless model.allow_pickle, no remote code unless trust_remote_code,
chat templates in transformers' sandboxed Jinja, secrets redacted, a 1e30 model_max_length never used as a length."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunesmith.config.sft import RunConfig
from tunesmith.errors import ModelError
from tunesmith.models.loading import load_causal_lm, load_tokenizer
from tunesmith.models.sources import ModelSource
from tunesmith.render.rows import MAX_SANE_LENGTH
from tunesmith.runtime.secrets import redact, redact_argv


@pytest.fixture
def pickled_dir(tiny_llama_dir, tmp_path) -> Path:
    d = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, d)
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    return d


def test_pickle_only_checkpoint_refused_then_loads_with_allow_pickle(pickled_dir, tiny_llama_dir):
    src = ModelSource(str(pickled_dir), str(pickled_dir), "local")
    with pytest.raises(ModelError) as exc:
        load_causal_lm(src)
    text = exc.value.render()
    assert "pytorch_model.bin" in text and "model.allow_pickle" in text and str(pickled_dir) in text
    model = load_causal_lm(src, allow_pickle=True)
    ref = load_file(Path(tiny_llama_dir) / "model.safetensors")
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], ref["model.embed_tokens.weight"])


def test_safe_defaults_in_config():
    cfg = RunConfig()
    assert cfg.model.trust_remote_code is False and cfg.model.allow_pickle is False


def test_remote_code_never_runs_by_default(tiny_llama_dir, tmp_path):
    """A checkpoint whose config points at its own Python code: loading must fail without importing that code."""
    d = tmp_path / "remote"
    shutil.copytree(tiny_llama_dir, d)
    marker = tmp_path / "PWNED"
    (d / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n"
    )
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    cfg["model_type"] = "evil-llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError):
        load_causal_lm(ModelSource(str(d), str(d), "local"))
    assert not marker.exists(), "remote code ran although trust_remote_code is off"


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch /tmp/tunesmith-pwned') }}",
        "{{ raise_exception.__globals__ }}",
    ],
)
def test_chat_template_is_sandboxed(smol_tokenizer, template):
    from jinja2.exceptions import SecurityError, UndefinedError

    try:
        out = smol_tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], chat_template=template, tokenize=False
        )
    except (SecurityError, UndefinedError):
        out = ""
    assert out.strip() == "", (
        f"template reached Python internals: {out[:200]}"
    )  # unsafe attributes are refused or undefined
    assert not Path("/tmp/tunesmith-pwned").exists()


def test_chat_template_environment_is_immutable_sandbox(smol_tokenizer):
    """transformers compiles every chat template in jinja2's ImmutableSandboxedEnvironment (source of the guarantee)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from transformers.utils import chat_template_utils

    tmpl = chat_template_utils._compile_jinja_template("{{ messages[0]['content'] }}")
    assert isinstance(tmpl.environment, ImmutableSandboxedEnvironment)
    with pytest.raises(Exception, match="unsafe|immutable|not safely|SecurityError|access"):
        smol_tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}],
            tokenize=False,
            chat_template="{% set x = messages.append({'role': 'user', 'content': 'x'}) %}{{ x }}",
        )


def test_redaction():
    cfg = {"train": {"hub_token": "hf_abcdefghijklmnopqrstuv", "learning_rate": 1e-4}, "model": {"name": "m"}}
    out = redact(cfg)
    assert out["train"]["hub_token"] == "***" and out["train"]["learning_rate"] == 1e-4 and out["model"]["name"] == "m"
    # token *settings* and counts are not secrets
    keep = {"eval": {"max_new_tokens": 64}, "train": {"eos_token": "<|im_end|>", "pad_token": "<pad>"}}
    assert redact(keep) == keep
    argv = [
        "tunesmith",
        "sft",
        "configs/tokenizer-test.yaml",
        "--set",
        "train.hub_token=abc",
        "hf_ABCDEFGHIJKLMNOPQRSTUV",
    ]
    assert redact_argv(argv) == ["tunesmith", "sft", "configs/tokenizer-test.yaml", "--set", "***", "***"]


def test_model_max_length_1e30_is_capped(tiny_llama_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, d)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["model_max_length"] = 1e30
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    tok = load_tokenizer(ModelSource(str(d), str(d), "local"))
    assert tok.model_max_length == MAX_SANE_LENGTH


def test_every_weight_load_goes_through_the_pickle_gate():
    """No module but models/loading.py calls a model's or adapter's ``from_pretrained`` (GGUF files, which hold no
    pickles, are read by the GGUF loaders): every other load goes through ``from_pretrained``/``load_adapter`` there,
    which refuse pickle weights unless model.allow_pickle."""
    import ast

    from conftest import REPO

    gguf_readers = {"models/sources.py", "export/gguf_io.py"}
    found = []
    for path in (REPO / "src" / "tunesmith").rglob("*.py"):
        rel = str(path.relative_to(REPO / "src" / "tunesmith"))
        if rel == "models/loading.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id.startswith(("AutoModel", "PeftModel"))
                and rel not in gguf_readers
            ):
                found.append(f"{rel}:{node.lineno} {node.func.value.id}.from_pretrained")
    assert not found, f"load these through tunesmith.models.loading (the pickle gate): {found}"
