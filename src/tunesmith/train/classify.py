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
from tunesmith.config.load import dump_config
from tunesmith.errors import ConfigError, DataError, Problem
from tunesmith.data.labels import load_label_data
from tunesmith.data.records import LabelRecord
from tunesmith.models.adapters import apply_lora, count_parameters
from tunesmith.models.sources import resolve_model
from tunesmith.models.loading import load_tokenizer
from tunesmith.runtime.hardware import choose_dtype
from tunesmith.runtime.rundir import prepare_run_dir
from tunesmith.runtime.manifest import write_manifest
from tunesmith.runtime.files import atomic_save_dir, atomic_write_text
from tunesmith.train.common import install_progress, plot_loss_curve, write_log_history
from tunesmith.data.split import fingerprint
from tunesmith.runtime.console import Timer, console
from tunesmith.runtime.memory import peak_memory_bytes
from tunesmith.models.classifier import choose_pad_id
from tunesmith.models.classifier import encode
from tunesmith.models.classifier import load_classifier
from tunesmith.models.classifier import pad_batch
from tunesmith.models.classifier import predict_proba
from tunesmith.evaluate.stats import macro_f1


_OURS = {"output_dir", "bf16", "max_length"}












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
    guess = pred.predictions.argmax(-1)
    refs = pred.label_ids.tolist()
    return {"accuracy": float((guess == pred.label_ids).mean()), "macro_f1": macro_f1(refs, guess.tolist(), labels=range(pred.predictions.shape[-1]))}




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

