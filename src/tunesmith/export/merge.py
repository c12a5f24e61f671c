"""``tunesmith merge`` and ``tunesmith export``: a LoRA adapter merged into its base, saved as safetensors or GGUF.

Run it::

    tunesmith merge --adapter runs/sft --output runs/sft-merged                 # base from the run's config
    tunesmith export --format gguf --model runs/sft --output sft.gguf --modelfile

``merge`` folds the adapter into the base in fp32 (``peft`` ``merge_and_unload``), checks that the merged
model's logits equal base + adapter on fixed probe conversations (max |difference| <= 1e-4), and saves a
plain checkpoint: ``model.safetensors``, ``config.json``, the tokenizer with its chat template and a
``generation_config.json`` whose ``eos_token_id`` includes the template's end-of-turn id, the serving contract
(``serving.json``), a model card (``README.md``) and ``tunesmith_merge.json`` (the measured differences, before and
after a reload from disk).
A QLoRA adapter (trained on an ``nf4``/``int8`` base) is never merged into quantised weights: the quantised base is
dequantised to an fp32 copy (the very weights the adapter was trained against), the adapter is merged into that copy
and checked as above, and the merged model's logits are also compared with the quantised base + adapter as trained
(:func:`quantized_check`).
``export --format gguf`` writes one GGUF file (see :mod:`tunesmith.export.gguf_io`), reloads it with
transformers, checks the same greedy outputs and close logits on a fixed prompt set, and runs the
template consistency check (:mod:`tunesmith.export.consistency`); the report goes to ``<name>.consistency.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunesmith.errors import Problem, TunesmithError

MERGE_ATOL = 1e-4
"""Largest |logit difference| allowed between the merged model and base + adapter (fp32)."""


class ExportCheckError(TunesmithError):
    """An exported artifact does not behave like the model it came from (logits, greedy outputs or template
    consistency)."""


def probe_ids(tokenizer) -> list[list[int]]:
    """Token ids of the fixed consistency conversations (full renderings), used to compare logits."""
    from tunesmith.export.consistency import fixed_conversations
    from tunesmith.render.templates import render_conversation

    if not tokenizer.chat_template:
        return [
            tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in ("Hello! How are you?", "def add(a, b):\n    return a + b")
        ]
    return [render_conversation(tokenizer, c).input_ids for c in fixed_conversations()]


@torch.no_grad()
def probe_logits(model, probes: list[list[int]]) -> list[torch.Tensor]:
    """Logits ``[seq, vocab]`` (as float64, computed in the model dtype) of each probe, one forward pass each (no
    padding)."""
    device = next(model.parameters()).device
    return [model(input_ids=torch.tensor([p], device=device)).logits[0].double().cpu() for p in probes]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute difference over paired tensors (only the common vocabulary columns)."""
    return max(
        float((x[:, : min(x.shape[1], y.shape[1])] - y[:, : min(x.shape[1], y.shape[1])]).abs().max())
        for x, y in zip(a, b)
    )


QUANTIZED_TOLERANCE = {"nf4": 1e-3, "int8": 0.05}
"""How far a QLoRA adapter's merged fp32 model may be from the quantised base + adapter it was trained as. ``nf4``: an
absolute logit difference, since the 4-bit layers dequantise to the same weights the merged model holds and compute
in fp32, so only rounding differs (a wrong merge moves logits by far more). ``int8``: a fraction of the largest
|logit|, since LLM.int8() also rounds each activation row to 8 bits (and casts to fp16), which the merged model does
not (measured 0.5% on a tiny random Llama)."""

FP64_CHECK_MAX_PARAMETERS = 2_000_000_000
"""Up to this many parameters the merge is done and checked in float64 (8 bytes a parameter of extra memory)."""


def load_for_merge(model: str | None, adapter: str | None, *, untie: bool = True):
    """Load base + adapter for merging: the base unquantised in fp32, or, for a QLoRA adapter, its quantised base
    dequantised to fp32 (never merged into 4-bit or 8-bit weights).

    Returns:
        ``(Loaded, reference)``: ``reference`` is None for a plain adapter, else the logits of the quantised base +
        adapter as trained on :func:`probe_ids` (what :func:`merge_loaded` checks the merged model against).

    Raises:
        ModelError: see :func:`tunesmith.models.for_use.load_for_use`.
    """
    from tunesmith.models.for_use import load_for_use

    loaded = load_for_use(model, adapter, untie=untie, dequantize=True)
    if loaded.quantization is None:
        return loaded, None
    as_trained = load_for_use(model, adapter, untie=untie)  # quantised base (computing in fp32) + adapter
    reference = probe_logits(as_trained.model, probe_ids(as_trained.tokenizer))
    del as_trained
    return loaded, reference


