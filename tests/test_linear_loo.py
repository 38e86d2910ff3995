"""Exact all-row leave-one-out of linear models and GLMs (_responses/_linear_loo.py).

Every family's all-row refits equal scikit-learn's own refits on a few rows, fitted to a
tight tolerance (no looser than that refit's own accuracy), and converged refits raise no
warning — in particular plain GridSearchCV over the damping of an influence estimate.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import (
    GammaRegressor,
    LinearRegression,
    LogisticRegression,
    PoissonRegressor,
    Ridge,
    RidgeClassifier,
    RidgeCV,
    TweedieRegressor,
)
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_influence import InfluenceFunction, LeaveOneOut
from sklearn_influence._base import fit_model_and_adapter
from sklearn_influence._responses._linear_loo import (
    LinearLOOContext,
    _loo_gradients,
    _woodbury_solve,
    exact_refits,
    leave_one_out_all_rows,
    one_step,
)
from sklearn_influence._responses._loo_taylor import (
    RemainderBound,
    TaylorGradient,
    _derivative_bound_parts,
    _output_derivatives,
)
from sklearn_influence._responses._newton import minimize_convex
from sklearn_influence.exceptions import InfluenceWarning

ROWS = [0, 7, 33]
TIGHT = {"tol": 1e-12, "max_iter": 10_000}


def _data(kind, n=80, d=4, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.normal(size=(n, d))
    eta = X @ rng.normal(scale=0.4, size=d)
    if kind == "binary":
        return X, (eta + rng.logistic(size=n) > 0).astype(int)
    if kind == "multiclass":
        return X, np.argmax(eta[:, None] * [1, 0, -1] + rng.gumbel(size=(n, 3)), axis=1)
    if kind == "counts":
        return X, rng.poisson(np.exp(eta))
    if kind == "positive":
        return X, rng.gamma(2.0, np.exp(eta) / 2.0)
    return X, eta + rng.normal(size=n)


FAMILIES = {
    "ols": (LinearRegression(), "regression"),
    "ridge": (Ridge(alpha=3.0), "regression"),
    "ridge_cv": (RidgeCV(alphas=[0.1, 1.0, 10.0]), "regression"),
    "ridge_classifier": (RidgeClassifier(alpha=1.0), "binary"),
    "logistic": (LogisticRegression(C=0.5, solver="newton-cholesky", **TIGHT), "binary"),
    "softmax": (LogisticRegression(C=0.5, solver="newton-cholesky", **TIGHT), "multiclass"),
    "poisson": (PoissonRegressor(alpha=0.05, solver="newton-cholesky", **TIGHT), "counts"),
    "gamma": (GammaRegressor(alpha=0.05, solver="newton-cholesky", **TIGHT), "positive"),
    "tweedie": (
        TweedieRegressor(power=1.5, alpha=0.05, solver="newton-cholesky", **TIGHT),
        "positive",
    ),
}


def _sklearn_refits(loo, X, y, rows):
    """scikit-learn's own refits without each row (with the remaining rows' weights)."""
    adapter = loo.problem_.adapter
    return np.array([adapter.retrain(X, y, exclude=[m], warm_start=False).numpy() for m in rows])


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("weighted", [False, True])
def test_all_row_loo_equals_scikit_learn_refits(name, weighted):
    model, kind = FAMILIES[name]
    X, y = _data(kind)
    weights = np.random.RandomState(1).uniform(0.5, 2.0, len(y)) if weighted else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", InfluenceWarning)
        loo = LeaveOneOut(model, train_indices=np.arange(len(y))).fit(X, y, sample_weight=weights)
    expected = _sklearn_refits(loo, X, y, ROWS)
    np.testing.assert_allclose(loo.parameters_[ROWS], expected, rtol=0, atol=1e-9)


def test_pipeline_and_warm_start_use_the_exact_path():
    X, y = _data("binary")
    model = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cholesky", **TIGHT))
    cold = LeaveOneOut(model, train_indices=ROWS).fit(X, y)
    warm = LeaveOneOut(model, warm_start=True, train_indices=ROWS).fit(X, y)
    # sum-form objective: the refit's penalty is the package's, so cold and warm coincide
    np.testing.assert_allclose(warm.parameters_, cold.parameters_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cold.parameters_, _sklearn_refits(cold, X, y, ROWS), atol=1e-9)


def _context(model, kind, curvature="gauss_newton"):
    X, y = _data(kind)
    _, adapter = fit_model_and_adapter(model, X, y, torch.device("cpu"))
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    theta = minimize_convex(adapter, adapter.parameters(), inputs, targets, adapter.row_weights)
    return LinearLOOContext(adapter, theta, inputs, targets, curvature=curvature), X, y


def test_one_step_is_the_least_squares_closed_form():
    """Δβ_i = (XᵀX)⁻¹x_i e_i / (1 − h_ii) with e = y − ŷ: numpy, no shared code."""
    context, X, y = _context(LinearRegression(), "regression")
    step = one_step(context, np.arange(len(y)))
    Z = np.column_stack([X, np.ones(len(y))])
    inverse = np.linalg.inv(Z.T @ Z)
    beta = inverse @ Z.T @ y
    leverage = np.einsum("ij,jk,ik->i", Z, inverse, Z)
    shifts = -(Z @ inverse) * ((y - Z @ beta) / (1 - leverage))[:, None]
    np.testing.assert_allclose(step.leverages.numpy(), leverage, atol=1e-14)
    np.testing.assert_allclose(step.shifts.numpy(), shifts, atol=1e-13)


@pytest.mark.filterwarnings("ignore:Could not adhere to working_memory")
def test_one_step_blocks_do_not_change_the_result():
    import sklearn

    context, _, y = _context(LogisticRegression(solver="newton-cholesky", **TIGHT), "multiclass")
    whole = one_step(context, np.arange(len(y)))
    with sklearn.config_context(working_memory=1e-4):  # a few rows per block
        assert len(context.block_rows(len(y), 3 * 3 * 15)) > 5
        blocked = one_step(context, np.arange(len(y)))
    np.testing.assert_allclose(blocked.shifts.numpy(), whole.shifts.numpy(), rtol=0, atol=1e-15)


def test_refinement_stops_at_the_rounding_level():
    """The refits' gradients are at round-off, after a handful of iterations."""
    model = LogisticRegression(C=0.5, solver="newton-cholesky", **TIGHT)
    X, y = _data("binary", n=300)
    _, adapter = fit_model_and_adapter(model, X, y, torch.device("cpu"))
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _reference, thetas, converged = leave_one_out_all_rows(
            adapter, adapter.parameters(), inputs, targets, np.arange(len(y))
        )
    assert converged.all()
    for m in ROWS:
        weights = torch.ones(len(y), dtype=torch.float64)
        weights[m] = 0
        gradient = torch.func.grad(adapter.objective)(thetas[m], inputs, targets, weights)
        assert float(gradient.abs().max()) < 1e-14


