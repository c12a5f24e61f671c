"""The DPO run's evaluation artifacts: generations of the starting and the DPO model, the win rate, and the
shared-contract files ``metrics.json`` (kind ``dpo``) and ``predictions.jsonl`` that the decision report reads.

    tunesmith dpo configs/dpo_chatterbot.yaml    # train/dpo.py calls start_generations() and write_dpo_artifacts()

``predictions.jsonl`` has one line per evaluated held-out pair, in eval-set order: ``prediction`` is the response
the DPO implicit reward ranks higher (``chosen`` or ``rejected``), ``reference`` is ``chosen``, and ``scores`` holds
the pair's value of every :data:`TASK_METRICS` entry (``reward_accuracy`` 1/0, ``reward_margin``, log-probs, rewards)
plus the reference log-probs.  ``generations.jsonl`` holds the win-rate prompts
with both models' replies.
"""
from __future__ import annotations

import time
from pathlib import Path

from tunesmith.evaluate.preference import PairLogps, pair_logps, preference_metrics, rouge_l, win_rate
from tunesmith.models.generation import decode_reply, generate_ids
from tunesmith.data.records import Conversation
from tunesmith.runtime.files import atomic_write_jsonl
from tunesmith.render.templates import render_prompt


TASK_METRICS = ("reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected", "rewards_chosen", "rewards_rejected")
"""``task_metrics`` of a DPO run; ``predictions.jsonl`` scores each pair under the same names, so ``tunesmith report``
recomputes every one (with its bootstrap interval) from the rows. The win rate is per generation prompt, not per pair:
it stays in ``metrics.json`` ``win_rate`` (and ``generations.jsonl``)."""


def prompt_ids(tokenizer, pair) -> list[int]:
    """Token ids of a pair's prompt as the model sees it at inference: the chat template with the generation prompt
    (conversational) or the plain tokenised string (text)."""
    if pair.conversational:
        return render_prompt(tokenizer, Conversation(list(pair.prompt)))
    return tokenizer(pair.prompt)["input_ids"]


def _generate(trainer, tokenizer, prompts: list[list[int]], eot, max_new_tokens: int) -> tuple[list[list[int]], float]:
    model = trainer.model
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    ids = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, eos_ids=eot)
    seconds = time.perf_counter() - start
    model.train(was_training)
    return ids, sum(len(x) for x in ids) / max(seconds, 1e-9)


def start_generations(cfg, trainer, tokenizer, eval_pairs, eot) -> dict:
    """Greedy replies of the starting model (SFT adapter, merged SFT model or base) on the first
    ``eval.win_rate_prompts`` held-out prompts, generated before the first DPO step.

    Returns:
        ``{"prompts": list[list[int]], "ids": list[list[int]]}`` (empty lists when the win rate is off).
    """
    pairs = eval_pairs[: cfg.eval.win_rate_prompts]
    prompts = [prompt_ids(tokenizer, p) for p in pairs]
    ids, _ = _generate(trainer, tokenizer, prompts, eot, cfg.eval.max_new_tokens) if prompts else ([], 0.0)
    return {"prompts": prompts, "ids": ids}


def _win_rate(cfg, trainer, tokenizer, pairs, start: dict, new_ids: list[list[int]]) -> tuple[dict, list[tuple[float, float]]]:
    ci = dict(confidence=cfg.eval.confidence, n_resamples=cfg.eval.bootstrap_samples, seed=cfg.train.seed)
    if cfg.eval.win_metric == "rougeL":
        scores = [(rouge_l(decode_reply(tokenizer, n), p.chosen), rouge_l(decode_reply(tokenizer, o), p.chosen))
                  for p, n, o in zip(pairs, new_ids, start["ids"])]
    else:
        rows = [{"prompt_ids": pr, "chosen_ids": n or [tokenizer.eos_token_id], "rejected_ids": o or [tokenizer.eos_token_id]}
                for pr, n, o in zip(start["prompts"], new_ids, start["ids"])]
        rn, ro = pair_logps(trainer, rows, cfg.train.per_device_eval_batch_size).rewards(cfg.train.beta)
        scores = list(zip(rn.tolist(), ro.tolist()))
    result = win_rate([a for a, _ in scores], [b for _, b in scores], **ci)
    return {"metric": cfg.eval.win_metric, **result}, scores


