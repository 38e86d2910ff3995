"""Response functions: how the fitted model actually changes when training points are removed.

This module starts with actual retraining (leave-one-out), which both the scores of
:class:`~sklearn_influence.InfluenceFunction` and the response estimators build on.
"""

import torch
from sklearn.utils.parallel import Parallel, delayed
from torch.func import vmap

from ._gradients import measure


def leave_one_out_parameters(adapter, X, y, indices, *, warm_start=True, n_jobs=None):
    """Parameters refit without each training point in ``indices``, shape (len(indices), p).

    The refits run through :class:`sklearn.utils.parallel.Parallel`, so a joblib backend
    chosen by the caller (for example Dask) spreads them over workers.
    """
    thetas = Parallel(n_jobs=n_jobs)(
        delayed(adapter.retrain)(X, y, exclude=[index], warm_start=warm_start) for index in indices
    )
    return torch.stack([theta.to(adapter.device) for theta in thetas])


def measurement_changes(adapter, reference_theta, thetas, inputs, targets):
    """Δf[q, j] = f_q(thetas[j]) − f_q(reference_theta), shape (n_queries, len(thetas))."""

    def measure_at(theta):
        return measure(adapter, theta, inputs, targets)

    with torch.no_grad():
        changed = vmap(measure_at)(thetas).T
        return changed - measure_at(reference_theta).unsqueeze(1)
