"""The Nyström preconditioner of ``cg``: built on the whole damped curvature, sized by its savings.

The truth is a second writing of the same matrix (weight decay λ and no damping against no
weight decay and damping λ) and the ``direct`` solver.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction
from sklearn_influence.datasets import TanhMLP

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAMBDA = 1e-2


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float64), y


def _net(weight_decay):
    return NeuralNetClassifier(
        TanhMLP,
        module__hidden=16,
        module__dtype=torch.float64,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD,
        optimizer__weight_decay=weight_decay,
        lr=0.3,
        max_epochs=10,
        batch_size=32,
        train_split=None,
        verbose=0,
    )


@pytest.fixture(scope="module")
def same_weights(digits):
    """One trained TanhMLP (1,210 parameters), as two nets: weight decay λ, and none."""
    X, y = digits
    torch.manual_seed(0)
    trained = _net(LAMBDA).fit(X[:200], y[:200])
    nets = {}
    for weight_decay in (LAMBDA, 0.0):
        net = _net(weight_decay).initialize()
        net.module_.load_state_dict(trained.module_.state_dict())
        nets[weight_decay] = net
    return nets


def _cg(net, damping, X, y, queries):
    influence = InfluenceFunction(
        FrozenEstimator(net),
        solver="cg",
        solver_options={"preconditioner": "nystrom", "tol": 1e-8, "maxiter": 500},
        damping=damping,
        random_state=0,
    ).fit(X, y)
    return influence, influence.transform(*queries)


def test_weight_decay_and_damping_are_the_same_matrix_for_the_preconditioner(same_weights, digits):
    """(wd=λ, damping=0) and (wd=0, damping=λ): same iterations (±1) and the same answer."""
    X, y = digits
    queries = (X[300:312], y[300:312])
    decayed, decayed_matrix = _cg(same_weights[LAMBDA], 0.0, X[:200], y[:200], queries)
    damped, damped_matrix = _cg(same_weights[0.0], LAMBDA, X[:200], y[:200], queries)
    decayed_solver, damped_solver = decayed.engine_.solver, damped.engine_.solver
    assert decayed_solver.preconditioner.floor == pytest.approx(LAMBDA)
    assert damped_solver.preconditioner.floor == 0.0
    assert decayed_solver.preconditioner.sketch_rank == damped_solver.preconditioner.sketch_rank
    assert abs(decayed_solver.n_iter_[0] - damped_solver.n_iter_[0]) <= 1
    scale = np.abs(damped_matrix).max()
    np.testing.assert_allclose(decayed_matrix, damped_matrix, rtol=1e-6, atol=1e-9 * scale)
    # and both are the exact answer for C + λI (direct solver, weight decay as damping)
    direct = InfluenceFunction(
        FrozenEstimator(same_weights[0.0]), solver="direct", damping=LAMBDA
    ).fit(X[:200], y[:200])
    np.testing.assert_allclose(
        damped_matrix, direct.transform(*queries), rtol=1e-5, atol=1e-8 * scale
    )


def test_sketch_rank_stays_well_below_the_cap_on_a_small_model(digits):
    """650 parameters (logistic regression on digits): the rank stops where it stops paying."""
    X, y = digits
    model = LogisticRegression(C=10.0, max_iter=5000, tol=1e-8).fit(X[:1000], y[:1000])
    influence = InfluenceFunction(
        FrozenEstimator(model),
        solver="cg",
        solver_options={"preconditioner": "nystrom", "max_rank": 512, "tol": 1e-6},
        damping=1e-3,
        random_state=0,
    ).fit(X[:1000], y[:1000])
    assert influence.engine_.n_params == 650
    matrix = influence.transform(X[1000:1100], y[1000:1100])
    preconditioner = influence.engine_.solver.preconditioner
    assert preconditioner.sketch_rank <= 128  # the old rule grew it to the 512 cap
    direct = InfluenceFunction(FrozenEstimator(model), solver="direct", damping=1e-3)
    expected = direct.fit(X[:1000], y[:1000]).transform(X[1000:1100], y[1000:1100])
    assert np.corrcoef(matrix.ravel(), expected.ravel())[0, 1] >= 0.9999


def test_sketch_grows_when_it_pays(digits):
    """A tiny damping and 100 right-hand sides make a larger sketch pay; one does not."""
    from sklearn_influence._adapters import make_adapter
    from sklearn_influence._engine._curvature import make_curvature
    from sklearn_influence._engine._nystrom import NystromPreconditioner

    X, y = digits
    model = LogisticRegression(C=10.0, max_iter=5000, tol=1e-8).fit(X[:1000], y[:1000])
    adapter = make_adapter(model, 1000, torch.device("cpu"))
    theta = adapter.parameters()
    inputs, targets = adapter.inputs(X[:1000]), adapter.targets(y[:1000])
    ranks = {}
    for n_rhs in (1, 100):
        curvature = make_curvature("gauss_newton", adapter, theta, inputs, targets)
        preconditioner = NystromPreconditioner(curvature, max_rank=512, seed=0)
        generator = torch.Generator().manual_seed(0)
        block = torch.randn(n_rhs, theta.numel(), generator=generator, dtype=theta.dtype)
        preconditioner.apply(block, 1e-5)
        ranks[n_rhs] = preconditioner.sketch_rank
    assert ranks[1] == 64
    assert ranks[100] > 64