def write_dpo_artifacts(run_dir: Path, cfg, trainer, tokenizer, eval_pairs, eval_rows: list[dict], lp: PairLogps,
                        start: dict, eot, extra: dict) -> dict:
    """Generate with the DPO model, score the win rate, write ``predictions.jsonl`` and ``generations.jsonl``.

    Args:
        run_dir: the run directory.
        cfg: the run config.
        trainer: the trained ``trl.DPOTrainer``.
        eval_pairs: the held-out :class:`~tunesmith.data.preference.PreferencePair` list.
        eval_rows: TRL's tokenised eval rows (pairs whose prompt fills ``max_length`` are gone), with ``pair_id``.
        lp: :func:`~tunesmith.evaluate.preference.pair_logps` of ``eval_rows`` (policy after training, reference).
        start: :func:`start_generations` output.
        extra: more keys for ``metrics.json``.

    Returns:
        The metrics dict (``kind``, ``model``, ``task_metrics``, ``cost``, ``held_out``, ``win_rate``, ...); the caller writes it.
    """
    from tunesmith.runtime.memory import peak_memory_bytes

    pairs = eval_pairs[: len(start["prompts"])]
    win, tps = None, None
    if pairs and cfg.eval.win_metric == "implicit_reward" and not hasattr(trainer.model, "disable_adapter"):
        pairs = []  # full fine-tuning keeps no reference model after training: no implicit reward for new generations
    if pairs:
        new_ids, tps = _generate(trainer, tokenizer, start["prompts"], eot, cfg.eval.max_new_tokens)
        win, scores = _win_rate(cfg, trainer, tokenizer, pairs, start, new_ids)
        atomic_write_jsonl(run_dir / "generations.jsonl", [
            {"id": p.source, "prompt": p.prompt_text(), "chosen": p.chosen, "start": decode_reply(tokenizer, o),
             "dpo": decode_reply(tokenizer, n), "scores": {f"{cfg.eval.win_metric}_dpo": a, f"{cfg.eval.win_metric}_start": b}}
            for p, n, o, (a, b) in zip(pairs, new_ids, start["ids"], scores)])
    held_out = preference_metrics(lp, cfg.train.beta, confidence=cfg.eval.confidence, n_resamples=cfg.eval.bootstrap_samples, seed=cfg.train.seed)
    _write_predictions(run_dir, cfg, eval_pairs, eval_rows, lp)
    task = {k: held_out[k] for k in TASK_METRICS}  # each the mean of the same-named per-pair score in predictions.jsonl
    cost = {"parameters": extra["total_parameters"], "trainable_parameters": extra["trainable_parameters"],
            "generation_tokens_per_second": tps, "peak_memory_bytes": peak_memory_bytes()}
    return {"kind": "dpo", "model": cfg.model.name, "task": "preference", "task_metrics": task, "cost": cost,
            "held_out": held_out, "win_rate": win, "eval": cfg.eval.model_dump(), **extra}


def _write_predictions(run_dir: Path, cfg, eval_pairs, eval_rows: list[dict], lp: PairLogps) -> None:
    by_id = {p.source: p for p in eval_pairs}
    rc, rr = lp.rewards(cfg.train.beta)
    lines = []
    for k, row in enumerate(eval_rows):
        pair = by_id[row["pair_id"]]
        correct = float(rc[k] > rr[k])
        lines.append({"id": pair.source, "prompt": pair.prompt_text(), "prediction": "chosen" if correct else "rejected", "reference": "chosen",
                      "scores": {"reward_accuracy": correct, "reward_margin": float(rc[k] - rr[k]), "logps_chosen": float(lp.chosen[k]),
                                 "logps_rejected": float(lp.rejected[k]), "rewards_chosen": float(rc[k]), "rewards_rejected": float(rr[k]),
                                 "ref_logps_chosen": float(lp.ref_chosen[k]), "ref_logps_rejected": float(lp.ref_rejected[k])}})
    atomic_write_jsonl(run_dir / "predictions.jsonl", lines)
