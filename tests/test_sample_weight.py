"""Sample and class weights, against independent truth.

Truth here is (a) the same model on the dataset where each point of integer weight w is
repeated w times (the package's unweighted path), (b) scikit-learn refitting with the
remaining rows' weights, (c) scikit-learn's own weighted objective at its fitted coefficients
(its value, and that the fitted point is stationary), and (d) the per-sample weights a
``class_weight`` implies, written out by hand.
"""

import copy
import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn._loss.loss import HalfBinomialLoss, HalfTweedieLoss
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import (
    GammaRegressor,
    HuberRegressor,
    LinearRegression,
    LogisticRegression,
    LogisticRegressionCV,
    PoissonRegressor,
    Ridge,
    RidgeClassifier,
    RidgeClassifierCV,
    RidgeCV,
    SGDClassifier,
    SGDRegressor,
    TweedieRegressor,
)
from sklearn.linear_model._linear_loss import LinearModelLoss
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.metadata_routing import get_routing_for_object
from threadpoolctl import threadpool_limits

from sklearn_influence import (
    InfluenceDecomposition,
    InfluenceFunction,
    InfluenceFunctionCV,
    LeaveOneOut,
    LinearizedPBRF,
    MislabelDetector,
    ProximalResponse,
)
from sklearn_influence._adapters import _sklearn_mlp

TIGHT = {"tol": 1e-12, "max_iter": 5000}


@pytest.fixture(autouse=True)
def _quiet_single_thread():
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _regression(seed, n=36, d=4, positive=False):
    X, y = make_regression(n_samples=n, n_features=d, noise=5.0, random_state=seed)
    X = X / X.std(0)
    if positive:  # GLM targets: counts / positive values that depend on X
        rng = np.random.RandomState(seed)
        mean = np.exp(0.3 * X @ rng.uniform(-1, 1, d) + 1.0)
        y = rng.gamma(2.0, mean / 2.0)
    return X, y


def _classification(seed, n=40, n_classes=2, weights=None):
    X, y = make_classification(
        n_samples=n, n_features=4, n_informative=3, n_redundant=0, n_classes=n_classes,
        n_clusters_per_class=1, weights=weights, flip_y=0.05, random_state=seed,
    )  # fmt: skip
    return X, y


# name: (model factory, data)
FAMILIES = {
    "linear_regression": (lambda: LinearRegression(), lambda: _regression(0)),
    "ridge": (lambda: Ridge(alpha=2.0), lambda: _regression(1)),
    "ridge_cv": (lambda: RidgeCV(alphas=[0.1, 3.0]), lambda: _regression(2)),
    "logistic_binary": (lambda: LogisticRegression(C=0.5, **TIGHT), lambda: _classification(3)),
    "logistic_multiclass": (
        lambda: LogisticRegression(C=2.0, **TIGHT),
        lambda: _classification(4, n=45, n_classes=3),
    ),
    "logistic_cv": (
        lambda: LogisticRegressionCV(Cs=[0.1, 1.0], cv=3, l1_ratios=(0,), **TIGHT),
        lambda: _classification(5),
    ),
    "ridge_classifier": (lambda: RidgeClassifier(alpha=1.5), lambda: _classification(6)),
    "ridge_classifier_cv": (
        lambda: RidgeClassifierCV(alphas=[0.5, 5.0]),
        lambda: _classification(7, n=45, n_classes=3),
    ),
    "sgd_classifier": (
        lambda: SGDClassifier(loss="log_loss", alpha=0.01, random_state=0),
        lambda: _classification(8),
    ),
    "sgd_regressor": (lambda: SGDRegressor(alpha=0.01, random_state=0), lambda: _regression(9)),
    "poisson": (
        lambda: PoissonRegressor(alpha=0.1, **TIGHT),
        lambda: _regression(10, positive=True),
    ),
    "gamma": (lambda: GammaRegressor(alpha=0.1, **TIGHT), lambda: _regression(11, positive=True)),
    "huber": (lambda: HuberRegressor(alpha=0.5, **TIGHT), lambda: _regression(35)),
    "tweedie": (
        lambda: TweedieRegressor(power=1.5, alpha=0.1, **TIGHT),
        lambda: _regression(12, positive=True),
    ),
}


def _integer_weights(n, seed):
    return np.random.RandomState(seed).randint(1, 4, size=n)