def quantized_check(merged, probes, reference: list[torch.Tensor], quantization: str) -> dict:
    """Compare a merged QLoRA model with its quantised base + adapter on the probes.

    Returns:
        ``{"quantization", "max_abs_logit_diff_vs_quantized", "tolerance", "max_abs_logit", "top1_agreement"}``
        (``top1_agreement``: fraction of probe positions whose most likely next token is the same).

    Raises:
        ExportCheckError: the difference exceeds :data:`QUANTIZED_TOLERANCE` (absolute for nf4, relative for int8).
    """
    ours = probe_logits(merged, probes)
    diff = max_diff(reference, ours)
    scale = max(float(r.abs().max()) for r in reference)
    tol = QUANTIZED_TOLERANCE[quantization] * (scale if quantization == "int8" else 1.0)
    same = sum(int((r.argmax(-1) == o.argmax(-1)).sum()) for r, o in zip(reference, ours))
    stats = {
        "quantization": quantization,
        "max_abs_logit_diff_vs_quantized": diff,
        "tolerance": tol,
        "max_abs_logit": scale,
        "top1_agreement": same / sum(r.shape[0] for r in reference),
    }
    if diff > tol:
        raise ExportCheckError(
            "Merged model differs from the quantised base + adapter it was trained as",
            [
                Problem(
                    f"{quantization} base",
                    f"max |logit difference| {diff:.3g} > {tol:.3g}",
                    "report this adapter; keep serving it on its quantised base (tunesmith chat/generate do)",
                )
            ],
        )
    return stats


def merge_loaded(loaded, reference: list[torch.Tensor] | None = None) -> tuple[object, dict]:
    """Merge ``loaded``'s adapter into its base (in place) and check the logits against base + adapter.

    fp32 rounding alone moves the logits of a deep model by about 1e-4 (SmolLM2-135M, 30 layers, logits near 40:
    fp32 vs fp64 of the *same* unmerged model differ by 7.7e-5), so a fp32 comparison of two fp32 computations
    cannot separate a wrong merge from rounding at 1e-4.  Up to :data:`FP64_CHECK_MAX_PARAMETERS` the model is moved
    to float64, merged there (``W + B A`` rounded once to fp32 afterwards) and compared in float64; larger models
    are merged and compared in fp32.  The fp32 difference is reported too.

    Args:
        loaded: from :func:`load_for_merge` (for a QLoRA adapter, its dequantised base).
        reference: for a QLoRA adapter, the logits of its quantised base + adapter (:func:`load_for_merge`); the merged
            model is also checked against them (:func:`quantized_check`, reported under ``"quantized"``).

    Returns:
        ``(plain fp32 PreTrainedModel, {"max_abs_logit_diff_fp64": float|None, "max_abs_logit_diff_fp32": float,
        "fp32_noise_floor": float|None, "quantized": dict|None})``; ``max_abs_logit_diff_fp64`` is the checked value
        when present.

    Raises:
        ExportCheckError: when the checked difference exceeds :data:`MERGE_ATOL` (or the QLoRA tolerance).
    """
    from tunesmith.models.adapters import count_parameters

    model = loaded.model
    if loaded.adapter_dir is None:
        return model, {
            "max_abs_logit_diff_fp64": None,
            "max_abs_logit_diff_fp32": 0.0,
            "fp32_noise_floor": None,
            "quantized": None,
        }
    probes = probe_ids(loaded.tokenizer)
    peft32 = probe_logits(model, probes)
    fp64 = count_parameters(model)[1] <= FP64_CHECK_MAX_PARAMETERS
    stats = {"max_abs_logit_diff_fp64": None, "fp32_noise_floor": None, "quantized": None}
    if fp64:
        model.double()
        peft64 = probe_logits(model, probes)
        stats["fp32_noise_floor"] = max_diff(peft32, peft64)
    merged = model.merge_and_unload()
    if fp64:
        stats["max_abs_logit_diff_fp64"] = max_diff(peft64, probe_logits(merged, probes))
        merged.float()
    merged.generation_config = loaded.generation_config
    if loaded.untied:
        merged.config.tie_word_embeddings = False
    stats["max_abs_logit_diff_fp32"] = max_diff(peft32, probe_logits(merged, probes))
    checked = stats["max_abs_logit_diff_fp64"] if fp64 else stats["max_abs_logit_diff_fp32"]
    if checked > MERGE_ATOL:
        raise ExportCheckError(
            "Merged model differs from base + adapter",
            [
                Problem(
                    str(loaded.adapter_dir),
                    f"max |logit difference| {checked:.3g} > {MERGE_ATOL} ({'float64' if fp64 else 'fp32'})",
                    "report this adapter; keep using it unmerged",
                )
            ],
        )
    if reference is not None:
        stats["quantized"] = quantized_check(merged, probes, reference, loaded.quantization)
    return merged, stats


