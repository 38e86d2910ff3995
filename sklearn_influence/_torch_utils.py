"""Small torch helpers shared by the estimators: device choice and private seeding."""

import contextlib

import numpy as np
import torch
from sklearn.utils import check_random_state


def resolve_device(device):
    """Turn ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` into a :class:`torch.device`.

    A CUDA device without a usable GPU is a clear error rather than a crash later on.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but no CUDA GPU is available to torch "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False). Use "
            "device='cpu', or device='auto' to use a GPU only when there is one."
        )
    return resolved


@contextlib.contextmanager
def seeded_torch(random_state):
    """Seed torch from ``random_state`` inside a forked RNG, leaving the user's RNG untouched."""
    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield seed


def to_numpy(tensor):
    """A float64 numpy copy of a tensor on any device."""
    return tensor.detach().to("cpu", torch.float64).numpy()
