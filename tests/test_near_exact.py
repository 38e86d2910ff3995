"""Near-exact influence at factored speed, its self-check, declared options and capabilities.

Truth: the dense float64 Gauss-Newton matrix of tiny nets (``curvature.dense()``, checked
against a per-row Jacobian sum elsewhere) and ``np.linalg.solve``.
"""

import warnings

import numpy as np
import pytest
import torch
from _nets import TanhMLP
from scipy.stats import spearmanr
from sklearn.datasets import load_digits
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPClassifier
from sklearn.utils._param_validation import InvalidParameterError
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction
from sklearn_influence._engine._capabilities import UnsupportedCombinationError
from sklearn_influence._engine._curvature import make_curvature, sample_rows
from sklearn_influence._engine._gradients import per_example_gradients
from sklearn_influence._engine._self_check import top_k_overlap
from sklearn_influence._engine._solvers import make_solver
from sklearn_influence.exceptions import ApproximationWarning, DampingWarning

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DAMPINGS = (1e-3, 1e-1, 1.0)


def _data(n=80):
    X, y = load_digits(n_class=4, return_X_y=True)
    return X[:n] / 16.0, y[:n]


def _net(**params):
    torch.manual_seed(0)
    return NeuralNetClassifier(
        TanhMLP, module__hidden=6, module__out_features=4, criterion=torch.nn.CrossEntropyLoss,
        train_split=None, max_epochs=10, lr=0.2, batch_size=20, verbose=0, **params,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        influence = InfluenceFunction(_net(), solver="cg", random_state=0).fit(X, y)
    engine = influence.engine_
    adapter, theta = engine.adapter, engine.theta
    dense = make_curvature(
        "gauss_newton", adapter, theta, engine.inputs, engine.targets,
        options={"jacobian_products": False},
    ).dense()  # fmt: skip
    return influence, engine, dense.numpy()


def test_stored_jacobian_products_equal_the_matrix_free_ones(fitted):
    _, engine, dense = fitted
    stored = make_curvature("gauss_newton", engine.adapter, engine.theta, engine.inputs,
                            options={"jacobian_products": True})  # fmt: skip
    free = make_curvature("gauss_newton", engine.adapter, engine.theta, engine.inputs,
                          options={"jacobian_products": False})  # fmt: skip
    V = torch.randn(7, engine.n_params, generator=torch.Generator().manual_seed(0),
                    dtype=engine.theta.dtype)  # fmt: skip
    np.testing.assert_allclose(stored.matmul(V).numpy(), V.numpy() @ dense, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(free.matmul(V).numpy(), V.numpy() @ dense, rtol=1e-10, atol=1e-12)
    assert stored.uses_stored_jacobians() and not free.uses_stored_jacobians()
    np.testing.assert_allclose(stored.diagonal().numpy(), np.diag(dense), rtol=1e-10)
    # a subset slices the stored rows: equal to the subset's own matrix-free products
    rows = torch.tensor([0, 3, 9, 40])
    np.testing.assert_allclose(
        stored.subset(rows).matmul(V).numpy(), free.subset(rows).matmul(V).numpy(), rtol=1e-10
    )
    # the stored Jacobians are not pickled (rebuilt on demand)
    assert "_jacobians" not in stored.__getstate__()


def _flops_per_row(adapter, theta, inputs):
    """Forward flops of one row counted by hand from the modules (independent of the rule)."""
    total, shape = 0, inputs.shape[1:]
    for module in adapter._module.modules():  # one conv layer at most: the input size
        if isinstance(module, torch.nn.Linear):
            total += 2 * module.in_features * module.out_features
        elif isinstance(module, torch.nn.Conv2d):
            height, width = shape[-2:]
            out_h = (height + 2 * module.padding[0] - module.kernel_size[0]) // module.stride[0] + 1
            out_w = (width + 2 * module.padding[1] - module.kernel_size[1]) // module.stride[1] + 1
            total += 2 * module.weight[0].numel() * module.out_channels * out_h * out_w
    return total


def test_auto_products_follow_the_flop_count(fitted):
    """ "auto" stores the Jacobians for a network that reuses its weights (a conv net: many
    flops per parameter) and not for a dense MLP (2 flops per weight and row), whose
    matrix-free products are the cheaper ones; the rule's flop count equals a hand count."""
    from torch.utils.flop_counter import FlopCounterMode

    from sklearn_influence._engine._gauss_newton import (
        STORED_FLOPS_PER_JACOBIAN_ENTRY,
        stored_products_are_cheaper,
    )

    _, engine, _ = fitted
    mlp = make_curvature("gauss_newton", engine.adapter, engine.theta, engine.inputs)
    assert not mlp.uses_stored_jacobians()
    r, p = 4, engine.n_params  # 4 classes: a softmax's factor has k rows
    assert _flops_per_row(engine.adapter, engine.theta, engine.inputs) < (
        STORED_FLOPS_PER_JACOBIAN_ENTRY * r * p
    )

    class SmallConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.out = torch.nn.Linear(4 * 16, 4)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
            return self.out(x.flatten(1))

    X, y = _data()
    X = X.astype(np.float32).reshape(-1, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = NeuralNetClassifier(
            SmallConv, criterion=torch.nn.CrossEntropyLoss, train_split=None, max_epochs=2,
            lr=0.1, batch_size=20, verbose=0,
        )  # fmt: skip
        conv = InfluenceFunction(net, solver="cg", random_state=0).fit(X, y)
    adapter, theta, inputs = conv.engine_.adapter, conv.engine_.theta, conv.engine_.inputs
    hand = _flops_per_row(adapter, theta, inputs)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        adapter.outputs(theta, inputs[:1])
    assert counter.get_total_flops() == hand
    assert hand >= STORED_FLOPS_PER_JACOBIAN_ENTRY * r * theta.numel()
    assert stored_products_are_cheaper(adapter, theta, inputs, r)
    assert make_curvature("gauss_newton", adapter, theta, inputs).uses_stored_jacobians()


@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("curvature", ["gauss_newton", "kfac", "ekfac"])
def test_near_exact_solves_the_exact_gauss_newton_system(curvature, damping, fitted):
    """Whatever the curvature (a factored one is only the starting point), the answer is the
    exact Gauss-Newton solve."""
    _, engine, dense = fitted
    curve = make_curvature(curvature, engine.adapter, engine.theta, engine.inputs, engine.targets)
    solver = make_solver("near_exact", curve, {"tol": 1e-12, "maxiter": 500, "seed": 0})
    Q = per_example_gradients(engine.adapter, engine.theta, engine.inputs[:5], engine.targets[:5])
    expected = np.linalg.solve(dense + damping * np.eye(len(dense)), Q.numpy().T).T
    np.testing.assert_allclose(solver.solve(Q, damping).numpy(), expected, rtol=1e-7, atol=1e-10)
    assert solver.curvature.name == "gauss_newton"
    assert (solver.factored is not None) == (curvature != "gauss_newton")


def test_near_exact_default_tolerance_keeps_the_rankings(fitted):
    _, engine, dense = fitted
    X, y = _data()
    near = InfluenceFunction(_net(), solver="near_exact", random_state=0).fit(X, y)
    Q = per_example_gradients(engine.adapter, engine.theta, engine.inputs[:6], engine.targets[:6])
    T = per_example_gradients(engine.adapter, engine.theta, engine.inputs, engine.targets)
    exact = np.linalg.solve(dense + 1e-3 * np.eye(len(dense)), Q.numpy().T).T @ T.numpy().T
    approximate = near.transform(X[:6], y[:6]) * len(X)
    assert np.corrcoef(approximate.ravel(), exact.ravel())[0, 1] > 0.999
    assert near.solver_ == "near_exact"


def test_start_factored_needs_a_factored_curvature(fitted):
    _, engine, _ = fitted
    with pytest.raises(ValueError, match="needs a factored curvature"):
        make_solver("near_exact", engine.curvature, {"start": "factored"})


def test_self_check_figures_equal_a_direct_computation(fitted):
    _, engine, dense = fitted
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApproximationWarning)
        influence = InfluenceFunction(
            _net(), curvature="ekfac", random_state=0, curvature_options={"self_check": False}
        ).fit(X, y)
        agreement = influence.check_approximation(X[60:70], y[60:70], n_train=30, k=5)
    # the direct computation: EK-FAC's dense matrix and the exact one, on the same columns
    columns = agreement.train_indices
    factored = influence.engine_.curvature.dense().numpy()
    adapter, theta = engine.adapter, engine.theta
    Q = per_example_gradients(adapter, theta, engine.inputs[60:70], engine.targets[60:70]).numpy()
    T = per_example_gradients(
        adapter, theta, engine.inputs[columns], engine.targets[columns]
    ).numpy()  # fmt: skip
    eye = np.eye(len(dense))
    exact = np.linalg.solve(dense + 1e-3 * eye, Q.T).T @ T.T / len(X)
    approximate = np.linalg.solve(factored + 1e-3 * eye, Q.T).T @ T.T / len(X)
    assert agreement.n_queries == 10 and agreement.n_train == 30 and agreement.n_rows == 80
    # the reference is CG to relative residual 1e-6: entries agree to ~1e-6 of the largest
    np.testing.assert_allclose(agreement.exact, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
    np.testing.assert_allclose(agreement.approximate, approximate, rtol=1e-8, atol=1e-14)
    assert agreement.pearson == pytest.approx(np.corrcoef(approximate.ravel(), exact.ravel())[0, 1],
                                              abs=1e-6)  # fmt: skip
    assert agreement.spearman == pytest.approx(spearmanr(approximate.ravel(), exact.ravel())[0],
                                               abs=1e-3)  # fmt: skip
    assert agreement.top_k_overlap == pytest.approx(top_k_overlap(approximate, exact, 5))


def test_self_check_runs_at_fit_for_factored_curvatures_on_networks_and_warns():
    X, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        influence = InfluenceFunction(_net(), curvature="kfac", random_state=0).fit(X, y)
    agreement = influence.approximation_
    assert agreement is not None and -1 <= agreement.pearson <= 1
    poor = [w for w in caught if issubclass(w.category, ApproximationWarning)]
    assert bool(poor) == (agreement.pearson < 0.9 or agreement.top_k_overlap < 0.7)
    for warning in poor:
        assert "Pearson" in str(warning.message) and "near_exact" in str(warning.message)
    exact = InfluenceFunction(_net(), random_state=0).fit(X, y)
    assert exact.approximation_ is None
    linear = InfluenceFunction(Ridge(), curvature="kfac").fit(X, y)
    assert linear.approximation_ is None  # K-FAC is exact there: no default check


def test_options_are_validated_before_any_fitting():
    X, y = _data(20)
    with pytest.raises(InvalidParameterError, match="Unknown curvature_options"):
        InfluenceFunction(Ridge(), curvature_options={"bogus": 1}).fit(X, y)
    with pytest.raises(InvalidParameterError, match="'n_samples' parameter of curvature_options"):
        InfluenceFunction(Ridge(), curvature_options={"n_samples": -2}).fit(X, y)
    with pytest.raises(InvalidParameterError, match="'tol' parameter of solver_options"):
        InfluenceFunction(Ridge(), solver="cg", solver_options={"tol": -1}).fit(X, y)


@pytest.mark.parametrize(
    "settings",
    [
        {"curvature": "kfac"},
        {"curvature": "ekfac"},
        {"solver": "cg", "solver_options": {"preconditioner": "ekfac"}},
        {"solver": "factored"},
    ],
)
def test_unsupported_combinations_are_named_before_training(settings):
    X, y = _data(20)
    model = MLPClassifier(hidden_layer_sizes=(3,), max_iter=5)
    refused = "not supported|does not support|not available"
    with pytest.raises(UnsupportedCombinationError, match=refused):
        InfluenceFunction(model, **settings).fit(X, y)
    assert not hasattr(model, "coefs_")  # refused before any training


def test_sampled_curvature_with_all_rows_equals_the_full_one(fitted):
    _, engine, _ = fitted
    full = make_curvature("ekfac", engine.adapter, engine.theta, engine.inputs, engine.targets)
    for everything in (len(engine.inputs), 1.0, 10**6):
        sampled = make_curvature(
            "ekfac", engine.adapter, engine.theta, engine.inputs, engine.targets,
            options={"n_samples": everything}, seed=3,
        )  # fmt: skip
        assert sampled.rows is None
        np.testing.assert_array_equal(sampled.dense().numpy(), full.dense().numpy())
    rows = sample_rows(80, 20, seed=3)
    assert len(rows) == 20 and not np.array_equal(rows.numpy(), np.arange(20))  # not the first
    part = make_curvature(
        "gauss_newton", engine.adapter, engine.theta, engine.inputs, engine.targets,
        options={"n_samples": 20}, seed=3,
    )  # fmt: skip
    expected = make_curvature(
        "gauss_newton", engine.adapter, engine.theta, engine.inputs[rows], engine.targets[rows]
    ).dense()  # fmt: skip
    np.testing.assert_allclose(part.dense().numpy(), expected.numpy(), rtol=1e-12)


def test_sampled_curvature_streams_gradients_over_all_rows():
    X, y = _data()
    influence = InfluenceFunction(
        _net(), curvature="ekfac", random_state=0,
        curvature_options={"n_samples": 0.5, "self_check": False},
    ).fit(X, y)  # fmt: skip
    assert len(influence.engine_.curvature.inputs) == 40
    assert influence.transform(X[:3], y[:3]).shape == (3, 80)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_a_damping_that_dwarfs_the_curvature_is_warned_about(solver):
    X, y = _data(60)
    influence = InfluenceFunction(Ridge(), damping=1e12, solver=solver).fit(X, y)
    with pytest.warns(DampingWarning, match=r"damping=1e\+12 is .* times the curvature's mean"):
        influence.transform(X[:2], y[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DampingWarning)
        influence.transform(X[:2], y[:2])  # once per damping value
        influence.set_params(damping=1e-3).transform(X[:2], y[:2])  # a sensible damping
