"""Users named by a JWT only after its signature and claims verify, with exact counts; revoked
tokens answered 401 at the edge."""

import requests

import helpers
from helpers import (PLUGIN_CONFIG, PREFIX, TIMEOUT, USERS, bearer, events_of, metric, metrics_of, stats,
                     stats_response, summary, ua, wait_stats)
from hosts import with_variants
from jwt_tokens import DEFAULT_JWT_SECRET, RS256_TOKEN, RSA_PUBLIC_KEY, api_call as call, app_token, bad_tokens, claims, sign_jwt

JWT_CONFIG = dict(PLUGIN_CONFIG, jwt={"hs256_secret": DEFAULT_JWT_SECRET})


@with_variants(worker=[{"shards": 4}])
def test_an_api_client_with_a_verified_token_is_a_user(start_gateway, knobs):
    gw = start_gateway(JWT_CONFIG, **knobs)
    base = gw.url
    teacher = app_token(base, "teacher1")
    student = app_token(base, "student2")
    for _ in range(3):
        r = call(base, teacher, user_agent=ua("teacher-api"))
        assert r.status_code == 200 and r.json()["user"]["username"] == "teacher1"
    assert call(base, student, "/api/v1/courses").status_code == 200
    assert requests.get(base + "/healthz", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 2 and x["traffic"]["authenticated_requests_today"] == 4
                      and x["traffic"]["requests_today"] >= 7)
    assert snap["active_users"] == 2 and snap["active_sessions"] == 2, summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 1, "student": 1}, summary(snap)
    by_name = {s["username"]: s for s in snap["sessions"]}
    assert (by_name["teacher1"]["role"], by_name["teacher1"]["user_id"]) == ("teacher", "2")
    assert (by_name["student2"]["role"], by_name["student2"]["user_id"]) == ("student", "4")
    assert "teacher-api" in by_name["teacher1"]["user_agent"], by_name["teacher1"]
    t = snap["traffic"]
    # Two token requests to the app and the health check carried no identity.
    assert (t["authenticated_requests_today"], t["anonymous_requests_today"], t["requests_today"]) == (4, 3, 7), t
    # One login each: the teacher's later requests touched the session, they did not start it again.
    text = metrics_of(base)
    assert metric(text, "headcount_logins_total") == 2, text
    assert sorted(e["username"] for e in events_of(base)["events"] if e["kind"] == "login") == [
        "student2", "teacher1"]
    if gw.debug:
        assert helpers.debug(base)["stored_sessions"] == 2
    # Tokens are never stored or logged.
    log = gw.log_text()
    assert teacher not in log and teacher.split(".")[2] not in log and student.split(".")[2] not in log


def test_forged_unsigned_expired_and_misdirected_tokens_count_as_nobody(start_gateway):
    gw = start_gateway(dict(JWT_CONFIG, jwt={"hs256_secret": DEFAULT_JWT_SECRET, "audience": "demo"}))
    base = gw.url
    valid, bad = bad_tokens("demo")
    proxied = 0
    for token in bad:
        r = call(base, token)
        # Proxied (the app answers for itself), never blocked.
        assert r.headers.get("x-demo-app") == "1", (token[:40], r.status_code)
        proxied += 1
    r = requests.get(base + "/api/v1/me", timeout=TIMEOUT, headers={"Authorization": b"Bearer \xff\xfe.a.b"})
    if r.headers.get("x-demo-app") == "1":
        proxied += 1
    else:  # Envoy may answer a header it cannot take with its own 431
        assert gw.kind == "envoy" and r.status_code == 431, r.status_code
    # A forged admin token opens no data either; a valid non-admin one neither.
    r = stats_response(base, token=bad[1])
    assert r.status_code == 403 and "sessions" not in r.text, r.text
    student = sign_jwt(claims("student1", "student", "3", aud="demo"), DEFAULT_JWT_SECRET)
    assert stats_response(base, token=student).status_code == 403
    # Every proxied request is in the figures: then none of them may be anybody's.
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] >= proxied)
    assert snap["active_users"] == 0 and snap["active_sessions"] == 0, summary(snap)
    t = snap["traffic"]
    assert (t["authenticated_requests_today"], t["anonymous_requests_today"]) == (0, proxied), t
    assert metric(metrics_of(base), "headcount_logins_total") == 0
    # The refusals were for cause: the same plugin accepts the valid token.
    assert call(base, valid).status_code == 200
    # Envoy counts the request when its worker thread flushes, maybe after the session shows.
    snap = wait_stats(base, lambda x: x["active_users"] == 1 and x["traffic"]["authenticated_requests_today"] >= 1)
    assert [(s["username"], s["role"]) for s in snap["sessions"]] == [("admin_user", "admin")], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 1, summary(snap)


