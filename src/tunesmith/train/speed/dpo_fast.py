"""DPO with one packed forward pass per micro-batch and log-probs only at completion positions, in chunks.

Used by ``tunesmith dpo`` when ``train.fast_path`` is true (the default); checked against TRL's ``DPOTrainer`` by
``pytest tests/train/speed/test_dpo_fast.py``.

TRL's ``DPOTrainer`` pads prompt+chosen and prompt+rejected into ``2 * batch`` rows, so every prompt goes through
the model twice, every row is padded to the longest one, and on devices without Triton its fused LM head projects
*every* position (prompt and padding included) through the ``[hidden, vocab]`` output head.  Here:

* **one packed pass, the prompt once**: each pair becomes ``prompt | chosen | rejected``, with per-sample
  ``position_ids`` (chosen and rejected both continue from the prompt's end) and a 4D attention mask in which chosen
  tokens see the prompt and earlier chosen tokens, and rejected tokens see the prompt and earlier rejected tokens
  (never the chosen ones).  Causal attention makes the prompt's hidden states the same in both sequences, so the
  log-probs equal TRL's up to float rounding, for ``P + C + R`` tokens instead of ``2 * (P + max(C, R))``.  The
  pairs of a micro-batch share rows of up to ``row_tokens`` tokens (no padding between them), and the prompt prefix
  common to a row's pairs (the system prompt, say) is computed once too.
* **the head only at completion positions**, ``chunk_size`` tokens at a time (never the whole [tokens, vocab]
  logits); with a frozen head the gradient with respect to the hidden states is computed in the forward pass, while
  the chunk's logits are at hand (two matmuls per chunk instead of TRL's three), as ``fastloss`` does for SFT.
* **TRL keeps everything else**: the loss types, the metrics, the reference (same weights with the adapter off under
  ``no_grad``, TRL's ``ref`` adapter, a reference model, or precomputed log-probs) all run TRL's own code on the
  per-token log-probs, scattered back into TRL's ``[2 * batch, seq - 1]`` grid.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

from tunesmith.models.heads import plain_head_blocker

DEFAULT_CHUNK = 1024
"""Completion tokens per chunk through the head: a [1024, 49152] fp32 logits tile is 200 MB."""
DEFAULT_ROW_TOKENS = 1024
"""Row capacity of :class:`FastDPOTrainer`: a row's dense attention mask grows with its length squared, so a large
micro-batch is split into rows of about this many tokens (on the CPU benchmark, 4 pairs of <= 96 tokens: one row)."""
PACK_KEYS = ("tunesmith_pack_ids", "tunesmith_pack_pos", "tunesmith_pack_mask", "tunesmith_pack_src")
"""Batch keys of the packed layout; the model's forward pops them (see :func:`install_packed_forward`)."""


