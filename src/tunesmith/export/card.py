"""The model card: ``README.md`` in an adapter folder (``tunesmith sft``/``dpo``) and a merged folder
(``tunesmith merge``), in the Hugging Face model-card format.

YAML front matter (``base_model``, ``library_name``, ``license``, ``tags``, ``datasets``, ``pipeline_tag``; the
fields the Hub reads, https://huggingface.co/docs/hub/model-cards), then: what the model is for and how to serve it
(the serving contract), the data and its fingerprint, the measured metrics before and after training (and the
prompting baseline and decision verdict when the run measured them), the resolved config, how to reproduce it.
Everything is read from the run folder: ``config.yaml``, ``manifest.json``, ``metrics.json``, ``eval/metrics.json``,
``baseline*/metrics.json``, ``decision.json`` and the folder's ``serving.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tunesmith.models.serving import read_contract
from tunesmith.models.sources import EMBEDDED_CARDS
from tunesmith.runtime.files import atomic_write_text

CARD_FILE = "README.md"
DECISION_FILE = "decision.json"
"""The decision verdict of a run that measured prompting first (written by the pipeline after the report)."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _read_yaml(path: Path) -> dict:
    try:
        return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return {}


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _front_matter(base: str, library: str, kind: str, cfg: dict) -> dict:
    known = EMBEDDED_CARDS.get(base, {})
    data = cfg.get("data") or {}
    dataset = data.get("name") if not data.get("path") else Path(str(data["path"])).name
    tags = ["tunesmith", kind, "trl"] + (["lora", "peft"] if library == "peft" else ["merged-lora"])
    return {
        "base_model": known.get("hub_id", base),
        "library_name": library,
        "license": known.get("license", "other"),
        "tags": tags,
        "datasets": [dataset] if dataset else [],
        "pipeline_tag": "text-classification" if kind == "classify" else "text-generation",
    }


def _metrics_rows(run_dir: Path, metrics: dict) -> list[str]:
    rows = ["| measured on the held-out eval set | before training | after training |", "|---|---|---|"]
    for key in ("eval_loss", "perplexity"):
        if metrics.get(key) is not None or metrics.get(f"{key}_before") is not None:
            rows.append(f"| {key} | {_fmt(metrics.get(f'{key}_before'))} | {_fmt(metrics.get(key))} |")
    for key in ("reward_accuracy", "win_rate"):
        if key in metrics:
            rows.append(f"| {key} | - | {_fmt(metrics[key])} |")
    evaluated = _read_json(run_dir / "eval" / "metrics.json") or {
        "task_metrics": {
            k: v for k, v in (metrics.get("task_metrics") or {}).items() if k not in ("eval_loss", "perplexity")
        }
    }
    baselines = {p.name: _read_json(p / "metrics.json") for p in sorted(run_dir.glob("baseline*")) if p.is_dir()}
    for name, task in (evaluated.get("task_metrics") or {}).items():
        base = next(
            (b["task_metrics"][name] for b in baselines.values() if name in (b.get("task_metrics") or {})), None
        )
        rows.append(f"| {name} (task metric; before = prompting baseline) | {_fmt(base)} | {_fmt(task)} |")
    return rows if len(rows) > 2 else ["No eval set was measured."]


