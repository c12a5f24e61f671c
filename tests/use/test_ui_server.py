"""Serving the page safely: 127.0.0.1 by default; a non-local --host refuses to start without a user and password
(--auth or TUNESMITH_UI_AUTH); with gradio installed, the page builds, serves only files under the root, and asks
for the login when one is set."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import REPO
from tunesmith.errors import TunesmithError
from tunesmith.use.ui.server import AUTH_ENV, check_bind, is_local, parse_auth


def test_local_addresses():
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_local(host), host
    for host in ("0.0.0.0", "192.168.1.5", "::", "10.0.0.1"):
        assert not is_local(host), host


def test_the_default_host_is_loopback():
    import inspect

    from tunesmith.cli.ui import ui

    params = inspect.signature(ui).parameters
    assert params["host"].default.default == "127.0.0.1" and is_local(params["host"].default.default)
    assert params["auth"].default.default is None


def test_local_host_needs_no_login_and_a_non_local_one_refuses_without_it():
    assert check_bind("127.0.0.1", None, env={}) is None
    with pytest.raises(TunesmithError, match="non-local address without a password") as exc:
        check_bind("0.0.0.0", None, env={})
    assert AUTH_ENV in exc.value.problems[0].fix and "--auth" in exc.value.problems[0].fix
    assert check_bind("0.0.0.0", "me:s3:cret", env={}) == ("me", "s3:cret")
    assert check_bind("0.0.0.0", None, env={AUTH_ENV: "me:pw"}) == ("me", "pw")
    assert check_bind("127.0.0.1", None, env={AUTH_ENV: "me:pw"}) == ("me", "pw")  # a login is honoured locally too


@pytest.mark.parametrize("bad", ["nopassword", ":pw", "user:", ""])
def test_a_malformed_login_is_refused(bad):
    with pytest.raises(TunesmithError, match="Invalid --auth"):
        parse_auth(bad)


def test_the_cli_refuses_a_non_local_host_without_a_login(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != AUTH_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith", "ui", "--host", "0.0.0.0", "--root", str(tmp_path), "--port", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "non-local address without a password" in proc.stderr and "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, auth_cookie: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Cookie": auth_cookie} if auth_cookie else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", errors="replace")


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The page served in this process on a free 127.0.0.1 port, with a login; stopped after the test."""
    pytest.importorskip("gradio", reason="the ui extra is not installed (pip install 'tunesmith[ui]')")
    from tunesmith.use.ui.server import serve

    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.txt").write_text("inside")
    (tmp_path / "outside.txt").write_text("outside")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")  # a symlink leading out
    monkeypatch.setenv(AUTH_ENV, "me:pw")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    port = _free_port()
    demo = serve(host="127.0.0.1", port=port, root=str(root), block=False)
    yield f"http://127.0.0.1:{port}", root, tmp_path
    demo.close()


def test_the_page_asks_for_the_login_and_serves_files_under_the_root_only(served):
    url, root, tmp = served
    status, body = _get(f"{url}/config")
    assert status in (401, 403) or "auth_required" in body or "login" in body.lower()
    form = urllib.parse.urlencode({"username": "me", "password": "wrong"}).encode()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(urllib.request.Request(f"{url}/login", data=form), timeout=30)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    good = urllib.parse.urlencode({"username": "me", "password": "pw"}).encode()
    assert opener.open(urllib.request.Request(f"{url}/login", data=good), timeout=30).status == 200
    config = json.loads(opener.open(f"{url}/config", timeout=30).read())
    assert "tunesmith" in json.dumps(config) and any("Train" in json.dumps(c) for c in config["components"]), (
        "the tabs are on the page"
    )
    inside = opener.open(f"{url}/gradio_api/file={root / 'inside.txt'}", timeout=30).read().decode()
    assert inside == "inside"
    for outside in (tmp / "outside.txt", root / ".." / "outside.txt", root / "link.txt"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            opener.open(f"{url}/gradio_api/file={outside}", timeout=30)
        assert exc.value.code in (403, 404)
