"""The live dashboard page (`/__headcount/`) in a real Chromium, against every host.

Playwright drives the system Chromium (see browser.py); users log in and out through the gateway
with `requests` (or through the demo app's own login page in the browser). Screenshots go to
e2e/artifacts/dashboard-<host>-*.png; every test also leaves `last.png` in its artifact folder.
How long the page took to show each login and logout is printed and kept in
e2e/artifacts/dashboard-<host>-latencies.json (a figure, not a limit: timing belongs in benchmarks).
"""

from __future__ import annotations

import json
import time

import requests

import browser as bx
from browser import ARTIFACTS, PAGE_PATH, chromium, expect, headline, open_page  # noqa: F401 (fixtures)
from helpers import (ADMIN_TOKEN, PLUGIN_CONFIG, REVOKED, TIMEOUT, bearer, events_of, login, revoke, session_of,
                     stats, summary, ua, wait_stats)
LIVE_WAIT = 10.0  # seconds a login/logout may take to show before the test gives up
CONFIG = dict(PLUGIN_CONFIG, flush_interval_ms=200, sweep_interval_seconds=1)
USERNAMES = ["admin_user", "teacher1", "student1", "student2", "student3"]


def use_token(page, token=ADMIN_TOKEN):
    bx.use_token(page, token)


def row_usernames(page) -> list[str]:
    return page.locator("#sessions tbody [data-col=username]").all_text_contents()


def assert_no_data(page):
    html = page.content()
    for name in USERNAMES:
        assert name not in html, f"{name} in the DOM of the login-needed view"
    assert page.locator("#sessions tbody tr").count() == 0
    assert page.locator("#events li").count() == 0
    assert page.locator("[data-action=signout]").count() == 0
    assert bx.norm(page.text_content("#headline") or "") == ""
    assert page.locator("#data").is_hidden()


