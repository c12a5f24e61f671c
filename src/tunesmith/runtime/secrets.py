"""Secrets never reach disk: which config keys and command-line arguments hold credentials, and their redaction."""

from __future__ import annotations

import re

_SECRET_KEY = re.compile(
    r"(^|_)((hub|hf|access|auth|api|bearer)_)?(token|key)$|password|secret|credential", re.IGNORECASE
)


_NOT_SECRET = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}


def is_secret_key(name: str) -> bool:
    """True for config keys that hold credentials (``hub_token``, ``token``, ``api_key``, ``*password*``, ``*secret*``),
    false for token *settings* such as ``eos_token``/``pad_token`` or counts such as ``max_new_tokens``."""
    name = str(name).lower()
    if name in _NOT_SECRET:
        return False
    return bool(_SECRET_KEY.search(name)) and not name.endswith(("_key_name", "sort_key"))


def redact(obj):
    """Return a copy of a config dict with credential values (see :func:`is_secret_key`) replaced by ``***``."""
    if isinstance(obj, dict):
        return {
            k: ("***" if is_secret_key(k) and obj[k] not in (None, "", False) else redact(v)) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with every argument that looks like a secret (an ``hf_...`` token, ``...token=...``,
    ``...password=...``, ``...secret=...``, ``...api_key=...``) replaced by ``***``."""
    return [("***" if _SECRET_ARG.search(a) else a) for a in argv]


_SECRET_ARG = re.compile(r"hf_[A-Za-z0-9]{16,}|(token|secret|password|api_key)[^=]*=", re.IGNORECASE)
