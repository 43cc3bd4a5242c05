"""How each host of the plugin is started and stopped. A host kind is one module here with
``KIND`` and ``start(ctx, plugin_config, **knobs) -> Gateway``; registering it in ``STARTERS``
runs the whole behaviour suite on it (e.g. a future ``fleet``)."""

from hosts import envoy, fleet, worker

STARTERS = {module.KIND: module.start for module in (envoy, worker, fleet)}
# ``start_apps(ctx, {app: plugin_config}, **knobs) -> {app: Gateway}``: one gateway fronting
# several apps, each with its own Headcount.
APP_STARTERS = {module.KIND: module.start_apps for module in (envoy, worker, fleet)}
KINDS = list(STARTERS)


def with_variants(**extra: list[dict]):
    """Parametrizes a behaviour test over every host as usual, plus extra runs of a host with other
    knobs: ``@with_variants(worker=[{"shards": 4}])``. The test takes ``knobs`` for start_gateway."""
    import pytest

    params = [pytest.param(kind, {}, id=kind) for kind in KINDS]
    for kind, variants in extra.items():
        for knobs in variants:
            label = "-".join(f"{k}{v}" for k, v in knobs.items())
            params.append(pytest.param(kind, knobs, id=f"{kind}-{label}"))
    return pytest.mark.parametrize("gateway_kind, knobs", params)
