"""The training stage: one run lifecycle (``lifecycle``) and one recipe module per command (``sft``, ``classify``,
``dpo``), with shared callbacks, checkpoints, speed plan and memory estimate."""
