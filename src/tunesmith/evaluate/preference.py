"""Held-out DPO metrics: per-pair log-probs, implicit rewards, reward accuracy with a bootstrap CI, win rate.

    tunesmith dpo configs/dpo/chatterbot-pairs.yaml  # writes metrics.json and predictions.jsonl through these functions

The implicit reward of a response is r(x, y) = β·(log π(y|x) − log π_ref(y|x)) (Rafailov et al. 2023, eq. 5);
a pair is ranked correctly when r(x, chosen) > r(x, rejected) (TRL's ``rewards/accuracies``).  Log-probs are
sums over the response tokens, computed with TRL's own collator and fused LM head, so they equal what
``DPOTrainer`` trains on; here they are kept per pair, so the accuracy gets a confidence interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.data.records import Conversation
from tunesmith.evaluate.metrics import rouge_l
from tunesmith.evaluate.stats import bootstrap_ci
from tunesmith.models.generation import decode_reply, generate_ids
from tunesmith.render.templates import render_prompt
from tunesmith.runtime.files import atomic_write_jsonl


@dataclass
class PairLogps:
    """Summed response log-probs (nats) of the policy and the reference, one entry per pair.

    Attributes:
        chosen / rejected: ``FloatTensor[pairs]``, log π(y|x) of the policy.
        ref_chosen / ref_rejected: ``FloatTensor[pairs]``, log π_ref(y|x).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    def rewards(self, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Implicit rewards (β·log-ratio) of chosen and rejected, ``FloatTensor[pairs]`` each."""
        return beta * (self.chosen - self.ref_chosen), beta * (self.rejected - self.ref_rejected)


@torch.no_grad()
def pair_logps(trainer, examples: list[dict], batch_size: int = 8) -> PairLogps:
    """Policy and reference log-probs of each tokenised pair, batched with the trainer's collator.

    Args:
        trainer: a ``trl.DPOTrainer`` (its model, data collator and reference handling are used: a PEFT policy's
            reference is the same model with the adapter disabled, or TRL's frozen ``ref`` adapter copy).
        examples: rows with ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (``list[int]`` each) and optionally
            precomputed ``ref_chosen_logps``/``ref_rejected_logps`` (floats), as in ``trainer.eval_dataset``.
        batch_size: pairs per forward pass.

    Returns:
        :class:`PairLogps` aligned with ``examples``.
    """
    model = trainer.model
    was_training = model.training
    model.eval()
    device = trainer.accelerator.device
    out: dict[str, list[torch.Tensor]] = {"c": [], "r": [], "rc": [], "rr": []}
    keep = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
    for start in range(0, len(examples), batch_size):
        chunk = [{k: v for k, v in ex.items() if k in keep} for ex in examples[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in trainer.data_collator(chunk).items()}
        mask = batch["completion_mask"]
        labels = batch["input_ids"].masked_fill(mask == 0, -100)
        logps = (
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=labels,
                use_cache=False,
                fused_lm_head=True,
                **{k: v for k, v in batch.items() if k.startswith("tunesmith_pack_")},  # the packed pass, if any
            )
            .log_probs[:, -(mask.size(1) - 1) :]
            .sum(dim=1)
            .float()
        )
        c, r = logps.chunk(2)
        if "ref_chosen_logps" in batch:
            rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        else:
            rc, rr = trainer.compute_ref_log_probs(trainer.ref_model or model, batch)
        for key, t in (("c", c), ("r", r), ("rc", rc), ("rr", rr)):
            out[key].append(t.float().cpu())
    model.train(was_training)
    cat = lambda k: torch.cat(out[k]) if out[k] else torch.zeros(0)  # noqa: E731
    return PairLogps(cat("c"), cat("r"), cat("rc"), cat("rr"))


def preference_metrics(
    lp: PairLogps, beta: float, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Held-out preference metrics from per-pair log-probs.

    Args:
        lp: :class:`PairLogps` of the held-out pairs.
        beta: the DPO β used in training.

    Returns:
        ``{"reward_accuracy", "reward_accuracy_ci": [low, high], "reward_margin", "reward_margin_ci", "rewards_chosen",
        "rewards_rejected", "logps_chosen", "logps_rejected", "ref_logps_chosen", "ref_logps_rejected",
        "reference_logp_accuracy", "pairs"}``: means over pairs (log-probs in nats summed over response tokens).
        ``reward_accuracy`` counts r(chosen) > r(rejected) strictly, as TRL does; ``reference_logp_accuracy`` is the
        share of pairs where the reference already gives chosen the higher log-prob (the starting point).
    """
    rc, rr = lp.rewards(beta)
    correct = (rc > rr).float()
    margin = rc - rr
    kw = dict(confidence=confidence, n_resamples=n_resamples, seed=seed)
    mean = lambda t: float(t.mean()) if t.numel() else float("nan")  # noqa: E731
    return {
        "pairs": int(correct.numel()),
        "reward_accuracy": mean(correct),
        "reward_accuracy_ci": list(bootstrap_ci(correct.tolist(), **kw)),
        "reward_margin": mean(margin),
        "reward_margin_ci": list(bootstrap_ci(margin.tolist(), **kw)),
        "rewards_chosen": mean(rc),
        "rewards_rejected": mean(rr),
        "logps_chosen": mean(lp.chosen),
        "logps_rejected": mean(lp.rejected),
        "ref_logps_chosen": mean(lp.ref_chosen),
        "ref_logps_rejected": mean(lp.ref_rejected),
        "reference_logp_accuracy": mean((lp.ref_chosen > lp.ref_rejected).float()),
    }


def win_rate(scores_new: list[float], scores_old: list[float], **ci_kw) -> dict:
    """Share of prompts where the new model's score beats the old one's (ties count half), with a bootstrap CI.

    Returns:
        ``{"win_rate", "win_rate_ci": [low, high], "wins", "ties", "losses", "prompts"}``.
    """
    outcome = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_new, scores_old)]
    n = len(outcome)
    return {
        "win_rate": sum(outcome) / n if n else float("nan"),
        "win_rate_ci": list(bootstrap_ci(outcome, **ci_kw)),
        "wins": outcome.count(1.0),
        "ties": outcome.count(0.5),
        "losses": outcome.count(0.0),
        "prompts": n,
    }


