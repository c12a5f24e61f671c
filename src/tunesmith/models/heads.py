"""The output head of a causal LM, apart from its body: what lets a loss compute logits only where it needs them.

Used by the chunked training loss (:mod:`tunesmith.train.speed.fastloss`) and by the one eval_loss
(:func:`tunesmith.evaluate.loss.row_losses`): both run the body once and the head only at trained positions, which is
exact when the logits are a plain linear map of the body's last hidden state.
"""

from __future__ import annotations

LOGIT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "logits_scaling",
    "lm_head_multiplier",
)
"""Config keys of models whose logits are more than ``head(hidden)`` (Gemma 2 soft-capping, Cohere scaling, ...)."""


def plain_head_blocker(model) -> str | None:
    """Why ``model``'s logits are not ``model.get_output_embeddings()(body(...).last_hidden_state)``, or None when
    they are.

    Args:
        model: a transformers ``PreTrainedModel`` (a causal LM; not a PEFT wrapper).

    Returns:
        None, or the reason in words (a logit transform in the config, or no separate body and head).
    """
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for key in LOGIT_TRANSFORMS:
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            return f"the model config sets {key}"
    if model.get_output_embeddings() is None or not hasattr(model, getattr(model, "base_model_prefix", "") or "-"):
        return "the model has no separate backbone and output head"
    return None


def body_and_head(model):
    """The body (``model.<base_model_prefix>``, returning ``last_hidden_state``) and the output head of a causal LM,
    or None when :func:`plain_head_blocker` objects or ``model`` is wrapped in a way the body call would skip.

    Args:
        model: a ``PreTrainedModel`` or a ``peft.PeftModel`` with a LoRA-type adapter (injected into the base model's
            layers, so calling the body runs it); a prompt-learning adapter (virtual tokens) gives None.

    Returns:
        ``(body: nn.Module, head: nn.Linear)`` or None.
    """
    from transformers import PreTrainedModel

    peft_config = getattr(model, "peft_config", None)
    if peft_config and hasattr(model, "get_base_model"):
        if any(getattr(c, "is_prompt_learning", False) for c in peft_config.values()):
            return None
        model = model.get_base_model()
    if not isinstance(model, PreTrainedModel) or plain_head_blocker(model) is not None:
        return None
    return getattr(model, model.base_model_prefix), model.get_output_embeddings()
