import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed numpy and torch for every test, as skorch's test-suite does."""
    np.random.seed(0)
    torch.manual_seed(0)
    yield
