"""``tunesmith ui``: serve the page (Gradio), safely by default.

    pip install 'tunesmith[ui]'
    tunesmith ui                                   # http://127.0.0.1:7860, the current folder as the workspace root
    TUNESMITH_UI_AUTH=me:secret tunesmith ui --host 0.0.0.0 --root ~/work   # reachable from other machines

It binds to 127.0.0.1 unless told otherwise. Any other address (a LAN address, ``0.0.0.0``) needs a user and
password (``--auth user:password``, or the ``TUNESMITH_UI_AUTH`` environment variable, which other users of the
machine cannot read from the process list), and the server refuses to start without one.
"""

from __future__ import annotations

import ipaddress
import os
import socket

from tunesmith.errors import Problem, TunesmithError

AUTH_ENV = "TUNESMITH_UI_AUTH"
"""Environment variable holding ``user:password`` (preferred over ``--auth``, which ``ps`` shows)."""


def is_local(host: str) -> bool:
    """True when ``host`` is a loopback address or ``localhost`` (reachable from this machine only)."""
    if host.strip().lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``"user:password"`` -> ``("user", "password")`` (the password may contain ``:``); None stays None.

    Raises:
        TunesmithError: no ``:``, or an empty user or password.
    """
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise TunesmithError(
            "Invalid --auth", [Problem("--auth", "expected USER:PASSWORD, both non-empty", "e.g. --auth me:s3cret")]
        )
    return user, password


def check_bind(host: str, auth: str | None = None, env: dict | None = None) -> tuple[str, str] | None:
    """Decide whether the server may start on ``host`` and with which login.

    Args:
        host: the ``--host`` address. auth: ``--auth`` (``user:password``) or None.
        env: the environment to read :data:`AUTH_ENV` from (default ``os.environ``).

    Returns:
        ``(user, password)`` or None (a local address without auth).

    Raises:
        TunesmithError: a non-local address without a user and password; a malformed one.
    """
    login = parse_auth(auth if auth is not None else (os.environ if env is None else env).get(AUTH_ENV))
    if login is None and not is_local(host):
        raise TunesmithError(
            "Refusing to serve on a non-local address without a password",
            [
                Problem(
                    f"--host {host}",
                    "other machines could start training runs and read every file under the workspace root",
                    f"set {AUTH_ENV}=USER:PASSWORD (or pass --auth USER:PASSWORD), or keep --host 127.0.0.1",
                )
            ],
        )
    return login


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    root: str = ".",
    auth: str | None = None,
    max_upload_mb: float = 200,
    block: bool = True,
):
    """Start the page's web server.

    Args:
        host / port: where to listen. root: the workspace root. auth: ``user:password`` (see :func:`check_bind`).
        max_upload_mb: the upload size limit, in MiB. block: wait until interrupted (False: return at once).

    Returns:
        The Gradio ``Blocks`` (running).

    Raises:
        TunesmithError: gradio is not installed, a refused address, a root that is not a folder.
    """
    import importlib.util

    login = check_bind(host, auth)
    if importlib.util.find_spec("gradio") is None:
        raise TunesmithError(
            "The web page needs gradio",
            [Problem("tunesmith ui", "gradio is not installed", "pip install 'tunesmith[ui]'")],
        )
    from tunesmith.use.ui.workspace import Workspace

    ws = Workspace(root)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a machine that may be offline
    # uploads arrive, and files offered for download are copied, under the workspace too (not the system's /tmp);
    # gradio reads this when it is imported
    os.environ.setdefault("GRADIO_TEMP_DIR", str(ws.state_dir / "tmp"))
    from tunesmith.use.ui.app import build_app, launch_options

    max_bytes = int(max_upload_mb * 2**20)
    demo = build_app(ws, max_upload_bytes=max_bytes)
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=login,
        prevent_thread_lock=not block,
        **launch_options(ws, max_bytes),
    )
    return demo
