"""scikit-learn's own networks (MLPClassifier, MLPRegressor) through the adapter: the
objective against scikit-learn's ``_backprop`` (loss, gradients and the α scaling per
solver), Gauss-Newton products against a dense float64 computation, predictions,
retraining, refusals and the estimators end to end."""

import copy
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.neural_network._base import squared_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import gen_batches
from threadpoolctl import threadpool_limits
from torch.func import jacrev

from sklearn_influence import PBRF, InfluenceDecomposition, InfluenceFunction
from sklearn_influence._adapters import check_supported, fit_estimator, make_adapter
from sklearn_influence._adapters._sklearn_mlp import fit_sklearn_mlp, penalty_scale
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._gradients import per_example_gradients

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    # tiny networks trained for a few iterations on purpose
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny networks: scikit-learn's L-BFGS calls into BLAS for 40-parameter vectors, where
    thread barriers cost more than the work (20x slower with two threads on a busy machine)."""
    with threadpool_limits(1):
        yield


ACTIVATIONS = ["identity", "logistic", "tanh", "relu"]
KINDS = ["multiclass", "binary", "regression"]


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(
        n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=0
    )
    X_reg, y_reg = make_regression(
        n_samples=120, n_features=6, n_targets=2, noise=5.0, random_state=1
    )
    return {
        "multiclass": (X, y),
        "binary": (X, np.where(y == 1, "yes", "no")),
        "regression": (X_reg / 3.0, y_reg / 50.0),
    }


def _network(kind, **params):
    settings = dict(hidden_layer_sizes=(5, 4), alpha=0.3, max_iter=60, random_state=0)
    settings.update(params)
    return (MLPRegressor if kind == "regression" else MLPClassifier)(**settings)


def _fitted(kind, data, **params):
    X, y = data[kind]
    net = _network(kind, **params)
    state = fit_sklearn_mlp(net, X, y)
    return net, make_adapter(net, len(X), torch.device("cpu"), state), X, y


def _sklearn_targets(net, y):
    """y as scikit-learn's _backprop sees it: binarized labels or a 2-d target array."""
    if isinstance(net, MLPClassifier):
        return net._label_binarizer.transform(y).astype(np.float64)
    return np.asarray(y, dtype=np.float64).reshape(len(y), -1)


def _sklearn_backprop(net, X, Y, alpha=None, sample_weight=None):
    """scikit-learn's own loss and packed gradient (coefs, then intercepts) on rows X."""
    net = copy.deepcopy(net)
    if alpha is not None:
        net.alpha = alpha
    layers = len(net.coefs_) + 1
    loss, coef_grads, intercept_grads = net._backprop(
        X,
        Y,
        sample_weight,
        [X] + [None] * (layers - 1),
        [None] * (layers - 1),
        [np.empty_like(w) for w in net.coefs_],
        [np.empty_like(b) for b in net.intercepts_],
    )
    return loss, np.hstack([g.ravel() for g in coef_grads + intercept_grads])


def _objective_and_gradient(adapter, X, y):
    theta = adapter.parameters().clone().requires_grad_(True)
    objective = adapter.objective(theta, adapter.inputs(X), adapter.targets(y))
    (gradient,) = torch.autograd.grad(objective, theta)
    return objective.item(), gradient.numpy()


# -- the objective: scikit-learn's loss and gradient, α scaled per solver -------------------
def _reported_loss_factor(net):
    """How many times the data term of J scikit-learn's reported loss is: 1, except for a
    regressor with k > 1 outputs while its squared_loss still averages over the outputs
    (scikit-learn issue #8349: its gradient is that of the sum over outputs)."""
    k = net.n_outputs_
    if isinstance(net, MLPClassifier) or k == 1:
        return 1.0
    return 1.0 / k if squared_loss(np.zeros((1, k)), np.ones((1, k))) == 0.5 else 1.0


