"""Response functions: LOO variants, PRF, PBRF and the linearized PBRF.

Truth comes from outside the code under test: finite differences, numpy closed forms,
scikit-learn refits and the losses' own definitions.
"""

import warnings

import numpy as np
import pytest
import torch
from joblib import parallel_config
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from torch.func import grad, hessian

from sklearn_influence import PBRF, LeaveOneOut, LinearizedPBRF, ProximalResponse
from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._base import ModelAdapter
from sklearn_influence._adapters._losses import (
    BinaryLogLoss,
    OutputLoss,
    SoftmaxCrossEntropy,
    SquaredError,
)
from sklearn_influence._engine._curvature import dense_curvature
from sklearn_influence._engine._gradients import per_example_gradients
from sklearn_influence._responses._functions import (
    ResponseProblem,
    cold_leave_one_out,
    linearized_pbrf,
    proximal_response,
    warm_leave_one_out,
)
from sklearn_influence._responses._optimizers import (
    bregman_divergence,
    curvature_scale,
    optimize_responses,
    response_objective,
)

CPU = torch.device("cpu")


class TanhNetAdapter(ModelAdapter):
    """A one-hidden-layer tanh network trained briefly by Adam: a small nonlinear model
    that is *not* at a minimum of its objective, as networks usually are not."""

    def __init__(self, X, y, hidden=4, weight_decay=1e-3, epochs=60, seed=0):
        self.device, self.dtype = CPU, torch.float64
        self.classes_ = np.unique(y)
        self.is_classifier = True
        self.n_outputs = len(self.classes_)
        self.loss = SoftmaxCrossEntropy()
        self.d, self.hidden = X.shape[1], hidden
        self.p = hidden * (self.d + 1) + self.n_outputs * (hidden + 1)
        self.weight_decay = weight_decay
        generator = torch.Generator().manual_seed(seed)
        theta = 0.5 * torch.randn(self.p, generator=generator, dtype=self.dtype)
        inputs, targets = self.inputs(X), self.targets(y)
        theta.requires_grad_(True)
        optimizer = torch.optim.Adam([theta], lr=0.05)
        for _ in range(epochs):
            optimizer.zero_grad()
            self.objective(theta, inputs, targets).backward()
            optimizer.step()
        self._theta = theta.detach()

    def inputs(self, X):
        return self._tensor(np.asarray(X, dtype=np.float64))

    def parameters(self):
        return self._theta

    def outputs(self, theta, inputs):
        d, h, k = self.d, self.hidden, self.n_outputs
        first = theta[: h * (d + 1)].reshape(h, d + 1)
        second = theta[h * (d + 1) :].reshape(k, h + 1)
        hidden = torch.tanh(inputs @ first[:, :-1].T + first[:, -1])
        return hidden @ second[:, :-1].T + second[:, -1]

    def regularizer_diagonal(self):
        return torch.full((self.p,), self.weight_decay, dtype=self.dtype)


@pytest.fixture(scope="module")
def net_problem():
    X, y = make_classification(120, 5, n_informative=4, n_redundant=0, n_classes=3, random_state=0)
    return ResponseProblem(TanhNetAdapter(X, y), X, y)


def _linear_problem(model, X, y):
    fitted = clone(model).fit(X, y)
    return ResponseProblem(make_adapter(fitted, len(y), CPU), X, y)


@pytest.fixture(scope="module")
def logistic_problem():
    X, y = make_classification(150, 4, n_informative=3, n_redundant=0, random_state=1)
    return _linear_problem(LogisticRegression(C=1.0, tol=1e-12, max_iter=1000), X, y)


def _finite_difference_hessian(function, theta, step=1e-5):
    """Central differences of the gradient along each coordinate (independent of autograd
    second derivatives)."""
    gradient = grad(function)
    columns = []
    for j in range(theta.numel()):
        shift = torch.zeros_like(theta)
        shift[j] = step
        columns.append((gradient(theta + shift) - gradient(theta - shift)) / (2 * step))
    return torch.stack(columns, 1)


def _full_objective(problem, kind, damping, epsilon, m):
    objective = response_objective(
        problem.adapter, kind, problem.theta, damping=damping, epsilon=epsilon
    )

    def at(theta):
        return objective(
            theta, problem.inputs[m], problem.targets[m], problem.inputs, problem.targets,
            problem.reference_outputs,
        )  # fmt: skip

    return at


