"""The exported GGUF in real llama.cpp (`make test-runtime`; not in `make test`: building llama.cpp takes about 30
minutes on 2 cores). Skipped unless llama-server and llama-quantize are on PATH or in $TUNESMITH_HOME/llama.cpp/bin
(scripts/build-llama-cpp.sh puts them there).

SmolLM2-135M-Instruct (embedded) + a random LoRA adapter with a serving contract (a system prompt), merged and written
by the export's own writers as f32, q8_0 and q4_k_m (llama-quantize). For each file llama-server is started with the
GGUF's own chat template (--jinja) and asked:

- token ids: /tokenize on the chat-template renderings (fixed conversations and the contract's eval prompts) must
  give transformers' ids;
- chat template: /apply-template on those conversations (with the trained system prompt) must give the text
  transformers' apply_chat_template renders;
- greedy replies: /completion (temperature 0) from the training prompt ids must give the merged model's greedy tokens
  (transformers, fp32): all of them for f32, the share that agrees for the quantised files.

The figures are written to $TUNESMITH_RUNTIME_REPORT (default: runtime-check.json in the test's folder) and printed.

    make test-runtime
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import make_adapter

pytestmark = pytest.mark.runtime

SYSTEM = "You answer in one short sentence."
QUESTIONS = [
    "What is the capital of France?",
    "Write a Python function that adds two numbers.",
    "How many legs does a spider have?",
    "Café, naïve, 東京: spell them back.",
]
MAX_NEW = 32


def _tool(name: str) -> str | None:
    from tunesmith.runtime.paths import tunesmith_home

    built = tunesmith_home() / "llama.cpp" / "bin" / name
    return shutil.which(name) or (str(built) if built.is_file() else None)


def _post(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


class Server:
    """llama-server on a free port with the GGUF's own Jinja chat template."""

    def __init__(self, gguf: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(gguf.with_suffix(".server.log"), "w")
        cmd = [_tool("llama-server"), "-m", str(gguf), "--port", str(self.port), "--jinja", "-c", "2048", "-t", "2"]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"llama-server did not start: {gguf.with_suffix('.server.log').read_text()[-2000:]}")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, embedded_source):
    """SmolLM2 + a random LoRA adapter with a serving contract, merged once and written by the export's own writers:
    f32 and q8_0 (write_gguf), q4_k_m (llama_quantize on the f32 file). Returns (folder, {type: path}, contract,
    merged model, tokenizer)."""
    from transformers import GenerationConfig

    from tunesmith.data.records import Conversation, Message
    from tunesmith.export.gguf import guess_pre_tokenizer
    from tunesmith.export.gguf_io import llama_quantize, source_pre_tokenizer, write_gguf
    from tunesmith.export.merge import merge_loaded
    from tunesmith.models.for_use import load_for_use
    from tunesmith.models.serving import build_contract, contract_files, training_prompts

    if not (_tool("llama-server") and _tool("llama-quantize")):
        pytest.skip("llama.cpp is not built (make test-runtime builds it)")
    tmp = tmp_path_factory.mktemp("llamacpp")
    _, tok = make_adapter(embedded_source.location, None, tmp / "adapter", scale=0.01)
    convs = [
        Conversation([Message("system", SYSTEM), Message("user", q), Message("assistant", "-")], f"q#{k}")
        for k, q in enumerate(QUESTIONS)
    ]
    contract = build_contract(
        tok,
        GenerationConfig(eos_token_id=2),
        system_prompt=SYSTEM,
        prompts=training_prompts(convs),
        max_new_tokens=MAX_NEW,
        trained_with={"command": "sft"},
    )
    for name, text in contract_files(contract, GenerationConfig(eos_token_id=2, bos_token_id=1)).items():
        (tmp / "adapter" / name).write_text(text)
    loaded = load_for_use(embedded_source.location, str(tmp / "adapter"))
    merged, _ = merge_loaded(loaded)
    tok = loaded.tokenizer
    pre = source_pre_tokenizer(loaded.base_location) or guess_pre_tokenizer(tok)
    meta = dict(eos_id=2, chat_template=tok.chat_template, pre=pre, name="smol-runtime-check")
    files = {t: write_gguf(merged, tok, tmp / f"smol-{t}.gguf", outtype=t, **meta) for t in ("f32", "q8_0")}
    files["q4_k_m"] = llama_quantize(files["f32"], tmp / "smol-q4_k_m.gguf", "q4_k_m")
    return tmp, files, loaded.serving, merged, tok


def test_llama_cpp_reads_tokens_template_and_replies(exported):
    from tunesmith.export.consistency import fixed_conversations
    from tunesmith.models.generation import generate_ids
    from tunesmith.models.serving import with_system

    tmp, files, contract, merged, tok = exported
    convs = [c.to_template() for c in fixed_conversations()]
    served = [[m.to_template() for m in with_system(c.messages, SYSTEM)] for c in contract.probe_conversations()]
    texts = [tok.apply_chat_template(m, tokenize=False) for m in convs]
    texts += [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in served]
    prompts = [p["prompt_ids"] for p in contract.probes]
    want = generate_ids(merged, tok, prompts, max_new_tokens=MAX_NEW, eos_ids={2}, batch_size=1)
    want = [w[:-1] if w and w[-1] == 2 else w for w in want]
    results = {"date": time.strftime("%Y-%m-%d %H:%M"), "llama_server": _tool("llama-server"), "files": {}}
    for outtype, path in files.items():
        server = Server(path)
        try:
            ids_ok = sum(
                _post(server.port, "/tokenize", {"content": t, "add_special": False, "parse_special": True})["tokens"]
                == tok(t, add_special_tokens=False)["input_ids"]
                for t in texts
            )
            tpl_ok = sum(
                _post(server.port, "/apply-template", {"messages": m})["prompt"]
                == tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                for m in served
            )
            got = [
                _post(
                    server.port,
                    "/completion",
                    {"prompt": p, "n_predict": MAX_NEW, "temperature": 0, "return_tokens": True, "cache_prompt": False},
                )["tokens"]
                for p in prompts
            ]
        finally:
            server.close()
        got = [g[:-1] if g and g[-1] == 2 else g for g in got]  # the end-of-turn token, if llama.cpp returns it
        same = sum(a == b for a, b in zip(want, got))
        tokens = sum(len(w) for w in want)
        agree = sum(
            next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in zip(want, got)
        )
        results["files"][outtype] = {
            "bytes": path.stat().st_size,
            "token_ids_identical": f"{ids_ok}/{len(texts)}",
            "chat_template_identical": f"{tpl_ok}/{len(served)}",
            "greedy_replies_identical": f"{same}/{len(want)}",
            "greedy_tokens_agreeing_before_first_difference": f"{agree}/{tokens}",
        }
    out = Path(os.environ.get("TUNESMITH_RUNTIME_REPORT") or tmp / "runtime-check.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    for outtype, r in results["files"].items():
        assert r["token_ids_identical"] == f"{len(texts)}/{len(texts)}", (outtype, r)
        assert r["chat_template_identical"] == f"{len(served)}/{len(served)}", (outtype, r)
    assert results["files"]["f32"]["greedy_replies_identical"] == f"{len(want)}/{len(want)}", results
