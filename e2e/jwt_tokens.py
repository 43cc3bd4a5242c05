"""JWTs for the end-to-end suite (every host): the demo app's signer, the shared RS256
fixture, tokens that must count as nobody, and an API client that gets its token from the app."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "envoy" / "demo"))
from app import DEFAULT_JWT_SECRET, sign_jwt  # noqa: E402,F401  (the demo app's own signer)

TIMEOUT = 10

# Signed once by Python's joserfc with the RSA key whose public half is rsa1.pub.pem (exp in
# 2100): sub 42, preferred_username ann, role teacher, iss https://idp.example,
# aud [other, headcount], sid s-1. Shared with the core, harness and fuzz tests.
FIXTURES = REPO / "plugin" / "core" / "tests" / "fixtures" / "jwt"
RSA_PUBLIC_KEY = (FIXTURES / "rsa1.pub.pem").read_text()
RS256_TOKEN = (FIXTURES / "rs256.jwt").read_text().strip()


def claims(username: str, role: str, uid: str, **extra) -> dict:
    now = int(time.time())
    return {"sub": uid, "preferred_username": username, "role": role, "iat": now, "exp": now + 600, **extra}


def app_token(base: str, username: str) -> str:
    """A token issued by the demo app through the gateway (no cookie: an API client)."""
    r = requests.post(f"{base}/api/v2/auth/token", json={"username": username, "password": "password"},
                      timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-demo-app") == "1", r.text
    assert "set-cookie" not in r.headers
    return r.json()["access_token"]


def bad_tokens(audience: str) -> tuple[str, list[str]]:
    """(a valid admin token for ``audience``, tokens that must count as nobody): another secret, a
    payload swapped under a valid signature, alg none, expired, another audience, oversized."""
    good = claims("admin_user", "admin", "1", aud=audience)
    valid = sign_jwt(good, DEFAULT_JWT_SECRET)
    head, _body, sig = valid.split(".")
    forged_payload = sign_jwt(claims("admin_user", "admin", "1", aud=audience, exp=int(time.time()) + 10**6),
                              DEFAULT_JWT_SECRET).split(".")[1]
    return valid, [
        sign_jwt(good, "an-attackers-secret-0123456789abcdef0123"),
        f"{head}.{forged_payload}.{sig}",
        sign_jwt(good, DEFAULT_JWT_SECRET, header={"alg": "none"}).rsplit(".", 1)[0] + ".",
        sign_jwt(dict(good, exp=int(time.time()) - 3600), DEFAULT_JWT_SECRET),
        sign_jwt(dict(good, aud="another-app"), DEFAULT_JWT_SECRET),
        "x" * 20000 + ".y.z",
    ]


def api_call(base: str, token: str, path: str = "/api/v1/me", user_agent: str | None = None,
             method: str = "GET") -> requests.Response:
    """A request of an API client with ``token``: answered by the app, or 401 by the plugin."""
    from helpers import ua

    r = requests.request(method, base + path, timeout=TIMEOUT,
                         headers={"Authorization": f"Bearer {token}", "User-Agent": user_agent or ua("api")})
    assert r.headers.get("x-demo-app") == "1" or r.status_code == 401, (path, r.status_code, r.text[:200])
    return r