# -- Bregman divergences ------------------------------------------------------------------
class _DefinitionOnly(OutputLoss):
    """Wraps a loss but hides its closed-form Bregman divergence (the generic path)."""

    def __init__(self, loss):
        self.inner = loss

    def __call__(self, outputs, targets):
        return self.inner(outputs, targets)


@pytest.mark.parametrize(
    "loss, k", [(SquaredError(0.5), 2), (SquaredError(1.0), 1), (SoftmaxCrossEntropy(), 4),
                (BinaryLogLoss(), 1), (BinaryLogLoss(), 3)],
)  # fmt: skip
def test_bregman_closed_forms_match_the_definition(loss, k):
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(7, k, generator=generator, dtype=torch.float64)
    h_ref = torch.randn(7, k, generator=generator, dtype=torch.float64)
    if isinstance(loss, SquaredError):
        targets = torch.randn(7, k, generator=generator, dtype=torch.float64)
    else:
        targets = (torch.rand(7, k, generator=generator) > 0.5).to(torch.float64)
        if isinstance(loss, SoftmaxCrossEntropy):
            targets = torch.nn.functional.one_hot(torch.arange(7) % k, k).to(torch.float64)
    closed = bregman_divergence(loss, h, h_ref, targets)
    generic = bregman_divergence(_DefinitionOnly(loss), h, h_ref, targets)
    # the definition written out by hand, with autograd only for ∇_h L(hˢ)
    h_req = h_ref.clone().requires_grad_(True)
    slope = torch.autograd.grad(loss(h_req, targets).sum(), h_req)[0]
    by_hand = loss(h, targets) - loss(h_ref, targets) - (slope * (h - h_ref)).sum(-1)
    torch.testing.assert_close(closed, by_hand, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(generic, by_hand, rtol=1e-10, atol=1e-12)
    assert bool((closed >= -1e-12).all())


# -- identities of the PBRF objective -----------------------------------------------------
def _problems(net_problem, logistic_problem):
    return {"net": net_problem, "logistic": logistic_problem}


@pytest.mark.parametrize("which", ["net", "logistic"])
def test_pbrf_gradient_at_reference_is_minus_epsilon_removed_gradient(
    which, net_problem, logistic_problem
):
    problem = _problems(net_problem, logistic_problem)[which]
    m = 3
    objective = _full_objective(problem, "pbrf", damping=0.1, epsilon=problem.epsilon, m=m)
    removed = per_example_gradients(
        problem.adapter, problem.theta, problem.inputs[m : m + 1], problem.targets[m : m + 1]
    )[0]
    torch.testing.assert_close(
        grad(objective)(problem.theta), -problem.epsilon * removed, rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("which", ["net", "logistic"])
def test_pbrf_hessian_at_reference_is_damped_gauss_newton(which, net_problem, logistic_problem):
    problem = _problems(net_problem, logistic_problem)[which]
    damping, m = 0.05, 5
    gauss_newton = dense_curvature(
        problem.adapter, problem.theta, problem.inputs, problem.targets, "gauss_newton"
    )
    expected = gauss_newton + damping * torch.eye(problem.theta.numel(), dtype=torch.float64)
    at_zero = _full_objective(problem, "pbrf", damping, epsilon=0.0, m=m)
    finite = _finite_difference_hessian(at_zero, problem.theta)
    torch.testing.assert_close(finite, expected, rtol=1e-6, atol=1e-8)
    # with ε > 0 the removed point's own loss Hessian is subtracted
    epsilon = problem.epsilon
    at_epsilon = _full_objective(problem, "pbrf", damping, epsilon=epsilon, m=m)

    def removed_loss(theta):
        outputs = problem.adapter.outputs(theta, problem.inputs[m : m + 1])
        return problem.adapter.loss(outputs, problem.targets[m : m + 1])[0]

    expected_epsilon = expected - epsilon * hessian(removed_loss)(problem.theta)
    finite_epsilon = _finite_difference_hessian(at_epsilon, problem.theta)
    torch.testing.assert_close(finite_epsilon, expected_epsilon, rtol=1e-6, atol=1e-8)
    if which == "net":  # the network's Hessian differs from G: the identity is not trivial
        full = _full_objective(problem, "prf", damping, epsilon=0.0, m=m)
        assert float((hessian(full)(problem.theta) - expected).abs().max()) > 1e-4


def test_curvature_scale_is_the_top_eigenvalue(net_problem):
    problem = net_problem
    largest, smallest = curvature_scale(
        problem.adapter, problem.theta, problem.inputs, problem.targets,
        problem.reference_outputs, damping=0.01, n_power_iter=200,
    )  # fmt: skip
    matrix = dense_curvature(
        problem.adapter, problem.theta, problem.inputs, problem.targets, "gauss_newton"
    )
    eigenvalues = torch.linalg.eigvalsh(matrix) + 0.01
    assert largest == pytest.approx(float(eigenvalues[-1]), rel=1e-3)
    assert smallest == pytest.approx(0.01 + problem.adapter.weight_decay)


# -- ε = 0: nothing is removed, every warm-started response stays at θˢ ------------------
def test_zero_epsilon_keeps_every_warm_response_at_reference(net_problem, logistic_problem):
    indices = [0, 7, 11]
    for kind, damping in [("pbrf", 0.01), ("prf", 0.01), ("prf", 0.0)]:
        exact = proximal_response(
            logistic_problem, kind, indices, damping=damping, epsilon=0.0, method="newton"
        )
        torch.testing.assert_close(
            exact.parameters, logistic_problem.theta.expand(3, -1), rtol=0, atol=1e-9
        )
    # the network is not at a minimum of J, but θˢ minimises its PBRF objective at ε = 0
    iterative = proximal_response(net_problem, "pbrf", indices, damping=0.01, epsilon=0.0)
    assert torch.equal(iterative.parameters, net_problem.theta.expand(3, -1))
    assert iterative.converged.all() and (iterative.n_iter == 0).all()
    linear = linearized_pbrf(net_problem, indices, damping=0.01, epsilon=0.0)
    assert torch.equal(linear.parameters, net_problem.theta.expand(3, -1))


# unconverged on purpose
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.ResponseConvergenceWarning")
def test_unconverged_network_prf_moves_at_zero_epsilon(net_problem):
    """Contrast: the PRF's objective is J itself, which θˢ does not minimise."""
    result = proximal_response(
        net_problem, "prf", [0], damping=0.01, epsilon=0.0, n_iter=50, tol=0.0
    )
    assert float((result.parameters[0] - net_problem.theta).norm()) > 1e-3


# -- linear regression: PBRF = linearized PBRF up to the O(ε²) term ----------------------
def test_linear_regression_pbrf_equals_linearized_pbrf():
    """For MSE and a model linear in θ the PBRF objective is an exact quadratic, so the PBRF
    and its linearisation differ only by −εL_m's own curvature: by the second-order term
    ε²(G+λI)⁻¹Hₘ(G+λI)⁻¹∇Lₘ + O(ε³), which is checked against numpy below. With N = 5000
    that term is below 1e-6, so the two agree to 1e-6."""
    rng = np.random.RandomState(0)
    n = 5000
    X = rng.normal(size=(n, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.5 * rng.normal(size=n)
    problem = _linear_problem(LinearRegression(), X, y)
    indices, damping = np.array([0, 5, 17, 99]), 1e-3
    pbrf = proximal_response(problem, "pbrf", indices, damping=damping).parameters.numpy()
    linear = linearized_pbrf(problem, indices, damping=damping).parameters.numpy()
    np.testing.assert_allclose(pbrf, linear, rtol=0, atol=1e-6)
    # numpy truth: with h = W̃ z̃ and L = (h − t)², the PBRF objective is the quadratic
    # (1/N)Σ (z̃ᵢᵀ(θ−θˢ))² − ε(z̃ₘᵀθ − tₘ)² + λ/2‖θ−θˢ‖²
    Z = np.column_stack([X, np.ones(len(X))])
    theta = problem.theta.numpy()
    G = 2 * Z.T @ Z / n + damping * np.eye(4)
    for row, m in enumerate(indices):
        z, residual = Z[m], Z[m] @ theta - y[m]
        gradient = 2 * residual * z
        exact = theta + np.linalg.solve(G - 2 * np.outer(z, z) / n, gradient / n)
        np.testing.assert_allclose(pbrf[row], exact, rtol=0, atol=1e-10)
        # their difference is the second-order term ε²(G+λI)⁻¹Hₘ(G+λI)⁻¹∇Lₘ
        first = np.linalg.solve(G, gradient / n)
        second = np.linalg.solve(G, 2 * np.outer(z, z) @ first / n)
        np.testing.assert_allclose(pbrf[row] - linear[row], second, rtol=1e-2, atol=1e-12)


# -- cold vs warm LOO on a converged convex model -----------------------------------------
def test_converged_logistic_cold_and_warm_loo_agree(logistic_problem):
    indices = [2, 40, 77]
    cold = cold_leave_one_out(logistic_problem, indices).parameters
    warm = warm_leave_one_out(logistic_problem, indices).parameters
    moved = float((warm - logistic_problem.theta).norm(dim=1).min())
    assert float((cold - warm).norm(dim=1).max()) < 1e-5 * moved
    # and the warm LOO is the exact minimiser of the leave-one-out objective (sklearn refit
    # with the removed row dropped, a different code path)
    X, y = logistic_problem.X, logistic_problem.y
    keep = np.ones(len(y), bool)
    keep[40] = False
    refit = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(X[keep], y[keep])
    np.testing.assert_allclose(
        warm[1].numpy(), np.r_[refit.coef_.ravel(), refit.intercept_], rtol=0, atol=1e-7
    )


# -- the batched optimiser ----------------------------------------------------------------
# a fixed number of steps: batched and one-at-a-time must take the same ones
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.ResponseConvergenceWarning")
@pytest.mark.parametrize("batch_size", [None, 32])
def test_batched_optimisation_equals_one_at_a_time(net_problem, batch_size):
    indices = [1, 4, 9, 30]
    # SGD pinned (the PBRF's default is now L-BFGS, whose copies' invariance is tested, to
    # round-off, in test_prf_convergence.py)
    settings = {"damping": 0.01, "n_iter": 150, "batch_size": batch_size, "seed": 3,
                "optimizer": "sgd"}  # fmt: skip
    if batch_size is not None:  # fixed settings: the automatic ones are covered above
        settings.update(n_iter=60, learning_rate=0.1, optimizer_options={"momentum": 0.9})
    batched = proximal_response(net_problem, "pbrf", indices, **settings)
    singles = [proximal_response(net_problem, "pbrf", [m], **settings) for m in indices]
    torch.testing.assert_close(
        batched.parameters, torch.cat([one.parameters for one in singles]), rtol=0, atol=1e-12
    )
    np.testing.assert_array_equal(batched.n_iter, np.concatenate([s.n_iter for s in singles]))
    with parallel_config(backend="threading"):  # chunks as with processes, without spawning
        chunked = proximal_response(net_problem, "pbrf", indices, n_jobs=2, **settings)
    torch.testing.assert_close(chunked.parameters, batched.parameters, rtol=0, atol=1e-12)


# a fixed number of steps: the split and the whole batch must take the same ones
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.ResponseConvergenceWarning")
def test_large_batches_of_copies_are_split_to_fit_memory(net_problem, monkeypatch):
    from sklearn_influence._responses import _functions as _response

    settings = {"damping": 0.01, "n_iter": 20, "tol": 0.0}
    whole = proximal_response(net_problem, "pbrf", [0, 1, 2], **settings)
    per_copy = 8 * (6 * net_problem.theta.numel() + 4 * net_problem.reference_outputs.numel())
    monkeypatch.setattr(_response, "RESPONSE_MEMORY_BYTES", per_copy)  # one copy per chunk
    calls, original = [], _response._optimizer_chunk

    def recording_chunk(problem, kind, chunk, *args):
        calls.append(list(chunk))
        return original(problem, kind, chunk, *args)

    monkeypatch.setattr(_response, "_optimizer_chunk", recording_chunk)
    split = proximal_response(net_problem, "pbrf", [0, 1, 2], **settings)
    assert calls == [[0], [1], [2]]
    torch.testing.assert_close(split.parameters, whole.parameters, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["pbrf", "prf"])
def test_optimizer_reaches_the_exact_newton_solution(logistic_problem, kind):
    indices = [0, 10, 20]
    exact = proximal_response(logistic_problem, kind, indices, damping=1e-2, method="newton")
    iterative = proximal_response(
        logistic_problem, kind, indices, damping=1e-2, method="optimizer", tol=1e-8,
        n_iter=2000,
    )  # fmt: skip
    assert iterative.converged.all()
    shift = (exact.parameters - logistic_problem.theta).norm(dim=1)
    error = (iterative.parameters - exact.parameters).norm(dim=1)
    assert float((error / shift).max()) < 1e-5
    adam = proximal_response(
        logistic_problem, kind, indices, damping=1e-2, method="optimizer", optimizer="adam",
        n_iter=3000, tol=1e-3,
    )  # fmt: skip
    adam_error = (adam.parameters - exact.parameters).norm(dim=1)
    assert float((adam_error / shift).max()) < 0.05


def test_too_large_steps_are_halved(logistic_problem):
    """SGD halves a copy's step whenever its objective rises, so a step 100 times too large
    still reaches the exact solution instead of diverging."""
    indices = [0, 10]
    exact = proximal_response(logistic_problem, "pbrf", indices, damping=1e-2, method="newton")
    settings = {"damping": 1e-2, "method": "optimizer", "tol": 1e-8, "n_iter": 3000}
    largest = curvature_scale(
        logistic_problem.adapter, logistic_problem.theta, logistic_problem.inputs,
        logistic_problem.targets, logistic_problem.reference_outputs, damping=1e-2,
    )[0]  # fmt: skip
    wild = proximal_response(
        logistic_problem, "pbrf", indices, learning_rate=100 / largest, **settings
    )
    assert wild.converged.all()
    shift = (exact.parameters - logistic_problem.theta).norm(dim=1)
    assert float(((wild.parameters - exact.parameters).norm(dim=1) / shift).max()) < 1e-5


def test_non_convergence_is_reported(net_problem):
    # SGD: the default (preconditioned L-BFGS, first step = the influence step) converges
    # point 1 of this net in 2 steps, so 3 steps would not test the report
    with pytest.warns(UserWarning, match="did not reach the tolerance"):
        result = proximal_response(
            net_problem, "pbrf", [0, 1], damping=0.01, n_iter=3, optimizer="sgd"
        )
    assert not result.converged.any()
    assert (result.relative_gradient_norm > 1e-4).all()
    np.testing.assert_array_equal(result.n_iter, [3, 3])


def test_optimizer_options_are_checked(net_problem):
    with pytest.raises(ValueError, match="Unknown optimizer_options"):
        proximal_response(
            net_problem, "pbrf", [0], damping=0.01, optimizer="adam",
            optimizer_options={"momentum": 0.9},
        )  # fmt: skip
    with pytest.raises(ValueError, match="method='newton'"):
        proximal_response(net_problem, "pbrf", [0], damping=0.01, method="newton")
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optimize_responses(
            None, net_problem.theta, net_problem.inputs[:1], net_problem.targets[:1],
            net_problem.inputs, net_problem.targets, net_problem.reference_outputs,
            optimizer="rmsprop",
        )  # fmt: skip


# -- estimators ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regression_data():
    X, y = make_regression(80, 4, noise=5.0, random_state=0)
    return X[:60], y[:60], X[60:], y[60:]


def test_cold_loo_transform_is_the_refit_loss_change(regression_data):
    X, y, X_test, y_test = regression_data
    loo = LeaveOneOut(Ridge(alpha=2.0), train_indices=[3, 8]).fit(X, y)
    full = Ridge(alpha=2.0).fit(X, y)
    for column, m in enumerate([3, 8]):
        keep = np.arange(len(y)) != m
        refit = Ridge(alpha=2.0).fit(X[keep], y[keep])
        expected = (refit.predict(X_test) - y_test) ** 2 - (full.predict(X_test) - y_test) ** 2
        np.testing.assert_allclose(loo.transform(X_test, y_test)[:, column], expected, rtol=1e-6)
    assert loo.get_feature_names_out().tolist() == ["leaveoneout0", "leaveoneout1"]


def test_estimators_agree_with_the_response_layer(regression_data):
    X, y, X_test, y_test = regression_data
    model = Ridge(alpha=2.0)
    indices = [0, 1, 2, 3]
    warm = LeaveOneOut(model, warm_start=True, train_indices=indices).fit(X, y)
    cold = LeaveOneOut(model, train_indices=indices).fit(X, y)
    np.testing.assert_allclose(warm.parameters_, cold.parameters_, rtol=0, atol=1e-8)
    pbrf = PBRF(model, damping=0.0, train_indices=indices).fit(X, y)
    linear = LinearizedPBRF(model, damping=0.0, train_indices=indices).fit(X, y)
    assert pbrf.method_ == "newton" and pbrf.converged_.all()
    assert linear.solver_ in ("direct", "cholesky")
    # Ridge at λ = 0: the PBRF objective is the leave-one-out objective itself
    np.testing.assert_allclose(pbrf.parameters_, warm.parameters_, rtol=0, atol=1e-8)
    changes = pbrf.transform(X_test, y_test)
    assert changes.shape == (len(X_test), 4)
    assert pbrf.score(X_test, y_test) > 0.99
    assert linear.score(X_test, y_test) > 0.99


def test_frozen_estimator_is_used_as_fitted(regression_data):
    X, y, X_test, _ = regression_data
    fitted = Ridge(alpha=1.0).fit(X, y)
    frozen = FrozenEstimator(fitted)
    prf = ProximalResponse(frozen, n_points=3, random_state=0).fit(X, y)
    assert prf.estimator_ is frozen
    np.testing.assert_allclose(prf.reference_parameters_[:-1], fitted.coef_)
    assert prf.transform(X_test).shape == (len(X_test), 3)  # prediction as measurement


def test_random_points_and_verbose(regression_data, capsys):
    X, y, _, _ = regression_data
    first = PBRF(Ridge(), n_points=5, random_state=0, verbose=1).fit(X, y)
    second = PBRF(Ridge(), n_points=5, random_state=0).fit(X, y)
    np.testing.assert_array_equal(first.train_indices_, second.train_indices_)
    assert len(np.unique(first.train_indices_)) == 5
    assert "[PBRF]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "indices, message",
    [([0, 0], "duplicates"), ([-1], r"\[0, 59\]"), ([60], r"\[0, 59\]"), ([0.5], "integer"),
     ([], "empty")],
)  # fmt: skip
def test_bad_train_indices(regression_data, indices, message):
    X, y, _, _ = regression_data
    with pytest.raises(ValueError, match=message):
        PBRF(Ridge(), train_indices=indices).fit(X, y)


def test_bad_query_targets(regression_data):
    X, y, X_test, y_test = regression_data
    pbrf = PBRF(Ridge(), n_points=2, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="y_test has 3 rows"):
        pbrf.transform(X_test, y_test[:3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(regression_data):
    X, y, X_test, y_test = regression_data
    on_cpu = PBRF(Ridge(), n_points=3, random_state=0).fit(X, y)
    on_gpu = PBRF(Ridge(), n_points=3, random_state=0, device="cuda").fit(X, y)
    np.testing.assert_allclose(on_gpu.parameters_, on_cpu.parameters_, rtol=1e-9, atol=1e-12)
    iterative = PBRF(Ridge(), n_points=3, random_state=0, device="cuda", method="optimizer")
    assert iterative.fit(X, y).transform(X_test, y_test).shape == (len(X_test), 3)


def test_newton_stops_silently_at_the_rounding_floor_of_a_large_objective():
    """Unscaled features and targets put the gradient-norm floor above 1e-12: no warning."""
    from sklearn_influence._responses._newton import minimize_convex

    X, y = make_regression(n_samples=300, n_features=8, noise=50.0, random_state=0)
    X, y = 1e3 * X, 1e4 * y  # objective ≈ 1e13: its rounding error dwarfs 1e-12
    fitted = LinearRegression().fit(X, y)
    adapter = make_adapter(fitted, len(y), CPU)
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    start = adapter.parameters() + 1.0  # away from the optimum
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theta = minimize_convex(adapter, start, inputs, targets)
    exact = np.linalg.lstsq(np.c_[X, np.ones(len(X))], y, rcond=None)[0]
    np.testing.assert_allclose(theta.numpy(), exact, rtol=1e-8)