def _assert_is_reported_loss(objective, penalty, reported, net):
    """objective = data + penalty, reported = factor·data + penalty."""
    factor = _reported_loss_factor(net)
    assert factor * (objective - penalty) + penalty == pytest.approx(reported, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_lbfgs_objective_is_scikit_learn_loss_and_gradient(data, kind, activation):
    net, adapter, X, y = _fitted(kind, data, solver="lbfgs", activation=activation)
    objective, gradient = _objective_and_gradient(adapter, X, y)
    penalty = adapter.regularizer(adapter.parameters()).item()
    # loss_ is scipy's objective at the returned weights: mean loss + α/(2N)‖W‖²
    _assert_is_reported_loss(objective, penalty, net.loss_, net)
    loss, expected = _sklearn_backprop(net, X, _sklearn_targets(net, y))
    _assert_is_reported_loss(objective, penalty, loss, net)
    # the gradient scikit-learn descends, exactly
    np.testing.assert_allclose(gradient, expected, rtol=1e-9, atol=1e-12)
    # r = α/N on every weight, 0 on every bias
    n_weights = sum(w.size for w in net.coefs_)
    r = adapter.regularizer_diagonal().numpy()
    np.testing.assert_allclose(r[:n_weights], 0.3 / len(X), rtol=1e-15)
    assert not r[n_weights:].any()


@pytest.mark.parametrize("kind", KINDS)
def test_weighted_lbfgs_objective_is_scikit_learns_weighted_loss_and_gradient(data, kind):
    """With sample_weight, scikit-learn (≥ 1.7) descends Σ w_i L_i / W + α/(2W)‖W‖²: the
    adapter's J with r = α/W, value and gradient, at the weights it fitted."""
    X, y = data[kind]
    weights = np.random.RandomState(0).uniform(0.2, 3.0, len(y))
    net = _network(kind, solver="lbfgs")
    state = fit_sklearn_mlp(net, X, y, sample_weight=weights)
    adapter = make_adapter(net, len(X), torch.device("cpu"), state, sample_weight=weights)
    theta = adapter.parameters().clone().requires_grad_(True)
    objective = adapter.objective(theta, adapter.inputs(X), adapter.targets(y), adapter.row_weights)
    (gradient,) = torch.autograd.grad(objective, theta)
    loss, expected = _sklearn_backprop(net, X, _sklearn_targets(net, y), sample_weight=weights)
    penalty = adapter.regularizer(adapter.parameters()).item()
    _assert_is_reported_loss(objective.item(), penalty, loss, net)
    np.testing.assert_allclose(gradient.numpy(), expected, rtol=1e-9, atol=1e-12)
    n_weights = sum(w.size for w in net.coefs_)
    r = adapter.regularizer_diagonal().numpy()
    np.testing.assert_allclose(r[:n_weights], 0.3 / weights.sum(), rtol=1e-14)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("kind", KINDS)
def test_stochastic_objective_is_the_loss_of_scikit_learns_batches(data, kind, solver):
    """N = 120 in batches of 30: every step minimises mean_b L + α/(2·30)‖W‖², and scikit-learn's
    loss_ formula (batch losses weighted by batch size) at the fitted weights is J exactly."""
    net, adapter, X, y = _fitted(kind, data, solver=solver, batch_size=30, max_iter=5)
    objective, gradient = _objective_and_gradient(adapter, X, y)
    Y = _sklearn_targets(net, y)
    batches = [_sklearn_backprop(net, X[rows], Y[rows]) for rows in gen_batches(len(X), 30)]
    epoch_loss = sum(30 * loss for loss, _ in batches) / len(X)
    _assert_is_reported_loss(
        objective, adapter.regularizer(adapter.parameters()).item(), epoch_loss, net
    )
    np.testing.assert_allclose(
        gradient, np.mean([g for _, g in batches], axis=0), rtol=1e-9, atol=1e-12
    )
    n_weights = sum(w.size for w in net.coefs_)
    np.testing.assert_allclose(adapter.regularizer_diagonal().numpy()[:n_weights], 0.3 / 30)


def test_stochastic_penalty_with_a_short_last_batch(data):
    """N = 120 in batches of 50 (50, 50, 20): each step's penalty is α/(2B_b)‖W‖², so the mean
    step descends r = α·mean(1/50, 1/50, 1/20) — computed here from scikit-learn's batch
    losses with and without α at the same weights."""
    net, adapter, X, y = _fitted("multiclass", data, solver="adam", batch_size=50, max_iter=5)
    Y = _sklearn_targets(net, y)
    penalties = [
        _sklearn_backprop(net, X[rows], Y[rows])[0]
        - _sklearn_backprop(net, X[rows], Y[rows], alpha=0.0)[0]
        for rows in gen_batches(len(X), 50)
    ]
    theta = adapter.parameters()
    assert adapter.regularizer(theta).item() == pytest.approx(np.mean(penalties), rel=1e-12)
    assert penalty_scale(net, 120) == pytest.approx((2 / 50 + 1 / 20) / 3)
    # batch_size="auto" is min(200, N): the whole set, as for lbfgs
    assert penalty_scale(MLPClassifier(solver="adam"), 120) == pytest.approx(1 / 120)
    assert penalty_scale(MLPClassifier(solver="sgd", batch_size=500), 120) == 1 / 120


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_reproduce_scikit_learn_predictions(data, kind, activation):
    net, adapter, X, _y = _fitted(kind, data, solver="lbfgs", activation=activation)
    X_new = X[:40] + 0.1
    h = adapter.outputs(adapter.parameters(), adapter.inputs(X_new))
    if kind == "multiclass":
        np.testing.assert_allclose(
            torch.softmax(h, 1).numpy(), net.predict_proba(X_new), rtol=1e-12
        )
        predicted = adapter.classes_[h.argmax(1).numpy()]
    elif kind == "binary":
        assert h.shape == (40, 1)
        np.testing.assert_allclose(
            torch.sigmoid(h[:, 0]).numpy(), net.predict_proba(X_new)[:, 1], rtol=1e-12
        )
        predicted = adapter.classes_[(h[:, 0] > 0).long().numpy()]
    else:
        np.testing.assert_allclose(h.numpy(), net.predict(X_new), rtol=1e-12, atol=1e-14)
        return
    np.testing.assert_array_equal(predicted, net.predict(X_new))


def test_multi_output_regressor_follows_scikit_learns_gradient_not_its_reported_loss(data):
    """scikit-learn issue #8349: for k outputs the reported squared loss is 1/k of the loss
    whose gradient _backprop returns; the adapter's L = ½‖h − t‖² is the gradient's."""
    net, adapter, X, y = _fitted("regression", data, solver="lbfgs")
    h = net.predict(X)
    data_term = 0.5 * np.mean(np.sum((h - y) ** 2, axis=1))
    theta = adapter.parameters()
    objective, gradient = _objective_and_gradient(adapter, X, y)
    assert objective == pytest.approx(data_term + adapter.regularizer(theta).item(), rel=1e-12)
    # the packed gradient scikit-learn hands to L-BFGS is this objective's
    np.testing.assert_allclose(
        gradient,
        net._loss_grad_lbfgs(
            np.hstack([p.ravel() for p in net.coefs_ + net.intercepts_]),
            X,
            y,
            None,
            [X] + [None] * len(net.coefs_),
            [None] * len(net.coefs_),
            [np.empty_like(w) for w in net.coefs_],
            [np.empty_like(b) for b in net.intercepts_],
        )[1],
        rtol=1e-9,
        atol=1e-12,
    )


def test_single_output_regressor(data):
    X, y = data["regression"]
    net, adapter, _, _ = _fitted("regression", {"regression": (X, y[:, 0])}, solver="lbfgs")
    h = adapter.outputs(adapter.parameters(), adapter.inputs(X))
    np.testing.assert_allclose(h[:, 0].numpy(), net.predict(X), rtol=1e-12, atol=1e-14)
    objective, _ = _objective_and_gradient(adapter, X, y[:, 0])
    assert objective == pytest.approx(net.loss_, rel=1e-12)  # one output: no factor


# -- per-example gradients and Gauss-Newton products vs dense float64 computations -----------
def _reference_logits(net, params, X):
    """An independent float64 forward pass from lists of (fan_in, fan_out) weights."""
    n_layers = len(net.coefs_)
    weights, biases = params[:n_layers], params[n_layers:]
    activation = {
        "identity": lambda z: z,
        "logistic": lambda z: 1.0 / (1.0 + torch.exp(-z)),
        "tanh": torch.tanh,
        "relu": lambda z: torch.clamp(z, min=0.0),
    }[net.activation]
    a = X
    for layer in range(n_layers):
        a = a @ weights[layer] + biases[layer]
        if layer < n_layers - 1:
            a = activation(a)
    return a


def _dense_gauss_newton(net, X, alpha_scale):
    """(1/N) Σ J_iᵀ H_i J_i + diag(r), with J from jacrev of the reference forward pass."""
    params = [torch.tensor(p, dtype=torch.float64) for p in net.coefs_ + net.intercepts_]
    X_t = torch.tensor(X, dtype=torch.float64)
    jacobians = jacrev(
        lambda *ps: _reference_logits(net, list(ps), X_t), argnums=tuple(range(len(params)))
    )(*params)
    J = torch.cat([j.reshape(len(X), j.shape[1], -1) for j in jacobians], dim=2)  # (N, k, p)
    logits = _reference_logits(net, params, X_t)
    k = logits.shape[1]
    if isinstance(net, MLPRegressor):
        H = torch.eye(k, dtype=torch.float64).expand(len(X), k, k)  # ½‖h − t‖²
    elif k == 1:
        p = 1.0 / (1.0 + torch.exp(-logits))
        H = (p * (1 - p)).reshape(-1, 1, 1)
    else:
        p = torch.softmax(logits, 1)
        H = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    G = torch.einsum("nkp,nkl,nlq->pq", J, H, J) / len(X)
    n_weights = sum(w.size for w in net.coefs_)
    r = torch.zeros(G.shape[0], dtype=torch.float64)
    r[:n_weights] = net.alpha * alpha_scale
    return G + torch.diag(r)


@pytest.mark.parametrize(
    ("kind", "activation", "solver"),
    [
        ("multiclass", "tanh", "lbfgs"),
        ("binary", "relu", "adam"),
        ("regression", "logistic", "sgd"),
    ],
)
def test_per_example_gradients_equal_scikit_learn_backprop_per_row(data, kind, activation, solver):
    net, adapter, X, y = _fitted(
        kind, data, solver=solver, activation=activation, batch_size=40, max_iter=20
    )
    X, y = X[:30], y[:30]
    gradients = per_example_gradients(
        adapter, adapter.parameters(), adapter.inputs(X), adapter.targets(y)
    ).numpy()
    Y = _sklearn_targets(net, y)
    # scikit-learn's backprop on one row with α = 0 is ∇L_i (its loss on one row is L_i)
    expected = np.stack(
        [_sklearn_backprop(net, X[i : i + 1], Y[i : i + 1], alpha=0.0)[1] for i in range(len(X))]
    )
    np.testing.assert_allclose(gradients, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("kind", "activation", "solver"),
    [
        ("multiclass", "relu", "lbfgs"),
        ("binary", "tanh", "lbfgs"),
        ("regression", "identity", "adam"),
    ],
)
def test_gauss_newton_equals_dense_float64_computation(data, kind, activation, solver):
    net, adapter, X, _y = _fitted(
        kind, data, solver=solver, activation=activation, batch_size=40, max_iter=20
    )
    expected = _dense_gauss_newton(net, X, penalty_scale(net, len(X)))
    theta, inputs = adapter.parameters(), adapter.inputs(X)
    curvature = make_curvature("gauss_newton", adapter, theta, inputs, batch_size=37)
    dense = curvature.dense()
    torch.testing.assert_close(dense, expected, rtol=1e-10, atol=1e-12)
    vectors = torch.randn(5, theta.numel(), dtype=torch.float64)
    products = curvature.matmul(vectors)
    torch.testing.assert_close(products, vectors @ expected, rtol=1e-10, atol=1e-12)


# -- retraining -------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_cold_start_retrain_reproduces_the_fit_exactly(data, solver):
    X, y = data["multiclass"]
    net = _network("multiclass", solver=solver, random_state=None, max_iter=15)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        state = fit_sklearn_mlp(net, X, y)
    assert isinstance(net.random_state, int) and state["seed"] == net.random_state
    adapter = make_adapter(net, len(X), torch.device("cpu"), state)
    theta = adapter.parameters()
    torch.testing.assert_close(adapter.retrain(X, y, warm_start=False), theta, rtol=0, atol=0)
    without = adapter.retrain(X, y, exclude=[4], warm_start=False)
    refit = clone_fit(net, np.delete(X, 4, 0), np.delete(y, 4))
    torch.testing.assert_close(without, refit, rtol=0, atol=0)


def clone_fit(net, X, y):
    model = clone(net).fit(X, y)
    return torch.tensor(np.hstack([p.ravel() for p in model.coefs_ + model.intercepts_]))


def test_warm_start_retrain_continues_from_the_fitted_weights(data):
    net, adapter, X, y = _fitted("multiclass", data, solver="lbfgs", max_iter=30)
    theta = adapter.parameters()
    warm = adapter.retrain(X, y, exclude=[0, 1], warm_start=True)
    # max_iter more lbfgs iterations from θˢ on 118 rows: a lower objective there than θˢ's
    weights = torch.ones(len(X), dtype=torch.float64)
    weights[[0, 1]] = 0
    inputs, targets = adapter.inputs(X), adapter.targets(y)
    assert adapter.objective(warm, inputs, targets, weights) < adapter.objective(
        theta, inputs, targets, weights
    )
    assert net.warm_start is False  # the fitted network itself is untouched
    torch.testing.assert_close(adapter.parameters(), theta)


def test_retraining_passes_on_scikit_learns_convergence_warning(data):
    _net, adapter, X, y = _fitted("multiclass", data, solver="adam", max_iter=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter.retrain(X, y, exclude=[0], warm_start=False)
    assert any(issubclass(w.category, ConvergenceWarning) for w in caught)


def test_frozen_network_without_integer_seed_refuses_cold_start(data):
    X, y = data["multiclass"]
    net = _network("multiclass", solver="lbfgs", random_state=None, max_iter=10).fit(X, y)
    adapter = make_adapter(FrozenEstimator(net), len(X), torch.device("cpu"))
    with pytest.raises(ValueError, match="integer random_state"):
        adapter.retrain(X, y, exclude=[0], warm_start=False)
    assert adapter.retrain(X, y, exclude=[0], warm_start=True).shape == adapter.parameters().shape


def test_pipeline_adapter_preprocesses_and_retrains_on_raw_data(data):
    X, y = data["multiclass"]
    pipeline = make_pipeline(StandardScaler(), _network("multiclass", solver="lbfgs", max_iter=20))
    state = fit_estimator(pipeline, X * 10 + 3, y)
    adapter = make_adapter(pipeline, len(X), torch.device("cpu"), state)
    h = adapter.outputs(adapter.parameters(), adapter.inputs(X * 10 + 3))
    np.testing.assert_allclose(
        torch.softmax(h, 1).numpy(), pipeline.predict_proba(X * 10 + 3), rtol=1e-12
    )
    torch.testing.assert_close(
        adapter.retrain(X * 10 + 3, y, warm_start=False), adapter.parameters(), rtol=0, atol=0
    )


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "match"),
    [
        (MLPClassifier(early_stopping=True), "early_stopping=False"),
        (MLPRegressor(solver="sgd", early_stopping=True), "holds out validation_fraction"),
        (MLPRegressor(loss="poisson"), "loss='squared_error'"),
    ],
)
def test_unsupported_settings_are_refused_with_the_fix(data, model, match):
    X, y = data["regression" if isinstance(model, MLPRegressor) else "multiclass"]
    with pytest.raises(ValueError, match=match):
        check_supported(model)
    with pytest.raises(ValueError, match=match):
        InfluenceFunction(model).fit(X, y)


