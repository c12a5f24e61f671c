"""Classification heads on decoder LLMs: pad id, encoding, padded batches, class probabilities, loading.

Pooling: Llama-style classifiers score the rightmost token that is not ``config.pad_token_id``.
Texts are tokenised with ``split_special_tokens=True`` and the pad id is chosen among the special
tokens the tokenizer never inserts itself, so no real token ever equals the pad id and the last
real token is pooled with left or right padding (even when pad == eos, as in SmolLM2)."""

from __future__ import annotations

import torch

from tunesmith.data.records import LabelRecord
from tunesmith.errors import ModelError, Problem
from tunesmith.models.loading import from_pretrained
from tunesmith.models.sources import hub_error

PAIR_SEPARATOR = "\n\n"
"""Joins text and text pair into one sequence (decoder tokenizers have no pair template)."""


def choose_pad_id(tokenizer) -> int:
    """Pick a pad id that no encoded example contains: the tokenizer's pad token unless the tokenizer
    inserts it itself (e.g. an appended EOS), else another special token.

    Returns:
        The pad token id (SmolLM2: 2, ``<|im_end|>``, which text encoded with ``split_special_tokens`` never yields).

    Raises:
        ModelError: when every special token is one the tokenizer inserts.
    """
    inserted = set(tokenizer("a b", add_special_tokens=True)["input_ids"]) - set(
        tokenizer("a b", add_special_tokens=False)["input_ids"]
    )
    for cand in [tokenizer.pad_token_id, *tokenizer.all_special_ids]:
        if cand is not None and cand not in inserted:
            return int(cand)
    raise ModelError(
        "No usable pad token",
        [
            Problem(
                "tokenizer",
                "every special token is inserted into each example",
                "use a tokenizer with a pad or unused special token",
            )
        ],
    )


def encode(
    tokenizer, records: list[LabelRecord], label2id: dict[str, int] | None, max_length: int
) -> tuple[list[dict], int]:
    """Tokenise records for the classifier (no special tokens parsed from the text).

    Returns:
        (rows of ``{"input_ids": list[int], "labels": int}`` (labels only when ``label2id`` is given), number
        truncated).
    """
    texts = [r.text if r.text_pair is None else r.text + PAIR_SEPARATOR + r.text_pair for r in records]
    enc = tokenizer(texts, add_special_tokens=True, split_special_tokens=True, truncation=False)["input_ids"]
    rows, truncated = [], 0
    for r, ids in zip(records, enc):
        truncated += len(ids) > max_length
        row = {"input_ids": ids[:max_length]}
        if label2id is not None:
            row["labels"] = label2id[r.label]
        rows.append(row)
    return rows, truncated


def pad_batch(rows: list[dict], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` to one width; ``position_ids`` count real tokens only, so left and right padding give the same
    logits.

    Returns:
        ``{"input_ids": LongTensor[batch, seq], "attention_mask": LongTensor[batch, seq], "position_ids":
        LongTensor[batch, seq]}``.
    """
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, sl] = torch.tensor(r["input_ids"], dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}


@torch.no_grad()
def predict_proba(
    model, rows: list[dict], pad_id: int, *, batch_size: int = 32, side: str = "right", progress=None
) -> torch.Tensor:
    """Class probabilities for encoded rows, batched (rows sorted by length to pad less); ``progress`` (a
    :class:`tunesmith.runtime.console.Progress`) is advanced by rows and tokens after each batch.

    Returns:
        ``FloatTensor[n, num_labels]`` (softmax of the pooled logits), in the order of ``rows``.
    """
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = torch.zeros((len(rows), model.config.num_labels))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([rows[i] for i in idx], pad_id, side).items()}
        out[idx] = model(**batch).logits.float().softmax(-1).cpu()
        if progress is not None:
            progress.advance(len(idx), tokens=sum(len(rows[i]["input_ids"]) for i in idx))
    return out


def load_classifier(source, names: list[str], pad_id: int, model_cfg, dtype=torch.float32):
    """Load ``AutoModelForSequenceClassification`` with ``len(names)`` labels; a causal-LM checkpoint gets a new
    ``score`` head.

    The label maps (``id2label``/``label2id``) and ``pad_token_id`` are set in the model config, so they are saved with
    it.

    Raises:
        ModelError: when the checkpoint cannot be loaded.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(
            source.location, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision
        )
    except Exception as exc:  # noqa: BLE001 - a failed load is reported as the user's model problem
        raise hub_error(source, exc) from None
    config.update(
        {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
            "pad_token_id": pad_id,
            "problem_type": "single_label_classification",
        }
    )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: score.weight" notice is expected here
    try:
        model = from_pretrained(
            AutoModelForSequenceClassification,
            source,
            config=config,
            dtype=dtype,
            attn_implementation=model_cfg.attn_implementation,
            trust_remote_code=model_cfg.trust_remote_code,
            allow_pickle=model_cfg.allow_pickle,
            revision=model_cfg.revision,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model
