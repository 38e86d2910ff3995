"""Contract tests of the engine's registries: every curvature in CURVATURES and every solver
in SOLVERS against independent float64 truth, so that a new entry is tested automatically.

Curvatures: products, dense matrix, diagonal, row subsets and weights on a Ridge, a
LogisticRegression and a tiny float64 skorch MLP (truth: Σ JᵀHJ from ``torch.func.jacrev``
for Gauss-Newton, finite differences of the objective's gradient for the Hessian, I for the
identity). Solvers: solve / quadratic against ``np.linalg.solve(C + λI, ·)``
over a damping sweep, and unknown options refused.
"""

import numpy as np
import pytest
import torch
from _kfac_truth import factored_truth
from _nets import TanhMLP
from sklearn.linear_model import LogisticRegression, Ridge
from skorch import NeuralNetClassifier
from torch.func import grad, hessian, jacrev

from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._skorch import fit_skorch
from sklearn_influence._engine._curvature import (
    CURVATURES,
    Curvature,
    check_dense_size,
    make_curvature,
)
from sklearn_influence._engine._gradients import per_example_gradients
from sklearn_influence._engine._solvers import SOLVERS, Solver, make_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_TRAIN = 40
DAMPINGS = (1e-2, 1e-1, 1.0)


# -- models --------------------------------------------------------------------------------
def _data(seed=0, n=N_TRAIN, d=4):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, rng


def _ridge():
    X, rng = _data(0)
    y = X @ rng.normal(size=X.shape[1]) + 0.1 * rng.normal(size=len(X))
    return make_adapter(Ridge(alpha=2.0).fit(X, y), len(X), torch.device("cpu")), X, y


def _logistic():
    X, rng = _data(1)
    y = rng.integers(0, 3, len(X))
    model = LogisticRegression(C=2.0, max_iter=1000).fit(X, y)
    return make_adapter(model, len(X), torch.device("cpu")), X, y


def _mlp():
    X, rng = _data(2)
    y = rng.integers(0, 3, len(X))
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        TanhMLP,
        module__in_features=X.shape[1],
        module__hidden=3,
        module__out_features=3,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=1e-2,
        train_split=None,
        max_epochs=5,
        lr=0.2,
        batch_size=16,
        verbose=0,
    )
    state = fit_skorch(net, X, y)
    return make_adapter(net, len(X), torch.device("cpu"), state), X, y


MODELS = {"ridge": _ridge, "logistic": _logistic, "mlp": _mlp}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    """(name, adapter, θ, inputs, targets) of one small float64 model."""
    adapter, X, y = MODELS[request.param]()
    return request.param, adapter, adapter.parameters(), adapter.inputs(X), adapter.targets(y)


# -- independent truth ---------------------------------------------------------------------
def _gauss_newton_truth(adapter, theta, inputs, targets, weights):
    """(1/N) Σ w_i J_iᵀ H_i J_i + diag(r) in numpy, J_i by jacrev, H_i = ∇²_h L by hessian."""

    def output(theta_, x):
        return adapter.outputs(theta_, x.unsqueeze(0))[0]

    J = np.stack([jacrev(output)(theta, x).numpy() for x in inputs])  # (n, k, p)
    H = np.stack(
        [
            hessian(lambda h, t=t: adapter.loss(h.unsqueeze(0), t.unsqueeze(0))[0])(
                output(theta, x).detach()
            ).numpy()
            for x, t in zip(inputs, targets, strict=True)
        ]
    )  # (n, k, k)
    w = np.ones(len(inputs)) if weights is None else weights.numpy()
    data = np.einsum("n,nkp,nkl,nlq->pq", w, J, H, J) / len(inputs)
    return data + np.diag(adapter.regularizer_diagonal().numpy())


def _hessian_truth(adapter, theta, inputs, targets, weights, step=1e-5):
    """Central finite differences of ∇J, the gradient of the (weighted) objective."""
    gradient = grad(lambda t: adapter.objective(t, inputs, targets, weights))
    p = theta.numel()
    columns = []
    for j in range(p):
        shift = torch.zeros(p, dtype=theta.dtype)
        shift[j] = step
        columns.append(((gradient(theta + shift) - gradient(theta - shift)) / (2 * step)).numpy())
    matrix = np.stack(columns, axis=1)
    return 0.5 * (matrix + matrix.T)


