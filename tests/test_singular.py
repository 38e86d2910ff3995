"""Singular curvature at damping 0: every curvature and solver gives the pseudo-inverse answer
(``np.linalg.pinv`` of the dense matrix) or refuses naming ``damping``."""

import warnings

import numpy as np
import pytest
import torch
from _nets import TanhMLP
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LinearRegression
from skorch import NeuralNetClassifier

from sklearn_influence import InfluenceFunction
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._gradients import per_example_gradients
from sklearn_influence._engine._pinv import cutoff, inverse_eigenvalues
from sklearn_influence._engine._solvers import make_solver

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: solver → options that make it tight; (and the relative error it reaches)
SOLVERS = {
    "direct": ({}, 1e-10),
    "cg": ({"tol": 1e-12, "maxiter": 500}, 1e-7),
    "near_exact": ({"tol": 1e-12, "maxiter": 500}, 1e-7),
    "factored": ({}, 1e-10),
    # the Neumann series stays in the range of C (the gradients lie there), so it reaches the
    # pseudo-inverse answer; its rate is set by the smallest non-zero eigenvalue (here ~1e-3
    # of the largest), hence the depth
    "lissa": ({"depth": 25000}, 1e-6),
}


@pytest.fixture(scope="module")
def duplicated():
    """A linear regression whose design has a duplicated column (a singular curvature)."""
    X, y = load_diabetes(return_X_y=True)
    X = np.hstack([X[:80, :4], X[:80, :1]])
    influence = InfluenceFunction(LinearRegression(), damping=0.0, solver="direct").fit(X, y[:80])
    return X, y[:80], influence


def _pinv(matrix):
    """numpy's pseudo-inverse with the array API's cut-off, max(M, N)·ε of the largest."""
    return np.linalg.pinv(matrix, rtol=len(matrix) * np.finfo(matrix.dtype).eps, hermitian=True)


def _relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cases():
    for curvature in ["gauss_newton", "hessian", "kfac", "ekfac"]:
        for solver in sorted(SOLVERS):
            # 25,000 Hessian-vector products take about a minute: in the slow set
            slow = (pytest.mark.slow,) if (curvature, solver) == ("hessian", "lissa") else ()
            yield pytest.param(curvature, solver, marks=slow, id=f"{curvature}-{solver}")


@pytest.mark.parametrize(("curvature", "solver"), list(_cases()))
def test_pseudo_inverse_at_damping_zero(curvature, solver, duplicated):
    _, _, influence = duplicated
    engine = influence.engine_
    curve = make_curvature(curvature, engine.adapter, engine.theta, engine.inputs, engine.targets)
    if solver == "factored" and not curve.factored:
        pytest.skip("the factored solver needs a factored curvature (a named error elsewhere)")
    options, tolerance = SOLVERS[solver]
    Q = per_example_gradients(engine.adapter, engine.theta, engine.inputs[:6], engine.targets[:6])
    dense = curve.dense().numpy()
    # near_exact always solves the exact Gauss-Newton system
    truth = dense if solver != "near_exact" else make_curvature(
        "gauss_newton", engine.adapter, engine.theta, engine.inputs
    ).dense().numpy()  # fmt: skip
    assert np.linalg.matrix_rank(truth) < len(truth)  # singular indeed
    expected = Q.numpy() @ _pinv(truth)
    solved = make_solver(solver, curve, {**options, "seed": 0}).solve(Q, 0.0).numpy()
    assert _relative(solved, expected) <= tolerance


@pytest.mark.parametrize("curvature", ["gauss_newton", "kfac", "ekfac"])
def test_cholesky_refuses_a_singular_curvature_naming_damping(curvature, duplicated):
    _, _, influence = duplicated
    engine = influence.engine_
    curve = make_curvature(curvature, engine.adapter, engine.theta, engine.inputs, engine.targets)
    Q = per_example_gradients(engine.adapter, engine.theta, engine.inputs[:2], engine.targets[:2])
    with pytest.raises(ValueError, match="damping"):
        make_solver("cholesky", curve).solve(Q, 0.0)


def test_softmax_net_without_weight_decay_factored_pseudo_inverse():
    """EK-FAC on a softmax net without weight decay (one redundant logit direction): the
    damping → 0 answer is its pseudo-inverse's, as for K-FAC."""
    X, y = load_digits(n_class=3, return_X_y=True)
    X, y = X[:60] / 16.0, y[:60]
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        TanhMLP, module__hidden=4, module__out_features=3, criterion=torch.nn.CrossEntropyLoss,
        train_split=None, max_epochs=5, lr=0.2, verbose=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        influence = InfluenceFunction(
            net, curvature="ekfac", damping=0.0, random_state=0,
            curvature_options={"self_check": False},
        ).fit(X, y)  # fmt: skip
    engine = influence.engine_
    Q = per_example_gradients(engine.adapter, engine.theta, engine.inputs[:4], engine.targets[:4])
    for name in ("kfac", "ekfac"):
        curve = make_curvature(name, engine.adapter, engine.theta, engine.inputs, engine.targets)
        dense = curve.dense().numpy()
        assert np.linalg.matrix_rank(dense) < len(dense)
        expected = Q.numpy() @ _pinv(dense)
        solved = curve.inverse_matmul(Q, 0.0).numpy()
        kept = np.linalg.eigvalsh(dense)
        kept = kept[kept > len(dense) * np.finfo(float).eps * kept.max()]
        # a backward-stable answer is within ε·κ of the kept part (κ ≈ 2e10 here)
        assert _relative(solved, expected) <= 10 * np.finfo(float).eps * kept.max() / kept.min()


def test_the_cut_off_is_relative_to_the_largest_eigenvalue():
    values = torch.tensor([1e-31, 1e-12, 1.0], dtype=torch.float64)
    threshold = cutoff(values.max(), 3, torch.float64)
    inverse = inverse_eigenvalues(values, threshold)
    assert inverse.tolist() == [0.0, 1e12, 1.0]  # 1e-31 is round-off, 1e-12 is not
    # the same matrix scaled by 1e-20: the same eigenvalues are kept
    scaled = inverse_eigenvalues(values * 1e-20, cutoff(values.max() * 1e-20, 3, torch.float64))
    assert (scaled > 0).tolist() == [False, True, True]