def _frozen_pair(name, X, y, weights):
    """The weighted model, and the same fitted coefficients for the repeated dataset.

    Both are frozen at the coefficients fitted with the weights, so that the comparison is
    of the influence at one θ. SGD divides its penalty by the number of rows, not by the
    weight sum (its objective is (1/N) Σ w_i L_i + α/2‖w‖²): the repeated dataset with the
    same objective has α·N/W.
    """
    model = FAMILIES[name][0]().fit(X, y, sample_weight=weights)
    repeated = copy.deepcopy(model)
    if name.startswith("sgd"):
        repeated.set_params(alpha=model.alpha * len(y) / weights.sum())
    return FrozenEstimator(model), FrozenEstimator(repeated)


def _sum_copies(matrix, weights):
    """Columns of the repeated dataset summed over the copies of each original row."""
    starts = np.r_[0, np.cumsum(weights)[:-1]]
    return np.add.reduceat(matrix, starts, axis=-1)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_integer_weight_equals_repeated_rows(name):
    """A point of integer weight w has exactly the summed influence of its w copies."""
    X, y = FAMILIES[name][1]()
    weights = _integer_weights(len(y), seed=len(name))
    X_rep, y_rep = np.repeat(X, weights, axis=0), np.repeat(y, weights)
    weighted, repeated = _frozen_pair(name, X, y, weights)
    queries = slice(0, 6)
    for damping in (0.0, 1e-3, 1.0):
        if damping == 0.0 and name == "logistic_multiclass":
            continue  # the unpenalised softmax intercepts are defined up to a shift: singular
        first = InfluenceFunction(weighted, damping=damping).fit(X, y, sample_weight=weights)
        second = InfluenceFunction(repeated, damping=damping).fit(X_rep, y_rep)
        for y_test in (y[queries], None):
            a = first.transform(X[queries], y_test)
            b = _sum_copies(second.transform(X[queries], y_test), weights)
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * np.abs(b).max())
        a = first.self_influence()
        b = _sum_copies(second.self_influence(), weights)
        np.testing.assert_allclose(a, b, rtol=1e-8)


# -- the objective is the estimator's own ---------------------------------------------------


def _weighted_objective_and_gradient(influence):
    adapter = influence.engine_.adapter
    theta = adapter.parameters().clone().requires_grad_(True)
    inputs, targets = adapter.inputs(influence.X_train_), adapter.targets(influence.y_train_)
    value = adapter.objective(theta, inputs, targets, adapter.row_weights)
    (gradient,) = torch.autograd.grad(value, theta)
    return float(value.detach()), gradient.norm().item()


@pytest.mark.parametrize(
    "name", ["ridge", "logistic_binary", "logistic_multiclass", "linear_regression", "poisson",
             "gamma", "tweedie", "ridge_classifier", "ridge_cv", "logistic_cv"],
)  # fmt: skip
def test_fitted_weighted_model_is_stationary(name):
    """scikit-learn's weighted fit sits at the minimum of the objective the adapter writes."""
    X, y = FAMILIES[name][1]()
    weights = np.random.RandomState(0).uniform(0.2, 3.0, len(y))
    influence = InfluenceFunction(FAMILIES[name][0]()).fit(X, y, sample_weight=weights)
    _, gradient_norm = _weighted_objective_and_gradient(influence)
    assert gradient_norm < 1e-6
    assert influence.stationarity_ < 1e-6
    # the unweighted objective is not stationary there: the weights matter
    unweighted = InfluenceFunction(FrozenEstimator(influence.estimator_)).fit(X, y)
    assert unweighted.stationarity_ > 1e-4


