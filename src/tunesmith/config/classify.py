"""Typed config of ``tunesmith classify``: the model/data/lora sections of a run plus ``labels``.

Run ``tunesmith classify --show-config`` to print every field with its value and documentation.

The ``train`` section takes ``transformers.TrainingArguments`` field names (classification trains
with the plain transformers ``Trainer``); an unknown key is rejected with a "did you mean".
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunesmith.config.base import (
    SEED_LIMIT,
    DataSection,
    LibraryTrainSection,
    LoraSection,
    ModelSection,
    RootConfig,
    Section,
    refuse_quantization,
)


class LabelsSection(Section):
    """Which columns hold the text and the label, the label set, and how the data is cleaned and split."""

    text_column: str = "text"
    """Column (or JSON key) holding the text to classify."""
    text_pair_column: str | None = None
    """Optional second text column (sentence-pair tasks); both texts are encoded as one sequence pair."""
    label_column: str = "label"
    """Column holding the label name (a string; numbers are read as their text)."""
    names: list[str] | None = None
    """The label set, in id order. None takes the sorted set of labels found in the training data."""
    unknown_labels: Literal["error", "drop"] = "error"
    """Records whose label is not in `names`: `error` stops with each file:line; `drop` skips them (counted)."""
    min_examples: int = Field(1, ge=1)
    """With `names` unset: drop labels with fewer records than this (after de-duplication)."""
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    (
        "Loss weights per class: `none`, `balanced` (n_samples / (n_classes * count), scikit-learn's rule) or one "
        "float per label."
    )
    stratify: bool = True
    """Stratified train/eval split: each label keeps its share in both parts (scikit-learn train_test_split)."""
    deduplicate: bool = True
    (
        "Drop records whose (text, text pair) already appeared; the first occurrence and its label are kept. Avoids "
        "eval examples leaking from train."
    )
    clean_text: bool = True
    (
        "Strip surrounding whitespace, unescape HTML entities (&amp;) and repair Windows-1252 mojibake (C1 control "
        "characters such as U+0092)."
    )
    file_format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet", "hf"] = "auto"
    """Data file format; `auto` goes by the suffix (.csv .tsv .jsonl .json .parquet, a folder = saved HF dataset)."""
    column_names: list[str] | None = None
    (
        "Column names for a CSV/TSV file without a header row (e.g. [label, text]); None means the first row is the "
        "header."
    )
    encoding: str = "utf-8"
    """Text encoding of CSV/TSV files."""

    @model_validator(mode="after")
    def _check(self) -> "LabelsSection":
        if self.names is not None and len(set(self.names)) != len(self.names):
            raise ValueError("names has duplicates")
        if self.names is not None and len(self.names) < 2:
            raise ValueError("names needs at least two labels")
        if (
            isinstance(self.class_weights, list)
            and self.names is not None
            and len(self.class_weights) != len(self.names)
        ):
            raise ValueError(f"class_weights has {len(self.class_weights)} values for {len(self.names)} labels")
        return self


class ClassifyTrainSection(LibraryTrainSection):
    """Trainer settings; every key is a `transformers.TrainingArguments` field (others are rejected with a
    suggestion)."""

    library_name: ClassVar[str] = "transformers.TrainingArguments"

    output_dir: str = "runs/classify"
    """Run directory: model or adapter, metrics, predictions, plots and manifest go here."""
    max_steps: int = -1
    """Number of optimizer steps; -1 trains for `num_train_epochs` instead."""
    num_train_epochs: float = 3.0
    """Epochs to train when `max_steps` is -1."""
    per_device_train_batch_size: int = Field(16, gt=0)
    """Examples per device per micro-batch."""
    per_device_eval_batch_size: int = Field(32, gt=0)
    """Examples per device per evaluation batch."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches accumulated per optimizer step."""
    learning_rate: float = Field(5e-4, gt=0)
    (
        "Peak learning rate (AdamW). The new head starts from random weights, so LoRA runs like 2e-4 to 1e-3; full "
        "fine-tuning 1e-5 to 5e-5."
    )
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule (transformers `SchedulerType`)."""
    warmup_steps: float = 0.1
    """Warmup: an integer number of steps, or a float in [0, 1) as a fraction of total steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_length: int = Field(128, gt=0)
    """Maximum tokens per example (text plus text pair); longer examples are truncated (counted in metrics)."""
    eval_strategy: Literal["no", "steps", "epoch"] = "epoch"
    """When to evaluate during training."""
    eval_steps: int | None = None
    """Evaluate every this many steps when eval_strategy is `steps`."""
    logging_steps: int = 5
    """Log train loss every this many steps."""
    save_strategy: Literal["no", "steps", "epoch", "best"] = "steps"
    (
        "When to write resumable checkpoints under output_dir/checkpoints (`--resume latest` continues from the "
        "newest; SIGINT/SIGTERM always save one)."
    )
    save_steps: int = Field(50, gt=0)
    """Checkpoint every this many steps."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints."""
    seed: int = Field(42, ge=0, lt=SEED_LIMIT)
    """Random seed for the head's initialisation, LoRA, dropout and data order."""
    bf16: bool | None = None
    """bf16 mixed precision. None decides from the hardware (see model.dtype)."""
    packing: bool = True
    (
        "Train and evaluate on packed rows: a micro-batch's examples concatenated without padding, position ids "
        "restarting per example (attention never crosses examples), each example pooled at its own last token. Checked "
        "against padded batches on a few examples first; a model that gives other logits packed, and a run of several "
        "processes, trains padded."
    )


