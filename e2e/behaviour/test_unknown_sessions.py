"""Sessions Headcount never saw begin (``whoami.begin_unknown``): users logged in to the app before
Headcount started, a "remember me" auto-login on an ordinary page; and a flood of forged cookies
that costs the app no more lookups than the budget allows. Against the real frameworks."""

from __future__ import annotations

import secrets
import time

import requests

from helpers import (PLUGIN_CONFIG, TIMEOUT, metric, metrics_of, summary, ua, wait_for, wait_for_metric,
                     wait_stats)
from app_logins import DJANGO_CONFIG, EXPRESS_CONFIG, WHOAMI, django_login, express_login, roles_of


def with_whoami(config: dict, **whoami) -> dict:
    route = dict(config["login_routes"][0], identity=["whoami", "request_body"])
    return dict(config, whoami=dict(WHOAMI, **whoami), login_routes=[route])


def lookups(base: str) -> dict[str, int]:
    text = metrics_of(base)
    return {o: metric(text, f'headcount_whoami_lookups_total{{outcome="{o}"}}')
            for o in ("begun", "nobody", "throttled")}


def test_users_logged_in_before_headcount_started_are_counted(start_gateway, django_app):
    """Alice logged in to Django directly, before Headcount was there. Her next request through the
    gateway carries a session cookie Headcount does not know: it asks the app, which names her, and
    her session begins, with her role; her requests count as authenticated."""
    alice = django_login(django_app.url, [("username", "alice"), ("password", "pw-alice")], "early")
    gw = start_gateway(with_whoami(DJANGO_CONFIG), app=django_app)
    base = gw.url
    assert alice.get(base + "/app/", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: roles_of(x) == {"alice": "admin"}, timeout=10)
    assert snap["active_users"] == 1 and snap["by_role"]["admin"] == 1, summary(snap)
    assert alice.get(base + "/app/", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] == 2)
    assert snap["traffic"]["anonymous_requests_today"] == 0, summary(snap)
    assert lookups(base) == {"begun": 1, "nobody": 0, "throttled": 0}


def test_a_request_waits_for_an_app_slow_to_name_its_session(start_gateway, express_app):
    """Carol logged in to Express before Headcount. The app takes a second to say who her cookie is
    (five flush intervals): her first request through the gateway waits for that answer and counts
    as hers, not as anonymous."""
    carol = express_login(express_app.url, "carol", visit_first=True)
    gw = start_gateway(with_whoami(EXPRESS_CONFIG, path="/late-me", timeout_ms=5000), app=express_app)
    base = gw.url
    assert carol.get(base + "/app", timeout=TIMEOUT).status_code == 200

    def settled(x: dict) -> bool:
        t = x["traffic"]
        return roles_of(x) == {"carol": "teacher"} and \
            t["authenticated_requests_today"] + t["anonymous_requests_today"] == 1

    snap = wait_stats(base, settled, timeout=15)
    assert snap["traffic"]["authenticated_requests_today"] == 1, summary(snap)
    assert lookups(base) == {"begun": 1, "nobody": 0, "throttled": 0}


def test_a_remember_me_auto_login_on_an_ordinary_page_is_counted(start_gateway, flask_app):
    """Flask-Login: bob logged in with "remember me" (at the app, before Headcount), then closed his
    browser (the session cookie is gone, `remember_token` stays). On an ordinary page Flask-Login
    logs him in again and sets a new session cookie; his next request begins his session."""
    config = dict(PLUGIN_CONFIG, whoami=WHOAMI,
                  login_routes=[{"method": "POST", "path": "/login", "success_location_prefix": "/page",
                                 "identity": ["whoami", "request_body"]}])
    s = requests.Session()
    s.headers["User-Agent"] = ua("flask-bob")
    r = s.post(flask_app.url + "/login", data={"username": "bob", "password": "pw-bob", "remember": "yes"},
               allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302 and s.cookies.get("remember_token"), r.headers
    gw = start_gateway(config, app=flask_app)
    base = gw.url
    s.cookies.clear(name="session", domain="127.0.0.1", path="/")
    assert s.cookies.get("session") is None and s.cookies.get("remember_token")
    r = s.get(base + "/page", timeout=TIMEOUT)
    assert r.status_code == 200 and "Hello bob" in r.text and s.cookies.get("session"), r.headers
    assert s.get(base + "/page", timeout=TIMEOUT).text == "<h1>Hello bob</h1>"
    snap = wait_stats(base, lambda x: roles_of(x) == {"bob": "student"}, timeout=10)
    assert snap["active_users"] == 1, summary(snap)


def test_a_flood_of_forged_cookies_stays_within_the_lookup_budget(start_gateway, express_app):
    """40 requests, each with a different forged session cookie, with `lookups_per_second` 2: every
    one is either asked about (the app names nobody) or throttled, the app gets at most 2 lookups a
    second, nobody is counted, and a forged value asked about once is not asked about again."""
    gw = start_gateway(with_whoami(EXPRESS_CONFIG, lookups_per_second=2, max_in_flight=2),
                       app=express_app)
    base = gw.url
    calls = lambda: requests.get(express_app.url + "/whoami-calls", timeout=TIMEOUT).json()["calls"]  # noqa: E731
    before = calls()
    t0 = time.monotonic()
    forged = [f"s:{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(20)}" for _ in range(40)]
    for value in forged:
        r = requests.get(base + "/", cookies={"connect.sid": value}, headers={"User-Agent": ua("forger")},
                         timeout=TIMEOUT)
        assert r.status_code == 200
    seen = wait_for(lambda: lookups(base), lambda x: x["nobody"] + x["throttled"] == 40, timeout=20)
    elapsed = time.monotonic() - t0
    assert seen["nobody"] + seen["throttled"] == 40 and seen["begun"] == 0, seen
    asked = calls() - before
    assert asked == seen["nobody"], (asked, seen)
    # The allowance is per node (a fleet's nodes each have their own).
    assert 1 <= asked <= 2 * gw.node_count * (int(elapsed) + 2), (asked, elapsed, seen)
    assert seen["throttled"] >= 1, seen
    snap = wait_stats(base, lambda x: x["traffic"]["anonymous_requests_today"] == 40)
    assert snap["active_sessions"] == 0, summary(snap)


def test_a_user_back_after_an_idle_expiry_the_app_still_honours_is_counted_again(start_gateway, express_app):
    """Headcount ends carol's session after idle_timeout_seconds (6 s here); the app keeps it. When
    she comes back, her cookie leads to no session: the app is asked, and her session begins again."""
    config = dict(with_whoami(EXPRESS_CONFIG), active_window_seconds=3, idle_timeout_seconds=6)
    gw = start_gateway(config, app=express_app)
    base = gw.url
    s = express_login(base, "carol", visit_first=True)
    wait_stats(base, lambda x: roles_of(x) == {"carol": "teacher"})
    # Her session expires (a sweep ends it: the expiry counter is the sentinel).
    text = wait_for_metric(base, "headcount_expiries_total", 1, timeout=20)
    assert metric(text, "headcount_expiries_total") == 1, text
    assert wait_stats(base, lambda x: x["active_users"] == 0)["active_users"] == 0
    assert s.get(base + "/app", timeout=TIMEOUT).status_code == 200  # the app still knows her
    snap = wait_stats(base, lambda x: roles_of(x) == {"carol": "teacher"}, timeout=10)
    assert snap["active_users"] == 1, summary(snap)
    assert lookups(base)["begun"] == 1
