"""``tunesmith chat``: an interactive terminal chat through the chat template, with streamed tokens and history.

Run it::

    tunesmith chat --model runs/sft                       # the system prompt it was trained with, greedy
    tunesmith chat --model runs/sft --system "You answer in one sentence." --temperature 0.7
    printf 'Hi\\n/reset\\nWho are you?\\n/exit\\n' | tunesmith chat --model smollm2-135m-instruct

Commands typed at the prompt: ``/reset`` forgets the history (keeps the system prompt), ``/system TEXT``
sets a new system prompt and resets, ``/tool RESULT`` answers the model's last tool call with RESULT (a ``tool`` turn)
and lets it reply, ``/exit`` (or end of input, Ctrl-D) leaves.  With ``--tools FILE`` the tool specs are rendered
into every prompt and each reply's calls, parsed in the template's layout (:mod:`tunesmith.render.tool_calls`), are
shown as ``tool call: name({arguments})``::

    tunesmith chat --model runs/tools-glaive --tools tools.json --temperature 0
  When stdin is not a
terminal, lines are read from it one turn each (so the loop can be scripted and tested).
Tokens are printed as they are generated (``transformers.TextStreamer``); generation stops at the
template's end-of-turn token.  The oldest turns are dropped when the history outgrows the context.
Served as trained: the system prompt, chat template and generation defaults come from the model's serving contract
(:mod:`tunesmith.models.serving`); ``--system`` replaces the system prompt. Replies are greedy unless
``--temperature`` is given.
"""

from __future__ import annotations

import json
import sys

from tunesmith.data.records import Conversation, Message


def make_streamer(tokenizer, write):
    """A ``transformers.TextStreamer`` that passes the reply text (prompt skipped, special tokens dropped) to
    ``write(str)``."""
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        """transformers' TextStreamer writing each finalised piece of text to the chat's output."""

        def on_finalized_text(self, text: str, stream_end: bool = False):  # noqa: D102
            write(text + ("\n" if stream_end else ""))

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


class ChatSession:
    """History and generation for one chat.

    Args:
        loaded: :class:`tunesmith.models.for_use.Loaded`.
        system: system prompt; None serves the one the model was trained with (its serving contract), else the
            template's default.
        temperature: None or 0 for greedy decoding (the default), else the sampling temperature.
        top_p: nucleus sampling mass (with ``temperature > 0``).
        max_new_tokens: budget per reply, in tokens; None takes the serving contract's default (else 256).
        tools: tool specs rendered into every prompt (OpenAI shape), or None.
    """

    def __init__(
        self,
        loaded,
        *,
        system: str | None = None,
        temperature: float | None = None,
        top_p: float = 0.9,
        max_new_tokens: int | None = None,
        tools: list[dict] | None = None,
    ):
        from tunesmith.models.generation import stop_ids
        from tunesmith.render.tool_calls import call_format

        self.loaded, self.system, self.tools = loaded, loaded.system_prompt(system), tools
        self.temperature, self.top_p = temperature or 0.0, top_p
        self.max_new_tokens = max_new_tokens or getattr(loaded.generation_config, "max_new_tokens", None) or 256
        self.history: list[Message] = []
        self.eos = sorted(stop_ids(loaded))
        self.call_format = call_format(loaded.tokenizer.chat_template)

    def reset(self, system: str | None = None) -> None:
        """Forget the history; a given ``system`` replaces the system prompt."""
        self.history = []
        if system is not None:
            self.system = system

    def prompt_ids(self) -> list[int]:
        """Token ids of system + history through the generation prompt (tools rendered); the oldest exchanges (a user
        turn and what follows it up to the next user turn) are dropped while the prompt plus ``max_new_tokens``
        exceeds the model's context."""
        from tunesmith.models.serving import serving_prompt_ids

        limit = int(getattr(self.loaded.model.config, "max_position_embeddings", 2048)) - self.max_new_tokens
        while True:
            ids = serving_prompt_ids(self.loaded.tokenizer, self.history, self.system or None, "chat", tools=self.tools)
            if len(ids) <= limit or len(self.history) <= 1:
                return ids[-limit:] if limit > 0 else ids
            self.history = self.history[1:]
            while len(self.history) > 1 and self.history[0].role != "user":
                self.history = self.history[1:]

    def _remember(self, text: str, write) -> None:
        """Add the reply to the history: with tools, its parsed calls as ``tool_calls`` (shown through ``write``)."""
        from tunesmith.render.tool_calls import parse_reply

        parsed = parse_reply(text, self.call_format) if self.tools else None
        if parsed is None or not parsed.calls or parsed.invalid:
            self.history.append(Message("assistant", text))
        else:
            self.history.append(
                Message("assistant", parsed.content, tool_calls=parsed.calls, reasoning_content=parsed.reasoning)
            )
        for call in parsed.calls if parsed and write else []:
            write(f"tool call: {call.name}({json.dumps(call.arguments, ensure_ascii=False)})\n")
        for bad in parsed.invalid if parsed and write else []:
            write(f"malformed tool call: {bad[:200]}\n")

    def reply(self, user_text: str, write=None, *, role: str = "user") -> str:
        """Add a user turn (or, with ``role="tool"``, a tool result), generate the assistant reply (streamed to
        ``write`` when given), add it to the history.

        Returns:
            The reply text (special tokens removed).
        """
        import torch

        self.history.append(Message(role, user_text))
        ids = self.prompt_ids()
        model, tok = self.loaded.model, self.loaded.tokenizer
        kwargs = dict(
            max_new_tokens=self.max_new_tokens,
            eos_token_id=self.eos,
            pad_token_id=tok.pad_token_id,
            do_sample=self.temperature > 0,
        )
        kwargs.update(temperature=self.temperature, top_p=self.top_p) if self.temperature > 0 else kwargs.update(
            temperature=None, top_p=None, top_k=None
        )
        if write is not None:
            kwargs["streamer"] = make_streamer(tok, write)
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model.generate(
                input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                **kwargs,
            )
        text = tok.decode(out[0, len(ids) :], skip_special_tokens=True).strip()
        self._remember(text, write)
        return text

    def stream(self, user_text: str):
        """:meth:`reply` as a generator (for a web page): yields the reply text so far after each streamed piece,
        then the final reply (the same text :meth:`reply` returns and adds to the history).

        Generation runs in a worker thread; an error there is raised here.
        """
        import queue
        import threading

        pieces: queue.Queue = queue.Queue()
        done = object()
        result: dict = {}

        def work() -> None:
            try:
                result["text"] = self.reply(user_text, pieces.put)
            except BaseException as exc:  # handed to the caller's thread below
                result["error"] = exc
            finally:
                pieces.put(done)

        threading.Thread(target=work, name="chat-generate", daemon=True).start()
        text = ""
        while (piece := pieces.get()) is not done:
            text += piece
            yield text
        if "error" in result:
            raise result["error"]
        yield result["text"]


