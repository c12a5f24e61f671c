"""The ``tunesmith`` command: a command table, each command one function in a module of its group (no logic here).

tunesmith sft [CONFIG] [--set key=value ...]     # supervised fine-tuning (LoRA, TRL)       cli/train.py
tunesmith classify [CONFIG] [--baseline]         # classification head on a decoder LLM     cli/train.py
tunesmith dpo [CONFIG]                           # preference tuning (DPO) after SFT        cli/train.py
tunesmith data check|preview [CONFIG]            # the data as SFT will train on it         cli/data.py
tunesmith baseline [CONFIG]                      # prompting the instruction-tuned model    cli/evaluate.py
tunesmith eval [CONFIG] --adapter DIR            # the same examples and metrics, fine-tuned cli/evaluate.py
tunesmith report RUN_DIR...                      # decision report: CIs, wins/losses, cost  cli/evaluate.py
tunesmith classify-baseline [CONFIG]             # prompting baseline of a classify task    cli/evaluate.py
tunesmith chat|generate|merge|export|predict     # use the result                           cli/use.py
tunesmith models|config|estimate                 # models, config fields, memory            cli/info.py
tunesmith ui [--host H] [--port P] [--root DIR]  # the web page (pip install 'tunesmith[ui]') cli/ui.py
"""

from __future__ import annotations

import sys

import typer

from tunesmith.cli import data, evaluate, info, train, ui, use
from tunesmith.cli._options import fields_epilog
from tunesmith.runtime.console import quiet_library_warnings

COMMANDS: dict[str, tuple] = {
    "sft": (train.sft, {"epilog": fields_epilog()}),
    "classify": (train.classify, {"epilog": train.EPILOG}),
    "dpo": (train.dpo, {"epilog": train.EPILOG}),
    "baseline": (evaluate.baseline, {}),
    "eval": (evaluate.eval_cmd, {}),
    "report": (evaluate.report, {}),
    "classify-baseline": (evaluate.classify_baseline, {}),
    "chat": (use.chat, {}),
    "generate": (use.generate, {}),
    "merge": (use.merge, {}),
    "export": (use.export, {}),
    "predict": (use.predict, {}),
    "models": (info.models, {}),
    "config": (info.config, {}),
    "estimate": (info.estimate, {}),
    "ui": (ui.ui, {}),
}
"""Command name -> (function, extra ``app.command`` arguments), in the order ``--help`` lists them."""

DATA_COMMANDS = {"check": data.check, "preview": data.preview}
"""``tunesmith data <name>``."""

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fine-tune LLMs the way best practice says: measure prompting first, then SFT (LoRA, TRL), then optional DPO.",
)
for _name, (_fn, _kw) in COMMANDS.items():
    app.command(_name, **_kw)(_fn)
data_app = typer.Typer(
    no_args_is_help=True, help="Check and preview SFT data exactly as `tunesmith sft` will train on it."
)
for _name, _fn in DATA_COMMANDS.items():
    data_app.command(_name)(_fn)
app.add_typer(data_app, name="data")


def main() -> None:
    """Console entry point (``tunesmith``); the libraries' own deprecation warnings go to the log, not the console."""
    quiet_library_warnings()
    app(prog_name="tunesmith")


if __name__ == "__main__":
    sys.exit(main())
