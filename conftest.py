import os

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 runs one test process per core: one thread each, so that torch's,
    # numpy's and scikit-learn's thread pools do not fight over the cores
    torch.set_num_threads(1)
    threadpool_limits(1)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed numpy and torch for every test, as skorch's test-suite does."""
    np.random.seed(0)  # noqa: NPY002 - seeds code that still uses the legacy global RNG
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_torch_thread():
    """Tiny nets run many small ops: one thread avoids OpenMP barrier costs (faster tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
