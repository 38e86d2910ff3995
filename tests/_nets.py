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


class LazyTanhMLP(torch.nn.Module):
    """Like TanhMLP but infers the input width (scikit-learn's estimator checks vary it)."""

    def __init__(self, hidden=4, n_out=5):
        super().__init__()
        self.hidden = torch.nn.LazyLinear(hidden, dtype=torch.float64)
        self.out = torch.nn.Linear(hidden, n_out, dtype=torch.float64)

    def forward(self, X):
        return self.out(torch.tanh(self.hidden(X)))


class DictOutputMLP(TanhMLP):
    """TanhMLP whose forward returns a dict, as many research models do."""

    def forward(self, X):
        logits = super().forward(X)
        return {"hidden": torch.tanh(self.hidden(X)), "logits": logits}


class ModelOutputMLP(TanhMLP):
    """TanhMLP whose forward returns a Hugging Face–style attribute object."""

    def forward(self, X):
        return Output(logits=super().forward(X), loss=None)


class Output:
    """An attribute container like ``transformers.utils.ModelOutput`` (not a mapping)."""

    def __init__(self, logits, loss=None):
        self.logits, self.loss = logits, loss


class SplitInputMLP(TanhMLP):
    """TanhMLP taking its input as two named arrays (skorch's dict X: forward(**X))."""

    def forward(self, left, right):
        return super().forward(torch.cat([left, right], dim=1))
