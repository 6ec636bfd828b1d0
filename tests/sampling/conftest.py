"""Sampler tests: the ``backend`` fixture runs a test on every implementation (skipped, or failed in CI,
where one cannot run)."""
import pytest

from helpers.sampling import BACKENDS, require_backend


@pytest.fixture(params=BACKENDS)
def backend(request):
    require_backend(request.param)
    return request.param
