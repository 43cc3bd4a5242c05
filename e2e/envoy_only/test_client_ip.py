"""Envoy as the edge behind a load balancer: client_ip_header with trusted_hops counts from the
right of X-Forwarded-For, after the entry Envoy (use_remote_address) appends itself. (The Worker
appends nothing: its trusted_hops 1 is the last entry the client side sent, see
behaviour/test_config.py.)"""

import requests

import helpers
from helpers import TIMEOUT, login, wait_stats


def test_trusted_client_ip_header(start_gateway):
    """Behind a load balancer: the LB appends the client to X-Forwarded-For and Envoy (the
    configured edge, use_remote_address) appends its peer, the LB. trusted_hops counts from the
    right, so a client-forged first entry is never taken."""
    xff = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}  # forged entry, then what the "LB" added
    ep = start_gateway(dict(helpers.PLUGIN_CONFIG, client_ip_header="x-forwarded-for", trusted_hops=2))
    login(ep.url, "teacher1", headers=xff)
    snap = wait_stats(ep.url, lambda s: s["active_sessions"] == 1)
    [x] = snap["sessions"]
    assert x["ip"] == "203.0.113.9", x

    ep2 = start_gateway(dict(helpers.PLUGIN_CONFIG, client_ip_header="x-forwarded-for", trusted_hops=1))
    login(ep2.url, "teacher1", headers=xff)
    snap = wait_stats(ep2.url, lambda s: s["active_sessions"] == 1)
    [x] = snap["sessions"]
    # One hop: the entry Envoy appended itself (for a loopback peer Envoy appends its own
    # local address, so ask the app what arrived).
    seen = requests.get(ep2.url + "/api/v1/debug/headers", headers=xff, timeout=TIMEOUT).json()
    appended = seen["headers"]["x-forwarded-for"][0].split(",")[-1].strip()
    assert appended not in ("6.6.6.6", "203.0.113.9"), seen
    assert x["ip"] == appended, (x, seen)

    ep3 = start_gateway(dict(helpers.PLUGIN_CONFIG, client_ip_header="x-forwarded-for", trusted_hops=3))
    login(ep3.url, "teacher1", headers=xff)
    snap = wait_stats(ep3.url, lambda s: s["active_sessions"] == 1)
    [x] = snap["sessions"]
    assert x["ip"] == "6.6.6.6", x  # trusting three hops means trusting what the client wrote
