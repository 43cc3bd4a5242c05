"""Playwright helpers for the dashboard browser tests: the system Chromium, never a download.

Chromium comes from the distribution (``apt-get install -y chromium`` gives /usr/bin/chromium);
``CHROMIUM_BIN`` points elsewhere. Missing Chromium or Playwright fails the tests, never skips them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))
INSTALL_HINT = "install it with: apt-get update && apt-get install -y chromium (or set CHROMIUM_BIN)"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Never let Playwright fetch a browser of its own.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright as sp
    except ImportError:
        pytest.fail("Playwright missing: .venv/bin/pip install -r envoy/requirements.txt", pytrace=False)
    return sp()


def launch(pw):
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium not found at {CHROMIUM}; {INSTALL_HINT}", pytrace=False)
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)


def norm(text: str) -> str:
    return " ".join(text.split())


def wait_text(page, selector: str, expected: str, deadline: float) -> float:
    """Wait (polling every 25 ms in the page) until the element's whitespace-normalised
    textContent equals ``expected``; returns the time.monotonic() when it did.

    Fails with the text actually shown when ``deadline`` (a time.monotonic() value) passes.
    """
    remaining_ms = max(1.0, (deadline - time.monotonic()) * 1000)
    try:
        page.wait_for_function(
            """([sel, want]) => {
                 const e = document.querySelector(sel);
                 return !!e && e.textContent.replace(/\\s+/g, " ").trim() === want;
               }""",
            arg=[selector, expected], polling=25, timeout=remaining_ms)
    except Exception as e:  # playwright TimeoutError: say what the page showed instead
        shown = page.evaluate("(s) => { const e = document.querySelector(s); return e ? e.textContent : null; }",
                              selector)
        raise AssertionError(f"{selector}: wanted {expected!r}, page shows {norm(shown or '')!r} "
                             f"(status pill: {norm(page.text_content('#status') or '')!r})") from e
    return time.monotonic()


PAGE_PATH = "/__headcount/"


def expect():
    from playwright.sync_api import expect as e
    return e


def headline(active: int, admin=(), students=(), teachers=()) -> str:
    """The dashboard's headline text for these active users."""
    def part(label, names):
        names = sorted(names)
        return f"{label}: {len(names)}" + (f" ({', '.join(names)})" if names else "")
    return " | ".join([f"Active Users: {active}", part("Admin", admin), part("Students", students),
                       part("Teachers", teachers)])


def use_token(page, token: str):
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Use token").click()


def wait_polls(page, n: int = 1, timeout_ms: float = 10_000) -> None:
    """Until the page has received ``n`` more answers of its stats route (polls it made), so that
    what the page shows after them is what it kept, not what it has not fetched yet."""
    for _ in range(n):
        with page.expect_response(lambda r: "/stats" in r.url, timeout=timeout_ms):
            pass


# Fixtures of the browser tests (import them into a test module to use them; the suite's
# conftest provides `_artifact_dir`).

@pytest.fixture(scope="module")
def chromium():
    with sync_playwright() as pw:
        b = launch(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def open_page(chromium, _artifact_dir):
    """Factory: open_page(server, viewport=DESKTOP, path=PAGE_PATH, goto=True) -> Page in a fresh
    context on ``server.url``. ``page.requests_seen`` lists (url, authorization) of its requests.

    Teardown saves last*.png in the test's artifact folder and fails on uncaught page errors.
    """
    contexts, errors = [], []

    def _open(server, viewport=DESKTOP, path=PAGE_PATH, goto=True):
        ctx = chromium.new_context(viewport=viewport, base_url=server.url)
        ctx.set_default_timeout(10_000)
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.requests_seen = []
        page.on("request", lambda r: page.requests_seen.append((r.url, r.headers.get("authorization"))))
        if goto:
            page.goto(path)
        return page

    yield _open
    for i, ctx in enumerate(contexts):
        for j, page in enumerate(ctx.pages):
            try:
                page.screenshot(path=str(_artifact_dir / f"last{i}{j or ''}.png"), full_page=True)
            except Exception:
                pass
        ctx.close()
    assert not errors, f"uncaught errors in the page: {errors}"
