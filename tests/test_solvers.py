"""Matrix-free curvature products and the iterative solvers (cg, lissa) against exact truth."""

import warnings

import numpy as np
import pytest
import torch
from _nets import TanhMLP
from sklearn.datasets import load_diabetes, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression
from skorch import NeuralNetClassifier, NeuralNetRegressor

from sklearn_influence import InfluenceFunction
from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._skorch import fit_skorch
from sklearn_influence._engine._cg import CGSolver, block_conjugate_gradient
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._direct import DirectSolver
from sklearn_influence._engine._gradients import per_example_gradients
from sklearn_influence._engine._lissa import LissaSolver
from sklearn_influence._engine._nystrom import NystromPreconditioner
from sklearn_influence._engine._solvers import SOLVERS, resolve_solver_name
from sklearn_influence.exceptions import SolverConvergenceWarning


def _curvature(kind, adapter, theta, inputs, targets=None, batch_size=1024, weights=None):
    return make_curvature(
        kind, adapter, theta, inputs, targets, batch_size=batch_size, weights=weights
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


@pytest.fixture(scope="module")
def mlp(digits):
    """A small MLP (1210 parameters) trained with skorch on 200 digits, float64."""
    X, y = digits
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        TanhMLP,
        module__hidden=16,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=1e-2,
        train_split=None,
        max_epochs=10,
        lr=0.3,
        batch_size=32,
        iterator_train__shuffle=True,
        verbose=0,
    )
    state = fit_skorch(net, X[:200], y[:200])
    adapter = make_adapter(net, 200, torch.device("cpu"), state)
    inputs, targets = adapter.inputs(X[:200]), adapter.targets(y[:200])
    return net, adapter, inputs, targets


@pytest.fixture(scope="module")
def mlp_influences(mlp, digits):
    """Influence matrices of the MLP for 20 queries with each solver, damping 1e-3."""
    net, X, y = mlp[0], *digits
    queries = (X[300:320], y[300:320])
    matrices = {}
    options = {
        "direct": {},
        "cg": {},
        # a minibatch series: the tests measure its agreement with direct, so its own
        # residual check (tol) is set above the minibatch noise it reaches here
        "lissa": {"depth": 200, "minibatch_size": 50, "tol": 1.0},
    }
    for solver, solver_options in options.items():
        influence = InfluenceFunction(
            FrozenEstimator(net),
            solver=solver,
            solver_options=solver_options,
            damping=1e-3,
            random_state=0,
        ).fit(X[:200], y[:200])
        matrices[solver] = influence.transform(*queries)
        matrices[solver + "_self"] = influence.self_influence() if solver != "lissa" else None
    return matrices


def _pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# -- curvature products ----------------------------------------------------------------------
def test_gauss_newton_products_equal_dense_matrix(mlp):
    _, adapter, inputs, targets = mlp
    theta = adapter.parameters()
    curvature = _curvature("gauss_newton", adapter, theta, inputs, targets, batch_size=64)
    dense = curvature.dense()
    vectors = torch.randn(7, theta.numel(), dtype=theta.dtype)
    products = curvature.matmul(vectors)
    torch.testing.assert_close(products, vectors @ dense, rtol=1e-10, atol=1e-12)
    weights = torch.rand(len(inputs), dtype=theta.dtype)
    weighted = _curvature("gauss_newton", adapter, theta, inputs, None, 50, weights)
    torch.testing.assert_close(
        weighted.matmul(vectors), vectors @ weighted.dense(), rtol=1e-10, atol=1e-12
    )
    diagonal = curvature.diagonal()
    torch.testing.assert_close(diagonal, dense.diagonal(), rtol=1e-10, atol=1e-12)


def test_dense_gauss_newton_of_a_net_matches_an_explicit_jacobian_loop(mlp):
    _, adapter, inputs, _ = mlp
    theta = adapter.parameters()
    inputs = inputs[:15]
    expected = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for x in inputs:
        jacobian = torch.autograd.functional.jacobian(
            lambda t, x=x: adapter.outputs(t, x.unsqueeze(0))[0], theta
        )
        output_hessian = adapter.loss.output_hessian(adapter.outputs(theta, x.unsqueeze(0))[0])
        expected += jacobian.T @ output_hessian @ jacobian
    expected = expected / len(inputs) + torch.diag(adapter.regularizer_diagonal())
    dense = _curvature("gauss_newton", adapter, theta, inputs, batch_size=4).dense()
    torch.testing.assert_close(dense, expected, rtol=1e-10, atol=1e-12)


