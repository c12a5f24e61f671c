"""``tunesmith chat``: an interactive terminal chat through the chat template, with streamed tokens and history.

Run it::

    tunesmith chat --model runs/sft --system "You answer in one sentence."
    printf 'Hi\\n/reset\\nWho are you?\\n/exit\\n' | tunesmith chat --model smollm2-135m-instruct --temperature 0

Commands typed at the prompt: ``/reset`` forgets the history (keeps the system prompt), ``/system TEXT``
sets a new system prompt and resets, ``/exit`` (or end of input, Ctrl-D) leaves.  When stdin is not a
terminal, lines are read from it one turn each (so the loop can be scripted and tested).
Tokens are printed as they are generated (``transformers.TextStreamer``); generation stops at the
template's end-of-turn token.  The oldest turns are dropped when the history outgrows the context.
"""

from __future__ import annotations

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
        loaded: :class:`tunesmith.models.loading.Loaded`.
        system: system prompt, or None for the template's default.
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: nucleus sampling mass (with ``temperature > 0``).
        max_new_tokens: budget per reply, in tokens.
    """

    def __init__(
        self,
        loaded,
        *,
        system: str | None = None,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 256,
    ):
        from tunesmith.models.loading import stop_ids

        self.loaded, self.system = loaded, system
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.history: list[Message] = []
        self.eos = sorted(stop_ids(loaded))

    def reset(self, system: str | None = None) -> None:
        """Forget the history; a given ``system`` replaces the system prompt."""
        self.history = []
        if system is not None:
            self.system = system

    def prompt_ids(self) -> list[int]:
        """Token ids of system + history through the generation prompt; the oldest user/assistant pairs are dropped
        while the prompt plus ``max_new_tokens`` exceeds the model's context."""
        from tunesmith.render.templates import render_prompt

        limit = int(getattr(self.loaded.model.config, "max_position_embeddings", 2048)) - self.max_new_tokens
        while True:
            msgs = ([Message("system", self.system)] if self.system else []) + self.history
            ids = render_prompt(self.loaded.tokenizer, Conversation(msgs))
            if len(ids) <= limit or len(self.history) <= 1:
                return ids[-limit:] if limit > 0 else ids
            self.history = self.history[2:]

    def reply(self, user_text: str, write=None) -> str:
        """Add a user turn, generate the assistant reply (streamed to ``write`` when given), add it to the history.

        Returns:
            The reply text (special tokens removed).
        """
        import torch

        self.history.append(Message("user", user_text))
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
        self.history.append(Message("assistant", text))
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

    ``/exit`` or the end of ``lines`` ends it; ``/reset`` and ``/system TEXT`` are handled as commands.
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
        if not interactive:
            write(f"> {line}\n")
        write("assistant: ")
        session.reply(line, write)
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
    temperature: float = 0.7,
    top_p: float = 0.9,
    max_new_tokens: int = 256,
    seed: int = 0,
) -> int:
    """Entry of ``tunesmith chat``: load the model and chat on the terminal (or over piped stdin).

    Returns:
        The number of replies generated.

    Raises:
        ModelError: bad model/adapter.
    """
    import torch
    from rich.console import Console

    from tunesmith.models.loading import load_for_use

    console = Console(highlight=False)
    torch.manual_seed(seed)
    loaded = load_for_use(model, adapter)
    interactive = sys.stdin.isatty()
    session = ChatSession(loaded, system=system, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    if interactive:
        console.print(
            f"[dim]chat with {loaded.base_name}"
            + (f" + {loaded.adapter_dir}" if loaded.adapter_dir else "")
            + "; /reset clears the history, /system TEXT sets the system prompt, /exit leaves[/]"
        )

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    return chat_loop(session, _tty_lines(console) if interactive else sys.stdin, write, interactive=interactive)
