"""Fixtures shared by the tests."""

import pytest
import torch

from nas.ops import _ext
from nas.ops.adder import backend_for


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that pins torch to one thread must not leak it: CPU float reductions depend on the
    thread count, so the bit-for-bit comparisons of tests/test_faults.py (an in-process resume
    against a reference run in a fresh subprocess) need the default count."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=["ext", "torch"])
def backend(request, monkeypatch):
    """Run the test with the C++ kernels, then with SHIFTADDAUG_NO_EXT=1 (pure torch)."""
    if request.param == "torch":
        monkeypatch.setenv(_ext.ENV_DISABLE, "1")
    else:
        monkeypatch.delenv(_ext.ENV_DISABLE, raising=False)
        if _ext.load() is None:
            pytest.skip(f"C++ kernels unavailable: {_ext.info()['reason']}")
    assert backend_for(torch.zeros(1)) == request.param
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _notes_on_stderr():
    """Notes (warnings of the ``nas`` logger) on stderr, as a user sees them: without this,
    pytest's log capture would take them from tests that call library code directly."""
    from nas.cli.common import configure_logging

    configure_logging(-1)
