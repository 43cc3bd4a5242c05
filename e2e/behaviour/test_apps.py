"""Many apps behind one gateway, each with its own Headcount: on Envoy one process with a listener
and a filter per app (the same .wasm and vm_id, the app's name as the plugin's `name`); on the
Worker one deployment per app over one shared Durable Object namespace (`app` set in each config).
The checks are in e2e/two_apps.py (envoy_only/test_apps_by_host.py runs them with apps told apart
by host name)."""

from two_apps import each_counts_exactly_its_own_users, no_app_reads_or_changes_another_apps_data, two_apps


def test_two_apps_behind_one_gateway_each_count_exactly_their_own_users(start_apps):
    each_counts_exactly_its_own_users(*two_apps(start_apps))


def test_no_app_reads_or_changes_another_apps_data(start_apps):
    no_app_reads_or_changes_another_apps_data(*two_apps(start_apps))
