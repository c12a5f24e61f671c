"""Final-answer extraction for ``answer_match``: named extractors (GSM8K's ``#### N``, the last number,
``\\boxed{...}``, a multiple-choice letter) or a capturing regex, and the comparison (numeric with a tolerance, else
normalised text)."""

from __future__ import annotations

import math
import re
from typing import Callable

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
"""A number as written in answers: optional minus, digits with thousands commas, optional decimals (``-1,234.5``)."""


_CHOICE_ANSWER = re.compile(r"answer\s*(?:is|:)?\s*[:(\[]?\s*([A-J])\b", re.IGNORECASE)


_CHOICE_LEAD = re.compile(r"\s*[(\[]?([A-J])(?:[)\].:]|\s*$)")


_CHOICE_PAREN = re.compile(r"\(([A-J])\)")


def last_number(text: str) -> str | None:
    """The last number in ``text`` (``"so 3 + 4 = 7."`` -> ``"7"``), or None."""
    found = NUMBER.findall(text)
    return found[-1] if found else None


def gsm8k_answer(text: str) -> str | None:
    """GSM8K's final answer: the rest of the line after the last ``####`` (``"... #### 1,200"`` -> ``"1,200"``), else
    :func:`last_number` of the whole text (a model that answers without the marker)."""
    if "####" in text:
        answer = text.rsplit("####", 1)[1].split("\n", 1)[0].strip()
        if answer:
            return answer
    return last_number(text)


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced: ``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``), or
    None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


def choice_answer(text: str) -> str | None:
    """A multiple-choice letter A-J: the last ``answer is X`` / ``answer: (X)``; else a letter leading the text
    and followed by ``)``, ``]``, ``.``, ``:`` or nothing (``"B"``, ``"(B) ..."``, ``"B. ..."``; not the article in
    ``"A cat"``); else the last parenthesised ``(X)``. Returned in upper case, or None."""
    said = _CHOICE_ANSWER.findall(text)
    if said:
        return said[-1].upper()
    lead = _CHOICE_LEAD.match(text)
    if lead:
        return lead.group(1)
    paren = _CHOICE_PAREN.findall(text)
    return paren[-1] if paren else None


def extract_answer(text: str, *, extractor: str | None = None, regex: str | None = None) -> str | None:
    """The final answer of a text: group 1 of the last match of ``regex`` (``re.DOTALL``), else the named extractor.

    Args:
        text: a prediction or a reference.
        extractor: a name of :data:`EXTRACTORS` (used when ``regex`` is None).
        regex: a pattern with at least one capture group.

    Returns:
        The answer text (stripped), or None when nothing could be extracted.
    """
    if regex is not None:
        matches = list(re.finditer(regex, text, flags=re.DOTALL))
        value = matches[-1].group(1) if matches else None
        return value.strip() if value is not None else None
    return EXTRACTORS[extractor or "last_number"](text)


def as_number(answer: str) -> float | None:
    """The number an answer states, ignoring ``$``, ``%``, thousands commas, spaces and a final full stop
    (``"$1,200.50."`` -> 1200.5); None when it is not a plain number."""
    text = answer.strip().replace(",", "").replace("$", "").replace("%", "").replace(" ", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def same_answer(prediction: str | None, reference: str | None, tolerance: float = 1e-6) -> bool:
    """True when two extracted answers agree: numerically, ``|p - r| <= tolerance * max(1, |r|)``, when both read as
    numbers (:func:`as_number`); else as normalised text without trailing punctuation. None never matches."""
    if prediction is None or reference is None:
        return False
    p, r = as_number(prediction), as_number(reference)
    if p is not None and r is not None:
        return abs(p - r) <= tolerance * max(1.0, abs(r))
    return normalise(prediction).rstrip(".!") == normalise(reference).rstrip(".!")


def normalise(text: str) -> str:
    """Case-fold, strip and collapse whitespace: ``"  Hello\\n World "`` -> ``"hello world"``."""
    return " ".join(str(text).casefold().split())


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "gsm8k": gsm8k_answer,
    "last_number": last_number,
    "boxed": boxed_answer,
    "choice": choice_answer,
}
"""``eval.answer_extractor`` name -> extractor (text -> answer or None)."""