def test_objective_values_equal_scikit_learn_weighted_losses():
    """J(θ) equals scikit-learn's own weighted objective (LinearModelLoss) at the fit."""
    rng = np.random.RandomState(1)
    X, y = _classification(13)
    weights = rng.uniform(0.2, 3.0, len(y))
    model = LogisticRegression(C=0.7, **TIGHT)
    influence = InfluenceFunction(model).fit(X, y, sample_weight=weights)
    fitted = influence.estimator_
    coef = np.r_[fitted.coef_.ravel(), fitted.intercept_]
    expected = LinearModelLoss(base_loss=HalfBinomialLoss(), fit_intercept=True).loss(
        coef, X, y.astype(float), sample_weight=weights,
        l2_reg_strength=1.0 / (fitted.C * weights.sum()),
    )  # fmt: skip
    value, _ = _weighted_objective_and_gradient(influence)
    np.testing.assert_allclose(value, expected, rtol=1e-12)

    X, y = _regression(14, positive=True)
    influence = InfluenceFunction(GammaRegressor(alpha=0.3, **TIGHT)).fit(
        X, y, sample_weight=weights[: len(y)]
    )
    fitted = influence.estimator_
    coef = np.r_[fitted.coef_, fitted.intercept_]
    loss = LinearModelLoss(base_loss=HalfTweedieLoss(power=2.0), fit_intercept=True)
    constant = np.average(
        HalfTweedieLoss(power=2.0).constant_to_optimal_zero(y), weights=weights[: len(y)]
    )
    expected = loss.loss(coef, X, y, sample_weight=weights[: len(y)], l2_reg_strength=0.3)
    value, _ = _weighted_objective_and_gradient(influence)
    np.testing.assert_allclose(value, expected + constant, rtol=1e-10)

    X, y = _regression(15)
    w = weights[: len(y)]
    influence = InfluenceFunction(Ridge(alpha=2.5)).fit(X, y, sample_weight=w)
    fitted = influence.estimator_
    residual = y - fitted.predict(X)
    expected = (np.sum(w * residual**2) + 2.5 * np.sum(fitted.coef_**2)) / w.sum()
    value, _ = _weighted_objective_and_gradient(influence)
    np.testing.assert_allclose(value, expected, rtol=1e-12)


# -- agreement with weighted retraining -----------------------------------------------------


def _log_loss(model, X, y):
    probabilities = model.predict_proba(X)
    return -np.log(probabilities[np.arange(len(y)), np.searchsorted(model.classes_, y)])


@pytest.mark.parametrize("kind", ["ridge", "logistic"])
def test_weighted_influence_matches_weighted_leave_one_out(kind):
    """Influence vs scikit-learn refitting with the remaining weights (Pearson ≥ 0.99), and
    the package's own weighted leave-one-out (``removal_agreement``) equals that refit."""
    rng = np.random.RandomState(2)
    if kind == "ridge":
        X, y = _regression(16, n=60)
        model, loss = Ridge(alpha=1.0), lambda m, A, b: (m.predict(A) - b) ** 2
    else:
        X, y = _classification(17, n=60)
        model, loss = LogisticRegression(C=1.0, **TIGHT), _log_loss
    weights = rng.uniform(0.3, 3.0, len(y))
    X_train, y_train, w_train = X[:45], y[:45], weights[:45]
    X_test, y_test = X[45:], y[45:]
    influence = InfluenceFunction(model, damping=0.0).fit(X_train, y_train, sample_weight=w_train)
    removed = np.arange(0, 45, 3)
    base = loss(influence.estimator_, X_test, y_test).mean()
    actual = []
    for m in removed:
        keep = np.arange(45) != m
        refit = model.__class__(**model.get_params()).fit(
            X_train[keep], y_train[keep], sample_weight=w_train[keep]
        )
        actual.append(loss(refit, X_test, y_test).mean() - base)
    actual = np.array(actual)
    predicted = influence.transform(X_test, y_test)[:, removed].mean(0)
    assert np.corrcoef(predicted, actual)[0, 1] >= 0.99
    agreement = influence.removal_agreement(X_test, y_test, train_indices=removed)
    np.testing.assert_allclose(agreement.actual, actual, rtol=1e-5, atol=1e-9)


