"""Tree-attention tests: the ``backend`` fixture runs a test on every implementation and on ``auto``
(the registered op); one that cannot run is skipped, or failed in CI."""
import pytest

from helpers.attention import BACKENDS, require_backend


@pytest.fixture(params=BACKENDS + ("auto",))
def backend(request):
    if request.param != "auto":
        require_backend(request.param)
    return request.param
