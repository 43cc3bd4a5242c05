"""Issue 7 in the Worker (as envoy/e2e/test_jwt.py): users named by a JWT only after its signature
and claims verify, in real workerd, with exact counts."""

import sys
from pathlib import Path

import pytest
import requests

import cases
from helpers import (PLUGIN_CONFIG, TIMEOUT, USERS, bearer, debug, stats, stats_response, summary, ua,
                     wait_stats)
from helpers import events_of, metric, metrics_of

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "envoy" / "e2e"))
from jwt_tokens import (DEFAULT_JWT_SECRET, RS256_TOKEN, RSA_PUBLIC_KEY, app_token, bad_tokens, claims,  # noqa: E402
                        sign_jwt)

PREFIX = "/__headcount"
JWT_CONFIG = dict(PLUGIN_CONFIG, jwt={"hs256_secret": DEFAULT_JWT_SECRET})
REVOKED = {"error": "session revoked"}


def call(base, token, path="/api/v1/me", user_agent=None, method="GET"):
    r = requests.request(method, base + path, timeout=TIMEOUT,
                         headers={"Authorization": f"Bearer {token}", "User-Agent": user_agent or ua("api")})
    assert r.headers.get("x-demo-app") == "1" or r.status_code == 401, (path, r.status_code, r.text[:200])
    return r


@pytest.mark.parametrize("shards", [1, 4])
def test_an_api_client_with_a_verified_token_is_a_user(start_worker, shards):
    wp = start_worker(JWT_CONFIG, shards=shards)
    base = wp.url
    teacher = app_token(base, "teacher1")
    student = app_token(base, "student2")
    for _ in range(3):
        r = call(base, teacher, user_agent=ua("teacher-api"))
        assert r.status_code == 200 and r.json()["user"]["username"] == "teacher1"
    assert call(base, student, "/api/v1/courses").status_code == 200
    assert requests.get(base + "/healthz", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 2 and x["traffic"]["authenticated_requests_today"] == 4)
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
    assert debug(base)["stored_sessions"] == 2
    # Tokens are never stored or logged.
    log = wp.log_text()
    assert teacher not in log and teacher.split(".")[2] not in log and student.split(".")[2] not in log


def test_known_tokens_cost_no_durable_object_request_per_request(start_worker):
    wp = start_worker(JWT_CONFIG)
    base = wp.url
    token = app_token(base, "student1")
    assert call(base, token).status_code == 200
    wait_stats(base, lambda x: x["active_sessions"] == 1)
    before = debug(base)
    n = 40
    for _ in range(n):
        assert call(base, token, "/api/v1/courses").status_code == 200
    snap = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] == n + 1)
    assert snap["traffic"]["authenticated_requests_today"] == n + 1, summary(snap)
    after = debug(base)
    do, flushes = after["do_requests"] - before["do_requests"], after["flushes"] - before["flushes"]
    # Only flushes (one batch each with one shard) and the stats reads' own requests: never one per request.
    assert do <= flushes + 2 and do < n // 2, (do, flushes, before, after)
    assert after["proxied"] - before["proxied"] == n


def test_forged_unsigned_expired_and_misdirected_tokens_count_as_nobody(start_worker):
    wp = start_worker(dict(JWT_CONFIG, jwt={"hs256_secret": DEFAULT_JWT_SECRET, "audience": "demo"}))
    base = wp.url
    valid, bad = bad_tokens("demo")
    proxied = 0
    for token in bad:
        r = call(base, token)
        # Proxied (the app answers for itself), never blocked.
        assert r.headers.get("x-demo-app") == "1", (token[:40], r.status_code)
        proxied += 1
    r = requests.get(base + "/api/v1/me", timeout=TIMEOUT, headers={"Authorization": b"Bearer \xff\xfe.a.b"})
    assert r.headers.get("x-demo-app") == "1", r.status_code
    proxied += 1
    # A forged admin token opens no data either; a valid non-admin one neither.
    r = stats_response(base, token=bad[1])
    assert r.status_code == 403 and "sessions" not in r.text, r.text
    student = sign_jwt(claims("student1", "student", "3", aud="demo"), DEFAULT_JWT_SECRET)
    assert stats_response(base, token=student).status_code == 403
    snap = stats(base)
    assert snap["active_users"] == 0 and snap["active_sessions"] == 0, summary(snap)
    t = snap["traffic"]
    assert (t["authenticated_requests_today"], t["anonymous_requests_today"]) == (0, proxied), t
    assert metric(metrics_of(base), "headcount_logins_total") == 0
    # The refusals were for cause: the same Worker accepts the valid token.
    assert call(base, valid).status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1)
    assert [(s["username"], s["role"]) for s in snap["sessions"]] == [("admin_user", "admin")], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 1, summary(snap)


def test_rs256_tokens_verify_against_a_configured_public_key(start_worker):
    wp = start_worker(dict(PLUGIN_CONFIG, jwt={"public_keys": [RSA_PUBLIC_KEY], "issuer": "https://idp.example",
                                               "audience": "headcount"}))
    base = wp.url
    assert call(base, RS256_TOKEN, "/healthz").status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1)
    assert [(s["username"], s["role"], s["user_id"]) for s in snap["sessions"]] == [("ann", "teacher", "42")]
    # HS256 with the public key as the secret (the alg-confusion attack) is refused.
    confused = sign_jwt(claims("mallory", "admin", "666", iss="https://idp.example", aud="headcount"),
                        RSA_PUBLIC_KEY)
    assert call(base, confused, "/healthz").status_code == 200
    assert stats_response(base, token=confused).status_code == 403
    snap = stats(base)
    assert [s["username"] for s in snap["sessions"]] == ["ann"], summary(snap)
    t = snap["traffic"]
    assert (t["authenticated_requests_today"], t["anonymous_requests_today"]) == (1, 1), t


def test_sids_logout_and_admin_tokens(start_worker):
    wp = start_worker(JWT_CONFIG)
    base = wp.url
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


def test_a_revoked_token_is_answered_401_at_the_edge(start_worker):
    wp = start_worker(dict(JWT_CONFIG, enforce_revocation=True))
    cases.revoked_token_is_answered_401_at_the_edge(wp.url)
