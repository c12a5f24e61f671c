"""Train/eval splits (seeded, stratified by label where asked), subsamples, and the one data fingerprint."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter

from tunesmith.data.records import Conversation, LabelRecord, PreferencePair


def split(convs: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/eval split: shuffle indices with ``random.Random(seed)``, hold out a fraction.

    Returns:
        (train, eval) lists; eval has ``round(len * eval_fraction)`` records (at least 1 when the fraction > 0).
    """
    idx = list(range(len(convs)))
    random.Random(seed).shuffle(idx)
    n_eval = max(1, round(len(convs) * eval_fraction)) if eval_fraction > 0 and len(convs) > 1 else 0
    held = set(idx[:n_eval])
    return [c for i, c in enumerate(convs) if i not in held], [c for i, c in enumerate(convs) if i in held]


def fingerprint(records: list) -> str:
    """SHA-256 (hex, 16 chars) of a data set's content, for the manifest and caches; the one fingerprint of every kind.

    Args:
        records: ``list[Conversation]`` (roles, contents, weights), ``list[LabelRecord]`` (text, text pair, label)
            or ``list[PreferencePair]`` (the TRL row, keys sorted).

    Returns:
        16 hex characters; equal data in equal order gives an equal fingerprint.
    """
    h = hashlib.sha256()
    for r in records:
        h.update(_record_bytes(r))
    return h.hexdigest()[:16]


def _record_bytes(r) -> bytes:
    if isinstance(r, Conversation):
        return b"".join(_message_bytes(m) for m in r.messages) + _tools_bytes(r.tools) + b"\x02"
    if isinstance(r, LabelRecord):
        return f"{r.text}\x00{r.text_pair}\x00{r.label}\x01".encode()
    if isinstance(r, PreferencePair):
        return json.dumps(r.to_trl(), sort_keys=True, ensure_ascii=False).encode()
    raise TypeError(f"cannot fingerprint {type(r).__name__}")


def _message_bytes(m) -> bytes:
    """Role, content, weight; plus tool calls, tool_call_id and reasoning when the message has them (so the fingerprint
    of plain conversations is unchanged)."""
    extra = {
        k: v
        for k, v in (
            ("tool_calls", [c.to_template() for c in m.tool_calls or []]),
            ("tool_call_id", m.tool_call_id),
            ("reasoning_content", m.reasoning_content),
        )
        if v
    }
    tail = json.dumps(extra, sort_keys=True, ensure_ascii=False) if extra else ""
    return f"{m.role}\x00{m.content}\x00{m.weight}{tail}\x01".encode()


def _tools_bytes(tools) -> bytes:
    return json.dumps(tools, sort_keys=True, ensure_ascii=False).encode() if tools else b""


def stratified_split(
    records: list[LabelRecord], eval_fraction: float, seed: int, stratify: bool = True
) -> tuple[list, list]:
    """Split into (train, eval) with scikit-learn ``train_test_split``, stratified by label when possible.

    Labels with a single record cannot be stratified; they go to train (and stratification applies to the rest).
    With too few records to hold any out, eval is empty (the caller reports it).

    Returns:
        (train, eval), each in the original record order (so ids are in file order).
    """
    if eval_fraction <= 0 or len(records) < 2:
        return list(records), []
    from sklearn.model_selection import train_test_split

    counts = Counter(r.label for r in records)
    single = [i for i, r in enumerate(records) if counts[r.label] < 2]
    rest = [i for i, r in enumerate(records) if counts[r.label] >= 2]
    strat = [records[i].label for i in rest] if stratify else None
    n_eval = max(1, round(len(rest) * eval_fraction))
    if stratify and n_eval < len(set(strat)):
        n_eval = len(set(strat))
    if n_eval >= len(rest):  # too few records to hold any out (every label needs one left to train on)
        return list(records), []
    tr, ev = train_test_split(rest, test_size=n_eval, random_state=seed, stratify=strat)
    tr, ev = sorted(tr + single), sorted(ev)
    return [records[i] for i in tr], [records[i] for i in ev]


def subsample(records: list[LabelRecord], n: int | None, seed: int) -> list[LabelRecord]:
    """Keep ``n`` records, stratified by label where possible (files are often sorted by label), in file order."""
    if not n or n >= len(records):
        return list(records)
    _, kept = stratified_split(records, n / len(records), seed, stratify=True)
    return kept[:n]