def test_without_credentials_the_page_asks_for_a_login_and_shows_no_data(start_gateway, open_page):
    gw = start_gateway(CONFIG)
    for user in ["admin_user", "student1"]:
        login(gw.url, user, user_agent=ua(user))
    page = open_page(gw)
    e = expect()
    e(page.get_by_role("heading", name="Login needed")).to_be_visible()
    e(page.get_by_test_id("status")).to_have_text("Login needed")
    e(page.get_by_label("Admin token")).to_have_attribute("type", "password")
    bx.wait_polls(page)  # a poll later: still nothing
    assert_no_data(page)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{gw.kind}-login-needed.png"), full_page=True)

    # A wrong token: "not allowed", still the login-needed view, the token not kept.
    use_token(page, "wrong-token-1234")
    e(page.get_by_test_id("auth-message")).to_contain_text("Not allowed")
    e(page.get_by_role("heading", name="Login needed")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('headcount.token')") is None
    e(page.get_by_role("button", name="Forget token")).to_be_hidden()
    assert_no_data(page)
    for url, _auth in page.requests_seen:
        assert "wrong-token" not in url and ADMIN_TOKEN not in url, url


def test_token_form_then_logins_and_logouts_show_live(start_gateway, open_page):
    gw = start_gateway(CONFIG)
    page = open_page(gw)
    e = expect()
    e(page.get_by_role("heading", name="Login needed")).to_be_visible()
    before_token = len(page.requests_seen)
    use_token(page)
    e(page.get_by_test_id("headline")).to_have_text(headline(0), timeout=8000)
    e(page.get_by_test_id("status")).to_have_text("Live")
    # The page names the app it counts (Envoy: the plugin's `name`; the Worker: `default`).
    app = {"envoy": "headcount", "fleet": "headcount", "worker": "default"}[gw.kind]
    e(page.get_by_test_id("app")).to_have_text(f"· {app}")
    assert page.title() == f"Headcount · {app}"
    e(page.get_by_role("button", name="Forget token")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('headcount.token')") == ADMIN_TOKEN
    e(page.locator("#sessions tbody")).to_have_text("Nobody is active right now.")

    sessions: dict[str, requests.Session] = {}
    active: dict[str, str] = {}  # username -> role
    latencies = []

    def check(what: str, t0: float):
        deadline = t0 + LIVE_WAIT
        by = lambda r: [u for u, role in active.items() if role == r]  # noqa: E731
        want = headline(len(active), by("admin"), by("student"), by("teacher"))
        shown_at = bx.wait_text(page, "#headline", want, deadline)  # polls every 25 ms: the latency
        latencies.append((what, round(shown_at - t0, 3)))
        remaining = max(1, int((deadline - time.monotonic()) * 1000))
        e(page.get_by_test_id("headline")).to_have_text(want, timeout=remaining)
        e(page.get_by_test_id("active-users")).to_have_text(str(len(active)), timeout=remaining)
        for role in ["admin", "student", "teacher"]:
            e(page.get_by_test_id(f"role-count-{role}")).to_have_text(str(len(by(role))), timeout=remaining)
        rows = page.locator("#sessions tbody [data-col=username]")
        if active:
            e(rows).to_have_count(len(active), timeout=remaining)
            assert sorted(row_usernames(page)) == sorted(active), what

    for user in ["admin_user", "student1", "student2", "teacher1"]:
        s = login(gw.url, user, user_agent=ua(f"live-{user}"))
        t0 = time.monotonic()
        sessions[user] = s
        active[user] = {"admin_user": "admin", "teacher1": "teacher"}.get(user, "student")
        check(f"login {user}", t0)
        e(page.locator("#events li").first).to_contain_text(f"Login {user}")

    e(page.get_by_test_id("headline")).to_have_text(
        "Active Users: 4 | Admin: 1 (admin_user) | Students: 2 (student1, student2) | Teachers: 1 (teacher1)")
    e(page.get_by_test_id("active-sessions")).to_have_text("4")
    e(page.locator("#chart polyline")).to_have_count(1)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{gw.kind}-desktop.png"), full_page=True)

    for user in ["student1", "teacher1"]:
        r = sessions[user].post(gw.url + "/api/v1/auth/logout", timeout=TIMEOUT)
        t0 = time.monotonic()
        assert r.status_code == 200
        del active[user]
        check(f"logout {user}", t0)
        e(page.locator("#events li").first).to_contain_text(f"Logout {user}")

    e(page.get_by_test_id("headline")).to_have_text(
        "Active Users: 2 | Admin: 1 (admin_user) | Students: 1 (student2) | Teachers: 0")
    kinds = [k for k in page.locator("#events li").evaluate_all("els => els.map(e => e.dataset.kind)")]
    assert kinds == ["logout", "logout", "login", "login", "login", "login"], kinds
    # Traffic figures: the six gateway requests above were counted.
    e(page.get_by_test_id("traffic-today")).not_to_have_text("0")
    title = page.text_content("#chart title") or ""
    assert "peak" in title and "now" in title, title

    (ARTIFACTS / f"dashboard-{gw.kind}-latencies.json").write_text(json.dumps(latencies, indent=1) + "\n")
    print(f"page update latencies on {gw.kind} (s):", latencies)

    # The token travels only as a bearer header, never in a URL.
    for url, _auth in page.requests_seen:
        assert ADMIN_TOKEN not in url, url
    data_requests = [(u, a) for u, a in page.requests_seen[before_token:] if "/__headcount/" in u]
    assert len(data_requests) > 10, page.requests_seen
    for url, auth in data_requests:
        assert auth == f"Bearer {ADMIN_TOKEN}", (url, auth)

    # Forget the token: back to the login-needed view, nothing left on the page.
    page.get_by_role("button", name="Forget token").click()
    e(page.get_by_role("heading", name="Login needed")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('headcount.token')") is None
    assert_no_data(page)


def browser_login(page, username: str):
    """Log in through the demo app's own page (the form posts JSON, then goes to /dashboard)."""
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("password")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard")
    expect()(page.locator("body")).to_contain_text(f"Logged in as {username}")


def test_admin_cookie_sees_data_without_a_token_student_cookie_does_not(start_gateway, open_page):
    gw = start_gateway(CONFIG)
    e = expect()
    admin = open_page(gw, goto=False)
    browser_login(admin, "admin_user")
    admin.goto(PAGE_PATH)
    e(admin.get_by_test_id("headline")).to_have_text(headline(1, admin=["admin_user"]))
    e(admin.get_by_test_id("status")).to_have_text("Live")
    e(admin.get_by_role("heading", name="Login needed")).to_be_hidden()
    e(admin.get_by_role("button", name="Forget token")).to_be_hidden()
    device = admin.locator("#sessions tbody [data-col=device]").first
    e(device).to_contain_text("Headless Chrome")  # the device field of the browser's own session

    student = open_page(gw, goto=False)
    browser_login(student, "student1")
    t0 = time.monotonic()
    student.goto(PAGE_PATH)
    e(student.get_by_role("heading", name="Login needed")).to_be_visible()
    e(student.get_by_test_id("auth-message")).to_contain_text("not as an administrator")
    bx.wait_polls(student)
    assert_no_data(student)
    # Meanwhile the admin's page has picked up the student.
    bx.wait_text(admin, "#headline", headline(2, admin=["admin_user"], students=["student1"]),
                 t0 + LIVE_WAIT)

    # The admin logs out of the app: the page drops its data and asks for a login.
    status = admin.evaluate("fetch('/api/v1/auth/logout', {method: 'POST'}).then(r => r.status)")
    assert status == 200
    e(admin.get_by_role("heading", name="Login needed")).to_be_visible(timeout=3000)
    assert_no_data(admin)


def test_stale_then_connection_lost_when_the_gateway_stops(start_gateway, open_page):
    gw = start_gateway(CONFIG)
    login(gw.url, "student3", user_agent=ua("lost"))
    page = open_page(gw)
    e = expect()
    use_token(page)
    e(page.get_by_test_id("headline")).to_have_text(headline(1, students=["student3"]))
    e(page.get_by_test_id("status")).to_have_text("Live")

    # Answers stop coming (requests hang): "Stale" after 5 s without an update.
    page.route("**/__headcount/stats*", lambda route: None)
    t0 = time.monotonic()
    e(page.get_by_test_id("status")).to_contain_text("Stale — last update", timeout=8000)
    assert time.monotonic() - t0 >= 3.5
    e(page.get_by_test_id("status")).to_have_attribute("data-state", "stale")
    e(page.get_by_test_id("headline")).to_have_text(headline(1, students=["student3"]))  # last data kept
    e(page.get_by_test_id("stale-note")).to_contain_text("Not updating")
    page.unroute("**/__headcount/stats*")
    e(page.get_by_test_id("status")).to_have_text("Live", timeout=12_000)
    e(page.get_by_test_id("stale-note")).to_be_hidden()

    # The gateway stops: "Connection lost — retrying" on the next failed poll.
    gw.stop()
    t0 = time.monotonic()
    e(page.get_by_test_id("status")).to_contain_text("Connection lost", timeout=10_000)
    print(f"connection lost shown after {time.monotonic() - t0:.2f}s")
    e(page.get_by_test_id("status")).to_contain_text("retrying")
    e(page.get_by_test_id("status")).to_have_attribute("data-state", "lost")
    e(page.get_by_test_id("stale-note")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{gw.kind}-connection-lost.png"), full_page=True)


def test_phone_viewport_has_no_horizontal_overflow(start_gateway, open_page):
    gw = start_gateway(CONFIG)
    for user in ["admin_user", "student1", "student2", "student3", "teacher1"]:
        login(gw.url, user, user_agent=ua(f"phone-{user}"))
    page = open_page(gw, viewport=bx.PHONE)
    e = expect()
    e(page.get_by_role("heading", name="Login needed")).to_be_visible()
    widths = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], f"login view overflows: scrollWidth {widths[0]} > innerWidth {widths[1]}"
    use_token(page)
    e(page.get_by_test_id("active-users")).to_have_text("5")
    e(page.locator("#sessions tbody tr")).to_have_count(5)
    e(page.locator("#chart polyline")).to_have_count(1)
    e(page.get_by_test_id("status")).to_have_text("Live")
    widths = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], f"page overflows: scrollWidth {widths[0]} > innerWidth {widths[1]}"
    # The headline, status and every section fit the viewport.
    for sel in ["#headline", "#status", "#traffic", "#chart", "#events"]:
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= widths[1] + 0.5, (sel, box)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{gw.kind}-phone.png"), full_page=True)


def test_sorting_by_a_column_header(start_gateway, open_page):
    gw = start_gateway(CONFIG)
    # Logged in in this order, so "most recently active first" is not alphabetical.
    for user in ["teacher1", "admin_user", "student2", "student1"]:
        login(gw.url, user, user_agent=ua(f"sort-{user}"))
        time.sleep(0.02)
    page = open_page(gw)
    e = expect()
    use_token(page)
    rows = page.locator("#sessions tbody [data-col=username]")
    e(rows).to_have_text(["student1", "student2", "admin_user", "teacher1"])
    header = lambda name: page.locator("#sessions thead th", has_text=name)  # noqa: E731
    e(header("Last activity")).to_have_attribute("aria-sort", "descending")

    header("Username").get_by_role("button").click()
    e(rows).to_have_text(["admin_user", "student1", "student2", "teacher1"])
    e(header("Username")).to_have_attribute("aria-sort", "ascending")
    assert header("Last activity").get_attribute("aria-sort") is None
    bx.wait_polls(page, 2)  # a refresh later, the order is kept
    e(rows).to_have_text(["admin_user", "student1", "student2", "teacher1"])

    header("Username").get_by_role("button").click()
    e(rows).to_have_text(["teacher1", "student2", "student1", "admin_user"])
    e(header("Username")).to_have_attribute("aria-sort", "descending")

    header("Role").get_by_role("button").press("Enter")  # keyboard works too
    e(page.locator("#sessions tbody [data-col=role]")).to_have_text(["admin", "student", "student", "teacher"])
    e(header("Role")).to_have_attribute("aria-sort", "ascending")
    assert header("Username").get_attribute("aria-sort") is None
    assert page.locator("#sessions thead th[aria-sort]").count() == 1


def test_an_admin_session_opens_the_page_and_a_phone_viewport_fits(start_gateway, open_page):
    gw = start_gateway(CONFIG)
    admin = login(gw.url, "admin_user", user_agent=ua("phone-admin"))
    for user in ["student2", "student3"]:
        login(gw.url, user, user_agent=ua(f"phone-{user}"))
    page = open_page(gw, viewport=bx.PHONE, goto=False)
    page.context.add_cookies([{"name": "session", "value": admin.cookies["session"], "url": gw.url}])
    page.goto(PAGE_PATH)
    e = expect()
    e(page.get_by_test_id("headline")).to_have_text(
        headline(3, admin=["admin_user"], students=["student2", "student3"]), timeout=8000)
    e(page.get_by_role("heading", name="Login needed")).to_be_hidden()
    widths = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], f"page overflows: scrollWidth {widths[0]} > innerWidth {widths[1]}"


# Records Content-Security-Policy violations (the page's policy allows no inline handler or style).
CSP_WATCH = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
             "(e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


def session_row(page, username: str):
    return page.locator("#sessions tbody tr", has=page.locator("[data-col=username]", has_text=username))


def no_revoke_sent(page) -> None:
    sent = [url for url, _auth in page.requests_seen if url.endswith("/revoke")]
    assert not sent, sent


def test_an_admin_signs_a_session_out_from_the_dashboard_after_confirming(start_gateway, open_page):
    """The admin (by session cookie) sees a Sign out button on each row; cancelling the confirmation
    changes nothing, confirming ends the session (refused at the edge with enforce_revocation), and
    the event feed names the admin who did it."""
    gw = start_gateway(dict(CONFIG, enforce_revocation=True))
    base = gw.url
    admin = login(base, "admin_user", user_agent=ua("signout-admin"))
    student = login(base, "student1", user_agent=ua("signout-student"))
    page = open_page(gw, goto=False)
    page.add_init_script(CSP_WATCH)
    page.context.add_cookies([{"name": "session", "value": admin.cookies["session"], "url": base}])
    page.goto(PAGE_PATH)
    e = expect()
    e(page.get_by_test_id("headline")).to_have_text(headline(2, admin=["admin_user"], students=["student1"]))
    row = session_row(page, "student1")
    button = row.get_by_role("button", name="Sign out")
    e(button).to_be_visible()
    e(session_row(page, "admin_user").get_by_role("button", name="Sign out")).to_be_visible()
    device = row.locator("[data-col=device]").text_content()
    sid = row.get_attribute("data-session") or ""
    dialog = page.get_by_test_id("confirm-signout")

    # Asked first, naming the user and the device; Cancel (and Escape) send nothing.
    button.click()
    e(dialog).to_be_visible()
    e(dialog.get_by_test_id("confirm-user")).to_have_text("student1")
    e(dialog.get_by_test_id("confirm-device")).to_have_text(device)
    e(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    dialog.get_by_role("button", name="Cancel").click()
    e(dialog).to_be_hidden()
    e(button).to_be_focused()  # back where the keyboard was, though the table is redrawn
    button.click()
    e(dialog).to_be_visible()
    page.keyboard.press("Escape")
    e(dialog).to_be_hidden()
    bx.wait_polls(page, 2)  # two refreshes later: still listed, nothing was sent
    no_revoke_sent(page)
    e(row).to_have_count(1)
    assert sorted(s["username"] for s in stats(base)["sessions"]) == ["admin_user", "student1"]
    r = student.get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", r.status_code

    # Confirmed: one POST, on the admin's cookie with the same-origin marker, and the session ends.
    button.click()
    e(dialog).to_be_visible()
    with page.expect_request(lambda rq: rq.url.endswith("/revoke")) as sent:
        dialog.get_by_role("button", name="Sign out").click()
    rq = sent.value
    assert rq.method == "POST" and rq.url == f"{base}/__headcount/sessions/{sid}/revoke", rq.url
    assert rq.headers.get("x-headcount-request") == "1" and "authorization" not in rq.headers, rq.headers
    e(page.get_by_test_id("signout-message")).to_have_text(f"Signed out student1 ({device}).")
    e(page.locator("#sessions tbody [data-col=username]")).to_have_text(["admin_user"])
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert [s["username"] for s in snap["sessions"]] == ["admin_user"], summary(snap)
    gw.revocation_reached_every_node()
    r = student.get(base + "/api/v1/me", timeout=TIMEOUT)
    assert r.status_code == 401 and r.json() == REVOKED and "x-demo-app" not in r.headers

    # Who did it: the admin, by name and session, in the events route and on the page.
    admin_sid = session_of(base, "admin_user")["session_id"]
    revoked = [x for x in events_of(base)["events"] if x["kind"] == "revocation"]
    assert [(x["username"], x["session_id"]) for x in revoked] == [("student1", sid)], revoked
    assert revoked[0]["by"] == {"via": "admin_session", "username": "admin_user", "session_id": admin_sid}
    first = page.locator("#events li").first
    e(first).to_have_attribute("data-kind", "revocation")
    e(first).to_contain_text("Signed out student1 (student) by admin_user")
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{gw.kind}-signed-out.png"), full_page=True)
    assert page.evaluate("window.__csp") == [], "Content-Security-Policy violations"


def test_a_sign_out_with_the_admin_token_is_recorded_as_the_tokens_and_a_refusal_is_shown(start_gateway, open_page):
    gw = start_gateway(CONFIG)
    base = gw.url
    for user in ["student2", "student3"]:
        login(base, user, user_agent=ua(f"token-{user}"))
    page = open_page(gw)
    page.add_init_script(CSP_WATCH)
    page.reload()
    e = expect()
    use_token(page)
    e(page.get_by_test_id("headline")).to_have_text(headline(2, students=["student2", "student3"]))
    dialog = page.get_by_test_id("confirm-signout")

    session_row(page, "student2").get_by_role("button", name="Sign out").click()
    with page.expect_request(lambda rq: rq.url.endswith("/revoke")) as sent:
        dialog.get_by_role("button", name="Sign out").click()
    assert sent.value.headers.get("authorization") == f"Bearer {ADMIN_TOKEN}", sent.value.headers
    e(page.get_by_test_id("signout-message")).to_contain_text("Signed out student2")
    e(page.locator("#sessions tbody [data-col=username]")).to_have_text(["student3"])
    revoked = [x for x in events_of(base)["events"] if x["kind"] == "revocation"]
    assert [(x["username"], x["by"]) for x in revoked] == [("student2", {"via": "admin_token"})], revoked
    e(page.locator("#events li").first).to_contain_text("Signed out student2 (student) by the admin token")

    # Refused: the session ended while the question was open (revoked elsewhere): the page says so.
    session_row(page, "student3").get_by_role("button", name="Sign out").click()
    e(dialog).to_be_visible()
    sid = session_of(base, "student3")["session_id"]
    assert revoke(base, sid, headers=bearer()).status_code == 200
    dialog.get_by_role("button", name="Sign out").click()
    message = page.get_by_test_id("signout-message")
    e(message).to_contain_text("Not signed out: student3")
    e(message).to_contain_text("no live session")
    e(message).to_have_attribute("data-state", "error")
    e(page.locator("#sessions tbody")).to_have_text("Nobody is active right now.")
    assert page.evaluate("window.__csp") == [], "Content-Security-Policy violations"