def test_lbfgs_ignores_early_stopping_so_it_is_accepted():
    assert check_supported(MLPClassifier(solver="lbfgs", early_stopping=True)) is None


def test_multilabel_classifier_is_refused(data):
    X, y = data["multiclass"]
    Y = np.column_stack([y == 0, y == 1]).astype(int)
    with pytest.raises(ValueError, match="multilabel"):
        InfluenceFunction(MLPClassifier(hidden_layer_sizes=(3,), max_iter=5)).fit(X, Y)
    fitted = MLPClassifier(hidden_layer_sizes=(3,), max_iter=5, random_state=0).fit(X, Y)
    with pytest.raises(ValueError, match="multilabel"):
        InfluenceFunction(FrozenEstimator(fitted)).fit(X, Y)


def test_wrong_feature_count_is_a_clear_error(data):
    _, adapter, X, _ = _fitted("multiclass", data, solver="lbfgs", max_iter=5)
    with pytest.raises(ValueError, match="expects 6 features"):
        adapter.inputs(X[:, :4])


# -- the estimators end to end ------------------------------------------------------------------
def _tiny_classifier(**params):
    settings = dict(
        hidden_layer_sizes=(4,),
        activation="tanh",
        solver="lbfgs",
        alpha=1e-2,
        max_iter=40,
        random_state=0,
    )
    settings.update(params)
    return MLPClassifier(**settings)