def test_hessian_products_equal_dense_hessian(mlp):
    _, adapter, inputs, targets = mlp
    theta = adapter.parameters()
    inputs, targets = inputs[:60], targets[:60]
    curvature = _curvature("hessian", adapter, theta, inputs, targets, batch_size=25)
    dense = curvature.dense()
    vectors = torch.randn(5, theta.numel(), dtype=theta.dtype)
    products = curvature.matmul(vectors)
    torch.testing.assert_close(products, vectors @ dense, rtol=1e-9, atol=1e-11)
    # the Hessian of a net is not its Gauss-Newton matrix
    gauss_newton = _curvature("gauss_newton", adapter, theta, inputs, targets).dense()
    assert float((dense - gauss_newton).abs().max()) > 1e-4


def test_curvature_kinds_and_subsets(mlp):
    _, adapter, inputs, targets = mlp
    theta = adapter.parameters()
    vector = torch.randn(theta.numel(), dtype=theta.dtype)
    for kind in ("gauss_newton", "hessian", "identity"):
        curvature = _curvature(kind, adapter, theta, inputs[:40], targets[:40], 16)
        dense = _curvature(kind, adapter, theta, inputs[:40], targets[:40]).dense()
        torch.testing.assert_close(curvature.matmul(vector), dense @ vector, rtol=1e-9, atol=1e-11)
    rows = torch.arange(10, 30)
    subset = _curvature("gauss_newton", adapter, theta, inputs, targets).subset(rows)
    expected = _curvature("gauss_newton", adapter, theta, inputs[rows]).dense() @ vector
    torch.testing.assert_close(subset.matmul(vector), expected, rtol=1e-10, atol=1e-12)


# -- block conjugate gradient ----------------------------------------------------------------
def _spd(p, rank, generator):
    factor = torch.randn(rank, p, generator=generator, dtype=torch.float64)
    return factor.T @ factor / rank


def test_block_cg_solves_many_right_hand_sides_including_dependent_ones():
    generator = torch.Generator().manual_seed(0)
    matrix = _spd(40, 60, generator) + 0.1 * torch.eye(40, dtype=torch.float64)
    rhs = torch.randn(6, 40, generator=generator, dtype=torch.float64)
    rhs = torch.cat([rhs, rhs[:2] * 3.0, torch.zeros(1, 40, dtype=torch.float64)])
    solution, residuals, n_iter = block_conjugate_gradient(
        lambda V: V @ matrix, lambda R: R, rhs, tol=1e-12, maxiter=100
    )
    torch.testing.assert_close(solution, torch.linalg.solve(matrix, rhs.T).T)
    assert float(residuals.max()) <= 1e-12 and n_iter <= 40


def test_block_cg_refuses_an_indefinite_system():
    matrix = torch.diag(torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64))
    rhs = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not positive definite.*larger damping"):
        block_conjugate_gradient(lambda V: V @ matrix, lambda R: R, rhs, tol=1e-10, maxiter=10)


def test_nystrom_preconditioner_is_exact_for_a_low_rank_curvature(digits):
    """A sketch larger than rank(C) recovers C exactly, so P⁻¹ = λ (C + λI)⁻¹ (L_s ≈ 0)."""
    X, y = digits[0][:3], np.arange(3)
    model = LogisticRegression(C=np.inf, max_iter=50).fit(X, y)  # no penalty: C = data term
    adapter = make_adapter(model, 3, torch.device("cpu"))
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    theta = adapter.parameters()
    curvature = _curvature("gauss_newton", adapter, theta, inputs, targets)
    preconditioner = NystromPreconditioner(curvature, rank=40, coverage=1.0, seed=0)
    damping = 1e-2
    vectors = torch.randn(4, theta.numel(), dtype=theta.dtype)
    applied = preconditioner.apply(vectors, damping)
    dense = curvature.dense()
    assert int(torch.linalg.matrix_rank(dense)) <= 6  # 3 rows × (3 − 1) softmax directions
    damped = dense + damping * torch.eye(theta.numel(), dtype=theta.dtype)
    expected = torch.linalg.solve(damped, vectors.T).T * damping
    torch.testing.assert_close(applied, expected, rtol=1e-6, atol=1e-9)


