"""Ground-truth targets for scoring influence estimates: the parameters after removal.

``removal_parameters`` returns a reference θ and one θ per removed training point, so that
Δf = f(θ_m) − f(reference) is the actual change the influence estimate predicts:

* ``"loo"`` — leave-one-out retraining. For models linear in their parameters (convex
  objectives) this is the exact optimum of (1/N) Σ_{i≠m} L_i + R, found by Newton's method
  from the optimum of the full objective (the reference); cold and warm starts coincide.
  Other models are retrained cold (same initial weights and data order); the reference is
  the cold retrain on all points.
* ``"warm_loo"`` — retraining started from θˢ; the reference is the same warm retraining on
  all points, so that the drift of extra training cancels.
* ``"pbrf"`` — the proximal Bregman response function at a fixed reference damping, the
  object influence estimates approximate best for networks (Bae et al., 2022); the
  reference is θˢ.
"""

from ._functions import ResponseProblem, leave_one_out_parameters, proximal_response
from ._newton import leave_one_out_optima, minimize_convex

SCORE_TARGETS = ("loo", "warm_loo", "pbrf")


def removal_parameters(
    adapter, theta, X, y, removed, *, kind="loo", pbrf_damping=1e-3, n_jobs=None
):
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
    """
    if kind not in SCORE_TARGETS:
        raise ValueError(f"Unknown score target {kind!r}; choose one of {SCORE_TARGETS}.")
    if kind == "pbrf":
        problem = ResponseProblem(adapter, X, y)
        result = proximal_response(problem, "pbrf", removed, damping=pbrf_damping, n_jobs=n_jobs)
        return problem.theta, result.parameters
    if adapter.linear_layout:
        inputs, targets = adapter.inputs(X), adapter.targets(y)
        reference = minimize_convex(adapter, theta, inputs, targets)
        return reference, leave_one_out_optima(adapter, reference, inputs, targets, removed)
    warm_start = kind == "warm_loo"
    reference = adapter.retrain(X, y, exclude=(), warm_start=warm_start)
    thetas = leave_one_out_parameters(adapter, X, y, removed, warm_start=warm_start, n_jobs=n_jobs)
    return reference.to(thetas.device), thetas
