"""Two apps behind one gateway, each with its own Headcount, as the behaviour suite and the host-only
tests check them: both front the same app server, with the same cookie name and the same users, so
nothing but the app namespace keeps them apart. ``two_apps`` starts them (``start_apps`` fixture);
the checks take the two apps' URLs."""

from __future__ import annotations

import requests

from helpers import (ADMIN_TOKEN, PLUGIN_CONFIG, TIMEOUT, admin_get, bearer, login, metric, metrics_of,
                     revoke, session_of, summary, ua, wait_stats)

TOKEN_B = "e2e-token-of-app-b"


def names(snap) -> list[str]:
    return sorted(s["username"] for s in snap["sessions"])


def two_apps(start_apps, **knobs) -> tuple[str, str]:
    gws = start_apps({"shop-a": dict(PLUGIN_CONFIG), "shop-b": dict(PLUGIN_CONFIG, admin_token=TOKEN_B)}, **knobs)
    return gws["shop-a"].url, gws["shop-b"].url


def each_counts_exactly_its_own_users(a: str, b: str) -> None:
    admin_a = login(a, "admin_user", user_agent=ua("a-admin"))
    student_a = login(a, "student1", user_agent=ua("a-student1"))
    login(a, "student2", user_agent=ua("a-student2"))
    student_b = login(b, "student1", user_agent=ua("b-student1"))  # the same user, on the other app

    sa = wait_stats(a, lambda s: s["active_sessions"] == 3)
    assert names(sa) == ["admin_user", "student1", "student2"], summary(sa)
    assert sa["app"] == "shop-a", summary(sa)
    assert sa["active_users"] == 3 and sa["by_role"] == {"admin": 1, "teacher": 0, "student": 2}, summary(sa)
    sb = wait_stats(b, lambda s: s["active_sessions"] == 1, token=TOKEN_B)
    assert sb["app"] == "shop-b", summary(sb)
    assert names(sb) == ["student1"] and sb["by_role"] == {"admin": 0, "teacher": 0, "student": 1}, summary(sb)

    # A session cookie of app A carried to app B starts nothing there: B's count moves only with
    # B's own login (the sentinel), never with A's cookie.
    assert requests.get(b + "/api/v1/me", cookies={"session": student_a.cookies.get("session")},
                        timeout=TIMEOUT).status_code == 200
    login(b, "teacher1", user_agent=ua("b-teacher1"))
    sb = wait_stats(b, lambda s: s["active_sessions"] == 2, token=TOKEN_B)
    assert names(sb) == ["student1", "teacher1"], summary(sb)

    # A logout on B ends B's session only.
    assert student_b.post(b + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    sb = wait_stats(b, lambda s: s["active_sessions"] == 1, token=TOKEN_B)
    assert names(sb) == ["teacher1"], summary(sb)
    sa = wait_stats(a, lambda s: s["active_sessions"] == 3)
    assert names(sa) == ["admin_user", "student1", "student2"], summary(sa)
    assert admin_a.get(a + "/api/v1/me", timeout=TIMEOUT).status_code == 200


def no_app_reads_or_changes_another_apps_data(a: str, b: str) -> None:
    admin_a = login(a, "admin_user", user_agent=ua("x-admin"))
    login(a, "student1", user_agent=ua("x-student1"))
    login(b, "student2", user_agent=ua("x-student2"))
    wait_stats(a, lambda s: s["active_sessions"] == 2)
    wait_stats(b, lambda s: s["active_sessions"] == 1, token=TOKEN_B)

    # Each app's token is refused by the other's routes; so is A's admin session cookie on B.
    for base, token in ((a, TOKEN_B), (b, ADMIN_TOKEN)):
        for path in ("/stats", "/events", "/history", "/metrics"):
            r = admin_get(base, path, headers=bearer(token))
            assert r.status_code == 403, (base, path, r.status_code, r.text[:200])
    r = admin_get(b, "/stats", headers={"Cookie": f"session={admin_a.cookies.get('session')}"})
    assert r.status_code == 401, (r.status_code, r.text[:200])

    # B's admin cannot revoke A's session by its id: B has no such session.
    victim = session_of(a, "student1")["session_id"]
    r = revoke(b, victim, headers=bearer(TOKEN_B))
    assert r.status_code == 404, (r.status_code, r.text)
    assert "student1" in names(wait_stats(a, lambda s: s["active_sessions"] == 2))

    # Each app's metrics count its own logins and carry its name.
    text_a, text_b = metrics_of(a), metrics_of(b, TOKEN_B)
    assert metric(text_a, "headcount_logins_total", app="shop-a") == 2, text_a
    assert metric(text_b, "headcount_logins_total", app="shop-b") == 1, text_b
    assert 'app="shop-b"' not in text_a and 'app="shop-a"' not in text_b