def test_retraining_responses_use_the_remaining_weights():
    """Cold and warm leave-one-out responses equal scikit-learn's weighted refits; the
    linearized PBRF is θ + (w_m/W)(G + λI)⁻¹∇L_m with the weighted G (numpy)."""
    X, y = _regression(18, n=30)
    weights = np.random.RandomState(3).uniform(0.5, 2.0, len(y))
    removed = [0, 7, 19]
    expected = []
    for m in removed:
        keep = np.arange(len(y)) != m
        refit = Ridge(alpha=1.0).fit(X[keep], y[keep], sample_weight=weights[keep])
        expected.append(np.r_[refit.coef_, refit.intercept_])
    for warm in (False, True):
        loo = LeaveOneOut(Ridge(alpha=1.0), warm_start=warm, train_indices=removed)
        loo.fit(X, y, sample_weight=weights)
        np.testing.assert_allclose(loo.parameters_, expected, rtol=1e-8, atol=1e-10)
    prf = ProximalResponse(Ridge(alpha=1.0), damping=0.0, train_indices=removed)
    np.testing.assert_allclose(
        prf.fit(X, y, sample_weight=weights).parameters_, expected, rtol=1e-8, atol=1e-10
    )

    damping = 0.1
    linearized = LinearizedPBRF(Ridge(alpha=1.0), damping=damping, train_indices=removed)
    linearized.fit(X, y, sample_weight=weights)
    fitted = Ridge(alpha=1.0).fit(X, y, sample_weight=weights)
    theta = np.r_[fitted.coef_, fitted.intercept_]
    Z = np.column_stack([X, np.ones(len(y))])
    W = weights.sum()
    G = 2.0 * (Z * weights[:, None]).T @ Z / W + np.diag(np.r_[np.full(4, 2.0 / W), 0.0])
    gradients = 2.0 * (Z @ theta - y)[:, None] * Z
    shift = np.linalg.solve(G + damping * np.eye(5), gradients[removed].T).T
    closed = theta + (weights[removed] / W)[:, None] * shift
    np.testing.assert_allclose(linearized.parameters_, closed, rtol=1e-9, atol=1e-12)
    decomposition = InfluenceDecomposition(Ridge(alpha=1.0), damping=damping, train_indices=removed)
    decomposition.fit(X, y, sample_weight=weights)
    np.testing.assert_allclose(decomposition.parameters_["influence"], closed, rtol=1e-9)


# -- class weights -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logistic", "logistic_cv", "ridge_classifier", "sgd"])
def test_balanced_class_weight_equals_implied_sample_weight(kind):
    """class_weight="balanced" (and a dict) gives the influence of the sample weights it
    implies, computed by hand as scikit-learn defines them."""
    X, y = _classification(19, n=50, n_classes=2, weights=[0.75])
    sample_weight = np.random.RandomState(4).uniform(0.5, 2.0, len(y))
    counts = np.array([sample_weight[y == c].sum() for c in (0, 1)])
    plain_counts = np.bincount(y)
    if kind == "logistic":  # balanced by the weighted class counts
        make = lambda **kw: LogisticRegression(**TIGHT, **kw)  # noqa: E731
        implied = (sample_weight.sum() / (2 * counts))[y] * sample_weight
    elif kind == "logistic_cv":
        make = lambda **kw: LogisticRegressionCV(Cs=[1.0], cv=3, l1_ratios=(0,), **TIGHT, **kw)  # noqa: E731
        implied = (sample_weight.sum() / (2 * counts))[y] * sample_weight
    elif kind == "ridge_classifier":  # balanced by the plain counts
        make = lambda **kw: RidgeClassifier(alpha=1.0, **kw)  # noqa: E731
        implied = (len(y) / (2 * plain_counts))[y] * sample_weight
    else:
        make = lambda **kw: SGDClassifier(loss="log_loss", alpha=0.01, random_state=0, **kw)  # noqa: E731
        implied = (len(y) / (2 * plain_counts))[y] * sample_weight
    balanced = InfluenceFunction(make(class_weight="balanced")).fit(X, y, sample_weight)
    explicit = InfluenceFunction(make()).fit(X, y, sample_weight=implied)
    np.testing.assert_allclose(balanced.engine_.adapter.sample_weight, implied, rtol=1e-12)
    a, b = balanced.transform(X[:5], y[:5]), explicit.transform(X[:5], y[:5])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * np.abs(b).max())
    as_dict = InfluenceFunction(make(class_weight={0: 1.0, 1: 3.0})).fit(X, y)
    np.testing.assert_array_equal(as_dict.engine_.adapter.sample_weight, np.where(y == 1, 3.0, 1.0))


def test_class_weight_retraining_keeps_the_full_sets_class_weights():
    """Leave-one-out of a balanced model refits with the implied weights of the full set."""
    X, y = _classification(20, n=40, weights=[0.7])
    implied = (len(y) / (2 * np.bincount(y)))[y]
    removed = [1, 5]
    loo = LeaveOneOut(RidgeClassifier(class_weight="balanced"), train_indices=removed).fit(X, y)
    for row, m in zip(loo.parameters_, removed, strict=True):
        keep = np.arange(len(y)) != m
        refit = RidgeClassifier().fit(X[keep], y[keep], sample_weight=implied[keep])
        np.testing.assert_allclose(row, np.r_[refit.coef_.ravel(), refit.intercept_], rtol=1e-8)


