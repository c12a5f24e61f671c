"""Typed run configuration: one YAML file per run plus ``--set section.key=value`` overrides.

Run ``tunesmith config`` to print every field with its default and documentation.

Sections follow the libraries' own names: ``train.*`` are ``trl.SFTConfig`` fields,
``lora.*`` are ``peft.LoraConfig`` fields, ``model.name`` is an embedded name, a Hugging Face
id or a path, ``data.path``/``data.name`` select the data.  Every problem found is collected and
raised once as :class:`~tunesmith.errors.ConfigError` (exit code 2 from the CLI).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunesmith.errors import ConfigError, Problem
from tunesmith.config.problems import _check_paths, _field_names, _fix_for, _problems_from, _set_path, parse_override  # noqa: F401 (parse_override stays importable from here)

_STRICT = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelSection(BaseModel):
    """Where the model comes from and how it is loaded."""

    model_config = _STRICT

    name: str = "smollm2-135m-instruct"
    """Embedded model name (see `tunesmith models`), a Hugging Face model id (used offline when cached), a local checkpoint directory, or a local .gguf file."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a Hugging Face model id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Training/inference precision. `auto` picks bf16 only where the hardware computes it natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX) and float32 otherwise."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers (`sdpa`, `eager`, `flash_attention_2`, ...); `auto` picks flash-attention 2 on CUDA when the flash_attn package is installed, else sdpa (for causal LMs)."""
    chat_template: str | None = None
    """Override the model's chat template: a built-in name (`chatml`, `llama3`) or a path to a Jinja file."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own Python code. Off by default for safety."""
    allow_pickle: bool = False
    """Allow loading weights from pickle (.bin/.pt) files. Off by default: only safetensors load."""


class DataSection(BaseModel):
    """Which data to train and evaluate on, and how to split it."""

    model_config = _STRICT

    name: str | None = "chatterbot"
    """A bundled dataset name (`chatterbot`; `chatterbot_json`: the same corpus answered as strict JSON {topic, reply}). Used when `path` is not set."""
    path: str | None = None
    """A data file (JSONL, JSON, CSV, Parquet) or a saved Hugging Face dataset directory."""
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text", "oasst", "label"] = "auto"
    """Record format; `auto` detects it from the keys of the first record (messages, sharegpt conversations, alpaca instruction/output, prompt/completion, text, oasst message trees)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Column mapping from canonical name to the name in your file, e.g. {output: response, system: sys_prompt}. Canonical names: messages, conversations, instruction, input, output, prompt, completion, text, system."""
    eval_path: str | None = None
    """A separate evaluation file. When unset, `eval_fraction` of the data is held out."""
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of records held out for evaluation when `eval_path` is unset (deterministic from `split_seed`)."""
    split_seed: int = 1234
    """Seed of the deterministic train/eval split."""
    max_train_examples: int | None = Field(None, gt=0)
    """Use at most this many training records (after the split); None uses all."""
    max_eval_examples: int | None = Field(100, gt=0)
    """Use at most this many evaluation records; keeps eval fast on CPU."""
    skip_invalid: bool = False
    """Skip invalid records (each logged and counted) instead of stopping before training."""
    system_prompt: str | None = None
    """A system message added to every conversation that has none."""


class LoraSection(BaseModel):
    """LoRA adapter settings; field names are those of `peft.LoraConfig`."""

    model_config = _STRICT

    enabled: bool = True
    """Train a LoRA adapter (True) or fine-tune all weights (False)."""
    r: int = Field(16, gt=0)
    """LoRA rank: the inner dimension of the low-rank update B@A."""
    lora_alpha: int = Field(32, gt=0)
    """LoRA scaling numerator: the update is scaled by lora_alpha / r (or / sqrt(r) with use_rslora)."""
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA input during training."""
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


