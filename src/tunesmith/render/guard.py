"""Render a chat template, guarded: every failure is a clear error naming the template's source and the Jinja
message, and a runaway template is stopped.

Chat templates are Jinja programs shipped with a model (or given as ``model.chat_template``). transformers renders them
in Jinja's ``ImmutableSandboxedEnvironment`` (no Python internals, ranges of at most 100,000), but a syntax error, the
template's own ``raise_exception``, an undefined value or nested loops that never end would surface as a Jinja
traceback or a hang. Here each becomes :class:`~tunesmith.errors.TemplateError` (the template is broken) or
:class:`~tunesmith.errors.ConversationRefused` (it refuses one record, named by ``file:line``), and a rendering is
stopped after :data:`TEMPLATE_SECONDS` or when its output outgrows its input by :data:`TEMPLATE_GROWTH`.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

from tunesmith.errors import ConversationRefused, Problem, TemplateError

TEMPLATE_SECONDS = 10.0
"""Longest one rendering of one conversation may take; a template still running then is stopped (a runaway loop)."""

TEMPLATE_GROWTH = 16
"""A rendering may be at most this many times longer than the conversation's text, plus 1 MB of template text."""


class _Timeout(BaseException):
    """Raised by the alarm inside a runaway template (a BaseException, so no ``except Exception`` swallows it)."""


@contextmanager
def _time_limit(seconds: float):
    """Raise :class:`_Timeout` in the block after ``seconds`` (SIGALRM; main thread only, else no limit). An outer
    alarm due sooner (a test timeout) is left alone; one due later is restored afterwards."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= seconds:
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - start), 1e-3), outer_interval)


def template_source(tokenizer) -> str:
    """Where the tokenizer's chat template came from, for messages: ``model.chat_template=<option>`` or the model."""
    return getattr(tokenizer, "tunesmith_template_source", None) or (
        f"the chat template of {getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}"
    )


TEMPLATE_FIX = "fix the template, or choose another with model.chat_template (a built-in: chatml, llama3)"


def render_text(
    tokenizer,
    messages,
    *,
    add_generation_prompt: bool,
    chat_template: str | None = None,
    tools: list[dict] | None = None,
    where: str | None = None,
) -> str:
    """Render ``messages`` through the chat template (``tokenize=False``), guarded.

    Args:
        tools: the conversation's tool specs, passed to the template as ``tools`` (None or ``[]``: none).
        where: the record being rendered (``file:line``); None for tunesmith's own probe conversations.

    Raises:
        TemplateError: the template itself is broken, whatever the data: a syntax error, a runaway (longer than
            :data:`TEMPLATE_SECONDS`, or output beyond :data:`TEMPLATE_GROWTH`), recursion, or an attempt to reach
            Python internals that the sandbox blocked; also any failure on a probe (``where`` None).
        ConversationRefused: the template refuses this record (its own ``raise_exception``, an undefined value).
    """
    import jinja2

    source = "the chat template passed in" if chat_template else template_source(tokenizer)
    size = len(repr(messages)) + (len(repr(tools)) if tools else 0)  # texts, tool calls and tool specs
    try:
        with _time_limit(TEMPLATE_SECONDS):
            text = tokenizer.apply_chat_template(
                messages,
                tools=tools or None,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                chat_template=chat_template,
            )
    except _Timeout:
        raise _broken(
            source,
            f"rendering one conversation took more than {TEMPLATE_SECONDS:g} s (a loop that never "
            "ends?); it was stopped",
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise _broken(f"{source}, line {exc.lineno}", f"template syntax error: {exc.message}") from None
    except jinja2.exceptions.SecurityError as exc:
        raise _broken(source, f"the template reached for Python internals and the sandbox blocked it: {exc}") from None
    except (RecursionError, MemoryError) as exc:
        raise _broken(
            source, f"the template {'recursed too deep' if isinstance(exc, RecursionError) else 'ran out of memory'}"
        ) from None
    except Exception as exc:  # raise_exception, UndefinedError, TypeError...: this record's problem
        reason = f"{source} refuses this conversation: {_message(exc)}"
        if where is None:
            raise _broken(source, reason) from None
        raise ConversationRefused("The chat template refuses a record", [Problem(where, reason, REFUSED_FIX)]) from None
    if not isinstance(text, str) or len(text) > 1_000_000 + TEMPLATE_GROWTH * size:
        raise _broken(
            source,
            f"it rendered {len(text) if isinstance(text, str) else type(text).__name__} characters "
            f"from {size} characters of messages and tools (a runaway loop?)",
        )
    return text


REFUSED_FIX = (
    "change the record so the template accepts it (many templates need user and assistant turns to alternate), "
    "skip it with --skip-invalid, or choose another model.chat_template"
)
"""The fix of a record the chat template refuses."""


def _broken(where: str, reason: str) -> TemplateError:
    return TemplateError("The chat template cannot be used", [Problem(where, reason, TEMPLATE_FIX)])


@contextmanager
def template_errors(tokenizer):
    """Turn a Jinja error raised inside a library that renders the chat template itself (TRL's DPO data
    preparation) into a :class:`TemplateError` naming the template's source and the Jinja message."""
    import jinja2

    try:
        yield
    except jinja2.TemplateError as exc:
        raise _broken(template_source(tokenizer), _message(exc)) from None


def _message(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