def test_nystrom_rank_stops_once_the_damped_spectrum_is_resolved(mlp):
    _, adapter, inputs, targets = mlp
    theta = adapter.parameters()
    curvature = _curvature("gauss_newton", adapter, theta, inputs, targets)
    preconditioner = NystromPreconditioner(curvature, max_rank=512, seed=0)
    preconditioner.apply(torch.randn(1, theta.numel(), dtype=theta.dtype), 1.0)
    assert preconditioner.sketch_rank == 64  # a large damping needs no more
    preconditioner.apply(torch.randn(1, theta.numel(), dtype=theta.dtype), 1e-3)
    # the weight decay (1e-2) joins λ in the shift μ = λ + 1e-2; the rank-64 sketch leaves
    # L_s under μ/2, so doubling would not pay (growth: tests/test_preconditioner.py)
    assert preconditioner.floor == pytest.approx(1e-2)
    assert preconditioner.sketch_rank == 64
    assert preconditioner._tail <= 0.5 * (1e-3 + 1e-2)


def test_preconditioner_reduces_iterations(mlp):
    _, adapter, inputs, targets = mlp
    theta = adapter.parameters()
    gradients = per_example_gradients(adapter, theta, inputs, targets)
    rhs = gradients[:2]
    iterations = {}
    for preconditioner in ("nystrom", None):
        solver = CGSolver(
            _curvature("gauss_newton", adapter, theta, inputs, targets, batch_size=256),
            preconditioner=preconditioner,
            tol=1e-6,
            maxiter=500,
            seed=0,
        )
        solver.solve(rhs, 1e-3)
        iterations[preconditioner] = solver.n_iter_[0]
    assert iterations["nystrom"] * 1.5 <= iterations[None]


# -- solvers against the direct solver --------------------------------------------------------
def test_cg_matches_direct_on_a_skorch_mlp(mlp_influences):
    direct, cg = mlp_influences["direct"], mlp_influences["cg"]
    assert _pearson(cg, direct) >= 0.999
    np.testing.assert_allclose(cg, direct, rtol=1e-2, atol=1e-3 * np.abs(direct).max())
    np.testing.assert_allclose(mlp_influences["cg_self"], mlp_influences["direct_self"], rtol=1e-2)


def test_lissa_matches_direct_on_a_skorch_mlp(mlp_influences):
    assert _pearson(mlp_influences["lissa"], mlp_influences["direct"]) >= 0.95


# the LiSSA series is measured against direct here (its residual warning is expected)
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.SolverConvergenceWarning")
def test_cg_and_lissa_on_a_linear_model_match_direct(digits):
    X, y = digits[0][:150], digits[1][:150] % 3
    model = FrozenEstimator(LogisticRegression(C=0.1, max_iter=500).fit(X, y))
    matrices = {
        solver: InfluenceFunction(
            model, solver=solver, damping=1e-2, random_state=0, solver_options=options
        )
        .fit(X, y)
        .transform(X[:10], y[:10])
        for solver, options in [
            ("direct", {}),
            ("cg", {"tol": 1e-10, "maxiter": 200}),
            ("lissa", {"depth": 400}),
        ]
    }
    np.testing.assert_allclose(matrices["cg"], matrices["direct"], rtol=1e-7, atol=1e-12)
    assert _pearson(matrices["lissa"], matrices["direct"]) > 0.99


def test_cg_with_the_hessian_of_a_convex_model_matches_direct(digits):
    X, y = digits[0][:100], digits[1][:100] % 2
    model = FrozenEstimator(LogisticRegression(max_iter=500).fit(X, y))
    results = [
        InfluenceFunction(model, curvature="hessian", solver=solver, solver_options=options)
        .fit(X, y)
        .transform(X[:5], y[:5])
        for solver, options in [("direct", {}), ("cg", {"tol": 1e-10})]
    ]
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-12)


# -- options, warnings and errors ------------------------------------------------------------
def test_cg_warns_with_the_residual_when_it_does_not_converge(mlp, digits):
    X, y = digits
    influence = InfluenceFunction(
        FrozenEstimator(mlp[0]),
        solver="cg",
        solver_options={"maxiter": 1, "tol": 1e-12, "preconditioner": None},
    ).fit(X[:200], y[:200])
    with pytest.warns(ConvergenceWarning, match=r"largest relative residual is [0-9.e+-]+ > tol"):
        influence.transform(X[300:302], y[300:302])


def test_unknown_solver_options_are_refused(mlp, digits):
    X, y = digits
    for solver, option in (("cg", "depth"), ("lissa", "maxiter"), ("direct", "tol")):
        with pytest.raises(TypeError, match=f"Unknown solver_options \\['{option}'\\]"):
            InfluenceFunction(
                FrozenEstimator(mlp[0]), solver=solver, solver_options={option: 1}
            ).fit(X[:200], y[:200])


