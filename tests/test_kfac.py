"""K-FAC and EK-FAC curvatures (``curvature="kfac"``/``"ekfac"``), the ``factored`` solver and
the K-FAC/EK-FAC preconditioner of CG, against dense float64 computations on tiny models.

Truth: tests/_kfac_truth.py builds the factors, the per-example (per output-Hessian row)
layer gradients and the factored matrices one example and one row at a time in numpy.
"""

import warnings

import numpy as np
import pytest
import torch
from _kfac_truth import factored_truth, kronecker_truth
from _nets import TanhMLP
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression, Ridge
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction
from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._skorch import fit_skorch
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._gradients import per_example_gradients
from sklearn_influence._engine._solvers import make_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_TRAIN = 60
DAMPING = 1e-2


class TinyConvNet(torch.nn.Module):
    """1×8×8 (fed flat) → Conv2d(1, 3, 3) → tanh → MaxPool2d(2) → Linear(27, 4)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, dtype=torch.float64)
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(27, 4, dtype=torch.float64)

    def forward(self, X):
        out = self.pool(torch.tanh(self.conv(X.view(-1, 1, 8, 8))))
        return self.head(out.flatten(1))


class NormMLP(torch.nn.Module):
    """64 → 5 → LayerNorm → tanh → 4: the LayerNorm's parameters are not in a factored layer."""

    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(64, 5, dtype=torch.float64)
        self.norm = torch.nn.LayerNorm(5, dtype=torch.float64)
        self.out = torch.nn.Linear(5, 4, dtype=torch.float64)

    def forward(self, X):
        return self.out(torch.tanh(self.norm(self.hidden(X))))


def _digits(n=N_TRAIN, offset=0):
    X, y = load_digits(n_class=4, return_X_y=True)
    return X[offset : offset + n] / 16.0, y[offset : offset + n]


def _net(module, **params):
    torch.manual_seed(0)
    return NeuralNetClassifier(
        module,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer__weight_decay=1e-2,
        train_split=None,
        max_epochs=15,
        lr=0.2,
        batch_size=20,
        verbose=0,
        **params,
    )


NETS = {
    "mlp": lambda: _net(TanhMLP, module__in_features=64, module__hidden=5, module__out_features=4),
    "conv": lambda: _net(TinyConvNet),
}


@pytest.fixture(scope="module", params=sorted(NETS))
def fitted(request):
    """(name, net, adapter, θ, inputs, targets) of a tiny float64 net fitted on digits."""
    X, y = _digits()
    net = NETS[request.param]()
    state = fit_skorch(net, X, y)
    adapter = make_adapter(net, len(X), torch.device("cpu"), state)
    theta, inputs, targets = adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    return request.param, net, adapter, theta, inputs, targets


def _gauss_newton(adapter, theta, inputs, targets):
    return make_curvature("gauss_newton", adapter, theta, inputs, targets).dense().numpy()


# -- exactness for linear models -----------------------------------------------------------
@pytest.mark.parametrize(
    "model", [Ridge(alpha=3.0), Ridge(alpha=0.5, fit_intercept=False), LinearRegression()]
)
@pytest.mark.parametrize("n_targets", [1, 2])
def test_kfac_is_exact_for_linear_models_with_squared_loss(model, n_targets):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    y = X @ rng.normal(size=(4, n_targets)) + 0.1 * rng.normal(size=(50, n_targets))
    y = y.ravel() if n_targets == 1 else y
    model = model.fit(X, y)
    adapter = make_adapter(model, len(X), torch.device("cpu"))
    theta, inputs = adapter.parameters(), adapter.inputs(X)
    exact = make_curvature("gauss_newton", adapter, theta, inputs, None).dense()
    for name in ("kfac", "ekfac"):
        dense = make_curvature(name, adapter, theta, inputs, None).dense()
        assert float((dense - exact).abs().max()) <= 1e-10 * max(1.0, float(exact.abs().max()))
    X_query, y_query = X[:7] + 0.3, y[:7]
    matrices = {
        name: InfluenceFunction(FrozenEstimator(model), curvature=name, damping=1e-3)
        .fit(X, y)
        .transform(X_query, y_query)
        for name in ("gauss_newton", "kfac", "ekfac")
    }
    for name in ("kfac", "ekfac"):
        np.testing.assert_allclose(matrices[name], matrices["gauss_newton"], rtol=1e-8, atol=1e-12)