def save_merged(model, tokenizer, out: Path) -> None:
    """Save a plain fp32 safetensors checkpoint with tokenizer, chat template and generation config into ``out``."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)


def run_merge(
    adapter: str, *, model: str | None = None, output: str, overwrite: bool = False, untie: bool = True, log=print
) -> dict:
    """Entry of ``tunesmith merge``.

    Returns:
        The merge report (also ``<output>/tunesmith_merge.json``): base, adapter, max logit differences, notes.

    Raises:
        TunesmithError: output exists without ``overwrite``, or ``--overwrite`` may not replace it (see
            :func:`tunesmith.runtime.rundir.refusals`; the old folder is moved aside, never deleted);
        ModelError: bad model/adapter or tied embeddings with
            ``untie=False``; ExportCheckError: merged logits differ (in memory or after reload).
    """
    from tunesmith.export.gguf_io import source_pre_tokenizer
    from tunesmith.runtime.files import atomic_save_dir, atomic_write_json
    from tunesmith.runtime.rundir import check_output_dir, replace_dir, write_marker

    out = Path(output)
    inputs = tuple(x for x in (adapter, model) if x)
    check_output_dir(out, overwrite=overwrite, inputs=inputs)
    loaded, reference = load_for_merge(model, adapter, untie=untie)
    if loaded.adapter_dir is None:
        raise TunesmithError(
            "Nothing to merge",
            [
                Problem(
                    f"--adapter {adapter}",
                    "no adapter found",
                    "pass the adapter/ folder or the run folder of `tunesmith sft`",
                )
            ],
        )
    probes = probe_ids(loaded.tokenizer)
    merged, stats = merge_loaded(loaded, reference)
    reference = probe_logits(merged, probes)
    report = {
        "base": loaded.base_name,
        "base_location": loaded.base_location,
        "adapter": str(loaded.adapter_dir),
        **stats,
        "notes": loaded.notes,
        "tie_word_embeddings": bool(merged.config.tie_word_embeddings),
        "eos_token_id": merged.generation_config.eos_token_id,
        "gguf_pre": source_pre_tokenizer(loaded.base_location),
    }
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        save_merged(merged, loaded.tokenizer, tmp)
        _serving_and_card(loaded, tmp, stats, out.name)
        report["max_abs_logit_diff_reloaded"] = _reload_diff(tmp, probes, reference)  # same fp32 weights: expect 0
        if report["max_abs_logit_diff_reloaded"] > MERGE_ATOL:
            raise ExportCheckError(
                "The saved merged checkpoint does not reload to the same model",
                [
                    Problem(
                        str(out),
                        f"max |logit difference| after reload {report['max_abs_logit_diff_reloaded']:.3g}",
                        "report this model",
                    )
                ],
            )
        atomic_write_json(tmp / "tunesmith_merge.json", report)
        write_marker(tmp, "merge")

    if out.is_dir() and any(out.iterdir()):
        replace_dir(out, inputs=inputs)
    atomic_save_dir(out, save)
    for note in loaded.notes:
        log(f"note: {note}")
    fp64 = stats["max_abs_logit_diff_fp64"]
    log(
        f"merged {loaded.adapter_dir} into {loaded.base_name}: max |logit diff| vs base+adapter "
        + (f"{fp64:.2e} (float64), " if fp64 is not None else "")
        + f"{stats['max_abs_logit_diff_fp32']:.2e} (fp32"
        + (f"; fp32 rounding alone: {stats['fp32_noise_floor']:.2e}" if stats["fp32_noise_floor"] is not None else "")
        + f"); reloaded from disk vs in memory {report['max_abs_logit_diff_reloaded']:.2e}; wrote {out}"
    )
    q = stats["quantized"]
    if q is not None:
        log(
            f"QLoRA: merged into the dequantised {q['quantization']} base; vs the {q['quantization']} base + adapter "
            f"as trained: max |logit diff| {q['max_abs_logit_diff_vs_quantized']:.2e} "
            f"(tolerance {q['tolerance']:.2e}), "
            f"same top-1 token at {q['top1_agreement']:.1%} of probe positions"
        )
    return report


def _serving_and_card(loaded, folder: Path, stats: dict, title: str) -> None:
    """Copy the serving contract into the merged folder (``export`` reads it there) and write its model card."""
    from tunesmith.export.card import write_model_card
    from tunesmith.models.serving import SERVING_FILE
    from tunesmith.runtime.files import atomic_write_json

    if loaded.serving is not None:
        atomic_write_json(folder / SERVING_FILE, loaded.serving.to_json())
    run_dir = loaded.home.parent if loaded.home is not None and (loaded.home.parent / "config.yaml").is_file() else None
    fp64 = stats.get("max_abs_logit_diff_fp64")
    note = f"This folder is the adapter `{loaded.adapter_dir}` merged into its base in " + (
        f"float64 (max |logit difference| {fp64:.2e} against base + adapter), saved in fp32."
        if fp64 is not None
        else "fp32."
    )
    write_model_card(folder, run_dir, base=loaded.base_name, library="transformers", note=note, title=title)


def _reload_diff(folder: Path, probes, reference) -> float:
    from transformers import AutoModelForCausalLM

    from tunesmith.models.loading import from_pretrained
    from tunesmith.models.sources import ModelSource

    source = ModelSource(str(folder), str(folder), "local")
    reloaded = from_pretrained(AutoModelForCausalLM, source, dtype=torch.float32).eval()
    return max_diff(reference, probe_logits(reloaded, probes))
