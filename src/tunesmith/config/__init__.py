"""Typed run configuration: one YAML file per run plus ``--set section.key=value`` overrides, validated once.

    tunesmith config                 # every SFT field, its value and documentation
    tunesmith classify --show-config # likewise for classify (and dpo)

Modules: :mod:`~tunesmith.config.base` (sections every command shares, the trainer-section base with its one
extras check), :mod:`~tunesmith.config.sft`, :mod:`~tunesmith.config.classify`, :mod:`~tunesmith.config.dpo`
(one config class per command), :mod:`~tunesmith.config.load` (YAML + ``--set``, collected problems) and
:mod:`~tunesmith.config.reference` (the field reference behind ``--help`` and docs/config.md).
"""