class ClassifyEvalSection(Section):
    """Evaluation of the trained classifier and of the prompting baseline."""

    before_training: bool = False
    """Also score the untrained head (chance level), so the gain is visible."""
    baseline: bool = False
    (
        "Also run the prompting baseline (the instruction-tuned model picks a label) on the same eval set, into "
        "`<output_dir>-baseline`."
    )
    baseline_prompt: str = (
        "Classify the message into exactly one of these categories: {labels}.\n"
        "Answer with the category name only.\n\nMessage: {text}"
    )
    (
        "User-turn template of the prompting baseline; `{labels}` is the comma-separated label list, `{text}` the "
        "example (and `{text_pair}`)."
    )
    max_new_tokens: int = Field(12, gt=0)
    """Generation budget of the prompting baseline, in tokens."""


class ClassifyDataSection(DataSection):
    """Training and evaluation data; the `data` fields of a run with classification defaults."""

    name: str | None = "chatterbot-topics"
    """A bundled classification dataset (`chatterbot-topics`). Used when `path` is not set."""
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    (
        "Fraction of records held out for evaluation when `eval_path` is unset (stratified by label, seeded by "
        "`split_seed`)."
    )
    max_eval_examples: int | None = Field(None, gt=0)
    """Use at most this many evaluation records (stratified subsample); None uses all."""


class ClassifyLoraSection(LoraSection):
    """LoRA adapter on the body (peft.LoraConfig fields); the classification head is trained in full."""

    modules_to_save: list[str] | None = Field(default_factory=lambda: ["score"])
    (
        "Modules trained in full and saved with the adapter: the classification head `score` (PEFT adds it for SEQ_CLS "
        "in any case)."
    )


class ClassifyConfig(RootConfig):
    """A classification run: model, data, labels, lora, train and eval sections."""

    model: ModelSection = Field(default_factory=ModelSection)
    """Model source and loading (a causal LM checkpoint gets a new, trained `score` head)."""
    data: ClassifyDataSection = Field(default_factory=ClassifyDataSection)
    """Training and evaluation data (`path`, `eval_path`, `name`, `eval_fraction`, `split_seed`, ...)."""
    labels: LabelsSection = Field(default_factory=LabelsSection)
    """Text/label columns, label set, class weights, split and cleaning."""
    lora: ClassifyLoraSection = Field(default_factory=ClassifyLoraSection)
    (
        "LoRA adapter on the body; the head (`score`) is trained in full via modules_to_save. lora.enabled=false "
        "fine-tunes everything."
    )
    train: ClassifyTrainSection = Field(default_factory=ClassifyTrainSection)
    """Trainer (transformers.TrainingArguments fields)."""
    eval: ClassifyEvalSection = Field(default_factory=ClassifyEvalSection)
    """Evaluation and the prompting baseline."""

    @model_validator(mode="after")
    def _no_quantization(self) -> "ClassifyConfig":
        refuse_quantization(self.model, "classify")
        return self