def test_rs256_tokens_verify_against_a_configured_public_key(start_gateway):
    gw = start_gateway(dict(PLUGIN_CONFIG, jwt={"public_keys": [RSA_PUBLIC_KEY], "issuer": "https://idp.example",
                                                "audience": "headcount"}))
    base = gw.url
    assert call(base, RS256_TOKEN, "/healthz").status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1)
    assert [(s["username"], s["role"], s["user_id"]) for s in snap["sessions"]] == [("ann", "teacher", "42")]
    # HS256 with the public key as the secret (the alg-confusion attack) is refused.
    confused = sign_jwt(claims("mallory", "admin", "666", iss="https://idp.example", aud="headcount"),
                        RSA_PUBLIC_KEY)
    assert call(base, confused, "/healthz").status_code == 200
    assert stats_response(base, token=confused).status_code == 403
    # Both requests are in the figures: the second was nobody's.
    snap = wait_stats(base, lambda x: x["traffic"]["requests_today"] >= 2)
    assert [s["username"] for s in snap["sessions"]] == ["ann"], summary(snap)
    t = snap["traffic"]
    assert (t["authenticated_requests_today"], t["anonymous_requests_today"]) == (1, 1), t


def test_sids_logout_and_admin_tokens(start_gateway):
    gw = start_gateway(JWT_CONFIG)
    base = gw.url
    uid, role = USERS["student1"]

    def token(sid, jti):
        return sign_jwt(claims("student1", role, uid, sid=sid, jti=jti), DEFAULT_JWT_SECRET)

    # A refreshed access token (same sid, new jti) continues the session; another sid is another device.
    for t in (token("s1", "a"), token("s1", "b"), token("s2", "c")):
        assert call(base, t, "/api/v1/courses").status_code == 200
    snap = wait_stats(base, lambda x: x["active_sessions"] == 2)
    assert (snap["active_users"], snap["active_sessions"]) == (1, 2), summary(snap)
    # An admin's token opens the data routes without starting a session; a student's does not.
    root = sign_jwt(claims("admin_user", "admin", "1"), DEFAULT_JWT_SECRET)
    r = stats_response(base, token=root)
    assert r.status_code == 200 and r.json()["active_sessions"] == 2, r.text
    assert requests.get(base + PREFIX + "/events", headers=bearer(root), timeout=TIMEOUT).status_code == 200
    assert stats_response(base, token=token("s1", "d")).status_code == 403
    # A logout with the token ends its session (the app answers the logout route).
    s1 = token("s1", "e")
    first = {s["session_id"] for s in snap["sessions"]}
    r = call(base, s1, "/api/v1/auth/logout", method="POST")
    assert r.status_code == 200, r.text
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert snap["active_sessions"] == 1, summary(snap)
    kinds = [e["kind"] for e in events_of(base)["events"]]
    assert sorted(kinds) == ["login", "login", "logout"], kinds
    # The still-valid token starts it again on its next use: the same session id (derived from
    # user and sid), a third login.
    assert call(base, s1, "/api/v1/courses").status_code == 200
    snap = wait_stats(base, lambda x: x["active_sessions"] == 2)
    assert {s["session_id"] for s in snap["sessions"]} == first, summary(snap)
    text = metrics_of(base)
    assert (metric(text, "headcount_logins_total"), metric(text, "headcount_logouts_total")) == (3, 1), text


def test_a_revoked_token_is_answered_401_at_the_edge(start_gateway):
    """With the demo JWT secret and enforce_revocation: a revoked token gets 401 before the app on
    every route and never restarts its session; the user's next token is a new session."""
    gw = start_gateway(dict(JWT_CONFIG, enforce_revocation=True))
    base = gw.url
    token = app_token(base, "student3")
    get = lambda path, t=token: requests.get(base + path, headers={"Authorization": f"Bearer {t}"},  # noqa: E731
                                             timeout=TIMEOUT)
    assert get("/api/v1/me").status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1)
    sid = snap["sessions"][0]["session_id"]
    r = requests.post(f"{base}{PREFIX}/sessions/{sid}/revoke", headers=bearer(), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    gw.revocation_reached_every_node()
    for path in ("/api/v1/me", "/api/v1/courses", "/healthz", "/api/v1/auth/login"):
        r = get(path)
        assert r.status_code == 401 and r.json() == {"error": "session revoked"}, (path, r.status_code)
        assert "x-demo-app" not in r.headers
    snap = stats(base)
    assert snap["active_sessions"] == 0, summary(snap)
    # Another token of the same user is a new session and works.
    assert get("/api/v1/me", app_token(base, "student3")).status_code == 200
    snap = wait_stats(base, lambda x: x["active_sessions"] == 1)
    assert snap["active_sessions"] == 1 and snap["sessions"][0]["session_id"] != sid, summary(snap)
    text = metrics_of(base)
    assert (metric(text, "headcount_logins_total"), metric(text, "headcount_revocations_total")) == (2, 1), text