def render_model_card(
    folder: Path, run_dir: Path | None, *, base: str, library: str, note: str = "", title: str | None = None
) -> str:
    """The ``README.md`` text for ``folder`` (an adapter folder or merged checkpoint) trained in ``run_dir``.

    Args:
        folder: the folder the card describes (its ``serving.json`` is read).
        run_dir: the training run folder, or None when unknown (the card then has no data or metrics).
        base: the base model (embedded name, hub id or path).
        library: ``peft`` for an adapter, ``transformers`` for a merged checkpoint.
        note: one extra paragraph (how the folder was made, e.g. the merge check).
        title: the card's heading (default: the run's name for ``adapter``/``model``, else the folder's).

    Returns:
        Markdown with YAML front matter.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    cfg = _read_yaml(run_dir / "config.yaml") if run_dir else {}
    manifest = _read_json(run_dir / "manifest.json") if run_dir else {}
    metrics = _read_json(run_dir / "metrics.json") if run_dir else {}
    decision = _read_json(run_dir / DECISION_FILE) if run_dir else {}
    contract = read_contract(folder)
    kind = metrics.get("kind") or manifest.get("command_kind") or "sft"
    front = yaml.safe_dump(_front_matter(base, library, kind, cfg), sort_keys=False, allow_unicode=True)
    lora = cfg.get("lora") or {}
    how = f"LoRA r={lora.get('r')}, alpha={lora.get('lora_alpha')}" if lora.get("enabled", True) and lora else "full"
    if title is None:
        title = run_dir.name if run_dir is not None and folder.name in ("adapter", "model") else folder.name
    lines = [f"---\n{front}---", f"# {title}", ""]
    lines += [
        f"`{base}` fine-tuned by {kind.upper()} ({how}) with tunesmith (TRL, PEFT). " + note,
        "",
        "## Intended use",
        "",
        (
            "A classifier of the labels in the data below: `tunesmith predict --model RUN` gives labels and "
            "probabilities. "
            if kind == "classify"
            else "Serve it as it was trained: through its own chat template, with the system prompt below for "
            "conversations that bring none, stopping at the end-of-turn token. `tunesmith chat`, `tunesmith generate` "
            "and the exported GGUF/Ollama Modelfile apply these from `serving.json`. "
        )
        + "It was trained and evaluated only on the data below; measure it on your own examples before relying on it "
        "elsewhere.",
        "",
    ]
    if contract is not None:
        eot = (contract.end_of_turn or {}).get("token")
        system = json.dumps(contract.system_prompt) if contract.system_prompt else "none added (template default)"
        lines += [
            f"- system prompt: {system}",
            f"- end-of-turn token: `{eot}`; generation defaults: `{json.dumps(contract.generation)}`",
            f"- chat template SHA-256 (16): `{contract.to_json()['chat_template_sha256']}`",
            "",
        ]
    report = (metrics.get("data") or {}).get("load") or {}
    data = cfg.get("data") or {}
    lines += [
        "## Data",
        "",
        f"- source: `{data.get('path') or data.get('name')}` (format {report.get('format', data.get('format'))}; "
        f"{_fmt(report.get('kept'))} of {_fmt(report.get('rows_read'))} records kept)",
        f"- fingerprint: `{manifest.get('dataset_fingerprint')}`",
        f"- split: eval fraction {data.get('eval_fraction')}, seed {data.get('split_seed')}",
        "",
        "## Results",
        "",
        *(_metrics_rows(run_dir, metrics) if run_dir else ["No run folder was found for this model."]),
        "",
    ]
    if decision.get("verdict"):
        lines += [f"**Decision verdict:** {decision['verdict']}", ""]
        lines += [f"- {line}" for line in decision.get("verdict_lines", [])] + [""]
    if cfg:
        lines += ["## Training config", "", "```yaml", yaml.safe_dump(cfg, sort_keys=False).rstrip(), "```", ""]
    if manifest.get("command"):
        lines += ["## Reproduce", "", "```bash", " ".join(manifest["command"]), "```", ""]
        versions = manifest.get("versions") or {}
        lines += [", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def write_model_card(
    folder: str | Path, run_dir: str | Path | None, *, base: str, library: str, note: str = "", title: str | None = None
) -> Path:
    """Write :func:`render_model_card` to ``folder/README.md`` atomically (replacing PEFT's empty template).

    Returns:
        The path written.
    """
    folder = Path(folder)
    path = folder / CARD_FILE
    atomic_write_text(path, render_model_card(folder, run_dir, base=base, library=library, note=note, title=title))
    return path
