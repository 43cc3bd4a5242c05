"""Logins as real apps do them, against the real frameworks (real_apps.py): a login that keeps the
session cookie the app set on the first visit (Express + express-session's defaults), a logout that
destroys the server-side session without clearing the cookie; typed names that the app reads one way
and a naive parser another (Django: the last of a repeated field, NFKC)."""

from __future__ import annotations

import http.client
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

import requests

from app_logins import (DJANGO_CONFIG, DRF_CONFIG, EXPRESS_CONFIG, WHOAMI, django_login, express_login,
                        roles_of, whoami)
from helpers import TIMEOUT, events_of, metric, metrics_of, summary, ua, wait_for_metric, wait_stats


def test_express_logins_that_keep_the_first_visit_cookie_are_counted(start_gateway, express_app):
    """One login after a first visit (no Set-Cookie on the login response), one direct: two users.
    Alice's logout destroys her server-side session and leaves her cookie: one user, and her next
    request (the app gives her a fresh, anonymous session) names nobody."""
    gw = start_gateway(EXPRESS_CONFIG, app=express_app)
    base = gw.url
    alice = express_login(base, "alice", visit_first=True)
    bob = express_login(base, "bob", visit_first=False)
    for s in (alice, bob):
        assert s.get(base + "/app", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda s: s["active_users"] == 2
                      and s["traffic"]["authenticated_requests_today"] == 4)
    assert sorted(x["username"] for x in snap["sessions"]) == ["alice", "bob"], summary(snap)
    # Each first visit and each login POST: alice's page before she logged in was anonymous.
    assert snap["traffic"]["anonymous_requests_today"] == 1, summary(snap)

    old = alice.cookies.get("connect.sid")
    r = alice.post(base + "/logout", allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302 and "set-cookie" not in r.headers, r.headers
    snap = wait_stats(base, lambda s: s["active_users"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["bob"], summary(snap)
    # Her old cookie now leads nowhere: the app answers as for anyone new.
    r = alice.get(base + "/app", allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302 and alice.cookies.get("connect.sid") != old
    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] == 2)
    assert [x["username"] for x in snap["sessions"]] == ["bob"], summary(snap)


def test_a_login_counts_when_its_headers_reach_the_browser(start_gateway, express_app):
    """A form login's redirect whose body the app has not sent yet: a browser moves on at the
    headers, so its session is counted by then. The route trusts the response body too (as by
    default), but an HTML answer names nobody, so nothing waits for it."""
    route = dict(EXPRESS_CONFIG["login_routes"][0], path="/login-held",
                 identity=["headers", "response_body", "request_body"])
    gw = start_gateway(dict(EXPRESS_CONFIG, login_routes=[route]), app=express_app)
    base = gw.url
    # http.client, as `requests` reads a redirect's body before it returns.
    conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=TIMEOUT)
    form = urlencode({"username": "carol", "password": "pw-carol"})
    conn.request("POST", "/login-held", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded", "User-Agent": ua("express-held")})
    r = conn.getresponse()  # the headers only
    try:
        assert r.status == 302 and r.getheader("location") == "/app", r.getheaders()
        snap = wait_stats(base, lambda x: list(roles_of(x)) == ["carol"], timeout=10)
        assert snap["active_users"] == 1, summary(snap)
    finally:
        released = requests.post(express_app.url + "/release-logins", timeout=TIMEOUT).json()
        conn.close()
    assert released == {"released": 1}
    s = requests.Session()
    s.headers["User-Agent"] = ua("express-held")
    s.cookies.update({k: m.value for k, m in SimpleCookie(r.getheader("set-cookie")).items()})
    assert s.get(base + "/app", timeout=TIMEOUT).text == "<h1>Hello carol</h1>"


def test_a_second_login_that_keeps_the_cookie_replaces_the_session(start_gateway, express_app):
    """The same browser logs in as alice, then as carol, on one cookie: one session, carol's. A
    failed login on a kept cookie (redirect back to the form) changes nothing."""
    gw = start_gateway(EXPRESS_CONFIG, app=express_app)
    base = gw.url
    s = express_login(base, "alice", visit_first=True)
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    first = snap["sessions"][0]
    assert first["username"] == "alice", summary(snap)
    express_login(base, "carol", visit_first=False, s=s)
    snap = wait_stats(base, lambda x: [y["username"] for y in x["sessions"]] == ["carol"])
    assert snap["active_sessions"] == 1 and snap["active_users"] == 1, summary(snap)
    assert snap["sessions"][0]["session_id"] != first["session_id"], summary(snap)
    express_login(base, "bob", visit_first=False, s=s, password="wrong")
    assert s.get(base + "/app", timeout=TIMEOUT).status_code == 200  # still carol
    snap = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] == 4)
    assert [y["username"] for y in snap["sessions"]] == ["carol"], summary(snap)



