"""Small torch modules shared by the tests (top level, so that skorch nets clone and pickle)."""

import torch


class TanhMLP(torch.nn.Module):
    """in → hidden (tanh) → out; ``probabilities`` ends with a softmax (for NLLLoss)."""

    def __init__(self, n_in=64, hidden=8, n_out=10, probabilities=False, dtype=torch.float64):
        super().__init__()
        self.hidden = torch.nn.Linear(n_in, hidden, dtype=dtype)
        self.out = torch.nn.Linear(hidden, n_out, dtype=dtype)
        self.probabilities = probabilities

    def forward(self, X):
        out = self.out(torch.tanh(self.hidden(X)))
        return torch.softmax(out, -1) if self.probabilities else out
