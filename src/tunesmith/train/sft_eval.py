"""What ``tunesmith sft`` measures around training: the one eval_loss inside the Trainer, the before/after evaluations
and sample generations (with progress), and the plan printed before training (steps, tokens, estimated time).

    tunesmith sft CONFIG     # prints "plan: ..." before the first step, then progress lines for every long step

The Trainer's evaluation is replaced by :class:`OneLossEvalMixin`, so eval_loss during and after training is the
figure ``tunesmith baseline`` and ``tunesmith eval`` report (:mod:`tunesmith.evaluate.loss`). The plan's training time
comes from a probe: two forward/backward passes of the first micro-batch before training, timed (the second one),
with the random state restored and the gradients cleared afterwards, so the run trains exactly as without it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch

from tunesmith.evaluate.loss import mean_token_loss, row_losses
from tunesmith.models.generation import decode_reply, generate_ids
from tunesmith.render.templates import render_prompt
from tunesmith.runtime.console import Progress, console
from tunesmith.runtime.distributed import is_main_process, params_sharded
from tunesmith.runtime.files import atomic_write_json
from tunesmith.train.speed.precision import lora_input_casts


class OneLossEvalMixin:
    """A Trainer mixin whose ``evaluate`` returns the one eval_loss (:func:`tunesmith.evaluate.loss.row_losses` over
    ``tunesmith_eval_rows``, the rendered and truncated eval rows, unpacked): every eval step, before and after
    training.

    The forward runs on the model without accelerate's autocast wrapper (so a bf16-mixed run reports the fp32
    figure ``tunesmith eval`` gets; with bf16 base weights the LoRA layers compute in fp32 as when served), in eval
    mode; under FSDP/ZeRO-3 it runs through the sharded model, every process on every row. Logged, passed to
    ``on_evaluate`` callbacks and returned as ``{"eval_loss", "eval_tokens", "eval_rows", "eval_runtime"}``
    (``metric_key_prefix`` replaces ``eval``). Outside ``train()`` the main process shows progress.
    """

    tunesmith_eval_rows: list = []

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """The one eval_loss of ``tunesmith_eval_rows`` (``eval_dataset`` and ``ignore_keys`` are not used)."""
        self._memory_tracker.start()
        rows = self.tunesmith_eval_rows
        model = self.model_wrapped if params_sharded() else self.accelerator.unwrap_model(self.model)
        start = time.perf_counter()
        show = is_main_process() and not self.is_in_train
        bar = Progress("eval_loss", len(rows), unit="rows") if show else contextlib.nullcontext()
        with bar, lora_input_casts(model):
            terms = row_losses(
                model,
                rows,
                pad_id=self.processing_class.pad_token_id or 0,
                batch_size=self.args.per_device_eval_batch_size,
                progress=bar if show else None,
            )
        nll, tokens = zip(*terms) if terms else ((), ())
        metrics = {
            f"{metric_key_prefix}_loss": mean_token_loss(nll, tokens),
            f"{metric_key_prefix}_tokens": int(sum(tokens)),
            f"{metric_key_prefix}_rows": len(rows),
            f"{metric_key_prefix}_runtime": round(time.perf_counter() - start, 4),
        }
        was_training = self.model.training
        self.model.eval()  # TRL's log files the call under "eval" by the model's mode
        self.log(dict(metrics))
        self.model.train(was_training)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics


def samples(model, tokenizer, convs, eot, max_new_tokens: int, label: str = "samples") -> list[str]:
    """Greedy replies to the held-out sample prompts (main process only; not with sharded weights), with progress."""
    if not convs or not is_main_process() or params_sharded():
        return []
    prompts = [render_prompt(tokenizer, c) for c in convs]
    model.eval()
    with Progress(label, len(prompts), unit="prompts") as bar:
        outs = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, eos_ids=eot, progress=bar)
    return [decode_reply(tokenizer, o) for o in outs]


def measure_before(cfg, run, trainer, p, sample_convs) -> None:
    """eval_loss and samples of the untrained model, and how long each took (the estimates of the same steps after
    training); kept in ``run_state.json``. A resumed run already has them."""
    if run.resumed:
        return
    before, outs, seconds = {}, [], {}
    if cfg.eval.before_training and p.eval_rows:
        t0 = time.perf_counter()
        before = {k: v for k, v in trainer.evaluate(metric_key_prefix="eval").items() if isinstance(v, (int, float))}
        t1 = time.perf_counter()
        outs = samples(p.model, p.tokenizer, sample_convs, p.eot, cfg.eval.max_new_tokens, "samples before")
        seconds = {"eval": t1 - t0, "samples": time.perf_counter() - t1}
    run.remember(before=before, samples_before=outs, before_seconds=seconds)


def probe_step(trainer) -> float | None:
    """Seconds one optimizer step takes, from a probe: the first micro-batch of packed rows through forward and
    backward twice (the second timed), times the micro-batches per step. The random state is restored and gradients
    cleared, so training is unchanged. None under several processes (the first steps show the pace instead).

    Returns:
        Estimated seconds per optimizer step, or None.
    """
    if trainer.args.world_size > 1 or not len(trainer.train_dataset):
        return None
    try:
        return _probe(trainer)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:  # an estimate must never stop the run
        logging.getLogger("tunesmith.train").info("no time probe: %s: %s", type(exc).__name__, exc)
        return None


def _probe(trainer) -> float:
    """Two timed forward/backward passes of the first micro-batch, random state restored (see :func:`probe_step`)."""
    model = trainer.model
    n = min(trainer.args.per_device_train_batch_size, len(trainer.train_dataset))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    batch = {k: v.to(trainer.args.device) if hasattr(v, "to") else v for k, v in batch.items()}
    batch.pop("num_real_tokens", None)
    if getattr(trainer, "tunesmith_chunked_loss", False):
        batch["tunesmith_chunked_loss"] = True
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    model.train()
    took = 0.0
    try:
        for _ in range(2):
            t0 = time.perf_counter()
            with trainer.accelerator.autocast():
                loss = model(**batch).loss
            loss.backward()
            took = time.perf_counter() - t0
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return took * trainer.args.gradient_accumulation_steps


def _secs(value: float | None) -> str:
    if value is None:
        return "?"
    value = int(round(value))
    return f"{value // 60} min {value % 60:02d} s" if value >= 60 else f"{value} s"


def planned_steps(trainer) -> int:
    """Optimizer steps the run will make: ``max_steps``, or the epochs' worth of batches."""
    import math

    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return max(1, math.ceil(len(trainer.train_dataset) / per_step * args.num_train_epochs))


