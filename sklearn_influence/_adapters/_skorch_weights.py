"""Weighted training of skorch nets: skorch's documented weighting, applied by the package.

skorch weighs the rows of a batch by an *unreduced* criterion and a ``get_loss`` that takes
the weighted mean (the skorch FAQ passes the weights inside a dict X, which the module's
``forward`` must then accept). The package does the same without touching the module: the
training data set yields ``(x_i, (t_i, w̃_i))``, the criterion is built with
``reduction='none'`` for the duration of the fit, and ``get_loss`` returns
(1/B) Σ_b w̃_i L_i with the mean-1 weights w̃_i = N w_i / W. Over the full training set that
is Σ w_i L_i / W, the data term of J (DESIGN.md §2), and a row of integer weight w trains
as its w copies (the full-batch gradients are equal). Regressors average the unreduced
``MSELoss`` over their k outputs, as the reduced loss does.
"""

import contextlib

import numpy as np
import torch
from torch.utils.data import Dataset


class WeightedRows(Dataset):
    """A data set of ``(x_i, (t_i, w_i))``: targets travel with their weights.

    Parameters
    ----------
    X : ndarray or Dataset
        The module's inputs (an array, or a data set whose items are the inputs).
    y : ndarray
        The targets as the criterion expects them.
    weights : ndarray of shape (n,)
        The mean-1 weights w̃ of the rows.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_influence._adapters._skorch_weights import WeightedRows
    >>> rows = WeightedRows(np.zeros((3, 2)), np.arange(3), np.array([0.5, 1.0, 1.5]))
    >>> len(rows), rows[2][1]
    (3, (np.int64(2), np.float64(1.5)))
    """

    def __init__(self, X, y, weights):
        self.X, self.y, self.weights = X, y, weights

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = {k: A[i] for k, A in self.X.items()} if isinstance(self.X, dict) else self.X[i]
        return x, (self.y[i], self.weights[i])


def _weighted_get_loss(net):
    """``get_loss`` of ``net`` as the weighted mean of its unreduced criterion."""
    unweighted = type(net).get_loss

    def get_loss(y_pred, y_true, X=None, training=False):
        target, weight = y_true
        losses = unweighted(net, y_pred, target, X=X, training=training)
        weight = torch.as_tensor(weight).to(device=losses.device, dtype=losses.dtype)
        return (losses.reshape(len(weight), -1).mean(1) * weight).mean()

    return get_loss


@contextlib.contextmanager
def weighted_training(net):
    """Train ``net`` on :class:`WeightedRows` inside the context; restored afterwards.

    The criterion is re-initialised with ``reduction='none'`` (set as a plain attribute, not
    a net parameter) and ``get_loss`` is shadowed on the instance; on exit both are undone
    and the criterion rebuilt as configured, so the fitted net scores as the user set it.
    """
    saved = net.__dict__.get("criterion__reduction")
    net.__dict__["criterion__reduction"] = "none"
    net.initialize_criterion()
    net.__dict__["get_loss"] = _weighted_get_loss(net)
    try:
        yield
    finally:
        net.__dict__.pop("get_loss", None)
        net.__dict__.pop("criterion__reduction", None)
        if saved is not None:
            net.__dict__["criterion__reduction"] = saved
        net.initialize_criterion()


def mean_one(weights):
    """w̃ = N w / W (float64), the weights of the mean form."""
    weights = np.asarray(weights, dtype=np.float64)
    return weights * (len(weights) / weights.sum())
