"""Typed run configuration: one YAML file per run plus ``--set section.key=value`` overrides.

Run ``tunesmith config`` to print every field with its default and documentation.

Sections follow the libraries' own names: ``train.*`` are ``trl.SFTConfig`` fields,
``lora.*`` are ``peft.LoraConfig`` fields, ``model.name`` is an embedded name, a Hugging Face
id or a path, ``data.path``/``data.name`` select the data.  Every problem found is collected and
raised once as :class:`~tunesmith.errors.ConfigError` (exit code 2 from the CLI).
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
)
from tunesmith.config.problems import _check_paths, _field_names, _fix_for, _problems_from, _set_path, parse_override  # noqa: F401 (parse_override stays importable from here)


class TrainSection(LibraryTrainSection):
    """Trainer settings; every key is a `trl.SFTConfig` field (others are rejected with a suggestion)."""

    library_name: ClassVar[str] = "trl.SFTConfig"

    output_dir: str = "runs/sft"
    """Run directory: adapter, metrics, plots, manifest and checkpoints go here."""
    max_steps: int = 30
    """Number of optimizer steps; -1 trains for `num_train_epochs` instead."""
    num_train_epochs: float = 1.0
    """Epochs to train when `max_steps` is -1."""
    per_device_train_batch_size: int = Field(8, gt=0)
    """Sequences (or packed rows) per device per micro-batch."""
    per_device_eval_batch_size: int = Field(8, gt=0)
    """Sequences per device per evaluation batch."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches accumulated per optimizer step; loss is normalised by trained tokens over all of them."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate (AdamW). 1e-4 to 3e-4 is typical for LoRA; 1e-5 to 5e-5 for full fine-tuning."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule (transformers `SchedulerType`: linear, cosine, constant, ...)."""
    warmup_steps: float = 0.05
    """Warmup: an integer number of steps, or a float in [0, 1) as a fraction of total steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_length: int = Field(256, gt=0)
    (
        "Maximum tokens per sequence (and per packed row). Longer conversations are truncated, and the loss of trained "
        "tokens is reported."
    )
    packing: bool = True
    (
        "Pack several conversations into each row (best-fit decreasing), keeping sample boundaries: position ids "
        "restart per sample and attention never crosses samples."
    )
    packing_strategy: Literal["bfd", "bfd_split", "wrapped"] = "bfd"
    """TRL packing strategy; `bfd` keeps each conversation whole."""
    eval_strategy: Literal["no", "steps", "epoch"] = "steps"
    """When to evaluate during training."""
    eval_steps: int | None = 10
    """Evaluate every this many steps when eval_strategy is `steps`."""
    logging_steps: int = 5
    """Log train loss every this many steps."""
    save_strategy: Literal["no", "steps", "epoch", "best"] = "steps"
    """When to write resumable checkpoints under output_dir/checkpoints."""
    save_steps: int = 10
    """Checkpoint every this many steps."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints."""
    seed: int = Field(42, ge=0, lt=SEED_LIMIT)
    """Random seed for initialisation, dropout and data order."""
    bf16: bool | None = None
    """bf16 mixed precision. None decides from the hardware (see model.dtype)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: saves memory, costs ~30% more compute."""
    # --- performance ---
    chunked_loss: bool = True
    (
        "Compute the loss only at trained positions, in chunks through the output head "
        "(tunesmith.train.speed.fastloss): the [tokens, vocab] logits never exist whole. False uses TRL's own loss."
    )
    packing_layout: Literal["auto", "rows", "flat"] = "auto"
    (
        "How packed rows form a batch: `rows` keeps each packed row as a batch row (dense attention masks stay "
        "max_length^2 per row; best for SDPA/eager), `flat` concatenates the batch into one padding-free sequence "
        "(TRL's layout; best with flash-attention varlen). `auto`: flat with a varlen attention kernel, else rows."
    )
    varlen_attention: bool = True
    (
        "With packed rows and SDPA, each packed sample attends only to itself through SDPA's causal kernel, one "
        "sample at a time (tunesmith.train.speed.varlen), instead of a dense block-diagonal mask over the row: "
        "attention costs the sum of the squared sample lengths, as with flash-attention's varlen kernel."
    )
    compile: bool = False
    (
        "torch.compile (inductor) each decoder layer before training: fuses the norms, rotary embedding, SiLU-mul "
        "and LoRA's element-wise work. Costs a compile of seconds to minutes on the first steps (and again for new "
        "shapes); measured by `make bench` (variant tunesmith_compile)."
    )
    micro_batch_size: int | None = Field(None, gt=0)
    (
        "Rows per forward/backward pass: each optimizer step's per_device_train_batch_size rows run as accumulated "
        "micro-batches of this many (same loss: normalised by the step's trained tokens), so activation memory follows "
        "the micro-batch. None: on CPU with packed rows as many rows as fit in 512 tokens (one 512-token row, two "
        "256-token rows; measured fastest there), else the whole batch in one pass."
    )
    num_threads: int | None = Field(None, gt=0)
    """torch intra-op CPU threads (torch.set_num_threads); None keeps torch's default (one per core)."""
    # --- end performance ---

    @model_validator(mode="after")
    def _micro_divides_batch(self) -> "TrainSection":
        if self.micro_batch_size and self.per_device_train_batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size={self.micro_batch_size} must divide "
                f"per_device_train_batch_size={self.per_device_train_batch_size}"
            )
        return self