class CompletionLogProbs(torch.autograd.Function):
    """Per-token log-probabilities of ``targets`` under ``hidden @ weight.T (+ bias)``, ``chunk_size`` rows at a time.

    Forward args:
        hidden: FloatTensor[n, d], the final hidden states of the positions that predict a completion token.
        weight: FloatTensor[vocab, d], the output head (frozen: its gradient is not computed).
        bias: FloatTensor[vocab] or None.
        targets: LongTensor[n], each in [0, vocab).
        chunk_size: rows per chunk (int).
        grad_enabled: compute d logp / d hidden now (False under ``torch.no_grad``: the reference pass).

    Returns:
        (log_probs FloatTensor[n] in nats, fp32; entropy FloatTensor[n] in nats; mean_logits FloatTensor[n];
        is_top1 BoolTensor[n]: the target is the first argmax).  Only ``log_probs`` has a gradient.

    The matmuls follow autocast; log-sum-exp, softmax and the outputs are fp32.  The gradient ``onehot(t) - p`` times
    the head is computed per chunk in the forward pass and only scaled by the incoming per-token gradient in
    :meth:`backward`.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size, grad_enabled=True):  # noqa: D102
        """See the class docstring."""
        need_h = grad_enabled and ctx.needs_input_grad[0]
        n = hidden.shape[0]
        dev = hidden.device
        mm = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else hidden.dtype
        logp = torch.empty(n, dtype=torch.float32, device=dev)
        entropy, mean_logits = torch.empty_like(logp), torch.empty_like(logp)
        top1 = torch.empty(n, dtype=torch.bool, device=dev)
        grad_h = torch.empty_like(hidden) if need_h else None
        w = weight.to(mm)
        for s in range(0, n, chunk_size):
            h, t = hidden[s : s + chunk_size].to(mm), targets[s : s + chunk_size]
            z = torch.nn.functional.linear(h, w, None if bias is None else bias.to(mm)).float()  # [c, vocab]
            lse = torch.logsumexp(z, dim=-1)
            logp[s : s + len(t)] = z.gather(1, t[:, None]).squeeze(1) - lse
            top1[s : s + len(t)] = z.argmax(dim=-1) == t
            mean_logits[s : s + len(t)] = z.mean(dim=-1)
            z.sub_(lse[:, None])  # log-softmax, in place of the logits
            p = z.exp()
            entropy[s : s + len(t)] = -torch.linalg.vecdot(p, z)  # H = -sum_v p_v log p_v
            if need_h:
                p.neg_()[torch.arange(len(t), device=dev), t] += 1.0  # d logp_t / dz = onehot(t) - p
                grad_h[s : s + len(t)] = (p.to(mm) @ w).to(hidden.dtype)
            del z, p
        if need_h:
            ctx.save_for_backward(grad_h)
        ctx.need_h = need_h
        ctx.mark_non_differentiable(entropy, mean_logits, top1)
        return logp, entropy, mean_logits, top1

    @staticmethod
    def backward(ctx, grad_logp, *_):  # noqa: D102
        """Scale the per-token gradients saved by :meth:`forward` by ``grad_logp: [n]``."""
        if not ctx.need_h or grad_logp is None:
            return None, None, None, None, None, None
        (grad_h,) = ctx.saved_tensors
        return grad_h * grad_logp[:, None].to(grad_h.dtype), None, None, None, None, None


def completion_log_probs(hidden, weight, bias, targets, chunk_size: int = DEFAULT_CHUNK):
    """Per-token log-probs, entropy, mean logit and top-1 flag of ``targets: LongTensor[n]`` given ``hidden: [n, d]``.

    With a trainable head (``weight.requires_grad`` under grad mode: full fine-tuning or a trained ``lm_head``) the
    computation is TRL's ``ChunkedLogProbFunction`` (it recomputes the logits in the backward pass to get the head's
    gradient); otherwise :class:`CompletionLogProbs`.

    Returns:
        (log_probs FloatTensor[n], entropy FloatTensor[n], mean_logits FloatTensor[n], is_top1 BoolTensor[n]).
    """
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction

        outs = ("log_probs", "entropy", "mean_logits", "is_top1")
        lp, ent, _, mean, top1 = ChunkedLogProbFunction.apply(hidden, weight, bias, targets, 1.0, 4096, None, 1.0, outs)
        return lp.float(), ent.detach().float(), mean.float(), top1
    return CompletionLogProbs.apply(hidden, weight, bias, targets, chunk_size, torch.is_grad_enabled())


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plan_rows(prompts: list[list[int]], lengths: list[int], row_tokens: int | None) -> list[tuple[list[int], int]]:
    """Group pairs, in order, into rows of at most ``row_tokens`` tokens (None: one row), each row sharing the
    longest prompt prefix common to its pairs.

    Args:
        prompts: each pair's prompt ids; lengths: each pair's prompt + chosen + rejected token count.
        row_tokens: row capacity in tokens; a pair longer than it gets a row of its own.

    Returns:
        ``[(pair indices, shared prefix length), ...]``; a row is ``prefix + sum(length - prefix)`` tokens long.
    """
    rows: list[tuple[list[int], int]] = []
    for k, (p, n) in enumerate(zip(prompts, lengths)):
        if rows:
            row, shared = rows[-1]
            new = min(shared, _common_prefix(prompts[row[0]], p))
            size = new + sum(lengths[j] - new for j in row) + n - new
            if row_tokens is None or size <= row_tokens:
                rows[-1] = (row + [k], new)
                continue
        rows.append(([k], len(p)))
    return rows


@dataclass
class PackedPairsCollator(DataCollatorForPreference):
    """TRL's preference collator plus the packed layout of the same pairs (``keep_start`` truncation, as TRL).

    Pairs are grouped in order into rows of at most ``row_tokens`` tokens (None: the whole batch in one row); a
    row is ``shared prefix | rest of prompt 1 | chosen 1 | rejected 1 | rest of prompt 2 | ...``, where the shared
    prefix is the longest prompt prefix common to the row's pairs (e.g. the system prompt), computed once.

    Returns TRL's batch (``input_ids``/``attention_mask``/``completion_mask``: LongTensor[2B, L], chosen rows first;
    ``ref_*_logps`` when present) plus:

    * ``tunesmith_pack_ids``: LongTensor[R, T], the rows, pad tokens after.
    * ``tunesmith_pack_pos``: LongTensor[R, T], position ids (each sequence's own positions: chosen and rejected both
      continue from the end of their prompt).
    * ``tunesmith_pack_mask``: BoolTensor[R, 1, T, T], True where a query may attend a key: causal, within the
      shared prefix and the query's own pair, and never from a rejected token to a chosen one; pads see themselves.
    * ``tunesmith_pack_src``: LongTensor[n], for each completion token in TRL's order (row-major over the shifted
      ``completion_mask``), the flat index in ``[R * T]`` of the position that predicts it.

    Raises:
        ValueError: ``truncation_mode`` is not ``keep_start`` (the prompt would differ between chosen and rejected),
        or a pair has an empty prompt.
    """

    row_tokens: int | None = None

    def torch_call(self, examples: list[dict]) -> dict:  # noqa: D102
        """Collate ``examples`` (``prompt_ids``/``chosen_ids``/``rejected_ids``: ``list[int]``) as described above."""
        if self.truncation_mode != "keep_start":
            raise ValueError(f"packed pairs need truncation_mode='keep_start', not {self.truncation_mode!r}")
        out = super().torch_call(examples)
        segs = []  # (prompt, chosen, rejected) after TRL's per-sequence truncation
        for e in examples:
            p, c, r = list(e["prompt_ids"]), list(e["chosen_ids"]), list(e["rejected_ids"])
            if not p:
                raise ValueError("packed pairs need a non-empty prompt")
            if self.max_length is not None:
                p = p[: self.max_length]
                c, r = c[: max(self.max_length - len(p), 0)], r[: max(self.max_length - len(p), 0)]
            segs.append((p, c, r))
        rows = plan_rows([s[0] for s in segs], [sum(map(len, s)) for s in segs], self.row_tokens)
        width = max(shared + sum(sum(map(len, segs[k])) - shared for k in row) for row, shared in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        owner = torch.full((len(rows), width), -2, dtype=torch.long)  # -1 shared prefix, -2 pad, else the pair
        chosen = torch.zeros((len(rows), width), dtype=torch.bool)
        rejected = torch.zeros((len(rows), width), dtype=torch.bool)
        src_c, src_r = [[] for _ in segs], [[] for _ in segs]
        for ri, (row, shared) in enumerate(rows):
            ids[ri, :shared] = torch.tensor(segs[row[0]][0][:shared])
            pos[ri, :shared] = torch.arange(shared)
            owner[ri, :shared] = -1
            o = shared
            for k in row:
                p, c, r = segs[k]
                n_p, n_c, n_r = len(p), len(c), len(r)
                n = n_p - shared + n_c + n_r
                ids[ri, o : o + n] = torch.tensor(p[shared:] + c + r)
                pos[ri, o : o + n] = torch.cat([torch.arange(shared, n_p + n_c), torch.arange(n_p, n_p + n_r)])
                owner[ri, o : o + n] = k
                chosen[ri, o + n_p - shared : o + n_p - shared + n_c] = True
                rejected[ri, o + n_p - shared + n_c : o + n] = True
                last = ri * width + (o + n_p - shared - 1 if n_p > shared else shared - 1)  # the prompt's last token
                first_c, first_r = ri * width + o + n_p - shared, ri * width + o + n_p - shared + n_c
                src_c[k] = [last] * min(n_c, 1) + [first_c + j for j in range(n_c - 1)]
                src_r[k] = [last] * min(n_r, 1) + [first_r + j for j in range(n_r - 1)]
                o += n
        q, kk = owner[:, :, None], owner[:, None, :]
        mask = ((kk == -1) | (kk == q)) & (q != -2)
        mask &= ~(rejected[:, :, None] & chosen[:, None, :])  # rejected never sees chosen
        mask &= torch.ones(width, width, dtype=torch.bool).tril_()
        mask |= torch.eye(width, dtype=torch.bool)  # pads see themselves only (no empty softmax row)
        out.update(
            tunesmith_pack_ids=ids,
            tunesmith_pack_pos=pos,
            tunesmith_pack_mask=mask[:, None],
            tunesmith_pack_src=torch.tensor([i for s in src_c + src_r for i in s], dtype=torch.long),
        )
        return out


def install_packed_forward(model, chunk_size: int = DEFAULT_CHUNK) -> None:
    """Let ``model(..., labels=..., fused_lm_head=True, tunesmith_pack_*=...)`` run the packed layout.

    ``model`` is the transformers causal LM already given TRL's fused head (``add_fused_lm_head``; for PEFT the
    ``get_base_model()``); the call can come through PEFT, which passes keyword arguments on.  The backbone runs once on
    the packed rows; the hidden states at ``tunesmith_pack_src`` go through :func:`completion_log_probs` with the
    targets ``labels[:, 1:]`` where not -100 (TRL's grid), and the result is TRL's ``FusedCausalLMOutput`` with
    ``log_probs``/``entropy``/``mean_logits``/``is_top1`` of shape [2B, L - 1], zero outside the completions.  Without
    the packed keys (or without ``fused_lm_head``) the previous forward runs unchanged.

    Raises:
        ValueError: the number of packed completion positions differs from the number of labels.
    """
    previous = model.forward
    if getattr(previous, "_tunesmith_packed", False):
        return
    from trl.trainer.utils import FusedCausalLMOutput

    def forward(self, *args, **kwargs):
        packed = {k: kwargs.pop(k) for k in PACK_KEYS if k in kwargs}
        if not packed or not kwargs.get("fused_lm_head"):
            return previous(*args, **kwargs)
        labels = kwargs["labels"][:, 1:]
        label_mask = labels != -100
        src = packed["tunesmith_pack_src"]
        if int(label_mask.sum()) != src.numel():
            raise ValueError(f"{src.numel()} packed completion positions for {int(label_mask.sum())} labels")
        mask = packed["tunesmith_pack_mask"]
        if self.config._attn_implementation == "eager":  # eager adds the mask to the scores: 0 or the dtype's min
            dtype = self.get_output_embeddings().weight.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
        hidden = getattr(self, self.base_model_prefix)(
            input_ids=packed["tunesmith_pack_ids"],
            position_ids=packed["tunesmith_pack_pos"],
            attention_mask=mask,
            use_cache=False,
        ).last_hidden_state
        head = self.get_output_embeddings()
        picked = hidden.reshape(-1, hidden.shape[-1])[src]
        lp, ent, mean, top1 = completion_log_probs(picked, head.weight, head.bias, labels[label_mask], chunk_size)
        grid = [x.new_zeros(label_mask.shape).masked_scatter(label_mask, x) for x in (lp, ent, mean, top1)]
        n = label_mask.sum().clamp(min=1)
        return FusedCausalLMOutput(
            loss=-grid[0].sum() / n,
            log_probs=grid[0],
            entropy=grid[1],
            mean_logits=grid[2],
            is_top1=grid[3],
            label_mask=label_mask,
        )

    forward._tunesmith_packed = True
    model.forward = types.MethodType(forward, model)


def fast_path_blocker(trainer: DPOTrainer) -> str | None:
    """None when :class:`FastDPOTrainer` can pack ``trainer``'s batches, else the reason it keeps TRL's forward."""
    args = trainer.args
    if args.truncation_mode != "keep_start":
        return f"truncation_mode={args.truncation_mode}"
    if args.use_weighting:
        return "use_weighting (WPO) needs log_sum_sq_probs"
    if trainer.aux_loss_enabled:
        return "a mixture-of-experts auxiliary loss"
    if type(trainer.data_collator) is not DataCollatorForPreference:
        return "a custom or vision data collator"
    if getattr(trainer.model, "peft_config", None) and any(
        getattr(c, "is_prompt_learning", False) for c in trainer.model.peft_config.values()
    ):
        return "prompt-learning PEFT adds virtual tokens"
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if base.config._attn_implementation not in ("sdpa", "eager"):
        return f"attn_implementation={base.config._attn_implementation} takes no 4D attention mask"
    return plain_head_blocker(base)


class FastDPOTrainer(DPOTrainer):
    """TRL's ``DPOTrainer`` whose policy and reference log-probs come from one packed pass per micro-batch.

    Takes ``DPOTrainer``'s arguments plus ``row_tokens`` (row capacity in tokens, None: the micro-batch in one row) and
    ``chunk_size`` (completion tokens per chunk through the head).  After TRL's setup it installs
    :func:`install_packed_forward` on the policy (and on ``ref_model`` when there is one) and swaps the collator for
    :class:`PackedPairsCollator`; reference log-probs precomputed in ``__init__`` use TRL's own pass.  When
    :func:`fast_path_blocker` names a reason, nothing is changed (``self.fast_path`` holds the reason as
    ``"off: ..."``; otherwise ``"on"``).
    """

    def __init__(self, *args, row_tokens: int | None = DEFAULT_ROW_TOKENS, chunk_size: int = DEFAULT_CHUNK, **kwargs):
        super().__init__(*args, **kwargs)
        reason = fast_path_blocker(self)
        self.fast_path = "on" if reason is None else f"off: {reason}"
        if reason is not None:
            return
        for m in (self.model, self.ref_model):
            if m is not None:
                install_packed_forward(m.get_base_model() if hasattr(m, "get_base_model") else m, chunk_size)
        c = self.data_collator
        self.data_collator = PackedPairsCollator(
            pad_token_id=c.pad_token_id,
            max_length=c.max_length,
            truncation_mode=c.truncation_mode,
            pad_to_multiple_of=c.pad_to_multiple_of,
            row_tokens=row_tokens,
        )
