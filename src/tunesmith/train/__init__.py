"""Training recipes: one small module per command (sft, classify, dpo)."""