class TrainSection(BaseModel):
    """Trainer settings; every key is a `trl.SFTConfig` field (others are rejected with a suggestion)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True, validate_assignment=True)
    library_name: ClassVar[str] = "trl.SFTConfig"

    @classmethod
    def library_fields(cls) -> frozenset[str]:
        """Field names of the library config the extra keys of this section go to (``trl.SFTConfig``)."""
        return sft_config_fields()

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
    """Maximum tokens per sequence (and per packed row). Longer conversations are truncated, and the loss of trained tokens is reported."""
    packing: bool = True
    """Pack several conversations into each row (best-fit decreasing), keeping sample boundaries: position ids restart per sample and attention never crosses samples."""
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
    seed: int = 42
    """Random seed for initialisation, dropout and data order."""
    bf16: bool | None = None
    """bf16 mixed precision. None decides from the hardware (see model.dtype)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: saves memory, costs ~30% more compute."""
    # --- performance (issue 10) ---
    chunked_loss: bool = True
    """Compute the loss only at trained positions, in chunks through the output head (tunesmith.train.speed.fastloss): the [tokens, vocab] logits never exist whole. False uses TRL's own loss."""
    packing_layout: Literal["auto", "rows", "flat"] = "auto"
    """How packed rows form a batch: `rows` keeps each packed row as a batch row (dense attention masks stay max_length^2 per row; best for SDPA/eager), `flat` concatenates the batch into one padding-free sequence (TRL's layout; best with flash-attention varlen). `auto`: flat with a varlen attention kernel, else rows."""
    micro_batch_size: int | None = Field(None, gt=0)
    """Rows per forward/backward pass: each optimizer step's per_device_train_batch_size rows run as accumulated micro-batches of this many (same loss: normalised by the step's trained tokens), so activation memory follows the micro-batch. None: 1 on CPU with packed rows (measured faster and smaller there), else the whole batch in one pass."""
    num_threads: int | None = Field(None, gt=0)
    """torch intra-op CPU threads (torch.set_num_threads); None keeps torch's default (one per core)."""
    # --- end performance ---

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        """YAML 1.1 reads a bare `no` as False; the strategy means "no"."""
        return "no" if value is False else value

    @model_validator(mode="after")
    def _micro_divides_batch(self) -> "TrainSection":
        if self.micro_batch_size and self.per_device_train_batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} must divide per_device_train_batch_size={self.per_device_train_batch_size}")
        return self

    @model_validator(mode="after")
    def _known_extras(self) -> "TrainSection":
        extras = set(self.model_extra or {})
        unknown = sorted(extras - sft_config_fields())
        if unknown:
            msgs = []
            for key in unknown:
                near = difflib.get_close_matches(key, sorted(sft_config_fields()), n=1)
                msgs.append(f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            raise ValueError("; ".join(msgs))
        return self


class EvalSection(BaseModel):
    """Evaluation before/after training and sample generations."""

    model_config = _STRICT

    before_training: bool = True
    """Measure eval_loss and perplexity of the untrained model too, so the gain is visible."""
    num_samples: int = Field(4, ge=0)
    """Held-out prompts whose generations before and after training go to samples.jsonl."""
    max_new_tokens: int = Field(64, gt=0)
    """Generation budget per sample, in tokens."""
    # --- decision order (issue 4) ---
    baseline: bool = False
    """`tunesmith sft` also prompts the untrained model on the eval set first (into `<output_dir>/baseline`), evaluates the trained adapter the same way after training (`<output_dir>/eval`) and writes the decision report (`<output_dir>/report.html`)."""
    metrics: list[str] = Field(default_factory=lambda: ["exact_match", "rouge_l", "chrf", "eval_loss", "perplexity"])
    """Task metrics of `tunesmith baseline`/`eval`/`report`: exact_match, contains, json_valid, json_schema, regex, label_accuracy, label_macro_f1, rouge_l, chrf (from generations), eval_loss, perplexity (from the references)."""
    json_schema: dict | str | None = None
    """JSON Schema for the `json_schema` metric: a mapping written in the config, or the path of a .json file (relative to the config file)."""
    regex: str | None = None
    """Pattern the whole stripped answer must match for the `regex` metric (Python `re.fullmatch`, DOTALL)."""
    label_field: str | None = None
    """For label_accuracy/label_macro_f1: the JSON field holding the label (e.g. `topic`); None compares the whole normalised answer."""
    k_shot: int = Field(0, ge=0)
    """`tunesmith baseline` also runs a k-shot baseline: k train examples (seeded by `k_shot_seed`) prepended as user/assistant turns after the system turn."""
    k_shot_seed: int = 0
    """Seed choosing the k-shot examples from the train split."""
    targets: dict[str, float] = Field(default_factory=dict)
    """Targets of the decision verdict, metric -> threshold, e.g. {json_schema: 0.95}: at least this (at most for eval_loss/perplexity)."""

    @model_validator(mode="after")
    def _decision_fields(self) -> "EvalSection":
        from tunesmith.config.metric_names import ALL_METRICS

        problems = [f"unknown metric {m!r} (known: {', '.join(ALL_METRICS)})" for m in self.metrics if m not in ALL_METRICS]
        problems += [f"target {t!r} is not in eval.metrics" for t in self.targets if t not in self.metrics]
        if "json_schema" in self.metrics and self.json_schema is None:
            problems.append("metric json_schema needs eval.json_schema (a mapping or a .json file)")
        if "regex" in self.metrics and self.regex is None:
            problems.append("metric regex needs eval.regex")
        if problems:
            raise ValueError("; ".join(problems))
        return self
    # --- end decision order ---


class RunConfig(BaseModel):
    """A whole run: model, data, lora, train and eval sections."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: ModelSection = Field(default_factory=ModelSection)
    """Model source and loading."""
    data: DataSection = Field(default_factory=DataSection)
    """Training and evaluation data."""
    lora: LoraSection = Field(default_factory=LoraSection)
    """LoRA adapter (peft.LoraConfig fields)."""
    train: TrainSection = Field(default_factory=TrainSection)
    """Trainer (trl.SFTConfig fields)."""
    eval: EvalSection = Field(default_factory=EvalSection)
    """Evaluation and samples."""


@functools.cache
def sft_config_fields() -> frozenset[str]:
    """Return the field names of ``trl.SFTConfig`` (the keys the ``train`` section accepts).

    Importing TRL costs seconds (it imports torch), so the names are cached per TRL/transformers version in
    ``$TUNESMITH_HOME/sft_config_fields-<trl>-<transformers>.json``; config validation then stays under a second.
    """
    import json
    import os
    from importlib import metadata

    home = os.environ.get("TUNESMITH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "tunesmith")
    try:
        cache = Path(home).expanduser() / f"sft_config_fields-{metadata.version('trl')}-{metadata.version('transformers')}.json"
    except metadata.PackageNotFoundError:
        cache = None
    try:
        return frozenset(json.loads(cache.read_text()))
    except (AttributeError, OSError, ValueError):
        pass
    from trl import SFTConfig

    names = frozenset(f.name for f in dataclasses.fields(SFTConfig))
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
            tmp.write_text(json.dumps(sorted(names)))
            os.replace(tmp, cache)
        except OSError:
            pass
    return names


def _check_train_keys(raw: dict, origin: dict[str, str], model_cls: type[BaseModel] = None) -> list[Problem]:
    """Report (and drop) unknown ``train`` keys up front, so they are listed even when other fields fail."""
    train = raw.get("train")
    if not isinstance(train, dict):
        return []
    section = model_cls.model_fields["train"].annotation if model_cls is not None and "train" in model_cls.model_fields else TrainSection
    library = section.library_fields() if hasattr(section, "library_fields") else sft_config_fields()
    known = set(section.model_fields) | library
    problems = []
    for key in [k for k in train if k not in known]:
        near = difflib.get_close_matches(str(key), sorted(known), n=1)
        src = origin.get(f"train.{key}")
        where = f"train.{key}" + (f" (from {src})" if src else "")
        problems.append(Problem(where, f"unknown key (not a {getattr(section, 'library_name', 'trl.SFTConfig')} field)", f"did you mean 'train.{near[0]}'?" if near else "remove it; `tunesmith config` lists every field"))
        del train[key]
    return problems


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *, model_cls: type[BaseModel] = RunConfig) -> BaseModel:
    """Load a run config from YAML (optional) plus ``--set`` overrides, validated once.

    Args:
        path: YAML file, or None to start from the defaults.
        overrides: ``["section.key=value", ...]``, applied in order after the file.
        model_cls: the config class (RunConfig, or a command's own subclass).

    Returns:
        A validated config; relative ``data.path`` values are resolved against the YAML file's folder.

    Raises:
        ConfigError: listing every problem (unknown keys with a "did you mean", wrong types,
            missing data files), each with its field path and a fix.
    """
    raw: dict = {}
    origin: dict[str, str] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("Cannot read config", [Problem(str(p), "no such file" if not p.exists() else "is a directory, not a YAML file", "pass the path of a .yaml config file")])
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark else str(p)
            raise ConfigError("Config is not valid YAML", [Problem(where, str(exc).splitlines()[0], "fix the YAML syntax")]) from None
        if not isinstance(loaded, dict):
            raise ConfigError("Config must be a mapping", [Problem(str(p), f"top level is a {type(loaded).__name__}", "write `section: {key: value}` pairs")])
        raw = loaded
        base = p.resolve().parent
    problems: list[Problem] = []
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_path(raw, keys, value)
        origin[".".join(keys)] = f"--set {text}"
    for sec, key in (("data", "path"), ("data", "eval_path"), ("eval", "json_schema")):
        data = raw.get(sec)
        if isinstance(data, dict) and isinstance(data.get(key), str) and data[key] and not Path(data[key]).expanduser().is_absolute():
            origin_is_cli = f"{sec}.{key}" in origin
            data[key] = str((Path.cwd() if origin_is_cli else base) / data[key])
    problems += _check_paths(raw, base)
    problems += _check_train_keys(raw, origin, model_cls)
    cfg = None
    try:
        cfg = model_cls.model_validate(raw)
    except ValidationError as exc:
        problems = _problems_from(exc, model_cls, origin) + problems
    if problems:
        src = f" in {path}" if path else ""
        raise ConfigError(f"Invalid configuration{src} ({len(problems)} problem{'s' * (len(problems) > 1)}):", problems)
    return cfg


def dump_config(cfg: BaseModel) -> str:
    """Return the resolved config as YAML text (every field, defaults included)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(model_cls: type[BaseModel] = RunConfig) -> list[tuple[str, str, str]]:
    """List (dotted key, default as YAML, documentation) for every field of every section."""
    rows = []
    for sname, sfield in model_cls.model_fields.items():
        section = sfield.annotation
        defaults = sfield.get_default(call_default_factory=True)
        for fname, field in section.model_fields.items():
            value = getattr(defaults, fname)
            rows.append((f"{sname}.{fname}", yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip(), field.description or ""))
    return rows


def config_reference_markdown() -> str:
    """Return the config reference (every field, default, documentation) as Markdown; docs/config.md is this text."""
    lines = ["# tunesmith config reference", "", "Generated by `tunesmith config --markdown`; every key can be set in the YAML file or with `--set KEY=VALUE`.", ""]
    section = None
    for key, default, doc in describe_fields():
        sec = key.split(".")[0]
        if sec != section:
            section = sec
            lines += ["", f"## `{sec}`", "", RunConfig.model_fields[sec].description or "", "", "| key | default | meaning |", "|---|---|---|"]
        lines.append(f"| `{key}` | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