def _identity_truth(adapter, theta, inputs, targets, weights):
    return np.eye(theta.numel())


def _kfac_truth(adapter, theta, inputs, targets, weights):
    return factored_truth("kfac", adapter, theta, inputs, weights)


def _ekfac_truth(adapter, theta, inputs, targets, weights):
    return factored_truth("ekfac", adapter, theta, inputs, weights)


TRUTH = {
    "gauss_newton": (_gauss_newton_truth, 1e-10),
    "kfac": (_kfac_truth, 1e-10),  # dense factors from one example and Hessian row at a time
    "ekfac": (_ekfac_truth, 1e-10),
    "hessian": (_hessian_truth, 1e-6),  # finite differences
    "identity": (_identity_truth, 0.0),
}


def _truth(name, adapter, theta, inputs, targets, weights=None):
    if name not in TRUTH:
        pytest.fail(f"curvature {name!r} is registered but has no independent truth in this file")
    function, tolerance = TRUTH[name]
    return function(adapter, theta, inputs, targets, weights), tolerance


def _close(actual, expected, tolerance):
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance * scale + 1e-13)


# -- curvatures ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CURVATURES))
def test_curvature_products_dense_and_diagonal_match_truth(name, model):
    _, adapter, theta, inputs, targets = model
    curvature = make_curvature(name, adapter, theta, inputs, targets, batch_size=16)
    assert isinstance(curvature, Curvature) and curvature.name == name
    assert curvature.n_params == theta.numel()
    expected, tolerance = _truth(name, adapter, theta, inputs, targets)
    generator = torch.Generator().manual_seed(0)
    V = torch.randn(3, theta.numel(), generator=generator, dtype=theta.dtype)
    before = curvature.n_products
    _close(curvature.matmul(V), V.numpy() @ expected, tolerance)
    assert curvature.n_products == before + 3
    _close(curvature.matmul(V[0]), expected @ V[0].numpy(), tolerance)
    dense = curvature.dense()
    assert dense.shape == (theta.numel(), theta.numel())
    _close(dense, expected, tolerance)
    _close(curvature.diagonal(), np.diag(dense.numpy()), 1e-12)


@pytest.mark.parametrize("name", sorted(CURVATURES))
def test_curvature_subset_and_weights_match_truth(name, model):
    _, adapter, theta, inputs, targets = model
    curvature = make_curvature(name, adapter, theta, inputs, targets, batch_size=16)
    rows = torch.arange(5, 25)
    subset = curvature.subset(rows)
    assert type(subset) is type(curvature) and subset.n_train == len(rows)
    expected, tolerance = _truth(name, adapter, theta, inputs[rows], targets[rows])
    _close(subset.dense(), expected, tolerance)
    generator = torch.Generator().manual_seed(1)
    V = torch.randn(2, theta.numel(), generator=generator, dtype=theta.dtype)
    _close(subset.matmul(V), V.numpy() @ expected, tolerance)
    weights = torch.rand(len(inputs), generator=generator, dtype=theta.dtype)
    weighted = make_curvature(name, adapter, theta, inputs, targets, batch_size=7, weights=weights)
    expected, tolerance = _truth(name, adapter, theta, inputs, targets, weights)
    _close(weighted.matmul(V), V.numpy() @ expected, tolerance)
    _close(weighted.dense(), expected, tolerance)


def test_unknown_curvature_and_missing_targets_are_refused(model):
    _, adapter, theta, inputs, _ = model
    with pytest.raises(ValueError, match="Unknown curvature 'newton'; choose one of"):
        make_curvature("newton", adapter, theta, inputs, None)
    with pytest.raises(ValueError, match="Hessian .* needs the training targets"):
        make_curvature("hessian", adapter, theta, inputs, None)


def test_dense_size_check_names_the_matrix_free_solvers():
    with pytest.raises(MemoryError, match="solver='cg' or solver='lissa'"):
        check_dense_size(10**6, torch.float64)
    assert check_dense_size(10, torch.float64) == 800


