"""Host-only tests of the Envoy host."""

import pytest


@pytest.fixture
def gateway_kind() -> str:
    return "envoy"
