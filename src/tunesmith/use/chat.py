"""``tunesmith chat``: an interactive terminal chat through the chat template, with streamed tokens and history.

Run it::

    tunesmith chat --model runs/sft                       # the system prompt it was trained with, greedy
    tunesmith chat --model runs/sft --system "You answer in one sentence." --temperature 0.7
    printf 'Hi\\n/reset\\nWho are you?\\n/exit\\n' | tunesmith chat --model smollm2-135m-instruct

Commands typed at the prompt: ``/reset`` forgets the history (keeps the system prompt), ``/system TEXT``
sets a new system prompt and resets, ``/exit`` (or end of input, Ctrl-D) leaves.  When stdin is not a
terminal, lines are read from it one turn each (so the loop can be scripted and tested).
Tokens are printed as they are generated (``transformers.TextStreamer``); generation stops at the
template's end-of-turn token.  The oldest turns are dropped when the history outgrows the context.
Served as trained: the system prompt, chat template and generation defaults come from the model's serving contract
(:mod:`tunesmith.models.serving`); ``--system`` replaces the system prompt. Replies are greedy unless
``--temperature`` is given.
"""

from __future__ import annotations

import sys

from tunesmith.data.records import Message


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
        system: system prompt; None serves the one the model was trained with (its serving contract), else the
            template's default.
        temperature: None or 0 for greedy decoding (the default), else the sampling temperature.
        top_p: nucleus sampling mass (with ``temperature > 0``).
        max_new_tokens: budget per reply, in tokens; None takes the serving contract's default (else 256).
    """

    def __init__(
        self,
        loaded,
        *,
        system: str | None = None,
        temperature: float | None = None,
        top_p: float = 0.9,
        max_new_tokens: int | None = None,
    ):
        from tunesmith.models.loading import stop_ids

        self.loaded, self.system = loaded, loaded.system_prompt(system)
        self.temperature, self.top_p = temperature or 0.0, top_p
        self.max_new_tokens = max_new_tokens or getattr(loaded.generation_config, "max_new_tokens", None) or 256
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
        from tunesmith.models.serving import serving_prompt_ids

        limit = int(getattr(self.loaded.model.config, "max_position_embeddings", 2048)) - self.max_new_tokens
        while True:
            ids = serving_prompt_ids(self.loaded.tokenizer, self.history, self.system or None, "chat")
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
    temperature: float | None = None,
    top_p: float = 0.9,
    max_new_tokens: int | None = None,
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
            + (f"; system prompt {session.system!r}" if session.system else "")
            + ("; greedy" if not session.temperature else f"; temperature {session.temperature}")
            + "; /reset clears the history, /system TEXT sets the system prompt, /exit leaves[/]"
        )

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    return chat_loop(session, _tty_lines(console) if interactive else sys.stdin, write, interactive=interactive)