class EvalSection(Section):
    """Evaluation before/after training and sample generations."""

    before_training: bool = True
    """Measure eval_loss and perplexity of the untrained model too, so the gain is visible."""
    num_samples: int = Field(4, ge=0)
    """Held-out prompts whose generations before and after training go to samples.jsonl."""
    max_new_tokens: int = Field(64, gt=0)
    """Generation budget per sample, in tokens."""
    # --- decision order ---
    baseline: bool = False
    (
        "`tunesmith sft` also prompts the untrained model on the eval set first (into `<output_dir>/baseline`), "
        "evaluates the trained adapter the same way after training (`<output_dir>/eval`) and writes the decision "
        "report (`<output_dir>/report.html`)."
    )
    metrics: list[str] = Field(default_factory=lambda: ["exact_match", "rouge_l", "chrf", "eval_loss", "perplexity"])
    (
        "Task metrics of `tunesmith baseline`/`eval`/`report`: exact_match, contains, json_valid, json_schema, regex, "
        "answer_match, label_accuracy, label_macro_f1, rouge_l, chrf, tool_call_ast, tool_name_accuracy, "
        "tool_call_valid_json (from generations), eval_loss, perplexity (mean token cross-entropy of the trained "
        "tokens of the eval rows, truncated as training truncates them), and custom metrics named by import path, "
        "`package.module:function` (called as function(prediction, reference, example) -> float; imported only when "
        "an evaluation runs, recorded in the manifest)."
    )
    json_schema: dict | str | None = None
    (
        "JSON Schema for the `json_schema` metric: a mapping written in the config, or the path of a .json file "
        "(relative to the config file)."
    )
    regex: str | None = None
    """Pattern the whole stripped answer must match for the `regex` metric (Python `re.fullmatch`, DOTALL)."""
    answer_extractor: Literal["gsm8k", "last_number", "boxed", "choice"] | None = None
    (
        "For answer_match: how the final answer is taken from prediction and reference. `gsm8k`: the text after the "
        "last `####`, else the last number; `last_number`: the last number; `boxed`: the content of the last "
        "`\\boxed{...}`; `choice`: a multiple-choice letter A-J. Or set answer_regex instead."
    )
    answer_regex: str | None = None
    (
        "For answer_match: a Python regex with a capture group; the first group of its last match in prediction and "
        "reference is the answer (re.DOTALL). Or set answer_extractor instead."
    )
    answer_tolerance: float = Field(1e-6, ge=0.0)
    (
        "For answer_match: answers that both read as numbers (commas, $ and % ignored) match when they differ by at "
        "most this, relative to the reference (absolute below 1); other answers compare as normalised text."
    )
    label_field: str | None = None
    (
        "For label_accuracy/label_macro_f1: the JSON field holding the label (e.g. `topic`); None compares the whole "
        "normalised answer."
    )
    k_shot: int = Field(0, ge=0)
    (
        "`tunesmith baseline` also runs a k-shot baseline: k train examples (seeded by `k_shot_seed`) prepended as "
        "user/assistant turns after the system turn."
    )
    k_shot_seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seed choosing the k-shot examples from the train split."""
    targets: dict[str, float] = Field(default_factory=dict)
    (
        "Targets of the decision verdict, metric -> threshold, e.g. {json_schema: 0.95}: at least this (at most for "
        "eval_loss/perplexity)."
    )

    @model_validator(mode="after")
    def _decision_fields(self) -> "EvalSection":
        from tunesmith.config.metric_names import ALL_METRICS, is_known_metric

        problems = [
            f"unknown metric {m!r} (known: {', '.join(ALL_METRICS)}, or a custom package.module:function)"
            for m in self.metrics
            if not is_known_metric(m)
        ]
        problems += [f"target {t!r} is not in eval.metrics" for t in self.targets if t not in self.metrics]
        if "json_schema" in self.metrics and self.json_schema is None:
            problems.append("metric json_schema needs eval.json_schema (a mapping or a .json file)")
        if "regex" in self.metrics and self.regex is None:
            problems.append("metric regex needs eval.regex")
        problems += _answer_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- end decision order ---


def _answer_problems(section: "EvalSection") -> list[str]:
    """What is wrong with the answer_match settings: an extractor or a regex, not both, and a regex that compiles and
    captures."""
    import re

    problems = []
    if "answer_match" in section.metrics and (section.answer_extractor is None) == (section.answer_regex is None):
        problems.append(
            "metric answer_match needs exactly one of eval.answer_extractor (gsm8k, last_number, boxed, choice) and "
            "eval.answer_regex"
        )
    if section.answer_regex is not None:
        try:
            if re.compile(section.answer_regex).groups < 1:
                problems.append(
                    f"eval.answer_regex {section.answer_regex!r} has no capture group: wrap the answer in (...)"
                )
        except re.error as exc:
            problems.append(f"eval.answer_regex {section.answer_regex!r} is not a valid regex: {exc}")
    return problems


class SFTDataSection(DataSection):
    """Which data to train and evaluate on, how to split it, and what to do with conversations over max_length."""

    truncation: Literal["keep_start", "drop", "error"] = "keep_start"
    (
        "Conversations longer than train.max_length: `keep_start` keeps their first max_length tokens (the end of the "
        "reply is lost: a final answer such as GSM8K's `#### 72` is then never trained), `drop` leaves them out of "
        "training and eval_loss, `error` stops before training and lists them. `tunesmith data check` and `tunesmith "
        "sft` warn when over 5% of examples or trained tokens are cut, naming the max_length that keeps 95%."
    )


class RunConfig(RootConfig):
    """A whole run: model, data, lora, train and eval sections."""

    model: ModelSection = Field(default_factory=ModelSection)
    """Model source and loading."""
    data: SFTDataSection = Field(default_factory=SFTDataSection)
    """Training and evaluation data."""
    lora: LoraSection = Field(default_factory=LoraSection)
    """LoRA adapter (peft.LoraConfig fields)."""
    train: TrainSection = Field(default_factory=TrainSection)
    """Trainer (trl.SFTConfig fields)."""
    eval: EvalSection = Field(default_factory=EvalSection)
    """Evaluation and samples."""

    @model_validator(mode="after")
    def _quantized_base_needs_lora(self) -> "RunConfig":
        if self.model.quantization is not None and not self.lora.enabled:
            raise ValueError(
                f"model.quantization={self.model.quantization} trains a LoRA adapter on a frozen quantised base "
                "(QLoRA): set lora.enabled: true, or remove model.quantization to fine-tune every weight"
            )
        return self
