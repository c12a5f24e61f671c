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

from tunesmith.data.records import Message
from tunesmith.errors import Problem, TunesmithError
from tunesmith.export.architectures import check_supported
from tunesmith.export.merge import (
    ExportCheckError,
    load_for_merge,
    max_diff,
    merge_loaded,
    probe_ids,
    probe_logits,
)
from tunesmith.export.ollama import modelfile_text, ollama_template


def guess_pre_tokenizer(tokenizer) -> str | None:
    """``tokenizer.ggml.pre`` for a tokenizer: the name whose split regex (transformers' GGUF table) its pre-tokenizer
    uses, else None (the family's default, :mod:`tunesmith.export.architectures`). The consistency check verifies the
    choice."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    spec = (
        tokenizer.backend_tokenizer.pre_tokenizer.__getstate__() if tokenizer.backend_tokenizer.pre_tokenizer else b""
    )
    text = spec.decode() if isinstance(spec, bytes) else json.dumps(spec)
    for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
        if json.dumps(regex)[1:-1] in text:
            return name
    return None


def _check_outtype(outtype: str) -> None:
    """Refuse an unknown ``--outtype``, and a llama.cpp type when ``llama-quantize`` is missing (before any work)."""
    from tunesmith.export.gguf_io import LLAMA_QUANTIZE_TYPES, OUTTYPES, find_llama_quantize, llama_quantize

    if outtype not in OUTTYPES + LLAMA_QUANTIZE_TYPES:
        raise TunesmithError(
            "Unknown GGUF tensor type",
            [
                Problem(
                    "--outtype",
                    f"{outtype!r}",
                    f"use {', '.join(OUTTYPES)} (written here) or {', '.join(LLAMA_QUANTIZE_TYPES)} (llama-quantize)",
                )
            ],
        )
    if outtype in LLAMA_QUANTIZE_TYPES and find_llama_quantize() is None:
        llama_quantize(Path("-"), Path("-"), outtype)  # raises the error that names llama-quantize


def _write(merged, tok, out: Path, *, outtype: str, **meta) -> None:
    """The GGUF file in ``outtype``: written directly (f32/f16/q8_0) or quantised from an f32 file by llama-quantize."""
    from tunesmith.export.gguf_io import OUTTYPES, llama_quantize, write_gguf

    if outtype in OUTTYPES:
        write_gguf(merged, tok, out, outtype=outtype, **meta)
        return
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        f32 = write_gguf(merged, tok, Path(tmp) / "f32.gguf", outtype="f32", **meta)
        llama_quantize(f32, out, outtype)


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
    """Entry of ``tunesmith export``: merge (when an adapter is given), write the GGUF, verify it, write the report;
    progress (steps done, elapsed, ETA) goes to stderr.

    Served as trained: the system prompt, chat template and end-of-turn token come from the model's serving contract
    (:mod:`tunesmith.models.serving`), and the Modelfile's SYSTEM and PARAMETERs from it too.

    Args:
        outtype: ``f32``, ``f16``, ``q8_0`` (written by the ``gguf`` package) or a llama.cpp type such as ``q4_k_m``
            (``llama-quantize`` on an f32 file).
        overwrite: replace the GGUF, its ``.consistency.json`` and the ``Modelfile`` when they exist.

    Returns:
        The report (also written to ``<output stem>.consistency.json``): round-trip logit difference, greedy agreement,
        consistency checks.

    Raises:
        TunesmithError: unknown format or type, an existing output file; ModelError: unsupported model, missing
        ``llama-quantize``; ExportCheckError: the file was written but a check failed (each failure listed).
    """
    from tunesmith.export.gguf_io import source_pre_tokenizer
    from tunesmith.render.checks import template_eot_id
    from tunesmith.runtime.files import atomic_write_json, atomic_write_text
    from tunesmith.runtime.rundir import file_refusals, replace_file

    if fmt != "gguf":
        raise TunesmithError(
            "Unknown export format",
            [Problem("--format", f"{fmt!r}", "use --format gguf (or `tunesmith merge` for safetensors)")],
        )
    from tunesmith.runtime.console import Progress

    out = Path(output)
    report_path = out.with_name(out.stem + ".consistency.json")
    outputs = [out, report_path] + ([out.parent / "Modelfile"] if modelfile else [])
    inputs = tuple(x for x in (model, adapter) if x)
    problems = [p for path in outputs for p in file_refusals(path, overwrite=overwrite, inputs=inputs)]
    if problems:
        raise TunesmithError(f"Refusing to write {out}", problems)
    _check_outtype(outtype)
    with Progress("export", 3, unit="steps") as bar:
        loaded, reference = load_for_merge(model, adapter)  # a QLoRA adapter: into its dequantised base
        merged, merge_stats = merge_loaded(loaded, reference)
        check_supported(merged.config)
        bar.advance(step="loaded and merged")
        tok, contract = loaded.tokenizer, loaded.serving
        eot = template_eot_id(tok) if tok.chat_template else None
        pre = source_pre_tokenizer(loaded.base_location) or guess_pre_tokenizer(tok)
        go, system = ollama_template(tok) if modelfile else (None, None)  # refuse an unknown template before writing
        system = loaded.system_prompt() or system
        out.parent.mkdir(parents=True, exist_ok=True)
        for path in outputs:
            replace_file(path)
        eos = eot if eot is not None else tok.eos_token_id
        home = Path(loaded.home or loaded.base_name)
        name = home.parent.name if home.name in ("adapter", "model") else home.name  # general.name: the run's name
        _write(merged, tok, out, outtype=outtype, eos_id=eos, chat_template=tok.chat_template, pre=pre, name=name)
        bar.advance(step=f"wrote {out.name}")
        report = verify_gguf(
            merged,
            tok,
            loaded.generation_config,
            out,
            contract=contract,
            exact=outtype in ("f32", "f16"),
            stop=stop_check,
            max_new_tokens=max_new_tokens,
        )
        bar.advance(step="reloaded and checked")
    report.update(
        source=loaded.base_name,
        adapter=str(loaded.adapter_dir) if loaded.adapter_dir else None,
        outtype=outtype,
        pre_tokenizer=pre,
        system_prompt=system,
        serving_contract=str(loaded.home / "serving.json") if contract is not None else None,
        merge=merge_stats,
        bytes=out.stat().st_size,
        notes=loaded.notes,
    )
    if modelfile:
        from tunesmith.export.consistency import (
            fixed_conversations,
            modelfile_check,
            modelfile_probe_check,
        )
        from tunesmith.export.ollama import modelfile_tools_check

        eot_text = tok.convert_ids_to_tokens(eot) if eot is not None else tok.eos_token
        atomic_write_text(out.parent / "Modelfile", modelfile_text(out.name, go, system, eot_text, contract))
        report["modelfile"] = str(out.parent / "Modelfile")
        checks = report["consistency"]["checks"]
        checks.append(asdict(modelfile_check(tok, go, system, fixed_conversations(tok))))
        tools = modelfile_tools_check(tok, go, system, fixed_conversations(tok)) if ".Tools" in go else None
        checks += [asdict(tools)] if tools else []
        if contract is not None and contract.probes:
            checks.append(asdict(modelfile_probe_check(contract, tok, go, system)))
        report["consistency"]["ok"] = all(c["ok"] for c in checks)
    atomic_write_json(report_path, report)
    return _conclude(report, out, report_path, outtype, log)


def _conclude(report: dict, out: Path, report_path: Path, outtype: str, log) -> dict:
    """Print every check and the greedy agreement; raise when a check failed."""
    for c in report["consistency"]["checks"]:
        log(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    rt = report["round_trip"]
    log(
        f"{outtype}: {rt['greedy_identical']} greedy replies identical to the source model "
        f"(share {rt['greedy_identical_share']:.2f}); max |logit diff| {rt['max_abs_logit_diff']:.2e}"
    )
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
    "probe_ids_loaded": (
        "the model as loaded for chat/generate renders the run's eval prompts differently from training: check the "
        "saved tokenizer, chat template and serving.json"
    ),
    "probe_ids_saved_tokenizer": "save the tokenizer with the chat template you trained with (model.chat_template)",
    "probe_ids_gguf": "the GGUF tokenizer or template renders the run's eval prompts differently from training",
    "modelfile_eval_prompts": "edit the Modelfile's TEMPLATE/SYSTEM so it renders like training",
    "modelfile_template": "edit the Modelfile's TEMPLATE by hand so it renders like the chat template",
    "modelfile_tools_structure": (
        "the Modelfile's tool TEMPLATE lays tools, calls or results out differently from the chat template: edit its "
        "TEMPLATE by hand, or train with model.chat_template=chatml-tools"
    ),
    "tool_call_parse": (
        "the template writes tool calls in a layout tunesmith cannot parse; train with model.chat_template=chatml-tools"
    ),
    "stops": (
        "the model does not end its replies: train longer, check that the end-of-turn token is trained, or pass "
        "--no-stop-check for an untrained model"
    ),
}


def verify_gguf(
    model,
    tokenizer,
    generation_config,
    path: Path,
    *,
    contract=None,
    exact: bool = True,
    stop: bool = True,
    max_new_tokens: int = 64,
) -> dict:
    """Reload ``path`` with transformers and compare it with ``model``/``tokenizer``: logits, greedy replies and the
    template consistency checks (:mod:`tunesmith.export.consistency`).

    Greedy replies are compared on :data:`~tunesmith.export.consistency.STOP_PROMPTS` and the run's own eval prompts
    (the serving contract's probes), each rendered as served (the trained system prompt added). ``exact`` (f32/f16)
    requires every reply to be identical; a quantised file reports the share that is.

    Returns:
        ``{"round_trip": {"max_abs_logit_diff", "greedy_identical", "greedy_identical_share", "greedy": [...]},
        "consistency": {"ok", "checks"}}``.
    """
    from transformers import AutoTokenizer

    from tunesmith.export.consistency import (
        STOP_PROMPTS,
        Check,
        ConsistencyReport,
        compare_ids,
        eot_check,
        fixed_conversations,
        probe_ids_check,
        reference_ids,
        serving_ids,
        stop_check,
        tool_parse_check,
    )
    from tunesmith.export.gguf_io import load_gguf, read_metadata
    from tunesmith.models.generation import generate_ids
    from tunesmith.models.serving import serving_prompt_ids
    from tunesmith.render.checks import eos_ids, template_eot_id

    g_model, g_tok = load_gguf(path)
    meta = read_metadata(path)
    probes = probe_ids(tokenizer)
    logit_diff = max_diff(probe_logits(model, probes), probe_logits(g_model, probes))
    system = contract.system_prompt if contract is not None else None
    convs = [[Message("user", p)] for p in STOP_PROMPTS]
    convs += [c.messages for c in contract.probe_conversations()] if contract is not None else []
    served = lambda t: [serving_prompt_ids(t, m, system) for m in convs] if t.chat_template else [probes[0]]
    stop_ids = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id") if k in meta}
    gen = dict(max_new_tokens=max_new_tokens, eos_ids=stop_ids, batch_size=1)
    want = generate_ids(model, tokenizer, served(tokenizer), **gen)
    got = generate_ids(g_model, g_tok, served(g_tok), **gen)
    same = sum(a == b for a, b in zip(want, got))
    report = ConsistencyReport()
    if exact:
        report.checks.append(
            Check(
                "greedy_round_trip",
                want == got,
                f"{same}/{len(want)} greedy replies identical token by token; max |logit diff| {logit_diff:.2e} on "
                f"{len(probes)} probes",
            )
        )
    fixed = fixed_conversations(tokenizer)
    if tokenizer.chat_template:
        ref = reference_ids(tokenizer, fixed)
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            saved = AutoTokenizer.from_pretrained(tmp)
        report.checks.append(compare_ids("ids_saved_tokenizer", tokenizer, ref, serving_ids(saved, fixed), fixed))
        report.checks.append(compare_ids("ids_gguf", tokenizer, ref, serving_ids(g_tok, fixed), fixed))
        for name, tok, where in (
            ("probe_ids_loaded", tokenizer, "chat/generate/eval"),
            ("probe_ids_saved_tokenizer", saved, "the saved tokenizer"),
            ("probe_ids_gguf", g_tok, "the GGUF"),
        ):
            if contract is not None and contract.probes:  # the run's own eval prompts, saved at training
                report.checks.append(probe_ids_check(name, contract, tok, where=where))
        same_tpl = meta.get("tokenizer.chat_template") == tokenizer.chat_template
        report.checks.append(
            Check(
                "template_gguf",
                same_tpl,
                "tokenizer.chat_template in the GGUF "
                + ("equals" if same_tpl else "differs from")
                + " the tokenizer's",
            )
        )
        eot = template_eot_id(tokenizer)
        report.checks.append(
            eot_check("eot_in_generation_config", eot, eos_ids(tokenizer, generation_config), "generation_config.json")
        )
        report.checks.append(
            eot_check("eot_in_gguf", eot, stop_ids, "the GGUF (tokenizer.ggml.eos_token_id/eot_token_id)")
        )
        parsed = tool_parse_check(tokenizer, fixed)
        report.checks += [parsed] if parsed else []
    if stop:
        prompts = served(g_tok)[: len(STOP_PROMPTS)]
        report.checks.append(stop_check(g_model, g_tok, stop_ids, max_new_tokens=max_new_tokens, prompts=prompts))
    return {
        "round_trip": {
            "max_abs_logit_diff": logit_diff,
            "greedy_identical": f"{same}/{len(want)}",
            "greedy_identical_share": same / max(len(want), 1),
            "greedy": [g_tok.decode(o) for o in got],
        },
        "consistency": report.to_json(),
    }