def test_django_repeated_username_names_nobody(start_gateway, django_app):
    """``username=alice&username=bob&password=<bob's>``: Django logs in bob (the last value). The
    typed name is ambiguous, so Headcount names nobody: the session is followed unnamed, counted
    as one user, and the case shows in the metric and the event feed."""
    gw = start_gateway(DJANGO_CONFIG, app=django_app)
    base = gw.url
    s = django_login(base, [("username", "alice"), ("username", "bob"), ("password", "pw-bob")], "repeat")
    assert whoami(s, base) == "bob"
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1
                      and x["traffic"]["authenticated_requests_today"] == 2)
    (session,) = snap["sessions"]
    assert session["username"] == "" and session["user_id"] == f"unnamed:{session['session_id']}", session
    assert snap["active_users"] == 1, summary(snap)
    text = wait_for_metric(base, 'headcount_unnamed_logins_total{reason="repeated_field"}', 1)
    assert metric(text, 'headcount_unnamed_logins_total{reason="repeated_field"}') == 1, text
    assert metric(text, "headcount_logins_total") == 1, text
    kinds = [(e["kind"], e.get("reason")) for e in events_of(base)["events"]]
    assert ("unnamed", "repeated_field") in kinds and ("login", None) in kinds, kinds


def test_django_normalizes_typed_names_and_so_does_headcount(start_gateway, django_app):
    """Full-width "ａlice" and " carol " log in alice and carol (Django strips and applies NFKC):
    Headcount records the same two names, not a third user."""
    gw = start_gateway(DJANGO_CONFIG, app=django_app)
    base = gw.url
    wide = django_login(base, [("username", "\uff41lice"), ("password", "pw-alice")], "wide")
    spaced = django_login(base, [("username", " carol "), ("password", "pw-carol")], "spaced")
    assert (whoami(wide, base), whoami(spaced, base)) == ("alice", "carol")
    snap = wait_stats(base, lambda x: x["active_sessions"] == 2)
    assert sorted(x["username"] for x in snap["sessions"]) == ["alice", "carol"], summary(snap)
    assert snap["active_users"] == 2, summary(snap)
    text = metrics_of(base)
    assert metric(text, 'headcount_unnamed_logins_total{reason="repeated_field"}') == 0, text



def test_whoami_gives_django_users_their_roles_and_wins_over_typed_names(start_gateway, django_app):
    """A form login names nobody but what was typed; whoami asks Django who the session is: alice
    is an admin, bob a student. The ambiguous repeated-field login is bob's, as Django says."""
    config = dict(DJANGO_CONFIG, whoami=WHOAMI,
                  login_routes=[dict(DJANGO_CONFIG["login_routes"][0], identity=["whoami", "request_body"])])
    gw = start_gateway(config, app=django_app)
    base = gw.url
    django_login(base, [("username", "alice"), ("password", "pw-alice")], "alice")
    django_login(base, [("username", "alice"), ("username", "bob"), ("password", "pw-bob")], "bob")
    snap = wait_stats(base, lambda x: roles_of(x) == {"alice": "admin", "bob": "student"})
    assert roles_of(snap) == {"alice": "admin", "bob": "student"}, summary(snap)
    assert snap["by_role"] == {"admin": 1, "teacher": 0, "student": 1}, summary(snap)
    assert snap["active_users"] == 2, summary(snap)
    ids = {x["username"]: x["user_id"] for x in snap["sessions"]}
    assert ids == {"alice": "1", "bob": "2"}, summary(snap)
    text = metrics_of(base)
    assert metric(text, 'headcount_unnamed_logins_total{reason="repeated_field"}') == 1, text
    assert metric(text, 'headcount_unnamed_logins_total{reason="no_identity"}') == 0, text


def test_whoami_gives_express_users_their_roles(start_gateway, express_app):
    """express-session keeps its cookie through the login; whoami is asked with that cookie."""
    gw = start_gateway(dict(EXPRESS_CONFIG, whoami=WHOAMI,
                            login_routes=[dict(EXPRESS_CONFIG["login_routes"][0],
                                               identity=["whoami", "request_body"])]),
                       app=express_app)
    base = gw.url
    express_login(base, "carol", visit_first=True)
    express_login(base, "bob", visit_first=False)
    snap = wait_stats(base, lambda x: roles_of(x) == {"carol": "teacher", "bob": "student"})
    assert roles_of(snap) == {"carol": "teacher", "bob": "student"}, summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 1, "student": 1}, summary(snap)
    assert {x["user_id"] for x in snap["sessions"]} == {"u-3", "u-2"}, summary(snap)


