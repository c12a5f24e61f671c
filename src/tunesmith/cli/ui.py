"""``tunesmith ui``: the web page for the whole decision order (needs ``pip install 'tunesmith[ui]'``)."""

from __future__ import annotations

import typer

from tunesmith.cli._options import Opt, handles_errors


@handles_errors
def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; a non-local one needs --auth."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port to listen on."),
    root: str = typer.Option(".", "--root", help="Workspace root: every path the page reads or writes is inside it."),
    auth: Opt[str] = typer.Option(
        None,
        "--auth",
        help="USER:PASSWORD login (or set TUNESMITH_UI_AUTH, which `ps` does not show); required for a non-local "
        "--host.",
        show_default=False,
    ),
    max_upload_mb: float = typer.Option(200, "--max-upload-mb", min=0.001, help="Largest upload, in MiB."),
):
    """Web page: Data (check, mask preview), Train (form, live loss, stop/resume), Decide (baseline, eval, report),
    Chat, Export (merge, GGUF, consistency), Runs."""
    from tunesmith.use.ui.server import serve

    serve(host=host, port=port, root=root, auth=auth, max_upload_mb=max_upload_mb)
