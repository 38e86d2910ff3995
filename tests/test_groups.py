"""Group removal: the responses to removing a set S of training points at once
(``removed_groups``, ε_S = Σ_{m∈S} w_m / W) against independent truth — scikit-learn refits,
numpy closed forms, exact Newton on objectives written here — and the group influence
(:func:`~sklearn_influence.metrics.group_influence`, the sums of the influence columns)."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from skorch import NeuralNetRegressor
from torch.func import functional_call

from sklearn_influence import (
    PBRF,
    InfluenceFunction,
    LeaveOneOut,
    LinearizedPBRF,
    ProximalResponse,
)
from sklearn_influence.datasets import TanhMLP, load_digits_split
from sklearn_influence.metrics import group_influence

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RNG = np.random.default_rng(0)
N = 60
X = RNG.normal(size=(N, 4))
Y = X @ np.array([1.0, 2.0, -1.0, 0.5]) + 0.3 * RNG.normal(size=N)
LABELS = (X[:, 0] - X[:, 1] + 0.5 * RNG.normal(size=N) > 0).astype(int)
WEIGHTS = RNG.uniform(0.5, 2.0, size=N)
#: overlapping groups of very different sizes (the last removes 40% of the data)
GROUPS = [[0, 1, 2], [5], [3, 4, 10, 11, 20], list(range(20, 44))]


def _refit(model, group, sample_weight=None):
    keep = np.setdiff1d(np.arange(N), group)
    weight = None if sample_weight is None else sample_weight[keep]
    fitted = model.fit(X[keep], Y[keep], sample_weight=weight)
    return np.r_[fitted.coef_.ravel(), np.atleast_1d(fitted.intercept_)]


# -- convex models: exact truth --------------------------------------------------------------
@pytest.mark.parametrize("model", [Ridge(alpha=1.0), LinearRegression()], ids=["ridge", "ols"])
@pytest.mark.parametrize("warm_start", [False, True])
def test_group_loo_of_least_squares_equals_a_scikit_learn_refit(model, warm_start):
    loo = LeaveOneOut(model, removed_groups=GROUPS, warm_start=warm_start).fit(X, Y)
    assert loo.train_indices_ is None
    assert [list(group) for group in loo.removed_groups_] == GROUPS
    assert loo.transform(X[:3], Y[:3]).shape == (3, len(GROUPS))
    for j, group in enumerate(GROUPS):
        np.testing.assert_allclose(loo.parameters_[j], _refit(model, group), rtol=0, atol=1e-10)


def test_weighted_group_loo_removes_the_members_whole_weight():
    """With sample weights the refit without S is the weighted refit on the other rows."""
    loo = LeaveOneOut(Ridge(alpha=1.0), removed_groups=GROUPS).fit(X, Y, sample_weight=WEIGHTS)
    for j, group in enumerate(GROUPS):
        truth = _refit(Ridge(alpha=1.0), group, WEIGHTS)
        np.testing.assert_allclose(loo.parameters_[j], truth, rtol=0, atol=1e-10)


def test_group_pbrf_of_ridge_at_small_damping_equals_the_refit():
    """For least squares at its optimum the PBRF objective is J − ε_S L_S + (λ/2)‖θ − θˢ‖²
    (up to a constant), whose minimiser tends to the refit without S as λ → 0."""
    pbrf = PBRF(Ridge(alpha=1.0), removed_groups=GROUPS, damping=1e-9).fit(X, Y)
    assert pbrf.converged_.all()
    for j, group in enumerate(GROUPS):
        truth = _refit(Ridge(alpha=1.0), group)
        np.testing.assert_allclose(pbrf.parameters_[j], truth, rtol=0, atol=1e-7)


def _single_and_group(cls, model, index, **kwargs):
    y = LABELS if _is_classifier(model) else Y
    single = cls(model, train_indices=[index], **kwargs).fit(X, y)
    group = cls(model, removed_groups=[[index]], **kwargs).fit(X, y)
    return single, group


def _is_classifier(model):
    return isinstance(model, LogisticRegression)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (LeaveOneOut, {}),
        (LeaveOneOut, {"warm_start": True}),
        (ProximalResponse, {"damping": 1e-2}),
        (PBRF, {"damping": 1e-2}),
        (LinearizedPBRF, {"damping": 1e-2}),
    ],
    ids=["cold-loo", "warm-loo", "prf", "pbrf", "linearized"],
)
@pytest.mark.parametrize(
    "model", [Ridge(alpha=1.0), LogisticRegression(C=1.0, tol=1e-12)], ids=["ridge", "logistic"]
)
def test_a_group_of_one_is_the_single_point_response(cls, kwargs, model):
    single, group = _single_and_group(cls, model, 7, **kwargs)
    moved = np.abs(single.parameters_[0] - single.reference_parameters_).max()
    assert moved > 1e-6  # the removal moves the parameters
    np.testing.assert_allclose(group.parameters_, single.parameters_, rtol=0, atol=1e-9 * moved)
    y = LABELS if _is_classifier(model) else Y
    np.testing.assert_allclose(
        group.transform(X[:5], y[:5]), single.transform(X[:5], y[:5]), rtol=1e-8, atol=1e-14
    )


# -- group influence -------------------------------------------------------------------------
def _ridge_influence_numpy(alpha, damping, weights, queries, query_targets):
    """(1/W) ∇f_qᵀ (G + λI)⁻¹ w_m ∇L_m for Ridge in numpy (DESIGN.md §2: L = (y − ŷ)²,
    R = (α/W)‖w‖², the intercept unpenalised, G = (2/W) Σ w_i z_i z_iᵀ + ∇²R)."""
    model = Ridge(alpha=alpha).fit(X, Y, sample_weight=weights)
    theta = np.r_[model.coef_, model.intercept_]
    design = np.c_[X, np.ones(N)]
    total = weights.sum()
    penalty = np.diag(np.r_[np.full(4, 2 * alpha / total), 0.0])
    curvature = 2 * (design * weights[:, None]).T @ design / total + penalty
    train_gradients = -2 * (Y - design @ theta)[:, None] * design
    query_design = np.c_[queries, np.ones(len(queries))]
    query_gradients = -2 * (query_targets - query_design @ theta)[:, None] * query_design
    solved = np.linalg.solve(curvature + damping * np.eye(5), train_gradients.T)
    return query_gradients @ solved * weights / total


@pytest.mark.parametrize("weighted", [False, True])
def test_group_influence_is_the_sum_of_the_columns_and_its_closed_form(weighted):
    weights = WEIGHTS if weighted else np.ones(N)
    influence = InfluenceFunction(Ridge(alpha=1.0), damping=1e-3, solver="direct")
    influence.fit(X, Y, sample_weight=weights if weighted else None)
    matrix = influence.transform(X[:6], Y[:6])
    groups = group_influence(matrix, GROUPS)
    assert groups.shape == (6, len(GROUPS))
    for j, group in enumerate(GROUPS):
        np.testing.assert_allclose(groups[:, j], matrix[:, group].sum(1), rtol=1e-13)
    truth = _ridge_influence_numpy(1.0, 1e-3, weights, X[:6], Y[:6])
    expected = np.stack([truth[:, group].sum(1) for group in GROUPS], axis=1)
    np.testing.assert_allclose(groups, expected, rtol=1e-8, atol=1e-14)
    # one row of influence (n_train,) gives one value per group
    np.testing.assert_allclose(group_influence(matrix[0], GROUPS), groups[0])


def test_group_influence_is_the_first_order_change_of_the_group_response():
    """The linearized group PBRF moves θ by ε_S (G + λI)⁻¹ ∇L̄_S: to first order its
    measurement change is the group influence, and at a tenth of the group the gap
    shrinks quadratically."""
    influence = InfluenceFunction(Ridge(alpha=1.0), damping=1e-3, solver="direct").fit(X, Y)
    predicted = group_influence(influence.transform(X[:6], Y[:6]), GROUPS)
    linear = LinearizedPBRF(Ridge(alpha=1.0), removed_groups=GROUPS, damping=1e-3).fit(X, Y)
    actual = linear.transform(X[:6], Y[:6])
    # Ridge's query loss is quadratic: Δf = gᵀδ + δᵀ(zzᵀ)δ, the second term of order ε_S²
    design = np.c_[X[:6], np.ones(6)]
    shifts = linear.parameters_ - linear.reference_parameters_
    second_order = (design @ shifts.T) ** 2
    np.testing.assert_allclose(actual - second_order, predicted, rtol=1e-9, atol=1e-14)


def test_linearized_group_shift_is_the_sum_of_the_single_point_shifts():
    """The linearized PBRF is linear in ε: the group's shift is the sum of its members'."""
    for weights in (None, WEIGHTS):
        group = LinearizedPBRF(Ridge(alpha=1.0), removed_groups=GROUPS, damping=1e-2)
        group.fit(X, Y, sample_weight=weights)
        single = LinearizedPBRF(Ridge(alpha=1.0), train_indices=np.arange(N), damping=1e-2)
        single.fit(X, Y, sample_weight=weights)
        shifts = single.parameters_ - single.reference_parameters_
        for j, members in enumerate(GROUPS):
            np.testing.assert_allclose(
                group.parameters_[j] - group.reference_parameters_,
                shifts[members].sum(0),
                rtol=1e-10,
                atol=1e-15,
            )


# -- a network -------------------------------------------------------------------------------
WEIGHT_DECAY = 1e-3
NET_GROUPS = [[3], [3, 41, 97], [150, 188, 7, 60, 120]]


@pytest.fixture(scope="module")
def regression():
    """A small regression MLP (tanh, float64), trained briefly (not at an optimum)."""
    data = load_digits_split(n_train=200, n_test=20, random_state=0)
    y = (data.y_train / 9.0).reshape(-1, 1)
    net = NeuralNetRegressor(
        TanhMLP,
        module__hidden=8,
        module__out_features=1,
        module__dtype=torch.float64,
        optimizer=torch.optim.SGD,
        lr=0.05,
        optimizer__momentum=0.9,
        optimizer__weight_decay=WEIGHT_DECAY,
        max_epochs=20,
        batch_size=64,
        train_split=None,
        verbose=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net.fit(data.X_train, y)
    return net, data.X_train, y


def _group_objective(net, X, y, group, kind, damping):
    """The PRF or PBRF objective of removing ``group``, written from DESIGN.md §2 without
    the package (skorch's MSELoss: L = (h − t)², Bregman D = (h − hˢ)²; R = (wd/2)‖θ‖²)."""
    module = net.module_
    named = list(module.named_parameters())
    start = torch.cat([value.detach().reshape(-1) for _, value in named])
    inputs = torch.as_tensor(X, dtype=torch.float64)
    targets = torch.as_tensor(y, dtype=torch.float64)
    with torch.no_grad():
        reference = module(inputs)

    def objective(theta):
        params, offset = {}, 0
        for name, value in named:
            params[name] = theta[offset : offset + value.numel()].reshape(value.shape)
            offset += value.numel()
        outputs = functional_call(module, params, (inputs,))
        squared = (outputs - targets) ** 2
        if kind == "pbrf":
            data = ((outputs - reference) ** 2).mean()
            regularizer = 0.5 * WEIGHT_DECAY * ((theta - start) ** 2).sum()
        else:
            data = squared.mean()
            regularizer = 0.5 * WEIGHT_DECAY * (theta**2).sum()
        removed = squared[group].sum() / len(X)
        return data + regularizer - removed + 0.5 * damping * ((theta - start) ** 2).sum()

    return objective, start


def _exact_minimiser(objective, theta):
    """Newton's method with the exact dense Hessian from ``theta``, checked to be a minimum."""
    theta = torch.as_tensor(theta, dtype=torch.float64).clone()
    for _ in range(20):
        gradient = torch.func.grad(objective)(theta)
        if float(gradient.norm()) < 1e-11:
            break
        theta = theta - torch.linalg.solve(torch.func.hessian(objective)(theta), gradient)
    assert float(torch.func.grad(objective)(theta).norm()) < 1e-11
    assert float(torch.linalg.eigvalsh(torch.func.hessian(objective)(theta))[0]) > 0
    return theta


@pytest.mark.parametrize(
    "cls, kind, kwargs",
    [
        (ProximalResponse, "prf", {"damping": 1e-2}),
        (PBRF, "pbrf", {"damping": 1e-2, "optimizer": "lbfgs", "n_iter": 3000}),
    ],
    ids=["prf", "pbrf"],
)
def test_mlp_group_responses_converge_to_the_exact_minimiser(regression, cls, kind, kwargs):
    net, X_train, y = regression
    response = cls(FrozenEstimator(net), removed_groups=NET_GROUPS, **kwargs).fit(X_train, y)
    assert response.converged_.all(), response.gradient_norm_
    for j, group in enumerate(NET_GROUPS):
        objective, start = _group_objective(net, X_train, y, group, kind, kwargs["damping"])
        truth = _exact_minimiser(objective, response.parameters_[j]).numpy()
        move = np.linalg.norm(truth - start.numpy())
        assert np.linalg.norm(response.parameters_[j] - truth) <= 5e-3 * move


@pytest.mark.slow  # ~10 s: the second-order optimizer on groups (the main proof is above)
def test_mlp_gauss_newton_group_pbrf_reaches_the_exact_minimiser(regression):
    net, X_train, y = regression
    groups = [[3, 41, 97]]
    response = PBRF(
        FrozenEstimator(net), removed_groups=groups, damping=1e-2, optimizer="gauss_newton"
    ).fit(X_train, y)
    assert response.converged_.all(), response.gradient_norm_
    objective, start = _group_objective(net, X_train, y, groups[0], "pbrf", 1e-2)
    truth = _exact_minimiser(objective, response.parameters_[0]).numpy()
    move = np.linalg.norm(truth - start.numpy())
    assert np.linalg.norm(response.parameters_[0] - truth) <= 5e-3 * move


def test_mlp_group_of_one_is_the_single_point_response(regression):
    """SGD's copies are independent: a group of one follows the single point's iterates."""
    net, X_train, y = regression
    settings = {"damping": 1e-2, "optimizer": "sgd", "n_iter": 300}
    with warnings.catch_warnings():  # a short run on purpose: the same iterates either way
        warnings.simplefilter("ignore")
        single = PBRF(FrozenEstimator(net), train_indices=[41], **settings).fit(X_train, y)
        group = PBRF(FrozenEstimator(net), removed_groups=[[41]], **settings).fit(X_train, y)
    moved = np.abs(single.parameters_ - single.reference_parameters_).max()
    np.testing.assert_allclose(group.parameters_, single.parameters_, rtol=0, atol=1e-10 * moved)


def test_mlp_linearized_group_shift_is_the_sum_of_single_shifts(regression):
    net, X_train, y = regression
    members = sorted({m for group in NET_GROUPS for m in group})
    group = LinearizedPBRF(FrozenEstimator(net), removed_groups=NET_GROUPS).fit(X_train, y)
    single = LinearizedPBRF(FrozenEstimator(net), train_indices=members).fit(X_train, y)
    shifts = dict(zip(members, single.parameters_ - single.reference_parameters_, strict=True))
    for j, g in enumerate(NET_GROUPS):
        expected = sum(shifts[m] for m in g)
        np.testing.assert_allclose(
            group.parameters_[j] - group.reference_parameters_, expected, rtol=1e-8, atol=1e-14
        )


def test_cold_group_loo_of_a_network_of_one_is_the_single_point_refit(regression):
    """A cold group LOO refits the net (same initialisation and data order) without S: a
    group of one is bitwise the single point's refit, a larger group another one."""
    net, X_train, y = regression
    model = clone(net).set_params(max_epochs=3)
    groups = LeaveOneOut(model, removed_groups=[[3], [3, 41, 97]], random_state=0)
    groups.fit(X_train, y)
    single = LeaveOneOut(model, train_indices=[3], random_state=0).fit(X_train, y)
    np.testing.assert_array_equal(groups.parameters_[0], single.parameters_[0])
    assert not np.allclose(groups.parameters_[1], single.parameters_[0])


# -- resumability keys and validation --------------------------------------------------------
def test_saved_group_chunks_are_keyed_by_their_members(tmp_path):
    """Another group of the same size is not served from a saved chunk."""
    first = PBRF(Ridge(), removed_groups=[[0, 1]], memory=str(tmp_path)).fit(X, Y)
    second = PBRF(Ridge(), removed_groups=[[0, 2]], memory=str(tmp_path)).fit(X, Y)
    fresh = PBRF(Ridge(), removed_groups=[[0, 2]]).fit(X, Y)
    again = PBRF(Ridge(), removed_groups=[[0, 1]], memory=str(tmp_path)).fit(X, Y)
    np.testing.assert_array_equal(second.parameters_, fresh.parameters_)
    np.testing.assert_array_equal(again.parameters_, first.parameters_)
    assert not np.allclose(first.parameters_, second.parameters_)


@pytest.mark.parametrize(
    "groups, message",
    [
        ([], "removed_groups is empty"),
        ([[0, 1], []], r"removed_groups\[1\] is empty"),
        ([[0, N]], r"removed_groups\[0\] must lie in \[0, 59\]"),
        ([[-1]], r"removed_groups\[0\] must lie"),
        ([[2, 3, 2]], r"removed_groups\[0\] contains duplicates"),
        ([[0.5, 1.0]], r"removed_groups\[0\] must be a 1-d array of integer"),
        ([[[0, 1]]], r"removed_groups\[0\] must be a 1-d array of integer"),
    ],
)
@pytest.mark.parametrize("cls", [LeaveOneOut, ProximalResponse, PBRF, LinearizedPBRF])
def test_bad_groups_are_refused_naming_the_group(cls, groups, message):
    with pytest.raises(ValueError, match=message):
        cls(Ridge(), removed_groups=groups).fit(X, Y)


@pytest.mark.parametrize("cls", [LeaveOneOut, ProximalResponse, PBRF, LinearizedPBRF])
def test_train_indices_and_removed_groups_are_mutually_exclusive(cls):
    with pytest.raises(ValueError, match="train_indices and removed_groups are mutually"):
        cls(Ridge(), train_indices=[0], removed_groups=[[1, 2]]).fit(X, Y)


def test_group_influence_refuses_bad_groups_naming_them():
    matrix = np.zeros((2, 5))
    with pytest.raises(ValueError, match=r"groups\[0\] must lie in \[0, 4\]"):
        group_influence(matrix, [[0, 5]])
    with pytest.raises(ValueError, match=r"groups\[1\] is empty"):
        group_influence(matrix, [[0], []])
    with pytest.raises(ValueError, match="influence_matrix must be 1-d"):
        group_influence(np.zeros((2, 2, 5)), [[0]])