def print_plan(cfg, run, trainer, p) -> dict:
    """Print the plan before training: steps, rows and tokens, the estimated training time (probe) and what runs
    after training with its estimate (the before-training measurements, the decision order's steps).

    Returns:
        The plan as JSON-able numbers (``steps``, ``step_seconds``, ``train_seconds``, ``after`` [(what, seconds)]).
    """
    steps = planned_steps(trainer)
    done = trainer.state.global_step if run.resumed else 0
    if run.resumed and run.checkpoint is not None:
        import json

        state = run.checkpoint / "trainer_state.json"
        done = json.loads(state.read_text()).get("global_step", 0) if state.is_file() else 0
    per_step = probe_step(trainer)
    train_s = per_step * max(steps - done, 0) if per_step is not None else None
    measured = run.state.get("before_seconds", {})
    after = []
    if p.eval_rows:
        after.append((f"eval_loss on {len(p.eval_rows)} eval rows", measured.get("eval")))
    if cfg.eval.num_samples and run.data.eval:
        after.append((f"{min(cfg.eval.num_samples, len(run.data.eval))} sample replies", measured.get("samples")))
    after += list(run.after_training)
    if is_main_process():
        console.print(_plan_text(steps, done, trainer, p, per_step, train_s, after), highlight=False, soft_wrap=True)
    return {"steps": steps, "step_seconds": per_step, "train_seconds": train_s, "after": after}


def _plan_text(steps: int, done: int, trainer, p, per_step, train_s, after) -> str:
    """The plan as printed: steps and data, training estimate, each step after training, the total."""
    batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    head = (
        f"[bold]plan:[/] {steps} optimizer steps" + (f" ({done} done, resuming)" if done else "") + f" of {batch} rows "
        f"(max_length {p.max_length}; {len(trainer.train_dataset)} rows per epoch, {p.train_stats.tokens:,} tokens of "
        f"which {p.train_stats.trained_tokens:,} trained); "
    )
    head += (
        f"probe: {per_step:.1f} s per step, so training takes about {_secs(train_s)}"
        if per_step is not None
        else "training time: see the ETA after the first steps"
    )
    lines = "; ".join(f"{what} ({'about ' + _secs(s) if s is not None else 'not measured'})" for what, s in after)
    known = [s for _, s in after if s is not None]
    total = ""
    if per_step is not None:
        total = f"\n  in all about {_secs(train_s + sum(known))}" + (
            "" if len(known) == len(after) else " plus the steps not measured"
        )
    return f"{head}\n  after training: {lines or 'nothing to evaluate'}; then saving and the reload check{total}"


def write_reload_check(run_dir: Path, model, tokenizer, convs) -> None:
    """Record the trained model's last-position logits (first 512 vocab entries) on a fixed probe prompt, so a
    reload of the saved adapter/model can be checked against the model as it was at the end of training (with the
    base loaded in ``base_dtype``: bf16 when the base was trained in bf16)."""
    ids = render_prompt(tokenizer, convs[0])
    model.eval()
    with torch.no_grad():
        logits = (
            model(input_ids=torch.tensor([ids], device=next(model.parameters()).device))
            .logits[0, -1, :512]
            .float()
            .cpu()
        )
    frozen = [q.dtype for q in model.parameters() if not q.requires_grad and q.is_floating_point()]
    base_dtype = str(frozen[0] if frozen else next(model.parameters()).dtype).removeprefix("torch.")
    atomic_write_json(
        run_dir / "reload_check.json",
        {"input_ids": ids, "logits_last_first512": logits.tolist(), "base_dtype": base_dtype},
    )


def print_summary(run_dir: Path, m: dict) -> None:
    """Print the final line: time, eval_loss and perplexity before -> after, speed, trained parameters."""
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    console.print(
        f"\n[bold green]done[/] in {m['train_seconds']:.0f}s: "
        f"eval_loss {fmt(m['eval_loss_before'])} -> {fmt(m['eval_loss'])}, "
        f"perplexity {fmt(m['perplexity_before'])} -> {fmt(m['perplexity'])}; {m['tokens_per_second']:.0f} tokens/s; "
        f"trainable {m['trainable_parameters']:,} of {m['total_parameters']:,} parameters\n  artifacts: {run_dir}/"
    )
