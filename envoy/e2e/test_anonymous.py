"""(a) Bots, crawlers, anonymous page loads and health checks count as nobody."""

import requests

from helpers import BROWSER_UA, TIMEOUT, login, summary, wait_stats

NOBODY_BY_ROLE = {"admin": 0, "teacher": 0, "student": 0}

BOT_LOGINS = [
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "student1"),
    ("Mozilla/5.0 (compatible; AhrefsCrawler/7.0)", "teacher1"),
    ("Uptime-BOT-Scanner/3.1", "admin_user"),
    ("Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)", "student2"),
    ("Mozilla/5.0 (compatible; Baiduspider/2.0)", "student3"),
]


def test_bots_anonymous_pages_and_health_checks_count_as_nobody(envoy):
    base = envoy.url
    proxied = 0

    def get(path, agent, session=None):
        nonlocal proxied
        r = (session or requests).get(base + path, headers={"User-Agent": agent}, timeout=TIMEOUT,
                                      allow_redirects=False)
        assert r.headers.get("x-demo-app") == "1", f"{path} not answered by the app: {r.status_code}"
        proxied += 1
        return r

    # Anonymous page loads by a browser.
    assert get("/", BROWSER_UA).status_code == 200
    assert get("/dashboard", BROWSER_UA).status_code == 302
    assert get("/api/v1/me", BROWSER_UA).status_code == 401
    # Health checks.
    for _ in range(3):
        assert get("/healthz", "kube-probe/1.31").status_code == 200
        assert get("/healthz", "Envoy/HC").status_code == 200
    # A failed login by a browser.
    r = requests.post(base + "/api/v1/auth/login", json={"username": "student1", "password": "nope"},
                      headers={"User-Agent": BROWSER_UA}, timeout=TIMEOUT)
    assert r.status_code == 401 and "session" not in r.cookies
    proxied += 1
    # Bots and crawlers that even log in successfully and browse with their cookie.
    for agent, user in BOT_LOGINS:
        s = login(base, user, user_agent=agent)
        proxied += 1
        assert get("/api/v1/courses", agent, session=s).status_code == 200
        assert get("/dashboard", agent, session=s).status_code == 200

    snap = wait_stats(base, lambda s: s["traffic"]["anonymous_requests_today"] >= proxied)
    assert snap["active_users"] == 0, summary(snap)
    assert snap["active_sessions"] == 0, summary(snap)
    assert snap["sessions"] == [], summary(snap)
    assert snap["by_role"] == NOBODY_BY_ROLE, summary(snap)
    traffic = snap["traffic"]
    assert traffic["authenticated_requests_today"] == 0, summary(snap)
    assert traffic["anonymous_requests_today"] >= proxied, summary(snap)
    assert traffic["requests_today"] == (traffic["anonymous_requests_today"]
                                         + traffic["authenticated_requests_today"]), summary(snap)


def test_fresh_envoy_reports_nobody(envoy):
    snap = wait_stats(envoy.url, lambda s: True)
    assert snap["active_users"] == 0
    assert snap["active_sessions"] == 0
    assert snap["sessions"] == []
    assert snap["by_role"] == NOBODY_BY_ROLE
    assert snap["window_seconds"] == 60
    for key in ("current_rps", "avg_response_time_ms", "requests_today",
                "authenticated_requests_today", "anonymous_requests_today"):
        assert key in snap["traffic"], summary(snap)
    assert snap["traffic"]["authenticated_requests_today"] == 0
