"""The closed forms of linear models against the generic autodiff paths, in float64.

For a model linear in its parameters (h = W̃ z̃) the per-example gradient is (∂L/∂h) ⊗ z̃ and
the Gauss-Newton matrix is Σ w_i H_i ⊗ z̃_i z̃_iᵀ. Both must equal, to round-off, what vmap(grad)
and the whitened output Jacobians compute for every linear family, with and without an
intercept, inside a Pipeline, weighted or not. Each loss's closed-form output gradient must
equal the autograd fallback of :class:`OutputLoss`.
"""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    GammaRegressor,
    LinearRegression,
    LogisticRegression,
    PoissonRegressor,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
    SGDRegressor,
    TweedieRegressor,
)
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._losses import OutputLoss
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._gauss_newton import GaussNewton
from sklearn_influence._engine._gradients import (
    _vmap_gradients,
    per_example_gradients,
    resolve_query_targets,
)

_CPU = torch.device("cpu")
N, D = 60, 4


def _data(kind, seed=7):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D))
    if kind == "binary":
        y = (X[:, 0] + 0.5 * rng.normal(size=N) > 0).astype(int)
    elif kind == "multiclass":
        y = np.argmax(X[:, :3] + 0.7 * rng.normal(size=(N, 3)), axis=1)
    elif kind == "multioutput":
        y = X @ rng.normal(size=(D, 2)) + 0.1 * rng.normal(size=(N, 2))
    elif kind == "count":
        y = rng.poisson(np.exp(0.3 * X[:, 0] + 0.5)).astype(float)
    elif kind == "positive":
        y = np.exp(0.3 * X[:, 0] + 0.2 * rng.normal(size=N) + 1.0)
    else:
        y = X @ rng.normal(size=D) + 0.1 * rng.normal(size=N)
    return X, y


# name: (estimator factory, kind of data)
FAMILIES = {
    "linear_regression": (lambda fi: LinearRegression(fit_intercept=fi), "regression"),
    "ridge": (lambda fi: Ridge(alpha=0.5, fit_intercept=fi), "regression"),
    "ridge_multioutput": (lambda fi: Ridge(alpha=0.5, fit_intercept=fi), "multioutput"),
    "logistic_binary": (lambda fi: LogisticRegression(C=2.0, fit_intercept=fi), "binary"),
    "logistic_multinomial": (
        lambda fi: LogisticRegression(C=2.0, fit_intercept=fi),
        "multiclass",
    ),
    "sgd_classifier_binary": (
        lambda fi: SGDClassifier(loss="log_loss", fit_intercept=fi, random_state=0),
        "binary",
    ),
    "sgd_classifier_ovr": (
        lambda fi: SGDClassifier(loss="log_loss", fit_intercept=fi, random_state=0),
        "multiclass",
    ),
    "sgd_regressor": (lambda fi: SGDRegressor(fit_intercept=fi, random_state=0), "regression"),
    "ridge_classifier_binary": (lambda fi: RidgeClassifier(fit_intercept=fi), "binary"),
    "ridge_classifier_multiclass": (lambda fi: RidgeClassifier(fit_intercept=fi), "multiclass"),
    "poisson": (lambda fi: PoissonRegressor(alpha=0.1, fit_intercept=fi), "count"),
    "gamma": (lambda fi: GammaRegressor(alpha=0.1, fit_intercept=fi), "positive"),
    "tweedie_1.5": (lambda fi: TweedieRegressor(power=1.5, fit_intercept=fi), "count"),
    "tweedie_3": (lambda fi: TweedieRegressor(power=3.0, fit_intercept=fi), "positive"),
    "tweedie_0_identity": (lambda fi: TweedieRegressor(power=0.0, fit_intercept=fi), "positive"),
    "tweedie_1_identity": (
        lambda fi: TweedieRegressor(power=1.0, link="identity", fit_intercept=fi),
        "positive",
    ),
    "tweedie_2_identity": (
        lambda fi: TweedieRegressor(power=2.0, link="identity", fit_intercept=fi),
        "positive",
    ),
}


def _fitted(name, fit_intercept, pipeline):
    factory, kind = FAMILIES[name]
    X, y = _data(kind)
    if kind == "positive" and "identity" in name:
        X = np.abs(X) * 0.1  # keeps the identity-link predictions μ = η positive
    model = factory(fit_intercept)
    if "identity" in name and not fit_intercept:
        X = np.column_stack([X, np.ones(N)])  # the intercept as a feature: μ stays positive
    estimator = make_pipeline(StandardScaler(), model) if pipeline else model
    if pipeline and "identity" in name:
        estimator = model  # a centred feature could make μ negative: no scaler here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y)
    adapter = make_adapter(estimator, N, _CPU)
    theta = adapter.parameters()
    if "identity" in name and not fit_intercept:
        # scikit-learn starts this fit at μ = 0 and stays there; evaluate at a point with μ > 0
        theta = torch.zeros_like(theta)
        theta[-1] = float(np.mean(y))
    return adapter, X, y, theta


def _relative_error(actual, expected):
    scale = max(float(expected.abs().max()), 1e-300)
    return float((actual - expected).abs().max()) / scale


CASES = [
    pytest.param(name, fit_intercept, pipeline, id=f"{name}-{intercept}-{wrapped}")
    for name in FAMILIES
    for fit_intercept, intercept in [(True, "intercept"), (False, "no_intercept")]
    for pipeline, wrapped in [(False, "bare"), (True, "pipeline")]
]