def test_a_whoami_that_fails_or_times_out_falls_back_to_the_typed_name(start_gateway, express_app):
    """A whoami route that answers 404, and one slower than timeout_ms: the login is named by the
    route's next source (what was typed), with the default role, and nobody else is named."""
    for path in ("/nope", "/slow-me"):
        gw = start_gateway(dict(EXPRESS_CONFIG, whoami=dict(WHOAMI, path=path, timeout_ms=300),
                                login_routes=[dict(EXPRESS_CONFIG["login_routes"][0],
                                                   identity=["whoami", "request_body"])]),
                           app=express_app)
        base = gw.url
        express_login(base, "alice", visit_first=True)
        snap = wait_stats(base, lambda x: roles_of(x) == {"alice": "unknown"}, timeout=8)
        assert roles_of(snap) == {"alice": "unknown"}, (path, summary(snap))
        assert snap["by_role"] == {"admin": 0, "teacher": 0, "student": 0, "unknown": 1}, summary(snap)
        gw.stop()



def test_an_opaque_token_api_client_is_counted_with_its_role(start_gateway, django_app):
    """An API client logs in to DRF's obtain_auth_token (no cookie at all), then sends `Authorization:
    Token <token>`: one session keyed by the token, named and given its role by whoami (asked with
    the token), its requests authenticated; logging out with the token ends it."""
    gw = start_gateway(DRF_CONFIG, app=django_app)
    base = gw.url
    api = requests.Session()
    api.headers["User-Agent"] = ua("drf-client")
    r = api.post(base + "/api/token/", data={"username": "carol", "password": "pw-carol"}, timeout=TIMEOUT)
    assert r.status_code == 200 and not r.cookies, (r.status_code, r.text[:200], r.headers)
    api.headers["Authorization"] = f"Token {r.json()['token']}"
    for _ in range(3):
        assert api.get(base + "/api/me", timeout=TIMEOUT).json()["user"]["username"] == "carol"
    snap = wait_stats(base, lambda x: roles_of(x) == {"carol": "teacher"}
                      and x["traffic"]["authenticated_requests_today"] == 4)
    assert snap["by_role"] == {"admin": 0, "teacher": 1, "student": 0}, summary(snap)
    # Another token, one the app never gave out, is nobody's.
    forged = {"Authorization": "Token " + "0f" * 20, "User-Agent": ua("drf-forger")}
    assert requests.get(base + "/api/me", headers=forged, timeout=TIMEOUT).status_code == 401
    snap = wait_stats(base, lambda x: x["traffic"]["anonymous_requests_today"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["carol"], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 4, summary(snap)
    assert api.post(base + "/api/logout/", timeout=TIMEOUT).status_code == 204
    snap = wait_stats(base, lambda x: x["active_sessions"] == 0)
    assert snap["active_users"] == 0, summary(snap)


def shipped_demo_config() -> dict:
    """The plugin configuration the demo ships with (envoy/envoy.yaml; the Worker's is the same)."""
    from pathlib import Path
    import json as _json

    text = (Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml").read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith('{"admin_token": "demo-admin-token"'))
    return _json.loads(line)


def test_the_demos_form_login_users_show_their_roles(start_gateway):
    """The demo as shipped: its home page's classic form login (a redirect, no identity in the
    answer) names the user and role through whoami (`/api/v1/me`)."""
    config = shipped_demo_config()
    gw = start_gateway(dict(config, flush_interval_ms=200))
    base = gw.url
    for name in ("teacher1", "student2"):
        s = requests.Session()
        s.headers["User-Agent"] = ua(f"demo-{name}")
        r = s.post(base + "/login", data={"username": name, "password": "password"}, allow_redirects=False,
                   timeout=TIMEOUT)
        assert r.status_code == 302 and r.headers["location"].endswith("/dashboard"), r.headers
        assert s.get(base + "/dashboard", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: roles_of(x) == {"teacher1": "teacher", "student2": "student"},
                      token=config["admin_token"])
    assert snap["by_role"] == {"admin": 0, "teacher": 1, "student": 1}, summary(snap)