TASK_METRICS = (
    "reward_accuracy",
    "reward_margin",
    "logps_chosen",
    "logps_rejected",
    "rewards_chosen",
    "rewards_rejected",
)
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


def _win_rate(
    cfg, trainer, tokenizer, pairs, start: dict, new_ids: list[list[int]]
) -> tuple[dict, list[tuple[float, float]]]:
    ci = dict(confidence=cfg.eval.confidence, n_resamples=cfg.eval.bootstrap_samples, seed=cfg.train.seed)
    if cfg.eval.win_metric == "rougeL":
        scores = [
            (rouge_l(decode_reply(tokenizer, n), p.chosen), rouge_l(decode_reply(tokenizer, o), p.chosen))
            for p, n, o in zip(pairs, new_ids, start["ids"])
        ]
    else:
        rows = [
            {
                "prompt_ids": pr,
                "chosen_ids": n or [tokenizer.eos_token_id],
                "rejected_ids": o or [tokenizer.eos_token_id],
            }
            for pr, n, o in zip(start["prompts"], new_ids, start["ids"])
        ]
        rn, ro = pair_logps(trainer, rows, cfg.train.per_device_eval_batch_size).rewards(cfg.train.beta)
        scores = list(zip(rn.tolist(), ro.tolist()))
    result = win_rate([a for a, _ in scores], [b for _, b in scores], **ci)
    return {"metric": cfg.eval.win_metric, **result}, scores


def write_dpo_artifacts(
    run_dir: Path,
    cfg,
    trainer,
    tokenizer,
    eval_pairs,
    eval_rows: list[dict],
    lp: PairLogps,
    start: dict,
    eot,
    extra: dict,
) -> dict:
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
        The metrics dict (``kind``, ``model``, ``task_metrics``, ``cost``, ``held_out``, ``win_rate``, ...); the caller
        writes it.
    """
    from tunesmith.runtime.memory import peak_memory_bytes

    pairs = eval_pairs[: len(start["prompts"])]
    win, tps = None, None
    if pairs and cfg.eval.win_metric == "implicit_reward" and not hasattr(trainer.model, "disable_adapter"):
        pairs = []  # full fine-tuning keeps no reference model after training: no implicit reward for new generations
    if pairs:
        new_ids, tps = _generate(trainer, tokenizer, start["prompts"], eot, cfg.eval.max_new_tokens)
        win, scores = _win_rate(cfg, trainer, tokenizer, pairs, start, new_ids)
        atomic_write_jsonl(
            run_dir / "generations.jsonl",
            [
                {
                    "id": p.source,
                    "prompt": p.prompt_text(),
                    "chosen": p.chosen,
                    "start": decode_reply(tokenizer, o),
                    "dpo": decode_reply(tokenizer, n),
                    "scores": {f"{cfg.eval.win_metric}_dpo": a, f"{cfg.eval.win_metric}_start": b},
                }
                for p, n, o, (a, b) in zip(pairs, new_ids, start["ids"], scores)
            ],
        )
    held_out = preference_metrics(
        lp, cfg.train.beta, confidence=cfg.eval.confidence, n_resamples=cfg.eval.bootstrap_samples, seed=cfg.train.seed
    )
    _write_predictions(run_dir, cfg, eval_pairs, eval_rows, lp)
    task = {k: held_out[k] for k in TASK_METRICS}  # each the mean of the same-named per-pair score in predictions.jsonl
    cost = {
        "parameters": extra["total_parameters"],
        "trainable_parameters": extra["trainable_parameters"],
        "generation_tokens_per_second": tps,
        "peak_memory_bytes": peak_memory_bytes(),
    }
    return {
        "kind": "dpo",
        "model": cfg.model.name,
        "task": "preference",
        "task_metrics": task,
        "cost": cost,
        "held_out": held_out,
        "win_rate": win,
        "eval": cfg.eval.model_dump(),
        **extra,
    }


def _write_predictions(run_dir: Path, cfg, eval_pairs, eval_rows: list[dict], lp: PairLogps) -> None:
    by_id = {p.source: p for p in eval_pairs}
    rc, rr = lp.rewards(cfg.train.beta)
    lines = []
    for k, row in enumerate(eval_rows):
        pair = by_id[row["pair_id"]]
        correct = float(rc[k] > rr[k])
        lines.append(
            {
                "id": pair.source,
                "prompt": pair.prompt_text(),
                "prediction": "chosen" if correct else "rejected",
                "reference": "chosen",
                "scores": {
                    "reward_accuracy": correct,
                    "reward_margin": float(rc[k] - rr[k]),
                    "logps_chosen": float(lp.chosen[k]),
                    "logps_rejected": float(lp.rejected[k]),
                    "rewards_chosen": float(rc[k]),
                    "rewards_rejected": float(rr[k]),
                    "ref_logps_chosen": float(lp.ref_chosen[k]),
                    "ref_logps_rejected": float(lp.ref_rejected[k]),
                },
            }
        )
    atomic_write_jsonl(run_dir / "predictions.jsonl", lines)
