"""Task fine-tuning: a sequence-classification head on a decoder LLM (transformers Trainer + LoRA).

Run it::

    tunesmith classify configs/classify_chatterbot.yaml        # chatterbot topics on the embedded SmolLM2
    tunesmith classify cfg.yaml --set lora.enabled=false       # full fine-tuning

Path: config -> label data (read, clean, de-duplicate, check the label set, stratified split) ->
``AutoModelForSequenceClassification`` on the resolved model source (a causal-LM checkpoint gets a
new ``score`` head) -> LoRA on the body with the head trained in full (``modules_to_save``) ->
transformers ``Trainer`` (optional class-weighted cross-entropy) -> accuracy, macro-F1, per-class
scores and a confusion matrix on the eval set -> artifacts in ``train.output_dir``.

Pooling: Llama-style classifiers score the rightmost token that is not ``config.pad_token_id``.
Texts are tokenised with ``split_special_tokens=True`` and the pad id is chosen among the special
tokens the tokenizer never inserts itself, so no real token ever equals the pad id and the last
real token is pooled with left or right padding (even when pad == eos, as in SmolLM2).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tunesmith.config.classify import ClassifyConfig
from tunesmith.evaluate.classification import write_eval_artifacts
from tunesmith.config.sft import dump_config
from tunesmith.errors import ConfigError, DataError, ModelError, Problem
from tunesmith.data.labels import load_label_data
from tunesmith.data.records import LabelRecord
from tunesmith.models.adapters import apply_lora, count_parameters
from tunesmith.models.sources import resolve_model
from tunesmith.models.loading import _hub_error, load_tokenizer
from tunesmith.runtime.hardware import choose_dtype
from tunesmith.runtime.rundir import prepare_run_dir
from tunesmith.runtime.manifest import write_manifest
from tunesmith.runtime.files import atomic_save_dir, atomic_write_text
from tunesmith.train.common import install_progress, plot_loss_curve, write_log_history
from tunesmith.data.split import fingerprint
from tunesmith.runtime.console import Timer, console
from tunesmith.runtime.memory import peak_memory_bytes

PAIR_SEPARATOR = "\n\n"
"""Joins text and text pair into one sequence (decoder tokenizers have no pair template)."""

_OURS = {"output_dir", "bf16", "max_length"}


def choose_pad_id(tokenizer) -> int:
    """Pick a pad id that no encoded example contains: the tokenizer's pad token unless the tokenizer
    inserts it itself (e.g. an appended EOS), else another special token.

    Returns:
        The pad token id (SmolLM2: 2, ``<|im_end|>``, which text encoded with ``split_special_tokens`` never yields).

    Raises:
        ModelError: when every special token is one the tokenizer inserts.
    """
    inserted = set(tokenizer("a b", add_special_tokens=True)["input_ids"]) - set(tokenizer("a b", add_special_tokens=False)["input_ids"])
    for cand in [tokenizer.pad_token_id, *tokenizer.all_special_ids]:
        if cand is not None and cand not in inserted:
            return int(cand)
    raise ModelError("No usable pad token", [Problem("tokenizer", "every special token is inserted into each example", "use a tokenizer with a pad or unused special token")])


def encode(tokenizer, records: list[LabelRecord], label2id: dict[str, int] | None, max_length: int) -> tuple[list[dict], int]:
    """Tokenise records for the classifier (no special tokens parsed from the text).

    Returns:
        (rows of ``{"input_ids": list[int], "labels": int}`` (labels only when ``label2id`` is given), number truncated).
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
    """Pad ``input_ids`` to one width; ``position_ids`` count real tokens only, so left and right padding give the same logits.

    Returns:
        ``{"input_ids": LongTensor[batch, seq], "attention_mask": LongTensor[batch, seq], "position_ids": LongTensor[batch, seq]}``.
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
def predict_proba(model, rows: list[dict], pad_id: int, *, batch_size: int = 32, side: str = "right") -> torch.Tensor:
    """Class probabilities for encoded rows, batched (rows sorted by length to pad less).

    Returns:
        ``FloatTensor[n, num_labels]`` (softmax of the pooled logits), in the order of ``rows``.
    """
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = torch.zeros((len(rows), model.config.num_labels))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([rows[i] for i in idx], pad_id, side).items()}
        out[idx] = model(**batch).logits.float().softmax(-1).cpu()
    return out


def load_classifier(source, names: list[str], pad_id: int, model_cfg, dtype=torch.float32):
    """Load ``AutoModelForSequenceClassification`` with ``len(names)`` labels; a causal-LM checkpoint gets a new ``score`` head.

    The label maps (``id2label``/``label2id``) and ``pad_token_id`` are set in the model config, so they are saved with it.

    Raises:
        ModelError: when the checkpoint cannot be loaded.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(source.location, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
        config.update({"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)},
                       "pad_token_id": pad_id, "problem_type": "single_label_classification"})
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the "newly initialized: score.weight" notice is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                source.location, config=config, dtype=dtype, attn_implementation=model_cfg.attn_implementation,
                trust_remote_code=model_cfg.trust_remote_code, use_safetensors=None if model_cfg.allow_pickle else True, revision=model_cfg.revision)
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(source, exc) from None
    return model


