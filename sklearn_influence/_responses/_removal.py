"""Ground truth of removal: what actually happens when training points are removed.

Estimators and metrics call this module, never the response functions directly:

* :func:`removal_parameters` — a reference θ and one θ per removed training point, so that
  Δf = f(θ_m) − f(reference) is the actual change an influence estimate predicts;
* :func:`removal_changes` — those Δf for the mean measurement on a query set, the target of
  :meth:`~sklearn_influence.InfluenceFunction.removal_agreement` (and so of ``score``, the
  scorers, :class:`~sklearn_influence.InfluenceFunctionCV` and the command line);
* :func:`subset_removal_parameters` and :func:`subset_removal_measurements` — the model refit
  without whole subsets of the training set, and its measurements there (the linear
  datamodeling score).

The single-point targets (``kind``):

* ``"loo"`` — leave-one-out retraining. For models linear in their parameters (convex
  objectives) this is the exact optimum of (1/N) Σ_{i≠m} L_i + R (weighted models:
  Σ_{i≠m} w_i L_i / W + R), found by Newton's method from the optimum of the full objective
  (the reference); cold and warm starts coincide.
  Other models are retrained cold (same initial weights and data order); the reference is
  the cold retrain on all points.
* ``"warm_loo"`` — retraining started from θˢ; the reference is the same warm retraining on
  all points, so that the drift of extra training cancels.
* ``"pbrf"`` — the proximal Bregman response function at a fixed reference damping, the
  object influence estimates approximate best for networks (Bae et al., 2022); the
  reference is θˢ.

How the optima are found lives below: Newton's method in :mod:`._newton`, the PRF/PBRF
optimisation in :mod:`._functions` and :mod:`._optimizers`.
"""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.parallel import Parallel, delayed

from .._engine._gradients import measure
from .._options import check_options
from .._torch_utils import to_numpy
from ._functions import (
    ResponseProblem,
    leave_one_out_parameters,
    measurement_changes,
    proximal_response,
)
from ._linear_loo import leave_one_out_all_rows
from ._newton import leave_one_out_optima, minimize_convex
from ._optimizers import OPTIMIZERS

SCORE_TARGETS = ("loo", "warm_loo", "pbrf")

#: the settings of the "pbrf" score target (``InfluenceFunction(score_options=...)``)
PBRF_SCORE_OPTIONS = {
    "optimizer": "auto",
    "n_iter": "auto",
    "tol": 1e-4,
    "learning_rate": "auto",
    "optimizer_options": None,
}
PBRF_SCORE_CONSTRAINTS = {
    "optimizer": [StrOptions(set(OPTIMIZERS))],
    "n_iter": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
    "tol": [Interval(Real, 0, None, closed="neither")],
    "learning_rate": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
    "optimizer_options": [dict, None],
}


def check_score_options(options):
    """``score_options`` with its defaults, checked (InvalidParameterError)."""
    return check_options(
        options, PBRF_SCORE_OPTIONS, PBRF_SCORE_CONSTRAINTS, channel="score_options",
        owner="score_target='pbrf'",
    )  # fmt: skip


def score_names(setting):
    """How ``InfluenceFunction`` spells a response setting (for the warnings' advice)."""
    if setting == "damping":
        return "score_damping"
    return f"score_options['{setting}']"


def removal_parameters(
    adapter, theta, X, y, removed, *, kind="loo", pbrf_damping=1e-3, n_jobs=None, memory=None,
    key=None, verbose=0, pbrf_options=None,
):  # fmt: skip
    """``(reference, thetas)`` for the removal of each training point in ``removed``.

    Parameters
    ----------
    adapter : ModelAdapter
    theta : Tensor of shape (p,)
        The fitted parameters θˢ.
    X, y : the training data passed to ``fit``.
    removed : sequence of int
    kind : {"loo", "warm_loo", "pbrf"}
    pbrf_damping : float
        The proximity damping of the PBRF target.
    n_jobs : int or None
        Parallel retraining through :mod:`sklearn.utils.parallel` (non-convex models).
    memory : None, str or joblib.Memory
        Saves each finished chunk of the PBRF or of the retraining as it completes, so an
        interrupted run resumes (:mod:`._checkpoint`); ``key`` identifies the fit (the
        estimator and its seed) in the saved chunks' keys.
    verbose : int
        Progress (removed points done of the total, time left) on stderr.
    pbrf_options : dict or None
        ``score_options`` of the PBRF target (:data:`PBRF_SCORE_OPTIONS`); its warnings
        name them as ``InfluenceFunction`` spells them.
    """
    if kind not in SCORE_TARGETS:
        raise ValueError(f"Unknown score target {kind!r}; choose one of {SCORE_TARGETS}.")
    if kind == "pbrf":
        settings = check_score_options(pbrf_options)
        problem = ResponseProblem(adapter, X, y)
        result = proximal_response(
            problem, "pbrf", removed, damping=pbrf_damping, n_jobs=n_jobs, memory=memory, key=key,
            verbose=verbose, names=score_names, name="InfluenceFunction(score_target='pbrf')",
            **settings,
        )  # fmt: skip
        return problem.theta, result.parameters
    if adapter.linear_layout:
        inputs, targets = adapter.inputs(X), adapter.targets(y)
        weights = adapter.row_weights  # a weighted model keeps its weights; m loses all of its
        if adapter.is_convex:  # all rows exactly, at about the cost of a fit
            reference, thetas, _ = leave_one_out_all_rows(adapter, theta, inputs, targets, removed)
            return reference, thetas
        reference = minimize_convex(adapter, theta, inputs, targets, weights)
        return reference, leave_one_out_optima(
            adapter, reference, inputs, targets, removed, row_weights=weights
        )
    warm_start = kind == "warm_loo"
    reference = adapter.retrain(X, y, exclude=(), warm_start=warm_start)
    thetas = leave_one_out_parameters(
        adapter, X, y, removed, warm_start=warm_start, n_jobs=n_jobs, memory=memory, key=key,
        verbose=verbose,
    )  # fmt: skip
    return reference.to(thetas.device), thetas


