"""Bundled dataset ``chatterbot_json``: a template-control task with strict JSON output (the decision-order example).

    tunesmith sft configs/decision_chatterbot_json.yaml    # baseline -> SFT -> eval -> report

Built from the installed ``chatterbot-corpus`` package (via :func:`tunesmith.data.conversations.load_chatterbot`): the first
user message of each distinct conversation becomes the user turn, and the assistant answers with one JSON object
``{"topic": <the conversation's corpus category>, "reply": <the corpus answer>}``. A system turn (:data:`SYSTEM_PROMPT`)
describes the format and lists the topics; :data:`SCHEMA` is the JSON Schema an answer must satisfy.
"""
from __future__ import annotations

import json

from tunesmith.data.records import Conversation, Message

TOPICS = ("ai", "computers", "conversations", "emotion", "food", "gossip", "greetings", "health", "history", "humor",
          "literature", "money", "movies", "politics", "profile", "psychology", "science", "sports", "tech support", "trivia",
          "coding")
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

SYSTEM_PROMPT = ("Answer every message with one JSON object and nothing else, exactly in this form: "
                 '{"topic": "<topic>", "reply": "<your reply>"}. '
                 "<topic> is the topic of the message, one of: " + ", ".join(TOPICS) + ".")
"""System turn of every example: the output format and the topic list."""


def answer(topic: str, reply: str) -> str:
    """The reference answer text: ``{"topic": ..., "reply": ...}`` (compact separators kept by ``json.dumps``, UTF-8)."""
    return json.dumps({"topic": topic, "reply": reply}, ensure_ascii=False)


def load_chatterbot_json() -> list[Conversation]:
    """Build the dataset: one system/user/assistant conversation per distinct first user message.

    Returns:
        Conversations in corpus file order; ``source`` is the corpus conversation's id (``chatterbot/<file>#<n>``),
        ``meta["topic"]`` its topic. A user message seen before is skipped (first kept), as are answers longer than
        :data:`MAX_REPLY_CHARS` characters.
    """
    from tunesmith.data.conversations import load_chatterbot

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