def class_weights(spec, train: list[LabelRecord], names: list[str]) -> torch.Tensor | None:
    """Loss weight per class: None, ``balanced`` (n / (k * count_c), scikit-learn's rule) or an explicit list.

    Returns:
        ``FloatTensor[num_labels]`` or None.

    Raises:
        ConfigError: an explicit list of the wrong length, or `balanced` with a label absent from train.
    """
    if spec == "none":
        return None
    if isinstance(spec, list):
        if len(spec) != len(names):
            raise ConfigError("Bad class weights", [Problem("labels.class_weights", f"{len(spec)} values for {len(names)} labels", f"give one weight per label: {names}")])
        return torch.tensor(spec, dtype=torch.float32)
    counts = torch.tensor([sum(r.label == n for r in train) for n in names], dtype=torch.float32)
    if (counts == 0).any():
        missing = [n for n, c in zip(names, counts) if c == 0]
        raise ConfigError("Cannot balance class weights", [Problem("labels.class_weights", f"labels without training examples: {missing}", "use more data or explicit weights")])
    return counts.sum() / (len(names) * counts)


def _trainer_class():
    from transformers import Trainer

    class ClassifyTrainer(Trainer):
        """Trainer whose loss is (optionally class-weighted) cross-entropy over the pooled logits."""

        loss_is_scaled_for_ga = False
        weights: torch.Tensor | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            w = self.weights.to(outputs.logits.device) if self.weights is not None else None
            loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=w)
            return (loss, outputs) if return_outputs else loss

    return ClassifyTrainer


def build_training_args(cfg: ClassifyConfig, run_dir: Path, use_bf16: bool, has_eval: bool = True):
    """Translate the ``train`` section into ``transformers.TrainingArguments`` (checkpoints under ``run_dir/checkpoints``;
    no evaluation during training when there is no eval set)."""
    from transformers import TrainingArguments

    kwargs = {k: v for k, v in cfg.train.model_dump().items() if k not in _OURS}
    kwargs.update(output_dir=str(run_dir / "checkpoints"), bf16=use_bf16, fp16=False, use_cpu=not torch.cuda.is_available(),
                  report_to="none", disable_tqdm=True, remove_unused_columns=False)
    if not has_eval:
        kwargs["eval_strategy"] = "no"
    return TrainingArguments(**kwargs)


def _compute_metrics(pred):
    from sklearn.metrics import accuracy_score, f1_score

    guess = pred.predictions.argmax(-1)
    return {"accuracy": float(accuracy_score(pred.label_ids, guess)), "macro_f1": float(f1_score(pred.label_ids, guess, average="macro"))}




def _save(trainer, model, tokenizer, run_dir: Path, lora: bool) -> Path:
    def save(tmp: Path):
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if lora:  # the classifier config (label maps, pad id, architecture) beside the adapter
            base = model.get_base_model()
            base.config.architectures = [type(base).__name__]
            base.config.save_pretrained(tmp)
    return atomic_save_dir(run_dir / ("adapter" if lora else "model"), save)


def _collator(pad_id: int):
    def collate(rows):
        batch = pad_batch(rows, pad_id, "right")
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        return batch
    return collate


def build_model(cfg: ClassifyConfig, source, names: list[str], pad_id: int):
    """Load the classifier (fp32 weights, seeded head) and wrap it in LoRA (task SEQ_CLS, head in ``modules_to_save``) when enabled.

    Returns:
        (model, use_bf16): bf16 mixed precision only where the hardware computes it natively (``models.choose_dtype``)
        unless ``train.bf16`` says otherwise.
    """
    dtype = choose_dtype(cfg.model.dtype)
    use_bf16 = cfg.train.bf16 if cfg.train.bf16 is not None else dtype == torch.bfloat16
    torch.manual_seed(cfg.train.seed)
    model = load_classifier(source, names, pad_id, cfg.model)
    if cfg.lora.enabled:
        lora_cfg = cfg.lora if cfg.lora.modules_to_save else cfg.lora.model_copy(update={"modules_to_save": ["score"]})
        model = apply_lora(model, lora_cfg, task_type="SEQ_CLS")
    return model, use_bf16