@pytest.mark.parametrize("name, fit_intercept, pipeline", CASES)
def test_closed_form_gradients_equal_vmap(name, fit_intercept, pipeline):
    adapter, X, y, theta = _fitted(name, fit_intercept, pipeline)
    assert adapter.linear_layout
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    # at θˢ and away from it (gradients are then not centred), training and query targets
    shift = 1e-3 * torch.linspace(-1.0, 1.0, theta.numel(), dtype=theta.dtype)
    query_targets = (
        resolve_query_targets(adapter, theta, inputs, None)
        if adapter.is_classifier or adapter.n_outputs == 1
        else targets
    )
    for point in (theta, theta + shift):
        for rows_targets in (targets, query_targets):
            fast = per_example_gradients(adapter, point, inputs, rows_targets, batch_size=7)
            slow = _vmap_gradients(adapter, point, inputs, rows_targets, batch_size=7)
            assert fast.shape == slow.shape == (N, theta.numel())
            assert fast.dtype == torch.float64
            assert _relative_error(fast, slow) < 1e-12


@pytest.mark.parametrize("name", ["linear_regression", "ridge", "poisson", "tweedie_1.5"])
def test_label_free_measurement_gradient_is_the_input_row(name):
    # without targets a single-output regressor's measurement is its prediction: ∇θ ŷ = z̃,
    # and for a log-link GLM ∇θ μ = μ z̃ (μ from scikit-learn's own predict)
    adapter, X, _, theta = _fitted(name, True, False)
    inputs = adapter.inputs(X)
    fast = per_example_gradients(adapter, theta, inputs, None)
    slow = _vmap_gradients(adapter, theta, inputs, None, 1024)
    if name in ("poisson", "tweedie_1.5"):
        mu = torch.as_tensor(adapter.estimator.predict(X), dtype=torch.float64)
        assert _relative_error(fast, mu[:, None] * inputs) < 1e-12
    else:
        assert torch.equal(fast, inputs)
    assert _relative_error(fast, slow) < 1e-12


def test_empty_inputs_give_an_empty_gradient_matrix():
    adapter, X, y, theta = _fitted("logistic_multinomial", True, False)
    inputs, targets = adapter.inputs(X[:0]), adapter.targets(y[:0])
    assert per_example_gradients(adapter, theta, inputs, targets).shape == (0, theta.numel())


@pytest.mark.parametrize("name, fit_intercept, pipeline", CASES)
def test_kronecker_gauss_newton_equals_the_jacobian_form(name, fit_intercept, pipeline):
    adapter, X, y, theta = _fitted(name, fit_intercept, pipeline)
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    weights = torch.as_tensor(
        np.random.default_rng(3).uniform(0.2, 3.0, size=N), dtype=torch.float64
    )
    for row_weights in (None, weights):
        curvature = make_curvature(
            "gauss_newton", adapter, theta, inputs, targets, batch_size=13, weights=row_weights
        )
        assert isinstance(curvature, GaussNewton)
        fast = curvature._linear_data_term()
        slow = theta.new_zeros(fast.shape)
        for whitened in curvature.whitened_jacobians(13):
            stacked = whitened.reshape(-1, theta.numel())
            slow += stacked.T @ stacked
        assert _relative_error(fast, slow) < 1e-12
        # and the full dense matrix against matrix-free products
        dense = curvature.dense()
        basis = torch.eye(theta.numel(), dtype=theta.dtype)
        assert _relative_error(dense, curvature.matmul(basis)) < 1e-10


def test_integer_weight_gauss_newton_equals_duplicated_rows():
    adapter, X, y, theta = _fitted("logistic_multinomial", True, False)
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    weights = torch.ones(N, dtype=torch.float64)
    weights[:5] = 3.0
    weighted = make_curvature(
        "gauss_newton", adapter, theta, inputs, targets, weights=weights
    )._linear_data_term()
    repeat = torch.cat([torch.arange(5).repeat(2), torch.arange(N)])
    duplicated = make_curvature(
        "gauss_newton", adapter, theta, inputs[repeat], targets[repeat]
    )._linear_data_term()
    assert _relative_error(weighted, duplicated) < 1e-12


def _losses():
    families = ["ridge_multioutput", "logistic_binary", "logistic_multinomial"]
    families += ["sgd_classifier_ovr", "sgd_regressor", "ridge_classifier_multiclass"]
    families += ["poisson", "gamma", "tweedie_1.5", "tweedie_3", "tweedie_0_identity"]
    families += ["tweedie_1_identity", "tweedie_2_identity"]
    return families


@pytest.mark.parametrize("name", _losses())
def test_output_gradient_equals_the_autograd_fallback(name):
    adapter, X, y, theta = _fitted(name, True, False)
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    outputs = adapter.outputs(theta, inputs)
    closed = adapter.loss.output_gradient(outputs, targets)
    generic = OutputLoss.output_gradient(adapter.loss, outputs, targets)
    assert type(adapter.loss).output_gradient is not OutputLoss.output_gradient
    assert closed.shape == outputs.shape
    assert _relative_error(closed, generic) < 1e-12


def test_a_loss_without_a_closed_form_uses_autograd():
    class Cubic(OutputLoss):
        def __call__(self, outputs, targets):
            return ((outputs - targets) ** 4).sum(-1) / 4

    outputs = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).reshape(3, 2)
    targets = torch.full((3, 2), 0.25, dtype=torch.float64)
    gradient = Cubic().output_gradient(outputs, targets)
    assert torch.allclose(gradient, (outputs - targets) ** 3, rtol=1e-14, atol=0)