def removal_changes(
    adapter, theta, X, y, removed, X_query, y_query, *, kind="loo", pbrf_damping=1e-3, n_jobs=None,
    memory=None, key=None, verbose=0, pbrf_options=None,
):  # fmt: skip
    """Actual change of the mean query measurement for each removed point, ndarray (k,).

    The parameters come from :func:`removal_parameters` (same arguments); the measurement is
    the loss on (``X_query``, ``y_query``), averaged over the queries.
    """
    reference, thetas = removal_parameters(
        adapter, theta, X, y, removed, kind=kind, pbrf_damping=pbrf_damping, n_jobs=n_jobs,
        memory=memory, key=key, verbose=verbose, pbrf_options=pbrf_options,
    )  # fmt: skip
    # responses may be computed in a wider dtype than the model's (see ResponseProblem)
    inputs = adapter.inputs(X_query).to(reference.dtype)
    targets = adapter.targets(y_query).to(reference.dtype)
    return to_numpy(measurement_changes(adapter, reference, thetas, inputs, targets).mean(0))


def _refit_without(adapter, theta, train, removed, warm_start):
    """Parameters refit without the training rows where ``removed`` is True.

    Models linear in their parameters are minimised exactly in torch (Newton's method on the
    weighted objective, starting from θˢ; a convex objective has one minimiser, so the start
    does not matter); other models are refit by their adapter.
    """
    inputs, targets, X, y = train
    if adapter.linear_layout:
        weights = torch.as_tensor(~removed, dtype=inputs.dtype, device=inputs.device)
        if adapter.row_weights is not None:
            weights = weights * adapter.row_weights.to(inputs.dtype)
        return minimize_convex(adapter, theta, inputs, targets, weights)
    return adapter.retrain(X, y, exclude=np.flatnonzero(removed), warm_start=warm_start)


def subset_removal_parameters(adapter, theta, X, y, masks, *, warm_start=False, n_jobs=None):
    """Parameters refit without each subset: one tensor (p,) per row of ``masks``.

    Parameters
    ----------
    adapter : ModelAdapter
    theta : Tensor of shape (p,)
        θˢ (the start of the exact minimisation of convex models).
    X, y : the training data passed to ``fit``.
    masks : ndarray of bool, shape (n_subsets, n_train)
        True where a training point is removed.
    warm_start : bool
        Models retrained by their adapter start at θˢ instead of the initialisation.
    n_jobs : int or None
        The refits run through :class:`sklearn.utils.parallel.Parallel`.
    """
    train = (adapter.inputs(X), adapter.targets(y), X, y)
    thetas = Parallel(n_jobs=n_jobs)(
        delayed(_refit_without)(adapter, theta, train, mask, warm_start) for mask in masks
    )
    return [refit.to(theta.device) for refit in thetas]


def subset_removal_measurements(
    adapter, theta, X, y, masks, inputs, targets, *, warm_start=False, n_jobs=None
):
    """Measurement of each query after refitting without each subset, (n_queries, n_subsets).

    ``inputs`` and ``targets`` are the queries as the adapter encodes them, the targets
    resolved (the predicted ones where the query has none); the refits are
    :func:`subset_removal_parameters`.
    """
    thetas = subset_removal_parameters(
        adapter, theta, X, y, masks, warm_start=warm_start, n_jobs=n_jobs
    )
    with torch.no_grad():
        return np.stack(
            [to_numpy(measure(adapter, refit, inputs, targets)) for refit in thetas], axis=1
        )