# -- solvers -------------------------------------------------------------------------------
#: options that make each solver accurate on these small problems, and the relative error
#: allowed; a solver not listed runs with its defaults and must be exact to 1e-8
SOLVER_SETTINGS = {
    "cg": ({"tol": 1e-13, "maxiter": 500}, 1e-8),
    "near_exact": ({"tol": 1e-13, "maxiter": 500}, 1e-8),
    "lissa": ({"depth": 400}, 1e-3),  # full-batch Neumann series: error ~1e-5 at λ = 1e-2
}


@pytest.fixture(scope="module")
def system():
    """A Gauss-Newton curvature of the MLP, training gradients and queries, and the dense C."""
    adapter, X, y = _mlp()
    theta, inputs, targets = adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    train_gradients = per_example_gradients(adapter, theta, inputs, targets)
    generator = torch.Generator().manual_seed(2)
    queries = torch.randn(4, theta.numel(), generator=generator, dtype=theta.dtype)
    matrix, _ = _truth("gauss_newton", adapter, theta, inputs, targets)
    curvature = make_curvature("gauss_newton", adapter, theta, inputs, targets)
    factored = make_curvature("kfac", adapter, theta, inputs, targets)
    return curvature, train_gradients, queries, matrix, factored


def _system_for(name, system):
    """(curvature, T, Q, dense C) for solver ``name``: solvers that need a factored curvature
    (``requires`` holds "factored_curvature") get the K-FAC curvature and its dense matrix."""
    curvature, T, Q, C, factored = system
    if "factored_curvature" in SOLVERS[name].requires:
        return factored, T, Q, factored.dense().numpy()
    return curvature, T, Q, C


def _relative_error(actual, expected):
    actual = actual.detach().numpy()
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solver_matches_dense_reference(name, damping, system):
    curvature, T, Q, C = _system_for(name, system)
    options, tolerance = SOLVER_SETTINGS.get(name, ({}, 1e-8))
    solver = make_solver(name, curvature, {"seed": 0, **options})
    assert isinstance(solver, Solver) and solver.name == name
    assert not hasattr(solver, "train_gradients")  # built from the curvature alone
    assert solver.prepare() is solver
    damped = C + damping * np.eye(len(C))
    T_, Q_ = T.numpy(), Q.numpy()
    expected_solve = np.linalg.solve(damped, Q_.T).T
    assert _relative_error(solver.solve(Q, damping), expected_solve) <= tolerance
    expected_quadratic = np.einsum("np,pn->n", T_, np.linalg.solve(damped, T_.T))
    assert _relative_error(solver.quadratic(T, damping), expected_quadratic) <= tolerance
    # a block quadratic form is per row: any split of the rows gives the same numbers
    halves = torch.cat([solver.quadratic(T[:5], damping), solver.quadratic(T[5:], damping)])
    assert _relative_error(halves, expected_quadratic) <= tolerance
    assert solver.quadratic(T[:0], damping).shape == (0,)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_solver_refuses_unknown_options_and_accepts_a_seed(name, system):
    curvature, _, _, _ = _system_for(name, system)
    with pytest.raises(TypeError, match=r"Unknown solver_options \['bogus'\].*accepts \[.*'seed'"):
        SOLVERS[name](curvature, bogus=1)
    with pytest.raises(TypeError, match=r"Unknown solver_options \['bogus'\]"):
        make_solver(name, curvature, {"bogus": 1, "seed": 0})
    solver = SOLVERS[name](curvature, seed=3)
    assert solver.n_factorizations == 0 and "seed" in solver.settings
    assert set(solver.settings) == set(type(solver).options)


def test_auto_solver_and_unknown_solver(system):
    curvature, _, _, _, factored = system
    assert make_solver("auto", factored).name == "factored"
    assert make_solver("auto", curvature).name == "direct"  # p = 27: dense fits
    with pytest.raises(ValueError, match="Unknown solver 'newton'; choose 'auto' or one of"):
        make_solver("newton", curvature)
