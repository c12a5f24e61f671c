"""Typed config of ``tunesmith dpo``: the model/data/lora sections of a run, DPO trainer settings and evaluation.

    tunesmith dpo --show-config          # every field with its value and documentation

The ``train`` section takes ``trl.DPOConfig`` field names (``beta``, ``loss_type``, ``max_length``,
``precompute_ref_log_probs``, ...); an unknown key is rejected with a "did you mean".  ``model.adapter``
names the SFT adapter to start from (Rafailov et al. 2023: DPO starts from the SFT model, which is also the reference).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

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


class DPOModelSection(ModelSection):
    """Where the model comes from: a base (embedded name, hub id, path), optionally plus the SFT adapter to start
    from."""

    adapter: str | None = None
    (
        "SFT adapter to start from: a `tunesmith sft` run directory (its `adapter/` is used) or a PEFT adapter folder. "
        "None starts from `model.name` itself (a merged SFT model or the base)."
    )
    adapter_mode: Literal["continue", "merge"] = "continue"
    (
        "How DPO starts from `adapter`: `continue` trains the SFT adapter itself (the reference is the base plus a "
        "frozen copy of the SFT adapter, LoRA-sized; the saved adapter loads on the base); `merge` merges it into the "
        "base weights in memory and trains a fresh LoRA (the reference is the merged model with the new adapter "
        "disabled; the saved adapter applies to base+SFT merged)."
    )


class DPODataSection(DataSection):
    """Preference pairs: a file in a common preference format or a bundled set, and how they are split."""

    name: str | None = "chatterbot-pairs"
    (
        "A bundled preference dataset (`chatterbot-pairs`: chatterbot-corpus replies against a reply from another "
        "topic). Used when `path` is not set."
    )
    path: str | None = None
    """A preference file (JSONL, JSON, CSV, Parquet, optionally .gz) or a saved Hugging Face dataset directory."""
    format: Literal["auto", "prompt_chosen_rejected", "openai", "hh", "implicit"] = "auto"
    (
        "Record format; `auto` detects it from the keys of the first record: prompt/chosen/rejected (text or "
        "conversational), OpenAI DPO (input/preferred_output/non_preferred_output), Anthropic HH (chosen/rejected "
        "dialogue strings), implicit (chosen/rejected message lists sharing a prefix)."
    )
    eval_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    """Fraction of pairs held out for evaluation (reward accuracy, margins, win rate) when `eval_path` is unset."""
    max_eval_examples: int | None = Field(200, gt=0)
    """Use at most this many held-out pairs; keeps evaluation fast on CPU."""


class DPOTrainSection(LibraryTrainSection):
    """Trainer settings; every key is a `trl.DPOConfig` field (others are rejected with a suggestion)."""

    library_name: ClassVar[str] = "trl.DPOConfig"

    output_dir: str = "runs/dpo"
    """Run directory: adapter, metrics, predictions, plots and manifest go here."""
    max_steps: int = 60
    """Number of optimizer steps; -1 trains for `num_train_epochs` instead."""
    num_train_epochs: float = 1.0
    """Epochs to train when `max_steps` is -1."""
    per_device_train_batch_size: int = Field(8, gt=0)
    """Preference pairs per device per micro-batch (each pair is two sequences: chosen and rejected)."""
    per_device_eval_batch_size: int = Field(8, gt=0)
    """Pairs per device per evaluation batch."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Micro-batches accumulated per optimizer step."""
    learning_rate: float = Field(5e-5, gt=0)
    (
        "Peak learning rate (AdamW). DPO uses smaller rates than SFT: about 5e-6 to 1e-4 with LoRA, 5e-7 to 5e-6 for "
        "full fine-tuning."
    )
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule (transformers `SchedulerType`: linear, cosine, constant, ...)."""
    warmup_steps: float = 0.1
    """Warmup: an integer number of steps, or a float in [0, 1) as a fraction of total steps."""
    beta: float = Field(0.1, gt=0)
    (
        "DPO temperature β: the implicit reward is β·(log π(y|x) − log π_ref(y|x)); higher β keeps the policy closer "
        "to the reference (Rafailov et al. 2023)."
    )
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"])
    """TRL loss(es): `sigmoid` is the DPO loss; also `ipo`, `hinge`, `robust`, `apo_zero`, ... (see trl.DPOConfig)."""
    max_length: int = Field(384, gt=0)
    (
        "Maximum tokens of prompt plus response; longer pairs are cut at the end (keep_start); pairs whose prompt "
        "alone fills it are dropped (counted)."
    )
    precompute_ref_log_probs: bool = False
    (
        "Compute the reference log-probs of every pair once before training (one extra pass) instead of a reference "
        "forward pass per step."
    )
    fast_path: bool = True
    (
        "One packed forward pass per micro-batch (prompt, chosen and rejected in one row, the prompt once) and "
        "log-probs only at completion positions, in chunks through the output head "
        "(tunesmith.train.speed.dpo_fast); the losses and metrics are TRL's. False uses TRL's DPOTrainer forward."
    )
    eval_strategy: Literal["no", "steps", "epoch"] = "steps"
    """When to evaluate (TRL's batch-averaged eval_rewards/*) during training."""
    eval_steps: int | None = 20
    """Evaluate every this many steps when eval_strategy is `steps`."""
    logging_steps: int = 5
    """Log train loss and rewards every this many steps."""
    save_strategy: Literal["no", "steps", "epoch", "best"] = "steps"
    (
        "When to write resumable checkpoints under output_dir/checkpoints (`--resume latest` continues from the "
        "newest; SIGINT/SIGTERM always save one)."
    )
    save_steps: int = Field(20, gt=0)
    """Checkpoint every this many steps."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints."""
    seed: int = Field(42, ge=0, lt=SEED_LIMIT)
    """Random seed for LoRA initialisation and data order."""
    bf16: bool | None = None
    """bf16 mixed precision. None decides from the hardware (see model.dtype)."""
    gradient_checkpointing: bool = False
    (
        "Recompute activations in the backward pass: saves memory, costs ~30% more compute (TRL's DPOConfig defaults "
        "to True; tunesmith to False)."
    )

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_loss(cls, value):
        """A single loss may be given as a string."""
        return [value] if isinstance(value, str) else value


class DPOEvalSection(Section):
    """Evaluation on held-out pairs and the win rate against the starting (SFT/base) model."""

    bootstrap_samples: int = Field(2000, ge=100)
    (
        "Bootstrap resamples of the held-out pairs for the confidence interval of reward accuracy (percentile method, "
        "Efron 1979)."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Confidence level of the intervals."""
    win_rate_prompts: int = Field(24, ge=0)
    """Held-out prompts on which the DPO model and the starting model both generate, for the win rate (0 skips it)."""
    win_metric: Literal["implicit_reward", "rougeL"] = "implicit_reward"
    (
        "How a generation wins: `rougeL` = higher ROUGE-L F1 against the chosen reply than the starting model's "
        "generation (rouge-score); `implicit_reward` = higher DPO implicit reward β·log(π/π_ref) (judged by the "
        "trained policy itself, so optimistic). Ties count half."
    )
    max_new_tokens: int = Field(48, gt=0)
    """Generation budget per prompt for the win rate, in tokens (greedy decoding)."""


class DPORunConfig(RootConfig):
    """A DPO run: model, data, lora, train and eval sections."""

    model: DPOModelSection = Field(default_factory=DPOModelSection)
    """Model source and the SFT adapter to start from."""
    data: DPODataSection = Field(default_factory=DPODataSection)
    """Preference pairs and the held-out split."""
    lora: LoraSection = Field(default_factory=LoraSection)
    (
        "LoRA adapter (peft.LoraConfig fields); used for a fresh adapter (no `model.adapter`, or adapter_mode "
        "`merge`). lora.enabled=false trains every weight (then TRL needs a reference: precompute_ref_log_probs is "
        "switched on)."
    )
    train: DPOTrainSection = Field(default_factory=DPOTrainSection)
    """Trainer (trl.DPOConfig fields)."""
    eval: DPOEvalSection = Field(default_factory=DPOEvalSection)
    """Held-out metrics and the win rate."""

    @model_validator(mode="after")
    def _no_quantization(self) -> "DPORunConfig":
        refuse_quantization(self.model, "dpo")
        return self