def run_classify(cfg: ClassifyConfig, *, overwrite: bool = False) -> dict:
    """Train and evaluate a classifier end to end and write every artifact.

    Args:
        cfg: the validated classify config.
        overwrite: replace an existing, non-empty ``train.output_dir``.

    Returns:
        The metrics dict also written to ``metrics.json`` (``kind="classify"``).

    Raises:
        TunesmithError (ConfigError, DataError, ModelError): bad input, before training starts.
    """
    from datasets import Dataset

    train_recs, eval_recs, names, data_report = load_label_data(cfg)
    if not eval_recs or not train_recs:
        part = "eval" if train_recs else "training"
        raise DataError(f"The {part} set is empty", [Problem("data", f"{len(train_recs)} training and {len(eval_recs)} eval records after cleaning and the split",
                                                           "set data.eval_fraction > 0 (or data.eval_path) and check the label set")])
    run_dir = prepare_run_dir(cfg.train.output_dir, overwrite=overwrite)
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)
    pad_id = choose_pad_id(tokenizer)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    weights = class_weights(cfg.labels.class_weights, train_recs, names)
    label2id = {n: i for i, n in enumerate(names)}
    train_rows, train_trunc = encode(tokenizer, train_recs, label2id, cfg.train.max_length)
    eval_rows, eval_trunc = encode(tokenizer, eval_recs, label2id, cfg.train.max_length)
    model, use_bf16 = build_model(cfg, source, names, pad_id)
    trainable, total = count_parameters(model)
    console.print(f"[bold]tunesmith classify[/] model={source.name} ({source.kind}) labels={len(names)} train={len(train_rows)} eval={len(eval_rows)} "
                  f"{'LoRA r=' + str(cfg.lora.r) if cfg.lora.enabled else 'full fine-tuning'}, trainable {trainable:,} of {total:,} parameters; "
                  f"precision={'bf16-mixed' if use_bf16 else 'fp32'}; truncated {train_trunc}+{eval_trunc} examples to {cfg.train.max_length} tokens")
    args = build_training_args(cfg, run_dir, use_bf16, has_eval=bool(eval_rows))
    trainer = _trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                               eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                               data_collator=_collator(pad_id), compute_metrics=_compute_metrics)
    trainer.weights = weights
    install_progress(trainer)
    before = None
    if cfg.eval.before_training and eval_rows:
        before = _accuracy_f1(eval_recs, predict_proba(model, eval_rows, pad_id, batch_size=cfg.train.per_device_eval_batch_size), names)
    with Timer() as t:
        result = trainer.train()
    with Timer() as t_eval:
        probs = predict_proba(model, eval_rows, pad_id, batch_size=cfg.train.per_device_eval_batch_size) if eval_rows else torch.zeros((0, len(names)))
    preds = [names[i] for i in probs.argmax(-1).tolist()]
    _save(trainer, model, tokenizer, run_dir, cfg.lora.enabled)
    write_log_history(run_dir, trainer.state.log_history)
    plot_loss_curve(run_dir, trainer.state.log_history)
    extra = {"before_training": before, "train_loss": result.training_loss, "global_step": trainer.state.global_step,
             "train_seconds": t.seconds, "eval_seconds": t_eval.seconds, "precision": "bf16-mixed" if use_bf16 else "fp32",
             "pad_token_id": pad_id, "truncated": {"train": train_trunc, "eval": eval_trunc},
             "class_weights": weights.tolist() if weights is not None else None, "data": data_report}
    cost = {"parameters": total, "trainable_parameters": trainable, "peak_memory_bytes": peak_memory_bytes()}
    metrics = write_eval_artifacts(run_dir, kind="classify", model=source.name, records=eval_recs, predictions=preds, names=names, extra=extra, cost=cost)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    write_manifest(run_dir, config=cfg.model_dump(mode="json"), seed=cfg.train.seed, dataset_fingerprint=fingerprint(train_recs + eval_recs),
                   tokenizer=tokenizer, extra={"model_source": dataclasses.asdict(source), "labels": names})
    console.print(f"\n[bold green]done[/] in {t.seconds:.0f}s: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} on {len(eval_recs)} eval examples"
                  + (f" (untrained head: {before['accuracy']:.4f} / {before['macro_f1']:.4f})" if before else "") + f"\n  artifacts: {run_dir}/")
    return metrics


def _accuracy_f1(records: list[LabelRecord], probs: torch.Tensor, names: list[str]) -> dict:
    from tunesmith.evaluate.classification import classification_metrics

    m = classification_metrics([r.label for r in records], [names[i] for i in probs.argmax(-1).tolist()], names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

