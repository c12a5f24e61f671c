"""Task fine-tuning: a sequence-classification head on a decoder LLM (transformers Trainer + LoRA).

Run it::

    tunesmith classify configs/classify/chatterbot-topics.yaml        # chatterbot topics on the embedded SmolLM2
    tunesmith classify cfg.yaml --set lora.enabled=false       # full fine-tuning
    tunesmith classify cfg.yaml --resume latest                # continue from the newest checkpoint

Path: the run lifecycle (:mod:`tunesmith.train.lifecycle`: config, label data read, cleaned, de-duplicated, checked
against the label set and split stratified, run folder) -> ``AutoModelForSequenceClassification`` on the resolved
model source (a causal-LM checkpoint gets a new ``score`` head, :mod:`tunesmith.models.classifier`) -> LoRA on the
body with the head trained in full (``modules_to_save``) -> transformers ``Trainer`` (optional class-weighted
cross-entropy), checkpoints and graceful stops -> accuracy, macro-F1, per-class scores and a confusion matrix on the
eval set -> artifacts in ``train.output_dir``, ``metrics.json`` last.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from tunesmith.config.classify import ClassifyConfig
from tunesmith.data.records import LabelRecord
from tunesmith.errors import ConfigError, Problem
from tunesmith.evaluate.classification import classification_metrics, write_eval_artifacts
from tunesmith.evaluate.stats import macro_f1
from tunesmith.models.adapters import apply_lora, count_parameters
from tunesmith.models.classifier import choose_pad_id, encode, load_classifier, pad_batch, predict_proba
from tunesmith.models.loading import load_tokenizer
from tunesmith.models.sources import resolve_model
from tunesmith.runtime.console import Timer, console
from tunesmith.runtime.files import atomic_save_dir
from tunesmith.runtime.memory import peak_memory_bytes, reset_peak_memory
from tunesmith.train.common import (
    install_progress,
    library_args,
    mixed_precision,
    plot_loss_curve,
    run_train_loss,
    write_adapter_card,
    write_log_history,
)
from tunesmith.train.lifecycle import Run, start_run
from tunesmith.train.speed.classify_fast import (
    ROW_TOKENS,
    PackedClassifyCollator,
    packing_matches,
    pooled_logits,
    probe_rows,
)

_OURS = {"bf16", "max_length", "packing"}
"""``train`` fields this recipe sets itself rather than passing through."""


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
            raise ConfigError(
                "Bad class weights",
                [
                    Problem(
                        "labels.class_weights",
                        f"{len(spec)} values for {len(names)} labels",
                        f"give one weight per label: {names}",
                    )
                ],
            )
        return torch.tensor(spec, dtype=torch.float32)
    counts = torch.tensor([sum(r.label == n for r in train) for n in names], dtype=torch.float32)
    if (counts == 0).any():
        missing = [n for n, c in zip(names, counts) if c == 0]
        raise ConfigError(
            "Cannot balance class weights",
            [
                Problem(
                    "labels.class_weights",
                    f"labels without training examples: {missing}",
                    "use more data or explicit weights",
                )
            ],
        )
    return counts.sum() / (len(names) * counts)


def _trainer_class():
    from transformers import Trainer
    from transformers.modeling_outputs import SequenceClassifierOutput

    class ClassifyTrainer(Trainer):
        """Trainer whose loss is (optionally class-weighted) cross-entropy over the pooled logits."""

        loss_is_scaled_for_ga = False
        weights: torch.Tensor | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: D102
            labels = inputs.pop("labels")
            inputs.pop("num_real_tokens", None)
            if "pool_index" in inputs:  # packed rows (tunesmith.train.speed.classify_fast)
                with self.accelerator.autocast():  # accelerate autocasts model.forward only; this bypasses it
                    outputs = SequenceClassifierOutput(logits=pooled_logits(model, **inputs))
            else:
                outputs = model(**inputs)
            w = self.weights.to(outputs.logits.device) if self.weights is not None else None
            loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=w)
            return (loss, outputs) if return_outputs else loss

    return ClassifyTrainer


def build_training_args(cfg: ClassifyConfig, run_dir: Path, use_bf16: bool):
    """Translate the ``train`` section into ``transformers.TrainingArguments`` (checkpoints under
    ``<run>/checkpoints``)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **library_args(cfg, run_dir, TrainingArguments, bf16=use_bf16, ours=_OURS), remove_unused_columns=False
    )


