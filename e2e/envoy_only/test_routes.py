"""Envoy's own per-route switch (`typed_per_filter_config` with `FilterConfig { disabled: true }`):
a route that carries no sessions worth counting (static assets) is proxied without Headcount, so
its requests cost the filter nothing and are counted nowhere; the other routes count as usual.
The app must not rotate the session cookie on such a route (Headcount would not see it): Express
with express-session keeps its cookie."""

from app_logins import EXPRESS_CONFIG, express_login
from helpers import TIMEOUT, summary, wait_stats


def test_a_route_with_the_filter_disabled_is_proxied_and_counted_nowhere(start_gateway, express_app):
    # One worker: its buffer keeps the requests' order, so a later counted request is the sentinel.
    gw = start_gateway(EXPRESS_CONFIG, app=express_app, concurrency=1, unfiltered=("/assets/",))
    base = gw.url
    s = express_login(base, "bob", visit_first=True)
    for _ in range(5):
        r = s.get(base + "/assets/app.css", timeout=TIMEOUT)
        assert r.status_code == 404 and "x-powered-by" in r.headers, r.headers  # Express's own 404
    assert s.get(base + "/app", timeout=TIMEOUT).text == "<h1>Hello bob</h1>"
    snap = wait_stats(base, lambda x: x["traffic"]["authenticated_requests_today"] >= 2)
    # The first visit (anonymous), the login and the page; none of the five asset requests.
    assert snap["traffic"]["requests_today"] == 3, summary(snap)
    assert snap["traffic"]["anonymous_requests_today"] == 1, summary(snap)
    assert [x["username"] for x in snap["sessions"]] == ["bob"], summary(snap)
