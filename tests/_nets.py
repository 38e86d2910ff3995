"""The tests' network: the public :class:`~sklearn_influence.datasets.TanhMLP` with the tests'
defaults (8 hidden units, float64 parameters) — top level, so that skorch nets clone and pickle.
"""

import torch

from sklearn_influence import datasets


class TanhMLP(datasets.TanhMLP):
    """``datasets.TanhMLP`` defaulting to 8 hidden units and float64 (only the defaults differ)."""

    def __init__(
        self, in_features=64, hidden=8, out_features=10, *, probabilities=False, dtype=torch.float64
    ):
        super().__init__(
            in_features, hidden, out_features, probabilities=probabilities, dtype=dtype
        )