def test_lissa_divergence_names_the_scale(mlp, digits):
    X, y = digits
    influence = InfluenceFunction(
        FrozenEstimator(mlp[0]), solver="lissa", solver_options={"scale": 1e-3, "depth": 50}
    ).fit(X[:200], y[:200])
    with pytest.raises(ValueError, match=r"LiSSA diverged.*Increase solver_options\['scale'\]"):
        influence.transform(X[300:302], y[300:302])


# a shallow minibatch series on purpose: the test is about the seed, not accuracy
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.SolverConvergenceWarning")
def test_lissa_is_seeded_by_random_state(mlp, digits):
    X, y = digits

    def run(random_state):
        return (
            InfluenceFunction(
                FrozenEstimator(mlp[0]),
                solver="lissa",
                solver_options={"depth": 20, "minibatch_size": 20},
                random_state=random_state,
            )
            .fit(X[:200], y[:200])
            .transform(X[300:303], y[300:303])
        )

    first, again, other = run(0), run(0), run(1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_auto_solver_choice():
    assert resolve_solver_name("auto", 500) == "direct"
    # the exact Gauss-Newton matrix too large to factorize: CG to a rank-true tolerance
    assert resolve_solver_name("auto", 200_000) == "near_exact"
    assert resolve_solver_name("auto", 200_000, curvature_name="hessian") == "cg"
    assert resolve_solver_name("auto", 200_000, factored=True) == "factored"
    assert resolve_solver_name("lissa", 10) == "lissa"
    assert {"cg", "lissa"} <= set(SOLVERS)


def test_regressor_net_with_cg(digits):
    X, y = digits[0][:120], digits[1][:120] / 9.0
    net = NeuralNetRegressor(
        TanhMLP,
        module__hidden=16,
        module__out_features=1,
        train_split=None,
        max_epochs=3,
        lr=0.05,
        verbose=0,
    )
    influence = InfluenceFunction(net, solver="cg", random_state=0).fit(X, y)
    direct = InfluenceFunction(FrozenEstimator(influence.estimator_), solver="direct").fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        cg_matrix = influence.transform(X[:5], y[:5])
    assert _pearson(cg_matrix, direct.transform(X[:5], y[:5])) >= 0.999
    assert isinstance(influence.engine_.solver, CGSolver)
    assert not isinstance(influence.engine_.solver, LissaSolver)


def test_direct_solver_keeps_small_eigenvalues_of_a_float32_curvature():
    """p·ε₃₂ exceeds the damping here; the damped null space must still get 1/λ."""
    generator = torch.Generator().manual_seed(0)
    p, rank, damping = 1500, 40, 1e-4  # p · ε(float32) ≈ 1.8e-4 > damping
    factor = torch.randn(rank, p, generator=generator, dtype=torch.float64) / p**0.5
    curvature = factor.T @ factor
    rhs = torch.randn(3, p, generator=generator, dtype=torch.float64)
    solver = DirectSolver.from_matrix(curvature.float())
    solved = solver.solve(rhs.float(), damping).double()
    exact = torch.linalg.solve(curvature + damping * torch.eye(p, dtype=torch.float64), rhs.T).T
    # float32 round-off, amplified by the condition number 1e4, limits the agreement
    assert float((solved - exact).norm() / exact.norm()) < 1e-3


def test_lissa_warns_when_its_series_is_truncated():
    """The residual LiSSA reports is the numpy residual of its answer; above tol it warns."""
    X, y = load_diabetes(return_X_y=True)
    X, y = X[:80, :4], y[:80]  # curvature eigenvalues from 2.2e-3 to 2: a slow series
    queries = (X[:5], y[:5])

    def fitted(depth):
        return InfluenceFunction(
            LinearRegression(), damping=0.0, solver="lissa", solver_options={"depth": depth}
        ).fit(X, y)

    shallow = fitted(1000)
    with pytest.warns(SolverConvergenceWarning, match=r"depth=1000 .*solver_options\['depth'\]"):
        shallow.transform(*queries)
    # the reported residual equals ‖C x − b‖/‖b‖ in numpy for the solved gradients
    engine = shallow.engine_
    gradients = per_example_gradients(
        engine.adapter, engine.theta, engine.inputs[:5], engine.targets[:5]
    )
    curvature = make_curvature("gauss_newton", engine.adapter, engine.theta, engine.inputs)
    with pytest.warns(SolverConvergenceWarning):
        solved = engine.solver.solve(gradients, 0.0).numpy()
    gradients = gradients.numpy()
    residual = np.linalg.norm(solved @ curvature.dense().numpy() - gradients, axis=1)
    residual /= np.linalg.norm(gradients, axis=1)
    assert engine.solver.residual_[-1] == pytest.approx(residual.max(), rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SolverConvergenceWarning)
        fitted(30000).transform(*queries)