def test_influence_cg_matches_direct(data):
    X, y = data["multiclass"]
    X_train, y_train, X_test, y_test = X[:80], y[:80], X[80:], y[80:]
    direct = InfluenceFunction(_tiny_classifier(), damping=1e-2, solver="direct").fit(
        X_train, y_train
    )
    cg = InfluenceFunction(
        _tiny_classifier(), damping=1e-2, solver="cg", solver_options={"tol": 1e-12}
    ).fit(X_train, y_train)
    expected = direct.transform(X_test, y_test)
    assert expected.shape == (40, 80)
    np.testing.assert_allclose(
        cg.transform(X_test, y_test), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max()
    )


def test_full_batch_lissa_approaches_direct(data):
    X, y = data["multiclass"]
    direct = InfluenceFunction(_tiny_classifier(), damping=0.1, solver="direct").fit(X[:80], y[:80])
    lissa = InfluenceFunction(
        _tiny_classifier(),
        damping=0.1,
        solver="lissa",
        solver_options={"minibatch_size": 80, "depth": 300},
        random_state=0,
    ).fit(X[:80], y[:80])
    expected = direct.transform(X[80:], y[80:])
    # 300 steps of the Neumann series leave about 1e-3 of the slowest direction
    np.testing.assert_allclose(
        lissa.transform(X[80:], y[80:]), expected, rtol=0, atol=1e-2 * np.abs(expected).max()
    )


