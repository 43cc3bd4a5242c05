"""The Worker: sessions survive a restart of the runtime: `wrangler dev` stopped and started again on the same
persisted state (--persist-to) still knows them, their cookies and the cookie hash secret."""

import requests

import helpers
from helpers import TIMEOUT, login, summary, ua, wait_stats


def test_sessions_survive_a_restart(start_gateway, tmp_path):
    state = tmp_path / "persisted"
    first = start_gateway(helpers.PLUGIN_CONFIG, state_dir=state)
    admin = login(first.url, "admin_user", user_agent=ua("before-restart"))
    student = login(first.url, "student1", user_agent=ua("student-before"))
    assert student.get(first.url + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    before = wait_stats(first.url, lambda s: s["active_sessions"] == 2
                        and s["traffic"]["authenticated_requests_today"] == 3)
    assert before["active_users"] == 2, summary(before)
    first.stop()

    second = start_gateway(helpers.PLUGIN_CONFIG, state_dir=state)
    assert second.port != first.port or second.proc.pid != first.proc.pid
    after = helpers.stats(second.url)
    assert {(x["session_id"], x["username"], x["login_time"]) for x in after["sessions"]} == {
        (x["session_id"], x["username"], x["login_time"]) for x in before["sessions"]}, summary(after)
    assert after["traffic"]["authenticated_requests_today"] == 3, summary(after)

    # The cookies from before the restart still lead to their sessions (same hash secret), and
    # rotation and logout are followed from there.
    for s in (admin, student):
        assert s.get(second.url + "/api/v1/me", timeout=TIMEOUT).status_code == 200
    r = admin.get(second.url + helpers.STATS_PATH, timeout=TIMEOUT)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    snap = wait_stats(second.url, lambda s: s["traffic"]["authenticated_requests_today"] == 5)
    assert snap["traffic"]["authenticated_requests_today"] == 5, summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 0, summary(snap)
    assert student.post(second.url + "/api/v1/auth/logout", timeout=TIMEOUT).status_code == 200
    snap = wait_stats(second.url, lambda s: s["active_sessions"] == 1)
    assert [x["username"] for x in snap["sessions"]] == ["admin_user"], summary(snap)

    # A fresh state directory knows nobody.
    third = start_gateway(helpers.PLUGIN_CONFIG)
    assert helpers.stats(third.url)["sessions"] == []
    r = requests.get(third.url + "/api/v1/me", cookies=admin.cookies, timeout=TIMEOUT)
    assert r.status_code == 200
    snap = wait_stats(third.url, lambda s: s["traffic"]["anonymous_requests_today"] == 1)
    assert snap["traffic"]["authenticated_requests_today"] == 0, summary(snap)