# -- metadata routing ----------------------------------------------------------------------


def test_routing_influence_inside_a_pipeline():
    X, y = _regression(21, n=30)
    weights = np.random.RandomState(5).uniform(0.5, 2.0, len(y))
    scaler = StandardScaler().fit(X)
    expected = InfluenceFunction(Ridge()).fit(scaler.transform(X), y, sample_weight=weights)
    with sklearn.config_context(enable_metadata_routing=True):
        inner = InfluenceFunction(Ridge().set_fit_request(sample_weight=True))
        routing = get_routing_for_object(inner)
        assert routing.consumes("fit", ["sample_weight"]) == {"sample_weight"}
        pipeline = Pipeline([
            ("scale", StandardScaler().set_fit_request(sample_weight=False)),
            ("influence", inner),
        ]).fit(X, y, sample_weight=weights)  # fmt: skip
        matrix = pipeline.transform(X[:4])
    np.testing.assert_allclose(matrix, expected.transform(scaler.transform(X[:4])), rtol=1e-10)


def test_routing_to_the_steps_of_a_wrapped_pipeline():
    X, y = _regression(22, n=30)
    X = X * 3.0 + 1.0
    weights = np.random.RandomState(6).uniform(0.5, 2.0, len(y))
    weighted_scaler = StandardScaler().fit(X, sample_weight=weights)
    expected = InfluenceFunction(Ridge()).fit(
        weighted_scaler.transform(X), y, sample_weight=weights
    )
    with sklearn.config_context(enable_metadata_routing=True):
        model = Pipeline([
            ("scale", StandardScaler().set_fit_request(sample_weight=True)),
            ("ridge", Ridge().set_fit_request(sample_weight=True)),
        ])  # fmt: skip
        routed = InfluenceFunction(model).fit(X, y, sample_weight=weights)
        np.testing.assert_allclose(
            routed.transform(X[:4], y[:4]),
            expected.transform(weighted_scaler.transform(X[:4]), y[:4]),
            rtol=1e-10,
        )
        # a model that does not request the weights: scikit-learn's routing error
        with pytest.raises(ValueError, match="sample_weight"):
            InfluenceFunction(make_pipeline(StandardScaler(), Ridge())).fit(
                X, y, sample_weight=weights
            )
    # without routing: the final model gets the weights, earlier steps are fit unweighted
    scaler = StandardScaler().fit(X)
    plain = InfluenceFunction(make_pipeline(StandardScaler(), Ridge())).fit(
        X, y, sample_weight=weights
    )
    reference = InfluenceFunction(Ridge()).fit(scaler.transform(X), y, sample_weight=weights)
    np.testing.assert_allclose(
        plain.transform(X[:4], y[:4]), reference.transform(scaler.transform(X[:4]), y[:4]),
        rtol=1e-10,
    )  # fmt: skip


def test_weighted_cv_and_mislabel_detector_run_with_weights():
    X, y = _classification(23, n=40)
    weights = np.random.RandomState(7).uniform(0.5, 2.0, len(y))
    detector = MislabelDetector(LogisticRegression(**TIGHT)).fit(X, y, sample_weight=weights)
    influence = InfluenceFunction(LogisticRegression(**TIGHT)).fit(X, y, sample_weight=weights)
    np.testing.assert_allclose(detector.mislabel_scores_, influence.self_influence(), rtol=1e-10)
    X, y = _regression(24, n=40)
    cv = InfluenceFunctionCV(Ridge(), dampings=[1e-3, 1.0], cv=2, n_score_points=6, random_state=0)
    cv.fit(X, y, sample_weight=weights)
    assert cv.engine_.adapter.sample_weight is not None and np.isfinite(cv.cv_scores_).all()


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, message",
    [
        (np.r_[0.0, np.ones(9)], "zero weights.*Drop those rows"),
        (np.r_[-1.0, np.ones(9)], "negative"),
        (np.r_[np.nan, np.ones(9)], "NaN or infinity"),
        (np.r_[np.inf, np.ones(9)], "NaN or infinity"),
        (np.ones(9), r"shape \(9,\).*10 rows"),
        (np.ones((10, 2)), r"shape \(10, 2\)"),
        (np.array(["a"] * 10), "numeric"),
    ],
)
def test_bad_weights_are_refused_before_fitting(weights, message, monkeypatch):
    X, y = _regression(25, n=10)

    def never(*args, **kwargs):
        raise AssertionError("the model was fitted")

    model = Ridge()
    monkeypatch.setattr(Ridge, "fit", never)
    with pytest.raises(ValueError, match=message):
        InfluenceFunction(model).fit(X, y, sample_weight=weights)


