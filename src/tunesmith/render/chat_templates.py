"""Which chat template a run uses: the built-in ones (``render/jinja/``), a Jinja file or text named by
``model.chat_template``, or the model's own; and the errors for none or a file that is not a template."""

from __future__ import annotations

from pathlib import Path

from tunesmith.errors import ConversationRefused, Problem, TemplateError
from tunesmith.render.guard import render_text

BUILTIN_DIR = Path(__file__).parent / "jinja"
"""Folder of the built-in chat templates (``<name>.jinja``)."""


def builtin_templates() -> list[str]:
    """Names of the built-in chat templates (``chatml``, ``llama3``)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.jinja"))


MAX_TEMPLATE_BYTES = 1_000_000
"""Largest chat template file read (real ones are a few kilobytes)."""


def resolve_chat_template(option: str | None) -> str | None:
    """Turn ``model.chat_template`` into Jinja text.

    Args:
        option: None (keep the model's), a built-in name (:func:`builtin_templates`), a path to a Jinja file, or
            Jinja text itself.

    Returns:
        The template text, or None for None.

    Raises:
        TemplateError: when the option is neither a built-in name nor a readable file, or the file is not a chat
            template (not UTF-8 text, larger than :data:`MAX_TEMPLATE_BYTES`, or never reading ``messages``:
            ``/etc/passwd`` is not a template).
    """
    if option is None:
        return None
    if option in builtin_templates():
        return (BUILTIN_DIR / f"{option}.jinja").read_text(encoding="utf-8")
    where = f"model.chat_template={option}"
    try:
        path = Path(option).expanduser()
        is_file = path.is_file()
    except (OSError, ValueError):  # Jinja text too long to be a file name, or holding a NUL byte
        is_file = False
    if is_file:
        try:
            if path.stat().st_size > MAX_TEMPLATE_BYTES:
                raise _not_a_template(where, f"the file is {path.stat().st_size:,} bytes; a chat template is a few KB")
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise _not_a_template(where, "the file is not UTF-8 text") from None
        except OSError as exc:
            raise _not_a_template(where, f"cannot read the file ({exc.strerror or exc})") from None
        if not ("{%" in text or "{{" in text) or "messages" not in text:
            raise _not_a_template(where, "the file is not a chat template: it never reads `messages` in {% %} or {{ }}")
        return text
    if "{%" in option or "{{" in option:
        return option
    raise TemplateError(
        "Unknown chat template",
        [
            Problem(
                "model.chat_template",
                f"{option!r} is neither a built-in template nor a file",
                f"use one of {', '.join(builtin_templates())} or the path of a .jinja file",
            )
        ],
    )


def _not_a_template(where: str, reason: str) -> TemplateError:
    return TemplateError(
        "Not a chat template",
        [Problem(where, reason, f"use one of {', '.join(builtin_templates())} or the path of a .jinja chat template")],
    )


def apply_chat_template_option(tokenizer, option: str | None, *, require: bool = True) -> None:
    """Install ``model.chat_template`` on the tokenizer (so saved artifacts carry it).

    Args:
        require: raise when, after this, the tokenizer has no chat template (plain ``text`` and
            ``completion`` data need none: pass False and let rendering raise if a conversation needs one).

    Raises:
        TemplateError: when the option is invalid, the template is broken (a probe conversation renders it once:
            syntax errors, runaway loops and blocked sandbox escapes show here), or (``require``) when neither the
            option nor the model gives a chat template.
    """
    text = resolve_chat_template(option)
    if text is not None:
        tokenizer.chat_template = text
        tokenizer.tunesmith_template_source = f"model.chat_template={option}"
    if require and not tokenizer.chat_template:
        raise missing_template_error()
    if tokenizer.chat_template:
        probe = [{"role": "user", "content": "Hello"}]
        try:  # a broken template (syntax, runaway, sandbox escape) fails here, before any data is rendered
            render_text(tokenizer, probe, add_generation_prompt=True, where="a probe conversation")
        except ConversationRefused:  # a template may refuse this probe (no system turn, ...); records decide
            pass


def missing_template_error() -> TemplateError:
    """The error for a model without a chat template, naming the option that sets one."""
    return TemplateError(
        "The model has no chat template, so conversations cannot be rendered",
        [
            Problem(
                "model.chat_template",
                "the tokenizer has no chat_template (base models often have none)",
                f"set model.chat_template to a built-in ({', '.join(builtin_templates())}) or a .jinja file, "
                "e.g. --set model.chat_template=chatml; or use data.format=text / plain prompt_completion data",
            )
        ],
    )
