"""The render stage: conversations through the model's own chat template into ``input_ids`` and token-exact
assistant-only labels, template checks, and truncated training rows."""
