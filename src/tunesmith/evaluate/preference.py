"""Held-out DPO metrics: per-pair log-probs, implicit rewards, reward accuracy with a bootstrap CI, win rate.

    tunesmith dpo configs/dpo_chatterbot.yaml    # writes metrics.json and predictions.jsonl through these functions

The implicit reward of a response is r(x, y) = β·(log π(y|x) − log π_ref(y|x)) (Rafailov et al. 2023, eq. 5);
a pair is ranked correctly when r(x, chosen) > r(x, rejected) (TRL's ``rewards/accuracies``).  Log-probs are
sums over the response tokens, computed with TRL's own collator and fused LM head, so they equal what
``DPOTrainer`` trains on; here they are kept per pair, so the accuracy gets a confidence interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


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
        chunk = [{k: v for k, v in ex.items() if k in keep} for ex in examples[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in trainer.data_collator(chunk).items()}
        mask = batch["completion_mask"]
        labels = batch["input_ids"].masked_fill(mask == 0, -100)
        logps = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                      use_cache=False, fused_lm_head=True).log_probs[:, -(mask.size(1) - 1):].sum(dim=1).float()
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


def bootstrap_ci(values, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean (``scipy.stats.bootstrap``, Efron 1979).

    Args:
        values: per-pair values (e.g. 0/1 correctness), ``list[float]`` or array ``[pairs]``.
        confidence: confidence level, e.g. 0.95.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling (``numpy.random.default_rng``).

    Returns:
        (low, high); (nan, nan) for fewer than two values.
    """
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return float("nan"), float("nan")
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    res = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def preference_metrics(lp: PairLogps, beta: float, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
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
        "reward_accuracy": mean(correct), "reward_accuracy_ci": list(bootstrap_ci(correct.tolist(), **kw)),
        "reward_margin": mean(margin), "reward_margin_ci": list(bootstrap_ci(margin.tolist(), **kw)),
        "rewards_chosen": mean(rc), "rewards_rejected": mean(rr),
        "logps_chosen": mean(lp.chosen), "logps_rejected": mean(lp.rejected),
        "ref_logps_chosen": mean(lp.ref_chosen), "ref_logps_rejected": mean(lp.ref_rejected),
        "reference_logp_accuracy": mean((lp.ref_chosen > lp.ref_rejected).float()),
    }


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (``rouge_score``, stemmed) of a prediction against a reference, in [0, 1]."""
    from rouge_score import rouge_scorer

    return float(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].fmeasure)


def win_rate(scores_new: list[float], scores_old: list[float], **ci_kw) -> dict:
    """Share of prompts where the new model's score beats the old one's (ties count half), with a bootstrap CI.

    Returns:
        ``{"win_rate", "win_rate_ci": [low, high], "wins", "ties", "losses", "prompts"}``.
    """
    outcome = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_new, scores_old)]
    n = len(outcome)
    return {"win_rate": sum(outcome) / n if n else float("nan"), "win_rate_ci": list(bootstrap_ci(outcome, **ci_kw)),
            "wins": outcome.count(1.0), "ties": outcome.count(0.5), "losses": outcome.count(0.0), "prompts": n}