def chat_loop(session: ChatSession, lines, write, *, interactive: bool = False) -> int:
    """Run the chat over ``lines`` (an iterator of user inputs); returns the number of replies.

    ``/exit`` or the end of ``lines`` ends it; ``/reset``, ``/system TEXT`` and ``/tool RESULT`` are handled as
    commands.
    """
    replies = 0
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            session.reset()
            write("(history cleared)\n")
            continue
        if line.startswith("/system "):
            session.reset(line[len("/system ") :].strip())
            write("(system prompt set, history cleared)\n")
            continue
        role = "tool" if line.startswith("/tool ") else "user"
        text = line[len("/tool ") :].strip() if role == "tool" else line
        if not interactive:
            write(f"> {line}\n")
        write("assistant: ")
        session.reply(text, write, role=role)
        replies += 1
    return replies


def _tty_lines(console):
    while True:
        try:
            yield console.input("[bold cyan]you:[/] ")
        except EOFError:
            return


def run_chat(
    model: str | None,
    adapter: str | None = None,
    *,
    system: str | None = None,
    temperature: float | None = None,
    top_p: float = 0.9,
    max_new_tokens: int | None = None,
    seed: int = 0,
    tools: str | None = None,
) -> int:
    """Entry of ``tunesmith chat``: load the model and chat on the terminal (or over piped stdin).

    Args:
        tools: a JSON file of tool specs (``--tools``); the model's calls are parsed and shown.

    Returns:
        The number of replies generated.

    Raises:
        ModelError: bad model/adapter; DataError: an unreadable tools file; MissingFeatures: the model's chat template
            renders no tools (the fix names model.chat_template=chatml-tools).
    """
    import torch
    from rich.console import Console

    from tunesmith.data.conversations import file_tools
    from tunesmith.models.for_use import load_for_use

    console = Console(highlight=False)
    specs = file_tools(tools)
    torch.manual_seed(seed)
    loaded = load_for_use(model, adapter)
    interactive = sys.stdin.isatty()
    session = ChatSession(
        loaded, system=system, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, tools=specs
    )
    if specs:  # a template without tool support fails now, not after the first question
        from tunesmith.render.features import require_features

        require_features(loaded.tokenizer, Conversation([], tools=specs), None, None)
    if interactive:
        console.print(
            f"[dim]chat with {loaded.base_name}"
            + (f" + {loaded.adapter_dir}" if loaded.adapter_dir else "")
            + (f"; system prompt {session.system!r}" if session.system else "")
            + ("; greedy" if not session.temperature else f"; temperature {session.temperature}")
            + "; /reset clears the history, /system TEXT sets the system prompt, /exit leaves[/]"
        )

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    return chat_loop(session, _tty_lines(console) if interactive else sys.stdin, write, interactive=interactive)
