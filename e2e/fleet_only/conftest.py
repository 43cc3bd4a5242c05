"""Host-only tests of the fleet host: Envoy nodes sharing one count through the collectors."""

import pytest


@pytest.fixture
def gateway_kind() -> str:
    return "fleet"