def test_weights_refused_for_old_mlps_and_multiclass_sgd_class_weight(monkeypatch):
    X, y = _regression(26, n=20)
    monkeypatch.setattr(_sklearn_mlp, "has_fit_parameter", lambda *args: False)
    with pytest.raises(ValueError, match="no sample_weight.*scikit-learn >= 1.7.*np.repeat"):
        InfluenceFunction(MLPRegressor()).fit(X, y, sample_weight=np.ones(20))
    monkeypatch.undo()
    X, y = _classification(27, n=45, n_classes=3)
    model = SGDClassifier(loss="log_loss", class_weight="balanced", random_state=0)
    with pytest.raises(ValueError, match="class_weight with more than two classes"):
        InfluenceFunction(model).fit(X, y)


@pytest.mark.parametrize(
    "settings",
    [
        {"curvature": "hessian"},
        {"curvature": "identity"},
        {"curvature": "kfac"},
        {"curvature": "ekfac"},
        {"solver": "cg", "solver_options": {"tol": 1e-13, "maxiter": 500}},
    ],
    ids=lambda settings: "-".join(str(value) for value in settings.values())[:20],
)
def test_weights_reach_every_curvature_and_solver(settings):
    """The repeated-rows equivalence holds for every curvature and the iterative solver."""
    X, y = FAMILIES["logistic_multiclass"][1]()
    weights = _integer_weights(len(y), seed=1)
    X_rep, y_rep = np.repeat(X, weights, axis=0), np.repeat(y, weights)
    weighted, repeated = _frozen_pair("logistic_multiclass", X, y, weights)
    first = InfluenceFunction(weighted, damping=1e-2, **settings).fit(X, y, sample_weight=weights)
    second = InfluenceFunction(repeated, damping=1e-2, **settings).fit(X_rep, y_rep)
    a = first.transform(X[:6], y[:6])
    b = _sum_copies(second.transform(X[:6], y[:6]), weights)
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * np.abs(b).max())


# -- networks: scikit-learn's MLPs and skorch nets --------------------------------------------


def _skorch_net(kind, n_in, **kwargs):
    from _nets import TanhMLP
    from skorch import NeuralNetClassifier, NeuralNetRegressor

    net_class, n_out = (NeuralNetRegressor, 1) if kind == "regressor" else (NeuralNetClassifier, 3)
    settings = {
        "module__in_features": n_in, "module__hidden": 4, "module__out_features": n_out,
        "train_split": None, "max_epochs": 6, "batch_size": 10_000, "lr": 0.2, "verbose": 0,
        "optimizer__weight_decay": 1e-2,
    }  # fmt: skip
    if kind == "classifier":
        settings["criterion"] = torch.nn.CrossEntropyLoss
    return net_class(TanhMLP, **{**settings, **kwargs})


def _mlp(kind, **kwargs):
    model_class = MLPClassifier if kind == "classifier" else MLPRegressor
    settings = {"hidden_layer_sizes": (4,), "solver": "lbfgs", "alpha": 0.3, "random_state": 0}
    return model_class(**{**settings, **kwargs})


def _network(name):
    """(model factory, X, y) of the networks taking weights."""
    family, kind = name.split("_")
    if kind == "regressor":
        X, y = _regression(31, n=36)
        y = y / 50 if family == "mlp" else y.reshape(-1, 1) / 50
    else:
        X, y = _classification(30, n=36, n_classes=3)
    if family == "mlp":
        return lambda: _mlp(kind), X, y
    return lambda: _skorch_net(kind, X.shape[1]), X, y


NETWORKS = ["mlp_classifier", "mlp_regressor", "skorch_classifier", "skorch_regressor"]