def test_grid_search_raises_no_convergence_warnings():
    """The 'loo' score target of plain GridSearchCV runs is exact and silent."""
    X, y = _data("binary", n=120)
    search = GridSearchCV(
        InfluenceFunction(LogisticRegression(max_iter=500), n_score_points=10, random_state=0),
        {"damping": [1e-3, 1e-1]},
        cv=KFold(2, shuffle=True, random_state=0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search.fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_unknown_penalty_is_refused():
    from sklearn_influence._responses._linear_loo import penalty_scales

    with pytest.raises(ValueError, match="Unknown penalty 'other'"):
        penalty_scales(None, torch.ones(2), "other")


# -- the Taylor refinement (one-output GLMs): certified refits equal the exact path ---------
def _taylor_problem(kind, weighted, n=3000):
    """A one-output GLM on n × 4 rows with one far outlier (row 5): (context, adapter, X, y)."""
    X, y = _data("binary" if kind == "logistic" else "counts", n=n, seed=2)
    X[5] = 6.0  # a high-leverage row: its refit is far from θ*, its bound large
    if kind == "logistic":
        model = LogisticRegression(C=1.0, solver="newton-cholesky", **TIGHT)
    else:
        y[5] = 3
        model = PoissonRegressor(alpha=0.01, solver="newton-cholesky", **TIGHT)
    weights = np.random.RandomState(3).uniform(0.5, 2.0, n) if weighted else None
    fit_params = None if weights is None else {"sample_weight": weights}
    _, adapter = fit_model_and_adapter(model, X, y, torch.device("cpu"), fit_params)
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    theta = minimize_convex(adapter, adapter.parameters(), inputs, targets, adapter.row_weights)
    return LinearLOOContext(adapter, theta, inputs, targets), adapter, X, y


TAYLOR_REMOVED = np.r_[5, np.arange(0, 3000, 25)]


@pytest.mark.parametrize("kind", ["logistic", "poisson"])
@pytest.mark.parametrize("weighted", [False, True])
def test_taylor_refits_equal_the_exact_path_and_scikit_learn(kind, weighted):
    context, adapter, X, y = _taylor_problem(kind, weighted)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InfluenceWarning)
        taylor = exact_refits(context, TAYLOR_REMOVED, penalty="refit", refinement="taylor")
        exact = exact_refits(context, TAYLOR_REMOVED, penalty="refit", refinement="exact")
    assert taylor.taylor_degree > 0 and exact.taylor_degree == 0
    # both paths run: most refits certified, the outlier's not (redone exactly)
    assert taylor.certified.mean() > 0.5 and not taylor.certified[0]
    assert taylor.converged.all() and exact.converged.all()
    np.testing.assert_allclose(taylor.parameters, exact.parameters, rtol=0, atol=1e-12)
    positions = [0, 1, int(np.flatnonzero(taylor.certified)[-1])]  # outlier, certified rows
    expected = np.array(
        [adapter.retrain(X, y, exclude=[TAYLOR_REMOVED[i]], warm_start=False) for i in positions]
    )
    np.testing.assert_allclose(taylor.parameters[positions], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["logistic", "poisson"])
def test_certified_taylor_refits_have_rounding_level_gradients(kind):
    """The exact gradient of J_{-m} (autograd) at the certified refits is at round-off: a
    few √N ulps of the scale s of its N terms (s = maxⱼ (1/N) Σᵢ wᵢ|∂L/∂hᵢ||zᵢⱼ|, numpy)."""
    context, adapter, _, _ = _taylor_problem(kind, weighted=True)
    refits = exact_refits(context, TAYLOR_REMOVED, refinement="taylor")
    certified = np.flatnonzero(refits.certified)
    gradients = adapter.loss.output_gradient(context.outputs, context.targets).numpy()[:, 0]
    weights, design = adapter.row_weights.numpy(), context.inputs.numpy()
    scale = (weights * np.abs(gradients)) @ np.abs(design) / len(design)
    tolerance = 4 * np.sqrt(len(design)) * np.finfo(float).eps * scale.max()
    for position in certified[:: max(1, len(certified) // 4)]:
        weights = adapter.row_weights.clone()
        weights[TAYLOR_REMOVED[position]] = 0
        gradient = torch.func.grad(adapter.objective)(
            refits.parameters[position], context.inputs, context.targets, weights
        )
        assert float(gradient.abs().max()) < tolerance


@pytest.mark.parametrize("kind", ["logistic", "poisson"])
@pytest.mark.parametrize("degree", [2, 3, 4])
def test_remainder_bound_covers_the_true_error(kind, degree):
    """At N = 300 the Taylor remainders are far above round-off: the bound on their effect
    on a chord step holds against the exact gradient, and is not vacuous (≤ 100×)."""
    context, _, _, _ = _taylor_problem(kind, weighted=True, n=300)
    rows = np.arange(0, 300, 7)
    index = torch.as_tensor(rows)
    refits = exact_refits(context, rows, refinement="exact")
    shifts = refits.parameters - context.theta
    scales = torch.ones(len(rows), dtype=torch.float64)
    model = TaylorGradient(context, degree)
    remainder = _loo_gradients(context, refits.parameters, index, scales) - model.gradients(
        context, refits.parameters, index, scales
    )
    parts = context.woodbury_parts(index)
    error = _woodbury_solve(context, parts, index, remainder).abs().amax(1)
    reach = 2 * float(context.inputs.norm(dim=1).max() * shifts.norm(dim=1).max())
    bound = RemainderBound(context, degree + 1, reach)(context, shifts, index)
    meaningful = error > 1e-14  # far above the comparison's rounding (~1e-16)
    assert meaningful.double().mean() > 0.5
    assert bool((bound[meaningful] >= error[meaningful]).all())
    assert float((bound / error)[meaningful].median()) < 100


def test_taylor_output_derivatives_match_autograd():
    """The closed-form derivatives of ∂L/∂h (logistic, Poisson, Gamma, Tweedie 1.5) equal
    torch's nested derivatives; the logistic derivative bound |σ⁽ⁿ⁾| ≤ c σ' holds on a grid."""
    from torch.func import grad, vmap

    from sklearn_influence._adapters._glm import TweedieHalfDeviance
    from sklearn_influence._adapters._losses import BinaryLogLoss

    h = torch.linspace(-12, 12, 241, dtype=torch.float64)[:, None]
    y = torch.rand(241, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for loss in [BinaryLogLoss(), *(TweedieHalfDeviance(p, "log") for p in (1.0, 1.5, 2.0))]:
        function = _scalar_gradient(loss)
        for value in _output_derivatives(loss, h, y, 5):
            expected = vmap(function)(h[:, 0], y[:, 0])
            np.testing.assert_allclose(value.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)
            function = grad(function)
    u = torch.sigmoid(h[:, 0]) * torch.sigmoid(-h[:, 0])
    for n in (3, 4, 5, 6):
        bound, rate = _derivative_bound_parts(BinaryLogLoss(), h, y, n)
        assert rate == 1.0
        assert bool((_logistic_derivative(h[:, 0], n).abs() <= bound * (1 + 1e-12)).all())
    assert bool((u > 0).all())


def _scalar_gradient(loss):
    """∂L/∂h of one output as a scalar function of (h, t), for torch.func."""
    return lambda t, target: loss.output_gradient(t[None, None], target[None, None])[0, 0]


def _logistic_derivative(h, n):
    """σ⁽ⁿ⁾(h) by nested autograd (independent of the closed forms)."""
    from torch.func import grad, vmap

    function = torch.sigmoid
    for _ in range(n):
        function = grad(function)
    return vmap(function)(h)


@pytest.mark.parametrize("name", ["gamma", "tweedie"])
def test_taylor_refits_of_non_canonical_links_equal_the_exact_path(name):
    """Gamma and Tweedie (log link, non-canonical): the model uses the exact Hessian; at
    N = 80 few refits certify, so the exact redo runs too."""
    model, kind = FAMILIES[name]
    context, _, _ = _context(model, kind, curvature="hessian")
    rows = np.arange(80)
    taylor = exact_refits(context, rows, penalty="refit", refinement="taylor")
    exact = exact_refits(context, rows, penalty="refit", refinement="exact")
    assert taylor.taylor_degree > 0 and taylor.converged.all()
    np.testing.assert_allclose(taylor.parameters, exact.parameters, rtol=0, atol=1e-12)


def test_unknown_refinement_and_unsupported_taylor_are_refused():
    context, _, _ = _context(LogisticRegression(solver="newton-cholesky", **TIGHT), "multiclass")
    with pytest.raises(ValueError, match="Unknown refinement 'fast'"):
        exact_refits(context, [0, 1], refinement="fast")
    with pytest.raises(ValueError, match="refinement='taylor' needs a single-output"):
        exact_refits(context, [0, 1], refinement="taylor")
    # the Fisher matrix of a non-canonical link is not the model's linear term
    fisher, _, _ = _context(FAMILIES["gamma"][0], "positive", curvature="gauss_newton")
    with pytest.raises(ValueError, match="refinement='taylor' needs a single-output"):
        exact_refits(fisher, [0, 1], refinement="taylor")