def _compute_metrics(pred):
    guess = pred.predictions.argmax(-1)
    refs = pred.label_ids.tolist()
    return {
        "accuracy": float((guess == pred.label_ids).mean()),
        "macro_f1": macro_f1(refs, guess.tolist(), labels=range(pred.predictions.shape[-1])),
    }


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
    """Load the classifier (fp32 weights, seeded head) and wrap it in LoRA (task SEQ_CLS, head in ``modules_to_save``)
    when enabled.

    Returns:
        The model (``PeftModel`` with LoRA).
    """
    torch.manual_seed(cfg.train.seed)
    model = load_classifier(source, names, pad_id, cfg.model)
    if cfg.lora.enabled:
        lora_cfg = cfg.lora if cfg.lora.modules_to_save else cfg.lora.model_copy(update={"modules_to_save": ["score"]})
        model = apply_lora(model, lora_cfg, task_type="SEQ_CLS")
    return model


def run_classify(
    cfg: ClassifyConfig, *, overwrite: bool = False, resume: str | bool | None = None, run: Run | None = None
) -> dict:
    """Train and evaluate a classifier end to end and write every artifact; ``metrics.json`` is written last.

    Args:
        cfg: the validated classify config.
        overwrite: replace a run folder tunesmith made before.
        resume: ``"latest"``/True or a checkpoint path to continue from.
        run: the run :func:`tunesmith.train.lifecycle.start_run` already claimed.

    Returns:
        The metrics dict also written to ``metrics.json`` (``kind="classify"``).

    Raises:
        TunesmithError (ConfigError, DataError, ModelError): bad input, before training starts.
        TrainingStopped: SIGINT/SIGTERM during training (a checkpoint was saved; exit code 130/143).
    """
    run = run or start_run(cfg, "classify", overwrite=overwrite, resume=resume)
    with run.guard():
        return _run(cfg, run)


def make_trainer(
    cfg: ClassifyConfig,
    model,
    train_rows: list[dict],
    eval_rows: list[dict],
    pad_id: int,
    run_dir: Path,
    *,
    use_bf16: bool,
):
    """The classify trainer on encoded rows: packed rows when ``train.packing`` is on, the run is one process (the
    packed forward bypasses the model's own forward, which DDP/FSDP wrappers hook) and
    :func:`~tunesmith.train.speed.classify_fast.packing_matches` confirms this model gives the same logits packed as
    padded; else right-padded batches with an attention mask.

    Returns:
        (``ClassifyTrainer`` (a ``transformers.Trainer``; set ``.weights`` for class-weighted loss), True when it
        trains on packed rows).
    """
    from datasets import Dataset

    args = build_training_args(cfg, run_dir, use_bf16)
    packed = cfg.train.packing and args.world_size == 1 and packing_matches(model, probe_rows(train_rows), pad_id)
    collator = PackedClassifyCollator(pad_id, max(ROW_TOKENS, cfg.train.max_length)) if packed else _collator(pad_id)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows),
        data_collator=collator,
        compute_metrics=_compute_metrics,
    )
    return trainer, packed


