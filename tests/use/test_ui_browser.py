"""The web page in a real browser: `tunesmith ui` served on 127.0.0.1, driven by headless Chromium (Debian's chromium
and chromedriver, through selenium) against a tiny random Llama under the workspace root.

    make test-ui        # installs the ui extra, selenium and chromium, then runs this (pytest -m ui)

One test walks the decision order as a person would: loads a data file and sees the mask preview (and watches it
follow max_length), is refused a path outside the root, starts a 4-step SFT run and sees the plot update, sees the
run from a second page and closes it, stops the run (SIGTERM: a checkpoint) and resumes it to the end, runs the
baseline and eval and opens the report, chats one message side by side with the base model, merges and exports to
GGUF with the consistency checks, and lists the runs. A screenshot of each tab goes to test-artifacts/ui/. Every
wait is bounded; the server and browser are stopped at the end.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, build_tiny_llama, slow_steps_env

pytestmark = pytest.mark.ui
ARTIFACTS = Path(os.environ.get("TUNESMITH_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or ""


def _missing() -> str | None:
    import importlib.util

    for module in ("gradio", "selenium"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (make test-ui installs it)"
    if not (Path(CHROMIUM).is_file() and CHROMEDRIVER):
        return "Debian's chromium and chromium-driver are not installed (make test-ui installs them)"
    return None


@pytest.fixture(scope="module")
def needs_browser():
    """Skip (fail under ``make test-ui``, which sets TUNESMITH_REQUIRE_UI) when gradio, selenium or chromium is
    missing."""
    if (why := _missing()) is not None:
        if os.environ.get("TUNESMITH_REQUIRE_UI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def workspace(needs_browser, smol_tokenizer, tmp_path_factory):
    """A workspace root with a tiny Llama, an SFT data file (one invalid record), a 4-step config, and files outside
    the root (one reached through a symlink inside it)."""
    base = tmp_path_factory.mktemp("ui")
    root = base / "ws"
    build_tiny_llama(smol_tokenizer, root / "models" / "tiny", hidden=64, seed=0)
    rng = random.Random(0)
    words = "alpha beta gamma delta red blue green one two three cat dog tea cup sun moon river stone".split()
    (root / "data").mkdir()
    with open(root / "data" / "train.jsonl", "w") as f:
        for _ in range(400):
            q, a = (" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) for _ in range(2))
            f.write(
                json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            )
        f.write('{"messages": [{"role": "user", "content": "no answer"}]}\n')  # line 401: invalid
    (base / "outside").mkdir()
    (base / "outside" / "secret.jsonl").write_text((root / "data" / "train.jsonl").read_text())
    (root / "data" / "link.jsonl").symlink_to(base / "outside" / "secret.jsonl")
    (root / "configs").mkdir()
    # each step trains 32 packed rows of 512 tokens on one thread: slow enough (seconds) for Stop to land mid-run
    (root / "configs" / "tiny-sft.yaml").write_text("""model: {name: models/tiny, dtype: float32}
data: {path: ../data/train.jsonl, eval_fraction: 0.1, max_eval_examples: 8, skip_invalid: true}
lora: {r: 4, lora_alpha: 8}
train: {output_dir: runs/tiny-sft, max_steps: 4, save_steps: 1, logging_steps: 1, eval_steps: 2,
        per_device_train_batch_size: 32, max_length: 512, learning_rate: 0.01, num_threads: 1}
