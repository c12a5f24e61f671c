"""Bundled datasets, read offline from installed PyPI packages, in one registry (:data:`BUNDLED`).

    tunesmith sft                                          # data.name=chatterbot (SFT conversations)
    tunesmith sft configs/sft/decision-chatterbot-json.yaml    # chatterbot_json: strict JSON answers (template control)
    tunesmith classify                                     # chatterbot-topics (text -> topic label)
    tunesmith dpo configs/dpo/chatterbot-pairs.yaml              # chatterbot-pairs (chosen/rejected)

Every set is built from the English corpus of the ``chatterbot-corpus`` package (BSD licence), installed with
``pip install --no-deps chatterbot-corpus``.  ``chatterbot_json``: the first user message of each distinct
conversation becomes the user turn, and the assistant answers with one JSON object ``{"topic": <the conversation's
corpus category>, "reply": <the corpus answer>}``; a system turn (:data:`SYSTEM_PROMPT`) describes the format and
:data:`SCHEMA` is the JSON Schema an answer must satisfy.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from tunesmith.data.records import Conversation, Message, PreferencePair
from tunesmith.errors import DataError, Problem

TOPICS = (
    "ai",
    "computers",
    "conversations",
    "emotion",
    "food",
    "gossip",
    "greetings",
    "health",
    "history",
    "humor",
    "literature",
    "money",
    "movies",
    "politics",
    "profile",
    "psychology",
    "science",
    "sports",
    "tech support",
    "trivia",
    "coding",
)
"""Corpus categories (first category of each chatterbot-corpus English file, lower-cased; chatterbot-corpus 1.3.3)."""

MAX_REPLY_CHARS = 100
"""Conversations whose first answer is longer are left out, so an answer fits a short generation budget."""

SCHEMA = {
    "type": "object",
    "properties": {"topic": {"enum": list(TOPICS)}, "reply": {"type": "string", "minLength": 1}},
    "required": ["topic", "reply"],
    "additionalProperties": False,
}
"""JSON Schema of an answer: exactly the keys topic (one of :data:`TOPICS`) and reply (a non-empty string)."""

SYSTEM_PROMPT = (
    "Answer every message with one JSON object and nothing else, exactly in this form: "
    '{"topic": "<topic>", "reply": "<your reply>"}. '
    "<topic> is the topic of the message, one of: " + ", ".join(TOPICS) + "."
)
"""System turn of every example: the output format and the topic list."""


def answer(topic: str, reply: str) -> str:
    """The reference answer text: ``{"topic": ..., "reply": ...}`` (compact separators kept by ``json.dumps``,
    UTF-8)."""
    return json.dumps({"topic": topic, "reply": reply}, ensure_ascii=False)


def load_chatterbot_json() -> list[Conversation]:
    """Build the dataset: one system/user/assistant conversation per distinct first user message.

    Returns:
        Conversations in corpus file order; ``source`` is the corpus conversation's id (``chatterbot/<file>#<n>``),
        ``meta["topic"]`` its topic. A user message seen before is skipped (first kept), as are answers longer than
        :data:`MAX_REPLY_CHARS` characters.
    """
    from tunesmith.data.bundled import load_chatterbot

    out, seen = [], set()
    for conv in load_chatterbot():
        user, reply = conv.messages[0].content, conv.messages[1].content
        topic = conv.meta["topic"] if conv.meta["topic"] in TOPICS else "conversations"
        if user.casefold() in seen or len(reply) > MAX_REPLY_CHARS:
            continue
        seen.add(user.casefold())
        msgs = [Message("system", SYSTEM_PROMPT), Message("user", user), Message("assistant", answer(topic, reply))]
        out.append(Conversation(msgs, conv.source, {"topic": topic}))
    return out


def chatterbot_dir() -> Path:
    """Return the folder of English YAML files of the installed ``chatterbot-corpus`` package.

    Raises:
        DataError: when the package is not installed.
    """
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "Bundled dataset 'chatterbot' is not installed",
            [
                Problem(
                    "data.name=chatterbot",
                    "the PyPI package chatterbot-corpus is missing",
                    "pip install --no-deps chatterbot-corpus",
                )
            ],
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "english"


def load_chatterbot() -> list[Conversation]:
    """Turn the chatterbot English corpus into multi-turn user/assistant conversations.

    Each corpus conversation is a list of statements, each answering the one before; they
    alternate user/assistant starting with the user, and a trailing user statement is dropped.
    ``meta["topic"]`` holds the file's first category (e.g. ``computers``).

    The corpus repeats many conversations (2,026 lists, 899 distinct): exact duplicates are dropped,
    keeping the first, so an eval split never holds copies of training conversations.

    Returns:
        899 distinct conversations (chatterbot-corpus 1.3.3), in file order (sorted file names) for determinism.
    """
    out, seen = [], set()
    for path in sorted(chatterbot_dir().glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        topic = str(doc.get("categories", [path.stem])[0]).lower()
        for idx, turns in enumerate(doc.get("conversations", [])):
            turns = [str(t).strip() for t in turns if t is not None and str(t).strip()]
            if len(turns) % 2:
                turns = turns[:-1]
            if len(turns) < 2:
                continue
            if tuple(turns) in seen:
                continue
            seen.add(tuple(turns))
            msgs = [Message("user" if k % 2 == 0 else "assistant", t) for k, t in enumerate(turns)]
            out.append(Conversation(msgs, f"chatterbot/{path.name}#{idx}", {"topic": topic}))
    return out


def load_chatterbot_topics() -> list[tuple[str, dict]]:
    """Bundled ``chatterbot-topics``: the first user message of each chatterbot conversation, labelled with its topic.

    Returns:
        (source, {"text", "label"}) pairs, about 2,000 before de-duplication (749 distinct messages).
    """
    from tunesmith.data.bundled import load_chatterbot

    return [(c.source, {"text": c.messages[0].content, "label": c.meta["topic"]}) for c in load_chatterbot()]


def load_chatterbot_pairs(seed: int = 0) -> list[PreferencePair]:
    """Bundled ``chatterbot-pairs``: one pair per chatterbot-corpus conversation (obtainable offline: PyPI package).

    The prompt is the conversation before its last assistant reply; chosen is that reply; rejected is the last reply
    of a conversation from a different topic file, drawn with ``random.Random(seed)``. The pairs teach topical
    relevance, a preference a small model can learn in minutes on a CPU.

    Returns:
        899 pairs (chatterbot-corpus 1.3.3), in corpus order; ``meta`` holds ``topic`` and ``rejected_topic``.
    """
    from tunesmith.data.bundled import load_chatterbot

    convs = load_chatterbot()
    rng = random.Random(seed)
    out = []
    for c in convs:
        while True:
            other = convs[rng.randrange(len(convs))]
            if (
                other.meta["topic"] != c.meta["topic"]
                and other.messages[-1].content.strip() != c.messages[-1].content.strip()
            ):
                break
        out.append(
            PreferencePair(
                c.messages[:-1],
                c.messages[-1].content,
                other.messages[-1].content,
                c.source,
                {"topic": c.meta["topic"], "rejected_topic": other.meta["topic"]},
            )
        )
    return out


@dataclass(frozen=True)
class Bundled:
    """One bundled dataset.

    Attributes:
        kind: ``conversations`` (SFT: ``list[Conversation]``), ``labels`` (classification: ``list[(id, row)]`` with
            ``text``/``label`` keys) or ``pairs`` (DPO: ``list[PreferencePair]``).
        load: the loader, called with no arguments.
    """

    kind: str
    load: Callable[[], list]


BUNDLED: dict[str, Bundled] = {
    "chatterbot": Bundled("conversations", load_chatterbot),
    "chatterbot_json": Bundled("conversations", load_chatterbot_json),
    "chatterbot-topics": Bundled("labels", load_chatterbot_topics),
    "chatterbot-pairs": Bundled("pairs", load_chatterbot_pairs),
}
"""Every bundled dataset, by the name ``data.name`` takes."""


def load_bundled(name: str | None, kind: str) -> list:
    """Load the bundled dataset ``name`` of the given kind.

    Args:
        name: ``data.name``.
        kind: ``conversations``, ``labels`` or ``pairs`` (what the command trains on).

    Returns:
        What the dataset's loader returns (see :class:`Bundled`).

    Raises:
        DataError: no name, an unknown name, or a set of another kind; the fix lists the names of this kind.
    """
    names = sorted(n for n, b in BUNDLED.items() if b.kind == kind)
    entry = BUNDLED.get(name or "")
    if entry is None or entry.kind != kind:
        what = (
            (f"unknown bundled dataset {name!r}" if entry is None else f"{name!r} is a {entry.kind} set, not {kind}")
            if name
            else "neither data.path nor data.name is set"
        )
        raise DataError("No data", [Problem("data", what, f"set data.path to a file or data.name to one of {names}")])
    return entry.load()
