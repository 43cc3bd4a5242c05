"""Issue 7 in a real Envoy: users named by a JWT only after its signature and claims verify."""

import time

import requests

import cases
from helpers import PLUGIN_CONFIG, TIMEOUT, bearer, stats, summary, ua, wait_stats
from jwt_tokens import (DEFAULT_JWT_SECRET, RS256_TOKEN, RSA_PUBLIC_KEY, app_token, bad_tokens, claims,
                        sign_jwt)

PREFIX = "/__headcount"
JWT_CONFIG = dict(PLUGIN_CONFIG, jwt={"hs256_secret": DEFAULT_JWT_SECRET})


def call(base, token, path="/api/v1/me", user_agent=None):
    return requests.get(base + path, timeout=TIMEOUT,
                        headers={"Authorization": f"Bearer {token}", "User-Agent": user_agent or ua("api")})


def test_an_api_client_with_a_verified_token_is_a_user(start_envoy):
    envoy = start_envoy(JWT_CONFIG)
    base = envoy.url
    teacher = app_token(base, "teacher1")
    student = app_token(base, "student2")
    for _ in range(3):
        assert call(base, teacher, user_agent=ua("teacher-api")).json()["user"]["username"] == "teacher1"
    assert call(base, student, "/api/v1/courses").status_code == 200
    assert requests.get(base + "/healthz", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 2 and x["traffic"]["authenticated_requests_today"] == 4)
    assert snap["active_users"] == 2, summary(snap)
    assert snap["by_role"] == {"admin": 0, "teacher": 1, "student": 1}, summary(snap)
    by_name = {s["username"]: s for s in snap["sessions"]}
    assert by_name["teacher1"]["role"] == "teacher" and by_name["teacher1"]["user_id"] == "2"
    assert "teacher-api" in by_name["teacher1"]["user_agent"]
    assert snap["traffic"]["anonymous_requests_today"] >= 1  # the health check
    # Tokens are never stored or logged.
    assert teacher not in envoy.log_text() and teacher.split(".")[2] not in envoy.log_text()


def test_forged_unsigned_expired_and_misdirected_tokens_count_as_nobody(start_envoy):
    envoy = start_envoy(dict(JWT_CONFIG, jwt={"hs256_secret": DEFAULT_JWT_SECRET, "audience": "demo"}))
    base = envoy.url
    valid, bad = bad_tokens("demo")
    bad += [
        "\u00ff\u00fe.a.b",
    ]
    for token in bad:
        try:
            r = call(base, token)
        except UnicodeEncodeError:
            r = requests.get(base + "/api/v1/me", timeout=TIMEOUT,
                             headers={"Authorization": b"Bearer \xff\xfe.a.b"})
        # Proxied (the app answers for itself), never blocked, never counted.
        assert r.headers.get("x-demo-app") == "1" or r.status_code == 431, (token[:40], r.status_code)
    # A forged admin token opens no data either.
    assert requests.get(base + PREFIX + "/stats", headers=bearer(bad[1]), timeout=TIMEOUT).status_code == 403
    time.sleep(0.6)
    snap = stats(base)
    assert snap["active_users"] == 0 and snap["active_sessions"] == 0, summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 0, snap["traffic"]
    # The refusals were for cause: the same plugin accepts the valid token.
    assert call(base, valid).status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1)
    assert [s["username"] for s in snap["sessions"]] == ["admin_user"], summary(snap)


def test_rs256_tokens_verify_against_a_configured_public_key(start_envoy):
    envoy = start_envoy(dict(PLUGIN_CONFIG, jwt={"public_keys": [RSA_PUBLIC_KEY], "issuer": "https://idp.example",
                                                 "audience": "headcount"}))
    base = envoy.url
    r = call(base, RS256_TOKEN, "/healthz")
    assert r.status_code == 200
    snap = wait_stats(base, lambda x: x["active_users"] == 1)
    assert [(s["username"], s["role"], s["user_id"]) for s in snap["sessions"]] == [("ann", "teacher", "42")]
    # HS256 with the public key as the secret (the alg-confusion attack) is refused.
    confused = sign_jwt(claims("mallory", "admin", "666", iss="https://idp.example", aud="headcount"),
                        RSA_PUBLIC_KEY)
    assert call(base, confused, "/healthz").status_code == 200
    time.sleep(0.6)
    assert [s["username"] for s in stats(base)["sessions"]] == ["ann"]


def test_a_revoked_token_is_answered_401_at_the_edge(start_envoy):
    envoy = start_envoy(dict(JWT_CONFIG, enforce_revocation=True))
    cases.revoked_token_is_answered_401_at_the_edge(envoy.url)
