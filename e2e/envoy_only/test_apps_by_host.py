"""Envoy: one listener fronting two apps by host name, as a shared front door does. Both apps'
filters sit in one filter chain (the same .wasm and vm_id), each off by default and turned on for
its own virtual host only, so each sees only its app's requests; the behaviour suite's two-app
checks (e2e/two_apps.py) hold as they do with a listener per app."""

from two_apps import each_counts_exactly_its_own_users, no_app_reads_or_changes_another_apps_data, two_apps


def test_apps_told_apart_by_host_each_count_exactly_their_own_users(start_apps):
    each_counts_exactly_its_own_users(*two_apps(start_apps, layout="vhosts"))


def test_apps_told_apart_by_host_never_read_each_others_data(start_apps):
    no_app_reads_or_changes_another_apps_data(*two_apps(start_apps, layout="vhosts"))