eval: {num_samples: 1, max_new_tokens: 8}
""")
    return root


@pytest.fixture(scope="module")
def server(workspace):
    """``tunesmith ui --root WS`` on a free 127.0.0.1 port, in its own process; stopped after the module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO / "src"), GRADIO_ANALYTICS_ENABLED="False")
    # the training processes the page starts inherit this: 3 s more per optimizer step, so Stop lands mid-run (the page
    # polls the run every few seconds, so it sees step 1 a step or two late)
    env = slow_steps_env(env, workspace.parent / "slow", seconds=3.0)
    env.pop("TUNESMITH_UI_AUTH", None)
    log = open(workspace.parent / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith", "ui", "--root", str(workspace), "--port", str(port)],
        cwd=workspace,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while True:
        assert proc.poll() is None, (workspace.parent / "server.log").read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            assert time.time() < deadline, "the page did not come up in 240 s"
            time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser(needs_browser):
    """Headless Chromium (no network chatter, a fresh profile) driven by chromedriver; quit after the module."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1800",
    ):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


class Page:
    """Small helpers over the selenium driver: find by element id, type, click, read, wait (always bounded)."""

    def __init__(self, driver):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.d, self.By, self.Keys = driver, By, Keys
        ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def tab(self, name: str) -> None:
        for b in self.d.find_elements(self.By.CSS_SELECTOR, "button[role=tab]"):
            if b.text.strip() == name:
                b.click()
                time.sleep(1)
                return
        raise AssertionError(f"no tab {name!r}")

    def type(self, eid: str, text: str, *, enter: bool = False) -> None:
        el = self.d.find_element(self.By.CSS_SELECTOR, f"#{eid} input, #{eid} textarea")
        el.click()
        el.send_keys(self.Keys.CONTROL, "a")
        el.send_keys(self.Keys.DELETE)
        el.send_keys(text)
        if enter:
            el.send_keys(self.Keys.ENTER)

    def pick(self, eid: str, value: str) -> None:
        """Choose ``value`` among a dropdown's options (the option itself is clicked, not the first match)."""
        self.d.find_element(self.By.CSS_SELECTOR, f"#{eid} input").click()
        option = self.wait(
            lambda: self.d.find_element(self.By.CSS_SELECTOR, f"li[role=option][aria-label='{value}']"), 30, value
        )
        option.click()

    def click(self, eid: str) -> None:
        self.d.find_element(self.By.ID, eid).click()

    def text(self, eid: str) -> str:
        return self.d.find_element(self.By.ID, eid).text

    def html(self, eid: str) -> str:
        return self.d.find_element(self.By.ID, eid).get_attribute("innerHTML")

    def wait(self, cond, timeout: float, what: str):
        """Poll ``cond()`` until it returns a truthy value (then return it); fail after ``timeout`` s."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = cond()
                if last:
                    return last
            except Exception as exc:  # an element being re-rendered: try again
                last = exc
            time.sleep(0.5)
        self.shot(f"failed-{re.sub(r'[^a-z0-9]+', '-', what.lower())[:40]}")
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")

    def shot(self, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path


def _step(status: str) -> int:
    m = re.search(r"step (\d+)/", status)
    return int(m.group(1)) if m else -1


def test_the_whole_decision_order_in_a_browser(workspace, server, browser):
    page = Page(browser)
    browser.get(server)
    page.wait(lambda: browser.find_elements(page.By.CSS_SELECTOR, "button[role=tab]"), 120, "the page")
    run = workspace / "runs" / "tiny-sft"

    # Data: a file under the root, its check and mask preview; the mask follows max_length
    page.type("data-model", "models/tiny")
    page.type("data-path", "data/train.jsonl")
    page.click("data-check")
    page.wait(lambda: '<mark class="trained">' in page.html("data-mask"), 180, "the mask preview")
    assert "train.jsonl:401" in page.text("data-problems") and "no assistant turn" in page.text("data-problems")
    assert "rows read / kept / skipped" in page.text("data-table")
    page.type("data-max-length", "56", enter=True)
    page.wait(lambda: "max_length=56" in page.text("data-mask"), 120, "the mask at max_length 56")
    assert "longer than max_length" in page.text("data-table")
    page.shot("1-data")
    # a path outside the root, and a symlink leading out, are refused
    for outside in ("../outside/secret.jsonl", "data/link.jsonl"):
        page.type("data-path", outside)
        page.click("data-check")
        page.wait(lambda: "outside the workspace root" in page.text("data-message"), 120, f"refusing {outside}")
    assert "symlink" in page.text("data-message")
    page.shot("2-data-path-refused")
    # an upload is copied into <root>/uploads and becomes the data file
    upload = workspace.parent / "my chats.jsonl"
    upload.write_text((workspace / "data" / "train.jsonl").read_text().splitlines()[0] + "\n")
    browser.find_element(page.By.CSS_SELECTOR, "#data-upload input[type=file]").send_keys(str(upload))
    page.wait(lambda: "uploads/my_chats.jsonl" in page.text("data-message"), 120, "the upload")
    assert (workspace / "uploads" / "my_chats.jsonl").read_text() == upload.read_text()

    # Train: the form from a YAML, a 4-step SFT run in its own process, the live plot
    page.tab("Train")
    page.type("train-config", "configs/tiny-sft.yaml")
    page.click("train-load")
    page.wait(lambda: "loaded" in page.text("train-message"), 60, "the config in the form")
    page.click("train-start")
    page.wait(lambda: "started" in page.text("train-message"), 60, "the run to start")
    assert "tunesmith sft" in page.text("train-message") and "model:" in page.text("train-yaml")
    page.wait(lambda: "running" in page.text("train-status"), 240, "the run to hold its folder")

    # a second page sees the run already going; closing it leaves the run running
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(server)
    page.wait(lambda: browser.find_elements(page.By.CSS_SELECTOR, "button[role=tab]"), 120, "the second page")
    page.tab("Runs")
    page.wait(lambda: re.search(r"runs/tiny-sft\s+sft\s+running", page.text("runs-table")), 60, "the run on page 2")
    page.shot("3-runs-second-page")
    browser.close()
    browser.switch_to.window(first)

    page.wait(lambda: _step(page.text("train-status")) >= 1, 300, "the first logged step")
    page.wait(lambda: "line mark" in page.html("train-plot"), 30, "the loss plot")
    page.shot("4-train-running")
    assert "running" in page.text("train-status"), "the run ended before Stop could be pressed"
    page.click("train-stop")
    page.wait(lambda: "SIGTERM" in page.text("train-message"), 30, "the stop message")
    page.wait(lambda: "interrupted: resumable" in page.text("train-status"), 300, "the stopped run")
    stopped_at = _step(page.text("train-status"))
    assert 1 <= stopped_at <= 4 and not (run / "metrics.json").exists()
    page.click("train-resume")
    page.wait(lambda: "resuming" in page.text("train-message"), 30, "the resume message")
    page.wait(lambda: "complete" in page.text("train-status"), 400, "the resumed run to complete")
    page.wait(lambda: page.html("train-plot").count("line mark") >= 2, 30, "loss and eval_loss lines")
    assert 'stroke="#1f77b4"' in page.html("train-plot") and 'stroke="#d62728"' in page.html("train-plot")
    page.shot("5-train-complete")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["resumed_from"]
    assert json.loads((run / "manifest.json").read_text())["resumes"]

    # Decide: baseline and eval in their own processes, then the report (the same report.html as the CLI)
    page.tab("Decide")
    page.wait(lambda: browser.find_element(page.By.CSS_SELECTOR, "#decide-run input").get_attribute("value"), 30,
              "the run picked for Decide")  # fmt: skip
    page.click("decide-baseline")
    page.wait(lambda: "started" in page.text("decide-message"), 30, "the baseline to start")
    page.click("decide-eval")
    page.wait(lambda: "tunesmith eval" in page.text("decide-message"), 30, "the eval to start")
    page.wait(lambda: "finished" in page.text("decide-baseline-job"), 400, "the baseline")
    page.wait(lambda: "finished" in page.text("decide-eval-job"), 400, "the eval")
    page.click("decide-report")
    page.wait(lambda: "Verdict" in page.text("decide-summary"), 120, "the decision report")
    assert "eval_loss" in page.text("decide-summary") and "<iframe" in page.html("decide-report-page")
    assert (workspace / "runs" / "tiny-sft-eval" / "report.html").is_file()
    page.shot("6-decide")

    # Chat: one message, streamed, to the fine-tuned model and its base side by side
    page.tab("Chat")
    page.type("chat-system", "You answer in one word.")
    page.type("chat-message", "hello there")
    page.click("chat-send")
    page.wait(lambda: "answered by" in page.text("chat-note"), 300, "the chat replies")
    for side in ("chat-tuned", "chat-base"):  # the user's turn and a reply (a random model's may decode to "")
        html = page.html(side)
        assert "hello there" in page.text(side) and html.count('data-testid="user"') == 1, side
        assert html.count('data-testid="bot"') == 1, side
    page.shot("7-chat")
    page.click("chat-reset")
    page.wait(lambda: "history cleared" in page.text("chat-note"), 30, "the reset")
    assert "hello there" not in page.text("chat-tuned") and "hello there" not in page.text("chat-base")

    # Export: merge, then GGUF with the consistency report check by check (no stop check: the model is random)
    page.tab("Export")
    browser.find_element(page.By.XPATH, "//label[contains(., 'does it stop')]").click()
    page.click("export-merge")
    page.wait(lambda: "finished" in page.text("export-merge-job"), 400, "the merge")
    page.click("export-gguf")
    page.wait(lambda: "finished" in page.text("export-gguf-job"), 400, "the GGUF export")
    page.wait(lambda: "ids_gguf" in page.text("export-checks"), 60, "the consistency checks")
    assert "FAIL" not in page.text("export-checks")
    page.shot("8-export")

    # Runs: every run folder with its status; a run's plots and files
    page.tab("Runs")
    page.click("runs-refresh")
    page.wait(lambda: re.search(r"runs/tiny-sft\s+sft\s+complete", page.text("runs-table")), 60, "the runs table")
    assert "runs/tiny-sft-eval" in page.text("runs-table") and "runs/tiny-sft-baseline" in page.text("runs-table")
    page.pick("runs-pick", "runs/tiny-sft")
    page.wait(lambda: 'aria-label="loss_curve.png"' in page.html("runs-files"), 60, "the run's files")
    page.wait(lambda: "<img" in page.html("runs-plots"), 60, "the run's plots")
    page.shot("9-runs")
