"""Response functions: how the fitted model actually changes when training points are removed.

This module starts with actual retraining (leave-one-out), which both the scores of
:class:`~sklearn_influence.InfluenceFunction` and the response estimators build on.
"""

import numpy as np
import torch
from torch.func import vmap
from sklearn.utils.parallel import Parallel, delayed

from ._gradients import measure


def _retrain_without(adapter, X, y, index, warm_start):
    keep = np.ones(len(y), dtype=bool)
    keep[index] = False
    return adapter.retrain(_take(X, keep), _take(y, keep), warm_start=warm_start)


def _take(data, mask):
    return data.iloc[mask] if hasattr(data, "iloc") else data[mask]


def leave_one_out_parameters(adapter, X, y, indices, *, warm_start=True, n_jobs=None):
    """Parameters refit without each training point in ``indices``, shape (len(indices), p).

    The refits run through :class:`sklearn.utils.parallel.Parallel`, so a joblib backend
    chosen by the caller (for example Dask) spreads them over workers.
    """
    thetas = Parallel(n_jobs=n_jobs)(
        delayed(_retrain_without)(adapter, X, y, index, warm_start) for index in indices
    )
    return torch.stack([theta.to(adapter.device) for theta in thetas])


def measurement_changes(adapter, reference_theta, thetas, inputs, targets):
    """Δf[q, j] = f_q(thetas[j]) − f_q(reference_theta), shape (n_queries, len(thetas))."""
    def measure_at(theta):
        return measure(adapter, theta, inputs, targets)

    with torch.no_grad():
        changed = vmap(measure_at)(thetas).T
        return changed - measure_at(reference_theta).unsqueeze(1)
