"""The dashboard page served by the Worker (`/__headcount/`), in a real Chromium against workerd.

The page is the same one the Envoy filter serves (compiled into the core); these tests check it
works on this host's data routes: the token form, live updates within 2 s of logins and logouts,
the chart and event feed, an admin's own app session, and a phone-sized viewport. Screenshots go
to the test's artifact folder (workers/e2e/artifacts/<test>/).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import requests

from helpers import ADMIN_TOKEN, PLUGIN_CONFIG, TIMEOUT, login, ua

# The Playwright helpers (system Chromium, never a download) are shared with the Envoy suite.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "envoy" / "e2e"))
import browser as bx  # noqa: E402
from browser import PAGE_PATH, chromium, expect, headline, open_page  # noqa: E402,F401 (fixtures)
LIVE_BUDGET = 2.0  # seconds from a login/logout response to the page showing it


def use_token(page, token=ADMIN_TOKEN):
    bx.use_token(page, token)


def test_logins_and_logouts_show_within_two_seconds(start_worker, open_page, _artifact_dir):
    worker = start_worker(PLUGIN_CONFIG)
    page = open_page(worker)
    e = expect()
    e(page.get_by_role("heading", name="Login needed")).to_be_visible()
    assert "student1" not in page.content()
    use_token(page)
    e(page.get_by_test_id("headline")).to_have_text(headline(0), timeout=8000)
    e(page.get_by_test_id("status")).to_have_text("Live")

    active: dict[str, str] = {}
    sessions: dict[str, requests.Session] = {}
    latencies = []

    def check(what: str, t0: float):
        by = lambda r: [u for u, role in active.items() if role == r]  # noqa: E731
        want = headline(len(active), by("admin"), by("student"), by("teacher"))
        shown_at = bx.wait_text(page, "#headline", want, t0 + LIVE_BUDGET)
        latencies.append((what, round(shown_at - t0, 3)))

    for user in ["admin_user", "student1", "teacher1"]:
        sessions[user] = login(worker.url, user, user_agent=ua(f"live-{user}"))
        t0 = time.monotonic()
        active[user] = {"admin_user": "admin", "teacher1": "teacher"}.get(user, "student")
        check(f"login {user}", t0)
        e(page.locator("#events li").first).to_contain_text(f"Login {user}")
    e(page.locator("#sessions tbody [data-col=username]")).to_have_count(3)
    e(page.locator("#chart polyline")).to_have_count(1)
    page.screenshot(path=str(_artifact_dir / "dashboard-worker.png"), full_page=True)

    r = sessions["student1"].post(worker.url + "/api/v1/auth/logout", timeout=TIMEOUT)
    t0 = time.monotonic()
    assert r.status_code == 200
    del active["student1"]
    check("logout student1", t0)
    e(page.locator("#events li").first).to_contain_text("Logout student1")
    print("page update latencies (s):", latencies)
    assert all(lat <= LIVE_BUDGET for _w, lat in latencies), latencies


def test_an_admin_session_opens_the_page_and_a_phone_viewport_fits(start_worker, open_page):
    worker = start_worker(PLUGIN_CONFIG)
    admin = login(worker.url, "admin_user", user_agent=ua("phone-admin"))
    for user in ["student2", "student3"]:
        login(worker.url, user, user_agent=ua(f"phone-{user}"))
    page = open_page(worker, viewport=bx.PHONE, goto=False)
    page.context.add_cookies([{"name": "session", "value": admin.cookies["session"], "url": worker.url}])
    page.goto(PAGE_PATH)
    e = expect()
    e(page.get_by_test_id("headline")).to_have_text(
        headline(3, admin=["admin_user"], students=["student2", "student3"]), timeout=8000)
    e(page.get_by_role("heading", name="Login needed")).to_be_hidden()
    widths = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], f"page overflows: scrollWidth {widths[0]} > innerWidth {widths[1]}"