# -- factors, eigenvalues, blocks ----------------------------------------------------------
def test_factors_match_dense_computation(fitted):
    _, _, adapter, theta, inputs, targets = fitted
    truth = kronecker_truth(adapter, theta, inputs)
    curvature = make_curvature("kfac", adapter, theta, inputs, targets, batch_size=16)
    assert [f.name for f in curvature.layers] == [entry["layer"].name for entry in truth]
    for factors, entry in zip(curvature.layers, truth, strict=True):
        np.testing.assert_allclose(factors.A.numpy(), entry["A"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(factors.S.numpy(), entry["S"], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(factors.index.numpy(), entry["index"].reshape(-1))
    # the per-example gradients reproduce the exact Gauss-Newton blocks (checks the truth)
    exact = _gauss_newton(adapter, theta, inputs, targets)
    regularizer = adapter.regularizer_diagonal().numpy()
    for entry in truth:
        flat = entry["index"].reshape(-1)
        expected = exact[np.ix_(flat, flat)] - np.diag(regularizer[flat])
        np.testing.assert_allclose(entry["block"], expected, rtol=0, atol=1e-12)


def test_kfac_blocks_are_kronecker_products_in_theta_layout(fitted):
    """Weight decay is uniform: each block is S ⊗ A + wd·I with θ's (out, in) row-major order."""
    _, _, adapter, theta, inputs, targets = fitted
    dense = make_curvature("kfac", adapter, theta, inputs, targets).dense().numpy()
    regularizer = adapter.regularizer_diagonal().numpy()
    for entry in kronecker_truth(adapter, theta, inputs):
        flat = entry["index"].reshape(-1)
        expected = np.kron(entry["S"], entry["A"]) + np.diag(regularizer[flat])
        np.testing.assert_allclose(dense[np.ix_(flat, flat)], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dense, factored_truth("kfac", adapter, theta, inputs), atol=1e-12)


def test_ekfac_eigenvalues_match_dense_computation(fitted):
    _, _, adapter, theta, inputs, targets = fitted
    curvature = make_curvature("ekfac", adapter, theta, inputs, targets, batch_size=16)
    truth = kronecker_truth(adapter, theta, inputs)
    for factors, entry in zip(curvature.layers, truth, strict=True):
        QS, QA = factors.QS.numpy(), factors.QA.numpy()
        rotated = np.einsum("oj,noc,ck->njk", QS, entry["G"], QA)
        expected = (rotated**2).sum(0) / len(inputs)
        np.testing.assert_allclose(factors.data_eigenvalues.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(
        curvature.dense().numpy(), factored_truth("ekfac", adapter, theta, inputs), atol=1e-12
    )


def test_ekfac_blocks_are_at_least_as_close_as_kfac(fitted):
    _, _, adapter, theta, inputs, targets = fitted
    exact = _gauss_newton(adapter, theta, inputs, targets)
    kfac = make_curvature("kfac", adapter, theta, inputs, targets)
    ekfac = make_curvature("ekfac", adapter, theta, inputs, targets).dense().numpy()
    kfac_dense = kfac.dense().numpy()
    for factors in kfac.layers:
        flat = factors.index.numpy()
        block = np.ix_(flat, flat)
        kfac_error = np.linalg.norm(kfac_dense[block] - exact[block])
        ekfac_error = np.linalg.norm(ekfac[block] - exact[block])
        assert ekfac_error <= kfac_error * (1 + 1e-12)


# -- the damped inverse --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_inverse_matmul_solves_the_damped_factored_system(name, fitted):
    _, _, adapter, theta, inputs, targets = fitted
    curvature = make_curvature(name, adapter, theta, inputs, targets)
    dense = curvature.dense()
    generator = torch.Generator().manual_seed(0)
    V = torch.randn(3, theta.numel(), generator=generator, dtype=theta.dtype)
    for damping in (0.0, 1e-3, 1.0):
        expected = torch.linalg.solve(dense + damping * torch.eye(len(dense)), V.T).T
        torch.testing.assert_close(curvature.inverse_matmul(V, damping), expected)
        torch.testing.assert_close(curvature.inverse_matmul(V[0], damping), expected[0])
    assert curvature.n_eigendecompositions == 2 * len(curvature.layers)
    with pytest.raises(ValueError, match="damping must be >= 0"):
        curvature.inverse_matmul(V, -1.0)


def test_singular_factored_curvature_at_damping_zero_is_a_pseudo_inverse():
    """Issue 23: at damping 0 the factored inverse is the pseudo-inverse (np.linalg.pinv)."""
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=20), np.zeros(20)])  # a constant-zero feature
    model = LinearRegression(fit_intercept=False).fit(X, rng.normal(size=20))
    adapter = make_adapter(model, len(X), torch.device("cpu"))
    curvature = make_curvature("kfac", adapter, adapter.parameters(), adapter.inputs(X), None)
    ones = torch.ones(2, dtype=torch.float64)
    expected = np.linalg.pinv(curvature.dense().numpy(), hermitian=True) @ ones.numpy()
    np.testing.assert_allclose(curvature.inverse_matmul(ones, 0.0).numpy(), expected, rtol=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.ApproximationWarning")
@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_damping_sweep_does_not_refactor(name):
    X, y = _digits()
    influence = InfluenceFunction(FrozenEstimator(_fit(NETS["mlp"](), X, y)), curvature=name)
    influence.fit(X, y)
    assert influence.solver_ == "factored"
    curvature = influence.engine_.curvature
    first = influence.set_params(damping=1e-3).transform(X[:5], y[:5])
    count = curvature.n_eigendecompositions
    assert count == 2 * len(curvature.layers) == 4
    for damping in (1e-2, 1e-1, 1.0):
        other = influence.set_params(damping=damping).transform(X[:5], y[:5])
        assert not np.allclose(other, first)
    assert curvature.n_eigendecompositions == count


def _fit(net, X, y):
    fit_skorch(net, X, y)
    return net


# -- influence vs the exact Gauss-Newton ---------------------------------------------------
#: Pearson correlation with the exact Gauss-Newton influence matrix (λ = 1e-2, 20 queries ×
#: 60 training points, seeded), measured (kfac, ekfac): mlp 0.918 / 0.902, conv 0.867 / 0.891;
#: the floors leave a margin of about 0.05-0.07
FLOORS = {
    ("mlp", "kfac"): 0.85,
    ("mlp", "ekfac"): 0.85,
    ("conv", "kfac"): 0.80,
    ("conv", "ekfac"): 0.82,
}


# this test measures the agreement the fit-time check warns about
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.ApproximationWarning")
@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_influence_correlates_with_exact_gauss_newton(name, fitted):
    net_name, net, *_ = fitted
    X, y = _digits()
    X_query, y_query = _digits(20, offset=N_TRAIN)
    settings = {"damping": DAMPING, "solver_options": None}
    exact = InfluenceFunction(FrozenEstimator(net), solver="cholesky", **settings).fit(X, y)
    factored = InfluenceFunction(FrozenEstimator(net), curvature=name, **settings).fit(X, y)
    reference = exact.transform(X_query, y_query)
    matrix = factored.transform(X_query, y_query)
    pearson = float(np.corrcoef(matrix.ravel(), reference.ravel())[0, 1])
    print(f"{net_name} {name}: Pearson {pearson:.4f}")
    assert pearson >= FLOORS[net_name, name]


# -- parameters outside the factored layers ------------------------------------------------
@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_uncovered_parameters_get_the_exact_diagonal_fallback(name):
    X, y = _digits()
    net = _fit(_net(NormMLP), X, y)
    adapter = make_adapter(net, len(X), torch.device("cpu"))
    theta, inputs, targets = adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    curvature = make_curvature(name, adapter, theta, inputs, targets)
    with pytest.warns(UserWarning, match=r"\['norm.weight', 'norm.bias'\] get their exact"):
        diagonal = curvature.diagonal()
    assert curvature.fallback_parameters == ("norm.weight", "norm.bias")
    exact = make_curvature("gauss_newton", adapter, theta, inputs, targets).diagonal()
    assert bool((diagonal[exact > 0] > 0).all())
    norm = [block.span for block in adapter.layer_structure().uncovered]
    index = torch.cat([torch.arange(span.start, span.stop) for span in norm])
    torch.testing.assert_close(diagonal[index], exact[index])
    dense = curvature.dense()
    torch.testing.assert_close(dense[index][:, index], torch.diag(exact[index]))
    V = torch.randn(2, theta.numel(), dtype=theta.dtype)
    expected = torch.linalg.solve(dense + 1e-3 * torch.eye(len(dense)), V.T).T
    torch.testing.assert_close(curvature.inverse_matmul(V, 1e-3), expected)


def test_no_warning_when_every_parameter_is_factored(fitted):
    _, _, adapter, theta, inputs, targets = fitted
    curvature = make_curvature("kfac", adapter, theta, inputs, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _ = curvature.layers
    assert curvature.fallback_parameters == ()


# -- solvers -------------------------------------------------------------------------------
def test_every_solver_works_on_a_factored_curvature(fitted):
    _, _, adapter, theta, inputs, targets = fitted
    curvature = make_curvature("ekfac", adapter, theta, inputs, targets)
    T = per_example_gradients(adapter, theta, inputs[:10], targets[:10])
    assert make_solver("auto", curvature).name == "factored"
    reference = make_solver("factored", curvature).solve(T, DAMPING)
    options = {"cg": {"tol": 1e-12, "maxiter": 500, "preconditioner": None}}
    for name in ("direct", "cholesky", "cg"):
        solved = make_solver(name, curvature, options.get(name)).solve(T, DAMPING)
        torch.testing.assert_close(solved, reference, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="does not support curvature='gauss_newton'"):
        make_solver("factored", make_curvature("gauss_newton", adapter, theta, inputs))


@pytest.mark.parametrize("preconditioner", ["kfac", "ekfac"])
def test_cg_with_factored_preconditioner_converges_to_the_same_answer(preconditioner, fitted):
    net_name, _, adapter, theta, inputs, targets = fitted
    curvature = make_curvature("gauss_newton", adapter, theta, inputs, targets)
    Q = per_example_gradients(adapter, theta, inputs[:8], targets[:8])
    tight = {"tol": 1e-11, "maxiter": 500}
    plain = make_solver("cg", curvature, {**tight, "preconditioner": None})
    conditioned = make_solver("cg", curvature, {**tight, "preconditioner": preconditioner})
    for damping in (1e-3, 1e-1):
        torch.testing.assert_close(
            conditioned.solve(Q, damping), plain.solve(Q, damping), rtol=1e-7, atol=1e-9
        )
    print(f"{net_name} cg iterations: none {plain.n_iter_}, {preconditioner} {conditioned.n_iter_}")
    assert conditioned.preconditioner.factored.n_eigendecompositions == 4  # built once


def test_cg_refuses_an_unknown_preconditioner(fitted):
    _, _, adapter, theta, inputs, targets = fitted
    curvature = make_curvature("gauss_newton", adapter, theta, inputs, targets)
    with pytest.raises(ValueError, match="'preconditioner' parameter of solver_options"):
        make_solver("cg", curvature, {"preconditioner": "x"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["kfac", "ekfac"])
def test_cuda_factored_curvature_and_influence_equal_cpu(name, fitted):
    """Factors, eigenvalues and the factored influence on the GPU equal the CPU ones."""
    _, net, adapter, theta, inputs, targets = fitted
    X, y = _digits()
    X_query, y_query = _digits(8, offset=N_TRAIN)
    on_cpu = make_curvature(name, adapter, theta, inputs, targets)
    cuda = make_adapter(net, len(X), torch.device("cuda"))
    on_gpu = make_curvature(name, cuda, cuda.parameters(), cuda.inputs(X), cuda.targets(y))
    for cpu_layer, gpu_layer in zip(on_cpu.layers, on_gpu.layers, strict=True):
        assert gpu_layer.eigenvalues.device.type == "cuda"
        torch.testing.assert_close(gpu_layer.A.cpu(), cpu_layer.A, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gpu_layer.S.cpu(), cpu_layer.S, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(
            gpu_layer.eigenvalues.cpu(), cpu_layer.eigenvalues, rtol=1e-7, atol=1e-12
        )
    matrices = [
        InfluenceFunction(FrozenEstimator(net), curvature=name, damping=DAMPING, device=device)
        .fit(X, y)
        .transform(X_query, y_query)
        for device in ("cpu", "cuda")
    ]
    np.testing.assert_allclose(
        matrices[1], matrices[0], rtol=1e-7, atol=1e-10 * np.abs(matrices[0]).max()
    )
