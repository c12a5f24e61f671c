"""tunesmith: fine-tune LLMs the way best practice says, measured against prompting first.

Public API::

    from tunesmith import load_config, run_sft, render_conversation

Importing tunesmith imports neither torch nor transformers; ``run_sft``, ``render_conversation`` and ``Rendered`` load
them on first use.
"""

from typing import TYPE_CHECKING

from tunesmith.config.load import load_config
from tunesmith.config.sft import RunConfig
from tunesmith.data.records import Conversation, Message
from tunesmith.errors import ConfigError, DataError, ModelError, TemplateError, TunesmithError

if TYPE_CHECKING:
    from tunesmith.render.templates import Rendered, render_conversation
    from tunesmith.train.sft import run_sft

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy attributes: ``run_sft`` (:mod:`tunesmith.train.sft`), ``render_conversation`` and ``Rendered``
    (:mod:`tunesmith.render.templates`), imported on first use."""
    if name == "run_sft":
        from tunesmith.train.sft import run_sft

        return run_sft
    if name in ("render_conversation", "Rendered"):
        from tunesmith.render import templates

        return getattr(templates, name)
    raise AttributeError(name)


__all__ = [
    "RunConfig",
    "load_config",
    "ConfigError",
    "DataError",
    "ModelError",
    "TemplateError",
    "TunesmithError",
    "Conversation",
    "Message",
    "run_sft",
    "render_conversation",
    "Rendered",
    "__version__",
]
