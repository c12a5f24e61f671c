"""The config pieces every command shares: model, data and LoRA sections, and the trainer-section base class whose
extra keys go to a library's own config class (``trl.SFTConfig``, ``trl.DPOConfig``,
``transformers.TrainingArguments``).

    tunesmith config                  # every SFT field with its default and documentation
    tunesmith classify --show-config  # the classify fields; tunesmith dpo --show-config for DPO

Field docstrings become the ``--help`` text and ``docs/config.md`` (pydantic ``use_attribute_docstrings``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import json
import math
import os
from importlib import metadata
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from tunesmith.runtime.paths import tunesmith_home

STRICT = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)
"""Sections reject unknown keys, document fields from their docstrings and validate on assignment."""

SEED_LIMIT = 2**32
"""Seeds lie in [0, 2**32): NumPy's ``np.random.seed`` (called by ``transformers.set_seed``) accepts no more."""


def number_problem(value) -> str | None:
    """Why ``value`` (a number, or a list/dict holding numbers) is not a usable config number: a NaN or infinite float,
    or an integer outside 64 bits (torch and NumPy take no more). None when every number in it is fine."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number (got {v})"
        if isinstance(v, int) and not -(2**63) <= v < 2**63:
            return "is too large: numbers must fit in 64 bits"
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return None


class Section(BaseModel):
    """Base of every config section: unknown keys refused, fields documented by their docstrings, and the one check
    that every number in it is finite and fits in 64 bits (``learning_rate: inf`` or a NaN weight decay would train
    a NaN model; a 20-digit seed overflows torch)."""

    model_config = STRICT

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value):
        problem = number_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class RootConfig(BaseModel):
    """Base of a command's whole config (its sections); remembers the YAML file it was loaded from."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    _source_file: str | None = PrivateAttr(None)


REPORT_TO = ("none", "tensorboard", "trackio", "wandb", "mlflow", "comet_ml", "clearml", "dvclive", "swanlab")
"""``train.report_to`` values transformers' integrations accept; each needs its package installed (checked before the
run)."""

QUANTIZATIONS = ("nf4", "int8")
"""``model.quantization`` values: bitsandbytes 4-bit NormalFloat with double quantisation (QLoRA, Dettmers et al.
2023) or LLM.int8() (Dettmers et al. 2022). ``tunesmith estimate`` names its QLoRA rows after them."""


@functools.cache
def library_fields(library_name: str) -> frozenset[str]:
    """Field names of a library's config dataclass, e.g. ``library_fields("trl.SFTConfig")``.

    Importing TRL costs seconds (it imports torch), so the names are cached per library and transformers version in
    ``$TUNESMITH_HOME/<name>-fields-<version>-<transformers>.json``; config validation then stays under a second.

    Args:
        library_name: ``module.Class``: ``trl.SFTConfig``, ``trl.DPOConfig`` or ``transformers.TrainingArguments``.

    Returns:
        The dataclass field names.
    """
    module, cls_name = library_name.rsplit(".", 1)
    try:
        cache = (
            tunesmith_home()
            / f"{library_name}-fields-{metadata.version(module)}-{metadata.version('transformers')}.json"
        )
    except metadata.PackageNotFoundError:
        cache = None
    try:
        return frozenset(json.loads(cache.read_text()))
    except (AttributeError, OSError, ValueError):
        pass
    names = frozenset(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls_name)))
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(sorted(names)))
            os.replace(tmp, cache)
        except OSError:
            pass
    return names


