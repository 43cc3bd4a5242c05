"""Host-only tests of the Worker host."""

import pytest


@pytest.fixture
def gateway_kind() -> str:
    return "worker"