# the weights-versus-repeated-rows identity holds for any curvature, EK-FAC included
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.ApproximationWarning")
@pytest.mark.parametrize("name", NETWORKS)
def test_network_integer_weight_equals_repeated_rows(name):
    """A network fitted with weights, frozen: a point of integer weight w has the summed
    influence of its w copies (influence with ε = w_m / W), for every curvature path."""
    make, X, y = _network(name)
    weights = _integer_weights(len(y), seed=3)
    X_rep, y_rep = np.repeat(X, weights, axis=0), np.repeat(y, weights, axis=0)
    model = InfluenceFunction(make(), random_state=0).fit(X, y, sample_weight=weights).estimator_
    cg = {"solver": "cg", "solver_options": {"tol": 1e-13, "maxiter": 500}}
    factored = {"curvature": "ekfac"} if name.startswith("skorch") else {"curvature": "hessian"}
    for settings in ({}, cg, factored):
        first = InfluenceFunction(FrozenEstimator(model), damping=1e-2, **settings)
        second = InfluenceFunction(FrozenEstimator(copy.deepcopy(model)), damping=1e-2, **settings)
        first.fit(X, y, sample_weight=weights)
        second.fit(X_rep, y_rep)
        a = first.transform(X[:5], y[:5])
        b = _sum_copies(second.transform(X[:5], y[:5]), weights)
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10 * np.abs(b).max())
        np.testing.assert_allclose(
            first.self_influence(), _sum_copies(second.self_influence(), weights), rtol=1e-8
        )


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_skorch_weighted_training_equals_repeated_rows(kind):
    """skorch training with weights (full batches) is the training on the repeated rows, and
    a cold leave-one-out refit is the training without the point's copies."""
    _, X, y = _network(f"skorch_{kind}")
    weights = _integer_weights(len(y), seed=4)
    X_rep, y_rep = np.repeat(X, weights, axis=0), np.repeat(y, weights, axis=0)
    weighted = InfluenceFunction(_skorch_net(kind, X.shape[1]), random_state=0)
    repeated = InfluenceFunction(_skorch_net(kind, X.shape[1]), random_state=0)
    theta = weighted.fit(X, y, sample_weight=weights).engine_.adapter.parameters()
    theta_rep = repeated.fit(X_rep, y_rep).engine_.adapter.parameters()
    torch.testing.assert_close(theta, theta_rep, rtol=1e-10, atol=1e-12)
    m = 5
    loo = LeaveOneOut(_skorch_net(kind, X.shape[1]), warm_start=False, train_indices=[m],
                      random_state=0).fit(X, y, sample_weight=weights)  # fmt: skip
    keep = np.repeat(np.arange(len(y)), weights) != m
    without = InfluenceFunction(_skorch_net(kind, X.shape[1]), random_state=0)
    theta_without = without.fit(X_rep[keep], y_rep[keep]).engine_.adapter.parameters()
    np.testing.assert_allclose(loo.parameters_[0], theta_without.numpy(), rtol=1e-9, atol=1e-11)


def test_mlp_weighted_influence_matches_weighted_leave_one_out():
    """Influence of a weighted MLP vs scikit-learn's weighted (warm) refits without each
    point, which keep the other rows' weights."""
    rng = np.random.RandomState(9)
    X, y = _regression(34, n=50)
    y = y / 50
    weights = rng.uniform(0.3, 3.0, len(y))
    X_train, y_train, w_train, X_test, y_test = X[:40], y[:40], weights[:40], X[40:], y[40:]
    model = _mlp("regressor", hidden_layer_sizes=(6,), alpha=1.0, max_iter=5000, tol=1e-12)
    influence = InfluenceFunction(model, damping=0.0).fit(X_train, y_train, sample_weight=w_train)
    base = ((influence.estimator_.predict(X_test) - y_test) ** 2).mean()
    removed = np.arange(0, 40, 2)
    actual = []
    for m in removed:
        keep = np.arange(40) != m
        refit = copy.deepcopy(influence.estimator_).set_params(warm_start=True)
        refit.fit(X_train[keep], y_train[keep], sample_weight=w_train[keep])
        actual.append(((refit.predict(X_test) - y_test) ** 2).mean() - base)
    predicted = influence.transform(X_test, y_test)[:, removed].mean(0)
    # a non-convex network refit by lbfgs (stopped by its ftol): measured 0.988
    assert np.corrcoef(predicted, actual)[0, 1] >= 0.98