class ModelSection(Section):
    """Where the model comes from and how it is loaded."""

    model_config = STRICT

    name: str = "smollm2-135m-instruct"
    (
        "Embedded model name (see `tunesmith models`), a Hugging Face model id (used offline when cached), a local "
        "checkpoint directory, or a local .gguf file."
    )
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a Hugging Face model id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    (
        "Training/inference precision. `auto`: on CUDA bf16 where supported; on a CPU with AVX512-BF16/AMX a timed "
        "training step in fp32 and in bf16 decides (cached per machine and model shape), float32 otherwise. With LoRA, "
        "bf16 stores the frozen base weights in bf16 and keeps the adapter and its optimizer state in fp32."
    )
    attn_implementation: str = "sdpa"
    (
        "Attention kernel passed to transformers (`sdpa`, `eager`, `flash_attention_2`, ...); `auto` picks "
        "flash-attention 2 on CUDA when the flash_attn package is installed, else sdpa (for causal LMs)."
    )
    chat_template: str | None = None
    (
        "Override the model's chat template: a built-in name (`chatml`, `llama3`, `chatml-tools`: ChatML with tool "
        "specs, <tool_call> calls and <tool_response> results) or a path to a Jinja file."
    )
    trust_remote_code: bool = False
    """Allow model repositories to run their own Python code. Off by default for safety."""
    allow_pickle: bool = False
    """Allow loading weights from pickle (.bin/.pt) files. Off by default: only safetensors load."""
    quantization: Literal[QUANTIZATIONS] | None = None
    (
        "QLoRA: load the frozen base quantised by bitsandbytes, `nf4` (4-bit NormalFloat, double quantisation) or "
        "`int8` (LLM.int8()), and train the LoRA adapter on it in the compute precision (bf16 where the hardware is "
        "native bf16, else fp32). Needs `lora.enabled` and the `qlora` extra (`pip install 'tunesmith[qlora]'`). "
        "`tunesmith merge` merges such an adapter into a dequantised full-precision copy of the base. None: no "
        "quantisation."
    )


def refuse_quantization(model: ModelSection, command: str) -> None:
    """For a command that does not train QLoRA: refuse ``model.quantization``.

    Raises:
        ValueError: naming the field, the command and where QLoRA is supported (collected into the ConfigError).
    """
    if model.quantization is not None:
        raise ValueError(
            f"model.quantization={model.quantization} is not supported by `tunesmith {command}` (QLoRA is trained by "
            "`tunesmith sft`); remove it"
        )


class DataSection(Section):
    """Which data to train and evaluate on, and how to split it."""

    model_config = STRICT

    name: str | None = "chatterbot"
    (
        "A bundled dataset name (`chatterbot`; `chatterbot_json`: the same corpus answered as strict JSON {topic, "
        "reply}). Used when `path` is not set."
    )
    path: str | None = None
    """A data file (JSONL, JSON, CSV, Parquet) or a saved Hugging Face dataset directory."""
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text", "oasst", "bfcl", "label"] = (
        "auto"
    )
    (
        "Record format; `auto` detects it from the keys of the first record (messages, sharegpt conversations, alpaca "
        "instruction/output, prompt/completion, text, oasst message trees, bfcl question/function)."
    )
    columns: dict[str, str] = Field(default_factory=dict)
    (
        "Column mapping from canonical name to the name in your file, e.g. {output: response, system: sys_prompt}. "
        "Canonical names: messages, conversations, instruction, input, output, prompt, completion, text, system."
    )
    eval_path: str | None = None
    """A separate evaluation file. When unset, `eval_fraction` of the data is held out."""
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of records held out for evaluation when `eval_path` is unset (deterministic from `split_seed`)."""
    split_seed: int = Field(1234, ge=0, lt=SEED_LIMIT)
    """Seed of the deterministic train/eval split."""
    max_train_examples: int | None = Field(None, gt=0)
    """Use at most this many training records (after the split); None uses all."""
    max_eval_examples: int | None = Field(100, gt=0)
    """Use at most this many evaluation records; keeps eval fast on CPU."""
    skip_invalid: bool = False
    """Skip invalid records (each logged and counted) instead of stopping before training."""
    system_prompt: str | None = None
    """A system message added to every conversation that has none."""
    tools: str | list[dict] | None = None
    (
        "Tool (function) specs for every conversation that declares none: a list of JSON-schema function specs, or "
        "the path of a JSON file holding one. Rendered through the chat template (`tools=`)."
    )
    answers_path: str | None = None
    (
        "For `format: bfcl`: the BFCL possible_answer file whose ground truth is each question's reference call. "
        "Default: possible_answer/<file name> beside `path`, when it exists."
    )
    train_reasoning: bool | None = None
    (
        "Train the assistant's reasoning (`reasoning_content`). None (default) does what the template does at "
        "inference: reasoning it renders is trained, reasoning it drops from past turns is not seen. False masks all "
        "reasoning (kept as context). True also trains the reasoning a template drops from past turns, each such turn "
        "then being its own example."
    )


class LoraSection(Section):
    """LoRA adapter settings; field names are those of `peft.LoraConfig`."""

    model_config = STRICT

    enabled: bool = True
    """Train a LoRA adapter (True) or fine-tune all weights (False)."""
    r: int = Field(16, gt=0)
    """LoRA rank: the inner dimension of the low-rank update B@A."""
    lora_alpha: int = Field(32, gt=0)
    """LoRA scaling numerator: the update is scaled by lora_alpha / r (or / sqrt(r) with use_rslora)."""
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    (
        "Dropout on the LoRA input during training (PEFT's and torchtune's default: 0). Each LoRA layer draws its own "
        "mask: on a 2-core CPU drawing them took a fifth of the training step (docs/performance.md)."
    )
    target_modules: str | list[str] = "all-linear"
    """Modules that get adapters: `all-linear` (every linear layer but the output head) or a list of module names."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases are trained."""
    modules_to_save: list[str] | None = None
    """Extra modules trained in full and saved with the adapter (e.g. a classification head `score`)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling lora_alpha/sqrt(r) (Kalajdzievski 2023)."""
    adapter_name: str = "default"
    """Name of the adapter inside the PEFT model."""