def test_pbrf_converges_on_a_tiny_network(data):
    X, y = data["multiclass"]
    pbrf = PBRF(_tiny_classifier(), damping=1e-2, n_points=3, random_state=0).fit(X[:80], y[:80])
    assert pbrf.converged_.all()
    assert pbrf.transform(X[80:], y[80:]).shape == (40, 3)


def test_decomposition_runs_on_a_tiny_network(data):
    X, y = data["regression"]
    model = MLPRegressor(
        hidden_layer_sizes=(4,), solver="lbfgs", alpha=1e-2, max_iter=40, random_state=0
    )
    parts = InfluenceDecomposition(model, damping=0.1, n_points=3, random_state=0).fit(
        X[:80], y[:80]
    )
    assert all(converged.all() for converged in parts.converged_.values())
    for values in parts.parameters_.values():
        assert values.shape[0] == 3 and np.all(np.isfinite(values))
    table = parts.decompose(X[80:], y[80:])
    assert len(table) == 5 and np.all(np.isfinite(table["output_distance"]))
    # the influence estimate is the linearised PBRF up to the solver, on this network too
    assert table.loc["solver_error", "pearson"] > 0.99


def test_grid_search_over_damping_in_a_pipeline(data):
    X, y = data["multiclass"]
    search = GridSearchCV(
        InfluenceFunction(
            make_pipeline(StandardScaler(), _tiny_classifier(max_iter=30)),
            n_score_points=4,
            random_state=0,
        ),
        {"damping": [1e-3, 1e-1]},
        cv=2,
    ).fit(X[:80], y[:80])
    assert search.best_params_["damping"] in (1e-3, 1e-1)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