def _run(cfg: ClassifyConfig, run: Run) -> dict:
    train_recs, eval_recs, names = run.data.train, run.data.eval, run.data.names
    source = resolve_model(cfg.model.name)
    tokenizer = load_tokenizer(source, trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision)
    pad_id = choose_pad_id(tokenizer)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    weights = class_weights(cfg.labels.class_weights, train_recs, names)
    label2id = {n: i for i, n in enumerate(names)}
    train_rows, train_trunc = encode(tokenizer, train_recs, label2id, cfg.train.max_length)
    eval_rows, eval_trunc = encode(tokenizer, eval_recs, label2id, cfg.train.max_length)
    model, use_bf16 = build_model(cfg, source, names, pad_id), mixed_precision(cfg)
    trainable, total = count_parameters(model)
    console.print(
        f"[bold]tunesmith classify[/] model={source.name} ({source.kind}) labels={len(names)} train={len(train_rows)} "
        f"eval={len(eval_rows)} {'LoRA r=' + str(cfg.lora.r) if cfg.lora.enabled else 'full fine-tuning'}, trainable "
        f"{trainable:,} of {total:,} parameters; precision={'bf16-mixed' if use_bf16 else 'fp32'}; truncated "
        f"{train_trunc}+{eval_trunc} examples to {cfg.train.max_length} tokens"
        + (f"; resuming from {run.checkpoint}" if run.resumed else "")
    )
    run.write_manifest(
        tokenizer=tokenizer,
        records=train_recs + eval_recs,
        extra={"model_source": dataclasses.asdict(source), "labels": names},
    )
    trainer, packed = make_trainer(cfg, model, train_rows, eval_rows, pad_id, run.run_dir, use_bf16=use_bf16)
    trainer.weights = weights
    why = " (packed rows need one process and the same logits as padded)" if cfg.train.packing else ""
    console.print("batches: " + ("packed rows (no padding, attention per example)" if packed else "padded" + why))
    install_progress(trainer)
    if not run.resumed:
        before = None
        if cfg.eval.before_training:
            probs = predict_proba(model, eval_rows, pad_id, batch_size=cfg.train.per_device_eval_batch_size)
            before = _accuracy_f1(eval_recs, probs, names)
        run.remember(before=before)
    result, seconds = run.train(trainer)
    reset_peak_memory()  # the eval cost below is the eval's own
    with Timer() as t_eval:
        probs = predict_proba(model, eval_rows, pad_id, batch_size=cfg.train.per_device_eval_batch_size)
    preds = [names[i] for i in probs.argmax(-1).tolist()]
    _save(trainer, model, tokenizer, run.run_dir, cfg.lora.enabled)
    write_log_history(run.run_dir, trainer.state.log_history)
    plot_loss_curve(run.run_dir, trainer.state.log_history)
    before = run.state.get("before")
    extra = {
        "before_training": before,
        "train_loss": _train_loss(run, trainer, result),
        "global_step": trainer.state.global_step,
        "resumed_from": str(run.checkpoint) if run.resumed else None,
        "train_seconds": seconds,
        "eval_seconds": t_eval.seconds,
        "precision": "bf16-mixed" if use_bf16 else "fp32",
        "batches": "packed" if packed else "padded",
        "pad_token_id": pad_id,
        "truncated": {"train": train_trunc, "eval": eval_trunc},
        "class_weights": weights.tolist() if weights is not None else None,
        "data": run.data.report,
    }
    cost = {"parameters": total, "trainable_parameters": trainable, "peak_memory_bytes": peak_memory_bytes()}
    metrics = write_eval_artifacts(
        run.run_dir,
        kind="classify",
        model=source.name,
        records=eval_recs,
        predictions=preds,
        names=names,
        extra=extra,
        cost=cost,
    )
    run.finish(metrics)
    write_adapter_card(run, run.run_dir / ("adapter" if (run.run_dir / "adapter").is_dir() else "model"))
    console.print(
        f"\n[bold green]done[/] in {seconds:.0f}s: accuracy {metrics['accuracy']:.4f}, "
        f"macro-F1 {metrics['macro_f1']:.4f} on {len(eval_recs)} eval examples"
        + (f" (untrained head: {before['accuracy']:.4f} / {before['macro_f1']:.4f})" if before else "")
        + f"\n  artifacts: {run.run_dir}/"
    )
    return metrics


def _train_loss(run: Run, trainer, result) -> float | None:
    """Mean train loss of the whole run (a resumed Trainer's ``training_loss`` covers only its own steps)."""
    return run_train_loss(trainer.state.log_history) if run.resumed or result is None else result.training_loss


def _accuracy_f1(records: list[LabelRecord], probs: torch.Tensor, names: list[str]) -> dict:
    m = classification_metrics([r.label for r in records], [names[i] for i in probs.argmax(-1).tolist()], names)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
