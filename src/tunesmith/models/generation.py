"""Batched generation through the chat template: left padding, greedy by default, stops at end-of-turn."""

from __future__ import annotations

import torch

from tunesmith.models.for_use import Loaded


@torch.no_grad()
def generate_ids(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    max_new_tokens: int = 64,
    eos_ids: set[int] | list[int] | None = None,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    progress=None,
) -> list[list[int]]:
    """Generate continuations for token-id prompts, batched with left padding.

    Args:
        model: a causal LM (plain or PEFT).
        tokenizer: its tokenizer (``pad_token_id`` must be set).
        prompts: ``list[list[int]]``, each already rendered through the chat template with the generation prompt.
        max_new_tokens: budget per prompt, in tokens.
        eos_ids: token ids that end generation (the template's end-of-turn token among them).
        batch_size: prompts per forward batch.
        do_sample: sample instead of greedy decoding (temperature/top_p then apply).
        progress: a :class:`tunesmith.runtime.console.Progress`, advanced by prompts and new tokens after each batch.

    Returns:
        ``list[list[int]]``: the new tokens of each prompt, cut after the first eos id (which is kept).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = sorted(eos_ids) if eos_ids else [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, p in enumerate(chunk):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        kwargs = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        new = 0
        for row in gen[:, width:].tolist():
            cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
            out.append(row[:cut])
            new += cut
        if progress is not None:
            progress.advance(len(chunk), tokens=new)
    return out


def decode_reply(tokenizer, ids: list[int], eos_ids: set[int] | None = None) -> str:
    """Decode generated ids to text without the end-of-turn token and other special tokens."""
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def stop_ids(loaded: Loaded) -> set[int]:
    """Token ids generation stops at: :func:`tunesmith.render.templates.end_of_turn_ids` of the tokenizer and generation
    config."""
    from tunesmith.render.templates import end_of_turn_ids

    return end_of_turn_ids(loaded.tokenizer, loaded.generation_config)