class LibraryTrainSection(Section):
    """Base of every ``train`` section: typed fields tunesmith documents, plus any other field of the library config
    class named by ``library_name`` (unknown keys are rejected with a "did you mean")."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, validate_assignment=True)
    library_name: ClassVar[str] = "transformers.TrainingArguments"

    @classmethod
    def library_fields(cls) -> frozenset[str]:
        """Field names of the library config the extra keys of this section go to."""
        return library_fields(cls.library_name)

    report_to: str | list[str] = "none"
    (
        "Where the Trainer also logs: `none`, or `tensorboard`/`trackio` (and the other transformers integrations) "
        "when their package is installed; a list for several. Event files go to <output_dir>/logs. The run's console "
        "log is always written to <output_dir>/run.log."
    )

    @field_validator("eval_strategy", "save_strategy", mode="before", check_fields=False)
    @classmethod
    def _yaml_no(cls, value):
        """YAML 1.1 reads a bare `no` as False; the strategy means "no"."""
        return "no" if value is False else value

    @field_validator("report_to", mode="after")
    @classmethod
    def _known_integration(cls, value):
        names = [value] if isinstance(value, str) else list(value)
        unknown = [n for n in names if n not in REPORT_TO and n != "all"]
        if unknown:
            raise ValueError(f"unknown integration {unknown[0]!r} (known: {', '.join(REPORT_TO)})")
        return value

    @model_validator(mode="after")
    def _known_extras(self):
        known = self.library_fields()
        msgs = []
        for key in sorted(set(self.model_extra or {}) - known):
            near = difflib.get_close_matches(key, sorted(known), n=1)
            msgs.append(
                f"unknown key {key!r} (not a {self.library_name} field)"
                + (f" (did you mean {near[0]!r}?)" if near else "")
            )
        for key, value in (self.model_extra or {}).items():
            problem = number_problem(value) if key in known else None
            if problem:
                msgs.append(f"{key} {problem}")
        if msgs:
            raise ValueError("; ".join(msgs))
        return self

    @field_validator("max_steps", mode="after", check_fields=False)
    @classmethod
    def _positive_steps(cls, value):
        if value == 0 or value < -1:
            raise ValueError(f"must be a positive number of steps, or -1 to train for num_train_epochs (got {value})")
        return value

    @model_validator(mode="after")
    def _trains_something(self):
        steps, epochs = getattr(self, "max_steps", None), getattr(self, "num_train_epochs", None)
        if steps == -1 and epochs is not None and epochs <= 0:
            raise ValueError(
                f"max_steps is -1 (train for num_train_epochs) and num_train_epochs is {epochs}: nothing would be "
                "trained; set num_train_epochs > 0 or max_steps > 0"
            )
        return self
