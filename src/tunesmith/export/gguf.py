"""``tunesmith export --format gguf``: one GGUF file (see :mod:`tunesmith.export.gguf_io`), reloaded with transformers
and checked.

Run it::

    tunesmith export --format gguf --model runs/sft --output sft.gguf --modelfile

The file is reloaded, its greedy outputs and logits on a fixed prompt set are compared with the source, and the
template consistency check (:mod:`tunesmith.export.consistency`) runs; the report goes to ``<name>.consistency.json``.
An Ollama Modelfile is written beside it on request."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from tunesmith.errors import Problem, TunesmithError
from tunesmith.export.merge import (
    ExportCheckError,
    _refuse_existing,
    load_for_merge,
    max_diff,
    merge_loaded,
    probe_ids,
    probe_logits,
)


def ollama_template(tokenizer) -> tuple[str, str | None]:
    """Ollama's Go TEMPLATE for the tokenizer's chat template (ChatML or Llama-3) and the template's default system
    prompt.

    Raises:
        TunesmithError: for a chat template that is neither ChatML nor Llama-3 (no translation known).
    """
    from tunesmith.render.checks import default_system_prompt

    tpl = tokenizer.chat_template or ""
    if "<|im_start|>" in tpl:
        go = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    elif "<|start_header_id|>" in tpl:
        go = (
            (tokenizer.bos_token or "")
            + "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
            "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    else:
        raise TunesmithError(
            "No Ollama template for this chat template",
            [
                Problem(
                    "--modelfile",
                    "tunesmith translates ChatML and Llama-3 templates to Ollama's Go templates only",
                    "write the Modelfile's TEMPLATE by hand, or export without --modelfile",
                )
            ],
        )
    default = default_system_prompt(tokenizer)
    return go, default.strip() if default else None


def modelfile_text(gguf_name: str, go_template: str, system: str | None, eot_token: str) -> str:
    """An Ollama Modelfile: ``FROM`` the GGUF, ``TEMPLATE``, ``SYSTEM`` (the template's default system prompt, if any)
    and ``PARAMETER stop`` at the end-of-turn token."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go_template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines.append(f'PARAMETER stop "{eot_token}"')
    return "\n".join(lines) + "\n"


def guess_pre_tokenizer(tokenizer) -> str:
    """``tokenizer.ggml.pre`` for a tokenizer: the name whose split regex (transformers' GGUF table) its pre-tokenizer
    uses, else ``default`` (GPT-2 byte-level splitting). The consistency check verifies the choice."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    spec = (
        tokenizer.backend_tokenizer.pre_tokenizer.__getstate__() if tokenizer.backend_tokenizer.pre_tokenizer else b""
    )
    text = spec.decode() if isinstance(spec, bytes) else json.dumps(spec)
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        if json.dumps(regex)[1:-1] in text:
            return name
    return "default"


def run_export(
    model: str | None,
    adapter: str | None = None,
    *,
    output: str,
    fmt: str = "gguf",
    outtype: str = "f32",
    modelfile: bool = False,
    overwrite: bool = False,
    stop_check: bool = True,
    max_new_tokens: int = 64,
    log=print,
) -> dict:
    """Entry of ``tunesmith export``: merge (when an adapter is given), write the GGUF, verify it, write the report.

    Returns:
        The report (also written to ``<output stem>.consistency.json``): round-trip logit difference, greedy outputs,
        consistency checks.

    Raises:
        TunesmithError: unknown format or existing output; ModelError: unsupported model; ExportCheckError: the file
        was written but a check failed (each failure listed).
    """
    from tunesmith.export.gguf_io import check_supported, source_pre_tokenizer, write_gguf
    from tunesmith.render.checks import template_eot_id
    from tunesmith.runtime.files import atomic_write_json, atomic_write_text

    if fmt != "gguf":
        raise TunesmithError(
            "Unknown export format",
            [Problem("--format", f"{fmt!r}", "use --format gguf (or `tunesmith merge` for safetensors)")],
        )
    out = Path(output)
    _refuse_existing(out, overwrite)
    loaded, reference = load_for_merge(model, adapter)  # a QLoRA adapter: into its dequantised base
    merged, merge_stats = merge_loaded(loaded, reference)
    check_supported(merged.config)
    tok = loaded.tokenizer
    eot = template_eot_id(tok) if tok.chat_template else None
    pre = source_pre_tokenizer(loaded.base_location) or guess_pre_tokenizer(tok)
    go, system = (
        ollama_template(tok) if modelfile else (None, None)
    )  # refuse an unknown template before writing anything
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(
        merged,
        tok,
        out,
        eos_id=eot if eot is not None else tok.eos_token_id,
        chat_template=tok.chat_template,
        pre=pre,
        outtype=outtype,
        name=Path(loaded.adapter_dir or loaded.base_name).name,
    )
    report = verify_gguf(merged, tok, loaded.generation_config, out, stop=stop_check, max_new_tokens=max_new_tokens)
    report.update(
        source=loaded.base_name,
        adapter=str(loaded.adapter_dir) if loaded.adapter_dir else None,
        outtype=outtype,
        pre_tokenizer=pre,
        merge=merge_stats,
        bytes=out.stat().st_size,
        notes=loaded.notes,
    )
    if modelfile:
        from tunesmith.export.consistency import fixed_conversations, modelfile_check

        atomic_write_text(
            out.parent / "Modelfile",
            modelfile_text(out.name, go, system, tok.convert_ids_to_tokens(eot) if eot is not None else tok.eos_token),
        )
        report["modelfile"] = str(out.parent / "Modelfile")
        report["consistency"]["checks"].append(asdict(modelfile_check(tok, go, system, fixed_conversations())))
        report["consistency"]["ok"] = all(c["ok"] for c in report["consistency"]["checks"])
    report_path = out.with_name(out.stem + ".consistency.json")
    atomic_write_json(report_path, report)
    for c in report["consistency"]["checks"]:
        log(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    failed = [c for c in report["consistency"]["checks"] if not c["ok"]]
    if failed:
        raise ExportCheckError(
            f"{out} was written but {len(failed)} check(s) failed (report: {report_path})",
            [Problem(c["name"], c["detail"], _FIXES.get(c["name"], "see the report")) for c in failed],
        )
    log(f"wrote {out} ({report['bytes'] / 1e6:.1f} MB, {outtype}); report {report_path}")
    return report


_FIXES = {
    "ids_saved_tokenizer": (
        "the saved tokenizer renders differently from training: save the tokenizer with the chat template you trained "
        "with (model.chat_template)"
    ),
    "ids_gguf": (
        "the GGUF tokenizer differs: check tokenizer.ggml.pre / added tokens, or convert with llama.cpp's "
        "convert_hf_to_gguf.py"
    ),
    "template_gguf": "the GGUF carries another chat template than the tokenizer",
    "eot_in_generation_config": "add the end-of-turn id to generation_config.json eos_token_id",
    "eot_in_gguf": "set tokenizer.ggml.eos_token_id (or eot_token_id) to the end-of-turn id",
    "greedy_round_trip": "the GGUF does not reproduce the model; use --outtype f32",
    "modelfile_template": "edit the Modelfile's TEMPLATE by hand so it renders like the chat template",
    "stops": (
        "the model does not end its replies: train longer, check that the end-of-turn token is trained, or pass "
        "--no-stop-check for an untrained model"
    ),
}


def verify_gguf(
    model, tokenizer, generation_config, path: Path, *, stop: bool = True, max_new_tokens: int = 64
) -> dict:
    """Reload ``path`` with transformers and compare it with ``model``/``tokenizer``: logits, greedy outputs and the
    template consistency checks (:mod:`tunesmith.export.consistency`).

    Returns:
        ``{"round_trip": {"max_abs_logit_diff", "greedy": [...]}, "consistency": {"ok", "checks"}}``.
    """
    from transformers import AutoTokenizer

    from tunesmith.export.consistency import (
        STOP_PROMPTS,
        Check,
        ConsistencyReport,
        compare_ids,
        eot_check,
        fixed_conversations,
        reference_ids,
        serving_ids,
        stop_check,
    )
    from tunesmith.export.gguf_io import load_gguf, read_metadata
    from tunesmith.models.generation import generate_ids
    from tunesmith.render.checks import eos_ids, template_eot_id

    g_model, g_tok = load_gguf(path)
    meta = read_metadata(path)
    probes = probe_ids(tokenizer)
    logit_diff = max_diff(probe_logits(model, probes), probe_logits(g_model, probes))
    prompts = [[{"role": "user", "content": p}] for p in STOP_PROMPTS]
    enc = lambda t: [
        list(t.apply_chat_template(m, tokenize=True, add_generation_prompt=True, return_dict=False)) for m in prompts
    ]  # noqa: E731
    stop_ids = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta}
    want = generate_ids(model, tokenizer, enc(tokenizer), max_new_tokens=max_new_tokens, eos_ids=stop_ids, batch_size=1)
    got = generate_ids(g_model, g_tok, enc(g_tok), max_new_tokens=max_new_tokens, eos_ids=stop_ids, batch_size=1)
    report = ConsistencyReport()
    report.checks.append(
        Check(
            "greedy_round_trip",
            want == got,
            f"{sum(a == b for a, b in zip(want, got))}/{len(want)} greedy replies "
            f"identical token by token; max |logit diff| {logit_diff:.2e} on {len(probes)} probes",
        )
    )
    convs = fixed_conversations()
    if tokenizer.chat_template:
        ref = reference_ids(tokenizer, convs)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            saved = AutoTokenizer.from_pretrained(tmp)
        report.checks.append(compare_ids("ids_saved_tokenizer", tokenizer, ref, serving_ids(saved, convs), convs))
        report.checks.append(compare_ids("ids_gguf", tokenizer, ref, serving_ids(g_tok, convs), convs))
        same = meta.get("tokenizer.chat_template") == tokenizer.chat_template
        report.checks.append(
            Check(
                "template_gguf",
                same,
                "tokenizer.chat_template in the GGUF " + ("equals" if same else "differs from") + " the tokenizer's",
            )
        )
        eot = template_eot_id(tokenizer)
        report.checks.append(
            eot_check("eot_in_generation_config", eot, eos_ids(tokenizer, generation_config), "generation_config.json")
        )
        report.checks.append(
            eot_check("eot_in_gguf", eot, stop_ids, "the GGUF (tokenizer.ggml.eos_token_id/eot_token_id)")
        )
    if stop:
        report.checks.append(stop_check(g_model, g_tok, stop_ids, max_new_tokens=max_new_tokens))
    return {
        "round_trip": {"max_abs_logit_diff": logit_diff, "greedy": [g_tok.decode(o) for o in got]},
        "consistency": report.to_json(),
    }
