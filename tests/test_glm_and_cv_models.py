"""Generalised linear models and the estimators that chose their own regularisation.

PoissonRegressor, GammaRegressor, TweedieRegressor, RidgeCV, RidgeClassifier,
RidgeClassifierCV and LogisticRegressionCV, each checked against independent truth:
scikit-learn refitting without each removed point, the influence matrix written out in numpy
from hand-derived gradients and curvatures, and scikit-learn's own objective at the fitted
weights. The data are synthetic draws (seeded) used nowhere else in the tests.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn._loss.loss import HalfTweedieLoss, HalfTweedieLossIdentity
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    GammaRegressor,
    Lasso,
    LogisticRegression,
    LogisticRegressionCV,
    PoissonRegressor,
    Ridge,
    RidgeClassifier,
    RidgeClassifierCV,
    RidgeCV,
    TweedieRegressor,
)
from sklearn.linear_model._linear_loss import LinearModelLoss
from sklearn.metrics import mean_tweedie_deviance
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sklearn_influence import PBRF, InfluenceFunction, LinearizedPBRF
from sklearn_influence._adapters import make_adapter
from sklearn_influence._adapters._glm import TweedieHalfDeviance

N_REMOVED = 25
_CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _quiet_single_threaded_solvers():
    # scikit-learn's Newton solver falls back to lbfgs (with a warning) where a non-canonical
    # link makes pointwise Hessians negative; LogisticRegressionCV warns about its defaults.
    # The many small refits run fastest on one OpenMP/BLAS thread.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


# -- generalised linear models -----------------------------------------------------------------
# name: (estimator factory, power, link, data seed)
GLMS = {
    "poisson": (lambda **kw: PoissonRegressor(**kw), 1.0, "log"),
    "gamma": (lambda **kw: GammaRegressor(**kw), 2.0, "log"),
    "tweedie_1.5": (lambda **kw: TweedieRegressor(power=1.5, **kw), 1.5, "log"),
    # 0 < power < 1: no distribution exists, but scikit-learn (≥ 1.8) fits the deviance
    "tweedie_0.5": (lambda **kw: TweedieRegressor(power=0.5, **kw), 0.5, "log"),
    "inverse_gaussian": (lambda **kw: TweedieRegressor(power=3.0, **kw), 3.0, "log"),
    "normal_identity": (lambda **kw: TweedieRegressor(power=0.0, **kw), 0.0, "identity"),
    "normal_log": (lambda **kw: TweedieRegressor(power=0.0, link="log", **kw), 0.0, "log"),
    "poisson_identity": (
        lambda **kw: TweedieRegressor(power=1.0, link="identity", **kw),
        1.0,
        "identity",
    ),
}
CANONICAL = {"poisson", "normal_identity"}
TIGHT = {"tol": 1e-12, "max_iter": 1000}


# pointwise Hessians can be negative here: scikit-learn's Newton solver would fall back to lbfgs
NONCONVEX_POINTWISE = {"inverse_gaussian", "normal_log"}


def _glm_model(name, alpha=0.01, solver=None):
    factory = GLMS[name][0]
    if solver is None:
        solver = "lbfgs" if name in NONCONVEX_POINTWISE else "newton-cholesky"
    return factory(alpha=alpha, solver=solver, **TIGHT)


def _glm_data(name, n_train=300, n_test=30, seed=12):
    """Draws of the family's distribution around a linear predictor (seeded per family)."""
    _, power, link = GLMS[name]
    rng = np.random.RandomState(seed + sorted(GLMS).index(name))
    X, _ = make_regression(n_train + n_test, 4, n_informative=4, random_state=rng.randint(1 << 30))
    eta = X @ (0.3 * rng.randn(4)) + 0.5
    mu = np.exp(eta) if link == "log" else eta + 4.0
    if power == 0:
        y = mu + 0.7 * rng.randn(len(mu))
    elif power == 1:
        y = rng.poisson(mu).astype(float)
    elif power == 2:
        y = rng.gamma(5.0, mu / 5.0)
    elif power == 3:
        y = rng.wald(mu, 10.0)
    else:  # compound Poisson-Gamma
        y = rng.poisson(0.8 * mu) * rng.gamma(4.0, 0.3, len(mu))
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def _half_deviances(power, y, mu):
    """½ unit deviance per sample, from scikit-learn (its metric where it accepts the power)."""
    if 0 < power < 1:  # mean_tweedie_deviance refuses these powers; the loss module does not
        loss = HalfTweedieLossIdentity(power=power)
        y, mu = np.asarray(y, float), np.asarray(mu, float)
        return loss.loss(y_true=y, raw_prediction=mu) + loss.constant_to_optimal_zero(y)
    pairs = zip(y, mu, strict=True)
    return np.array([mean_tweedie_deviance([a], [b], power=power) for a, b in pairs]) / 2


def _eta_derivatives(power, link, y, eta):
    """dL/dη, d²L/dη² and the Fisher weight of L = ½ d_p(y, μ(η)), written out by hand."""
    p = power
    if link == "log":
        mu = np.exp(eta)
        first = mu ** (1 - p) * (mu - y)
        second = mu ** (1 - p) * ((2 - p) * mu + (p - 1) * y)
        fisher = mu ** (2 - p)
    else:
        mu = eta
        first = mu ** (-p) * (mu - y)
        second = mu ** (-p - 1) * ((1 - p) * mu + p * y)
        fisher = mu ** (-p)
    return first, second, fisher


def _with_ones(X):
    return np.column_stack([X, np.ones(len(X))])


def _numpy_glm_influence(model, name, X, y, X_test, y_test, curvature, damping):
    """(1/N) G_q (C + λI)⁻¹ G_trᵀ from hand-derived GLM gradients and curvature, float64."""
    _, power, link = GLMS[name]
    Z, Z_test = _with_ones(X), _with_ones(X_test)
    theta = np.append(model.coef_, model.intercept_)
    first, second, fisher = _eta_derivatives(power, link, y, Z @ theta)
    weights = second if curvature == "hessian" else fisher
    N = len(y)
    regularizer = np.full(len(theta), model.alpha)
    regularizer[-1] = 0.0
    C = Z.T @ (weights[:, None] * Z) / N + np.diag(regularizer)
    query_first, _, _ = _eta_derivatives(power, link, y_test, Z_test @ theta)
    G_train = first[:, None] * Z
    G_query = query_first[:, None] * Z_test
    return G_query @ np.linalg.solve(C + damping * np.eye(len(theta)), G_train.T) / N


def _warm_refit(model, X, y, like=None):
    """scikit-learn's own refit of ``like`` (default: ``model``'s class and settings), started
    from ``model``'s fitted coefficients (fewer iterations, the same convex optimum)."""
    like = model if like is None else like
    refit = like.__class__(**{**like.get_params(), "warm_start": True})
    refit.coef_, refit.intercept_ = model.coef_.copy(), np.copy(model.intercept_)
    if hasattr(model, "classes_"):
        refit.classes_ = model.classes_
    return refit.fit(X, y)


def _sklearn_glm_loo_changes(model, X, y, X_test, y_test, removed, power):
    """Change of each test half deviance when scikit-learn refits without each removed point."""
    base = _half_deviances(power, y_test, model.predict(X_test))
    changes = []
    for index in removed:
        keep = np.arange(len(y)) != index
        refit = _warm_refit(model, X[keep], y[keep])
        changes.append(_half_deviances(power, y_test, refit.predict(X_test)) - base)
    return np.array(changes).T


def _pearson_of_means(predicted, actual):
    return np.corrcoef(predicted.mean(0), actual.mean(0))[0, 1]


@pytest.mark.parametrize("name", sorted(GLMS))
def test_glm_loss_derivatives_match_finite_differences_of_sklearn_deviance(name):
    """The hand-written dL/dη and d²L/dη² are those of scikit-learn's deviance."""
    _, power, link = GLMS[name]
    _, y, _, _ = _glm_data(name)
    y = y[:20]
    eta = np.log(np.clip(y, 0.5, None)) + 0.3 if link == "log" else np.clip(y, 0.5, None) + 0.3
    step = 1e-4

    def loss(values):
        mu = np.exp(values) if link == "log" else values
        return _half_deviances(power, y, mu)

    first, second, fisher = _eta_derivatives(power, link, y, eta)
    np.testing.assert_allclose((loss(eta + step) - loss(eta - step)) / (2 * step), first, rtol=1e-6)
    fd_second = (loss(eta + step) - 2 * loss(eta) + loss(eta - step)) / step**2
    np.testing.assert_allclose(fd_second, second, rtol=1e-4, atol=1e-6)
    # the package's loss in torch agrees with scikit-learn's deviance and with the Fisher weight
    torch_loss = TweedieHalfDeviance(power, link)
    eta_t = torch.tensor(eta.reshape(-1, 1))
    y_t = torch.tensor(y.reshape(-1, 1))
    np.testing.assert_allclose(torch_loss(eta_t, y_t).numpy(), loss(eta), rtol=1e-10, atol=1e-12)
    hessian = torch_loss.output_hessian(eta_t)[:, 0, 0].numpy()
    np.testing.assert_allclose(hessian, fisher, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(GLMS))
def test_glm_objective_equals_scikit_learns(name):
    """J(θˢ) = (1/(2N)) Σ deviance + (α/2)‖w‖², the objective scikit-learn minimises."""
    _, power, link = GLMS[name]
    X, y, _, _ = _glm_data(name)
    model = _glm_model(name, alpha=0.05).fit(X, y)
    adapter = make_adapter(model, len(y), _CPU)
    objective = float(
        adapter.objective(adapter.parameters(), adapter.inputs(X), adapter.targets(y))
    )
    expected = _half_deviances(power, y, model.predict(X)).mean()
    expected += 0.5 * model.alpha * np.sum(model.coef_**2)
    np.testing.assert_allclose(objective, expected, rtol=1e-12)
    # scikit-learn's internal objective drops the y-only constant that makes the deviance zero
    base_loss = (HalfTweedieLoss if link == "log" else HalfTweedieLossIdentity)(power=power)
    internal = LinearModelLoss(base_loss=base_loss, fit_intercept=True).loss(
        np.append(model.coef_, model.intercept_), X, y, l2_reg_strength=model.alpha
    )
    np.testing.assert_allclose(
        objective, internal + base_loss.constant_to_optimal_zero(y).mean(), rtol=1e-10
    )


@pytest.mark.parametrize("curvature", ["hessian", "gauss_newton"])
@pytest.mark.parametrize("name", sorted(GLMS))
def test_glm_influence_matches_a_numpy_computation(name, curvature):
    """Exact Hessian and Fisher Gauss-Newton, against the closed form, to 1e-8 relative."""
    X, y, X_test, y_test = _glm_data(name)
    influence = InfluenceFunction(_glm_model(name), damping=1e-3, curvature=curvature)
    influence.fit(X, y)
    expected = _numpy_glm_influence(
        influence.estimator_, name, X, y, X_test, y_test, curvature, 1e-3
    )
    result = influence.transform(X_test, y_test)
    np.testing.assert_allclose(result, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    if name not in CANONICAL and curvature == "gauss_newton":
        # a non-canonical link: the Gauss-Newton (Fisher) matrix is not the Hessian
        hessian_based = _numpy_glm_influence(
            influence.estimator_, name, X, y, X_test, y_test, "hessian", 1e-3
        )
        assert np.abs(result - hessian_based).max() > 1e-3 * np.abs(hessian_based).max()


# Pearson of the mean test-loss changes over 25 removals, measured (Hessian / Gauss-Newton):
# gamma 0.9969 / 0.9966, inverse_gaussian 0.9980 / 0.9970, normal_identity 0.9985 / 0.9985,
# normal_log 0.9971 / 0.9963, poisson 0.9995 / 0.9995, poisson_identity 0.9997 / 0.9997,
# tweedie_0.5 0.9992 / 0.9992, tweedie_1.5 0.9998 / 0.9978.
LOO_FAMILIES = sorted(GLMS)


@pytest.mark.parametrize("name", LOO_FAMILIES)
def test_glm_matches_scikit_learn_leave_one_out(name):
    _, power, _ = GLMS[name]
    X, y, X_test, y_test = _glm_data(name)
    influence = InfluenceFunction(_glm_model(name), damping=0.0, curvature="hessian").fit(X, y)
    removed = np.random.RandomState(3).choice(len(y), N_REMOVED, replace=False)
    actual = _sklearn_glm_loo_changes(influence.estimator_, X, y, X_test, y_test, removed, power)
    predicted = influence.transform(X_test, y_test)[:, removed]
    assert _pearson_of_means(predicted, actual) >= 0.99
    # the Fisher Gauss-Newton is a different, label-free curvature, still close on LOO
    fisher = InfluenceFunction(_glm_model(name), damping=0.0).fit(X, y)
    assert _pearson_of_means(fisher.transform(X_test, y_test)[:, removed], actual) >= 0.99


@pytest.mark.parametrize("name", ["gamma", "tweedie_1.5"])
def test_glm_pbrf_is_linearized_by_the_gauss_newton_step(name):
    """The PBRF's Bregman term is the label-free KL, whose Hessian at θˢ is the Fisher G.

    So the PBRF optimum is θˢ + ε(G + λI)⁻¹∇L_m to first order in ε — not the step with the
    label-dependent Hessian H, which the Bregman divergence of L in η itself would give.
    """
    X, y, _, _ = _glm_data(name, n_train=1000)  # ε = 1/N small: second-order terms vanish
    model, damping, points = _glm_model(name), 1e-2, np.arange(8)
    pbrf = PBRF(model, damping=damping, train_indices=points).fit(X, y)
    linearized = LinearizedPBRF(model, damping=damping, train_indices=points).fit(X, y)
    fitted = pbrf.estimator_
    _, power, link = GLMS[name]
    Z = _with_ones(X)
    theta = np.append(fitted.coef_, fitted.intercept_)
    np.testing.assert_allclose(pbrf.reference_parameters_, theta, rtol=1e-12)
    first, second, fisher = _eta_derivatives(power, link, y, Z @ theta)
    regularizer = np.diag(np.append(np.full(Z.shape[1] - 1, fitted.alpha), 0.0))
    N = len(y)
    gradients = (first[:, None] * Z)[points]
    steps = {}
    for kind, weights in (("fisher", fisher), ("hessian", second)):
        curvature = Z.T @ (weights[:, None] * Z) / N + regularizer + damping * np.eye(len(theta))
        steps[kind] = np.linalg.solve(curvature, gradients.T).T / N
    np.testing.assert_allclose(linearized.parameters_ - theta, steps["fisher"], rtol=1e-8)
    pbrf_steps = pbrf.parameters_ - theta
    fisher_error = np.abs(pbrf_steps - steps["fisher"]).max()
    assert fisher_error <= 0.02 * np.abs(steps["fisher"]).max()
    assert fisher_error < 0.6 * np.abs(pbrf_steps - steps["hessian"]).max()


def test_glm_bregman_is_the_kl_divergence():
    """D(η, ηˢ) = ½ d(μˢ, μ) ≥ 0, zero with zero slope at ηˢ, curvature = the Fisher weight."""
    reference = torch.tensor([[0.3], [1.2], [2.0]], dtype=torch.float64)
    outputs = reference + torch.tensor([[0.2], [-0.4], [0.1]], dtype=torch.float64)
    for power, link in [(2.0, "log"), (1.5, "log"), (3.0, "log"), (1.0, "identity")]:
        loss = TweedieHalfDeviance(power, link)

        def divergence(h, loss=loss):
            return loss.bregman(h, reference).sum()

        expected = _half_deviances(
            power, loss.mean(reference).ravel().numpy(), loss.mean(outputs).ravel().numpy()
        )
        np.testing.assert_allclose(
            loss.bregman(outputs, reference).numpy().ravel(), expected, rtol=1e-10
        )
        at_reference = torch.func.hessian(divergence)(reference)
        np.testing.assert_allclose(
            at_reference.reshape(3, 3).diagonal().numpy(),
            loss.fisher_weight(reference).ravel().numpy(),
            rtol=1e-10,
        )
        slope = torch.func.grad(divergence)(reference)
        np.testing.assert_allclose(slope.numpy(), 0.0, atol=1e-12)


def test_glm_retraining_is_scikit_learns_refit():
    X, y, _, _ = _glm_data("gamma")
    model = _glm_model("gamma", solver="lbfgs").fit(X, y)
    adapter = make_adapter(model, len(y), _CPU)
    theta = adapter.retrain(X, y, exclude=[4, 9]).numpy()
    keep = ~np.isin(np.arange(len(y)), [4, 9])
    refit = _glm_model("gamma").fit(X[keep], y[keep])
    np.testing.assert_allclose(theta, np.append(refit.coef_, refit.intercept_), rtol=1e-6)


def test_glm_refuses_targets_outside_the_support():
    X, y, X_test, _ = _glm_data("gamma")
    influence = InfluenceFunction(_glm_model("gamma")).fit(X, y)
    with pytest.raises(ValueError, match="strictly positive"):
        influence.transform(X_test[:2], np.array([1.0, 0.0]))
    X, y, X_test, _ = _glm_data("poisson")
    influence = InfluenceFunction(_glm_model("poisson")).fit(X, y)
    with pytest.raises(ValueError, match="non-negative"):
        influence.transform(X_test[:2], np.array([1.0, -1.0]))


@pytest.mark.parametrize("name", ["poisson", "gamma", "poisson_identity"])
def test_glm_measurement_without_labels_is_the_prediction(name):
    """Without y_test a GLM query is measured by its prediction μ (what ``predict`` returns,
    DESIGN.md §2), not by η: I[q, m] is the directional derivative of scikit-learn's own
    ``predict`` along θ's first-order response (C + λI)⁻¹∇L_m / N (central finite
    differences), and equals the closed form μ'(η_q) z̃_qᵀ(C + λI)⁻¹∇L_m / N."""
    _, power, link = GLMS[name]
    X, y, X_test, _ = _glm_data(name)
    damping = 1e-3
    influence = InfluenceFunction(_glm_model(name), damping=damping).fit(X, y)
    model = influence.estimator_
    Z, Z_test = _with_ones(X), _with_ones(X_test)
    theta = np.append(model.coef_, model.intercept_)
    first, _, fisher = _eta_derivatives(power, link, y, Z @ theta)
    C = Z.T @ (fisher[:, None] * Z) / len(y) + np.diag(np.append(np.full(4, model.alpha), 0))
    directions = np.linalg.solve(C + damping * np.eye(5), (first[:, None] * Z).T).T / len(y)
    removed = np.arange(0, len(y), 37)
    step = 1e-5

    def predict(parameters):
        shifted = copy.deepcopy(model)
        shifted.coef_, shifted.intercept_ = parameters[:-1], parameters[-1]
        return shifted.predict(X_test)

    finite_differences = np.column_stack([
        (predict(theta + step * directions[m]) - predict(theta - step * directions[m]))
        / (2 * step)
        for m in removed
    ])  # fmt: skip
    matrix = influence.transform(X_test)
    # central differences: O(step²) truncation, rounding ~ eps·|μ|/step
    scale = np.abs(finite_differences).max()
    np.testing.assert_allclose(matrix[:, removed], finite_differences, rtol=1e-6, atol=1e-6 * scale)
    slope = model.predict(X_test) if link == "log" else np.ones(len(X_test))
    closed = slope[:, None] * (Z_test @ directions.T)
    np.testing.assert_allclose(matrix, closed, rtol=1e-8)


# -- estimators that chose their own regularisation, and the ridge classifier ------------------
def _classification(n_classes, seed, n_samples=330, n_train=300):
    X, y = make_classification(
        n_samples,
        5,
        n_informative=4,
        n_redundant=0,
        n_classes=n_classes,
        class_sep=0.8,
        random_state=seed,
    )
    X = StandardScaler().fit_transform(X)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def _regression(n_targets, seed, n_train=300):
    X, y = make_regression(
        n_train + 30, 6, n_informative=5, n_targets=n_targets, noise=20.0, random_state=seed
    )
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def _signed(model, y):
    """scikit-learn's ±1 coding of the ridge classifiers, (n, k)."""
    columns = y.reshape(-1, 1) == model.classes_.reshape(1, -1)
    signed = np.where(columns, 1.0, -1.0)
    return signed[:, 1:] if len(model.classes_) == 2 else signed


def _ridge_classifier_losses(model, X, y):
    decision = model.decision_function(X).reshape(len(X), -1)
    return ((decision - _signed(model, y)) ** 2).sum(1)


def _log_losses(model, X, y):
    probabilities = model.predict_proba(X)
    return -np.log(probabilities[np.arange(len(y)), np.searchsorted(model.classes_, y)])


def _squared_losses(model, X, y):
    return ((model.predict(X) - y) ** 2).reshape(len(y), -1).sum(1)


CV_CASES = {
    # name: (CV estimator, plain estimator at its selected value, data, test loss)
    "ridge_cv_gcv": (
        lambda: RidgeCV(alphas=(0.1, 10.0, 300.0)),
        lambda cv: Ridge(alpha=cv.alpha_),
        lambda: _regression(1, 21),
        _squared_losses,
    ),
    "ridge_cv_folds": (
        lambda: RidgeCV(alphas=(0.1, 10.0, 300.0), cv=3),
        lambda cv: Ridge(alpha=cv.alpha_),
        lambda: _regression(1, 20),
        _squared_losses,
    ),
    "ridge_cv_per_target": (
        lambda: RidgeCV(alphas=(0.1, 10.0, 300.0), alpha_per_target=True),
        lambda cv: Ridge(alpha=cv.alpha_),
        lambda: _regression(2, 22),
        _squared_losses,
    ),
    "ridge_classifier_binary": (
        lambda: RidgeClassifier(alpha=2.0),
        lambda cv: RidgeClassifier(alpha=2.0),
        lambda: _classification(2, 23),
        _ridge_classifier_losses,
    ),
    "ridge_classifier_multiclass": (
        lambda: RidgeClassifier(alpha=2.0),
        lambda cv: RidgeClassifier(alpha=2.0),
        lambda: _classification(3, 24),
        _ridge_classifier_losses,
    ),
    "ridge_classifier_cv": (
        lambda: RidgeClassifierCV(alphas=(0.1, 10.0, 100.0)),
        lambda cv: RidgeClassifier(alpha=cv.alpha_),
        lambda: _classification(3, 25),
        _ridge_classifier_losses,
    ),
    "logistic_cv_binary": (
        lambda: LogisticRegressionCV(
            Cs=(0.01, 0.1, 1.0),
            cv=3,
            l1_ratios=(0,),
            tol=1e-10,
            scoring="neg_log_loss",
            use_legacy_attributes=False,
        ),
        lambda cv: LogisticRegression(C=float(np.ravel(cv.C_)[0]), tol=1e-10),
        lambda: _classification(2, 26),
        _log_losses,
    ),
    "logistic_cv_multinomial": (
        lambda: LogisticRegressionCV(Cs=(0.01, 0.1, 1.0), cv=3, tol=1e-10),
        lambda cv: LogisticRegression(C=float(np.ravel(cv.C_)[0]), tol=1e-10),
        lambda: _classification(3, 27),
        _log_losses,
    ),
}


def _cv_case(name):
    make_cv, make_plain, make_data, test_loss = CV_CASES[name]
    X, y, X_test, y_test = make_data()
    return make_cv().fit(X, y), make_plain, (X, y, X_test, y_test), test_loss


@pytest.mark.parametrize("name", sorted(CV_CASES))
def test_plain_refit_at_the_selected_value_reproduces_the_cv_fit(name):
    """Retraining at the fixed hyper-parameter starts from the CV estimator's own θˢ."""
    model, make_plain, (X, y, _, _), _ = _cv_case(name)
    plain = make_plain(model).fit(X, y)
    np.testing.assert_allclose(np.ravel(plain.coef_), np.ravel(model.coef_), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        np.ravel(plain.intercept_), np.ravel(model.intercept_), rtol=1e-5, atol=1e-7
    )
    adapter = make_adapter(model, len(y), _CPU)
    # the package's own retraining (no point removed) refits the plain estimator
    np.testing.assert_allclose(
        adapter.retrain(X, y).numpy(), adapter.parameters().numpy(), rtol=1e-5, atol=1e-7
    )


def _sklearn_objective(model, X, y):
    """The objective each estimator documents, divided by N (the package's mean form)."""
    N = len(y)
    if isinstance(model, (RidgeCV, Ridge)):
        alpha = np.asarray(model.alpha_).reshape(-1, 1)
        coef = np.atleast_2d(model.coef_)
        return (_squared_losses(model, X, y).sum() + np.sum(alpha * coef**2)) / N
    if isinstance(model, (RidgeClassifier, RidgeClassifierCV)):
        alpha = model.alpha_ if isinstance(model, RidgeClassifierCV) else model.alpha
        return (_ridge_classifier_losses(model, X, y).sum() + alpha * np.sum(model.coef_**2)) / N
    C = float(np.ravel(model.C_)[0])
    return (C * _log_losses(model, X, y).sum() + 0.5 * np.sum(model.coef_**2)) / (C * N)


@pytest.mark.parametrize("name", sorted(CV_CASES))
def test_cv_and_ridge_classifier_objective_equals_scikit_learns(name):
    model, _, (X, y, _, _), _ = _cv_case(name)
    adapter = make_adapter(model, len(y), _CPU)
    objective = float(
        adapter.objective(adapter.parameters(), adapter.inputs(X), adapter.targets(y))
    )
    np.testing.assert_allclose(objective, _sklearn_objective(model, X, y), rtol=1e-12)


def _numpy_linear_influence(name, model, X, y, X_test, y_test, damping):
    """(1/N) G_q (C + λI)⁻¹ G_trᵀ with gradients and Hessians written out per loss."""
    N, Z, Z_test = len(y), _with_ones(X), _with_ones(X_test)
    W = np.column_stack([np.atleast_2d(model.coef_), np.ravel(model.intercept_)])
    k, width = W.shape
    if name.startswith("logistic"):
        C_value = float(np.ravel(model.C_)[0])
        penalty = np.full(k, 1.0 / (C_value * N))

        def parts(Zs, ys):
            logits = Zs @ W.T
            if k == 1:
                p = expit(logits)
                residual = p - (ys == model.classes_[1]).reshape(-1, 1)
                hessians = (p * (1 - p))[:, :, None]
            else:
                p = np.exp(logits - logits.max(1, keepdims=True))
                p /= p.sum(1, keepdims=True)
                residual = p - (ys.reshape(-1, 1) == model.classes_)
                hessians = np.einsum("ik,kl->ikl", p, np.eye(k)) - np.einsum("ik,il->ikl", p, p)
            return residual, hessians
    else:
        alpha = getattr(model, "alpha_", None)
        alpha = model.alpha if alpha is None else alpha
        penalty = np.broadcast_to(2.0 * np.asarray(alpha, float) / N, (k,))

        def parts(Zs, ys):
            targets = _signed(model, ys) if hasattr(model, "classes_") else ys.reshape(len(ys), -1)
            residual = 2.0 * (Zs @ W.T - targets)
            return residual, np.broadcast_to(2.0 * np.eye(k), (len(Zs), k, k))

    residual, hessians = parts(Z, y)
    curvature = np.einsum("ikl,ie,if->kelf", hessians, Z, Z).reshape(k * width, k * width) / N
    regularizer = np.repeat(penalty.reshape(-1, 1), width, axis=1)
    regularizer[:, -1] = 0.0
    curvature += np.diag(regularizer.ravel())
    query_residual, _ = parts(Z_test, y_test)
    G_train = np.einsum("ik,ie->ike", residual, Z).reshape(N, -1)
    G_query = np.einsum("ik,ie->ike", query_residual, Z_test).reshape(len(Z_test), -1)
    solved = np.linalg.solve(curvature + damping * np.eye(k * width), G_train.T)
    return G_query @ solved / N


@pytest.mark.parametrize("name", sorted(CV_CASES))
def test_cv_and_ridge_classifier_influence_matches_a_numpy_computation(name):
    model, _, (X, y, X_test, y_test), _ = _cv_case(name)
    from sklearn.frozen import FrozenEstimator

    influence = InfluenceFunction(FrozenEstimator(model), damping=1e-3).fit(X, y)
    expected = _numpy_linear_influence(name, model, X, y, X_test, y_test, 1e-3)
    np.testing.assert_allclose(
        influence.transform(X_test, y_test),
        expected,
        rtol=1e-8,
        atol=1e-10 * np.abs(expected).max(),
    )


# measured: logistic_cv binary 0.9999, multinomial 0.9998; ridge_classifier binary 0.9991,
# multiclass 0.9989; ridge_classifier_cv 0.9998; ridge_cv folds 0.9993, gcv 0.9995,
# per target 0.9988
CV_LOO_PEARSON = {name: 0.99 for name in CV_CASES}


@pytest.mark.parametrize("name", sorted(CV_CASES))
def test_cv_and_ridge_classifier_match_leave_one_out_at_the_selected_value(name):
    """Actual LOO: the plain estimator refit by scikit-learn at the fixed selected value."""
    _, make_plain, (X, y, X_test, y_test), test_loss = _cv_case(name)
    influence = InfluenceFunction(CV_CASES[name][0](), damping=0.0).fit(X, y)
    removed = np.random.RandomState(5).choice(len(y), N_REMOVED, replace=False)
    plain = make_plain(influence.estimator_)
    base = test_loss(influence.estimator_, X_test, y_test)
    actual = []
    for index in removed:
        keep = np.arange(len(y)) != index
        if "warm_start" in plain.get_params():  # LogisticRegression: start from θˢ
            refit = _warm_refit(influence.estimator_, X[keep], y[keep], like=plain)
        else:
            refit = plain.__class__(**plain.get_params()).fit(X[keep], y[keep])
        actual.append(test_loss(refit, X_test, y_test) - base)
    actual = np.array(actual).T
    predicted = influence.transform(X_test, y_test)[:, removed]
    assert _pearson_of_means(predicted, actual) >= CV_LOO_PEARSON[name]


def test_unsupported_settings_are_refused_with_the_new_families_listed():
    X, y, _, _ = _classification(2, 28)
    with pytest.raises(ValueError, match="l1_ratios"):
        InfluenceFunction(LogisticRegressionCV(l1_ratios=(0.0, 0.5), solver="saga")).fit(X, y)
    with pytest.raises(ValueError, match="liblinear"):
        InfluenceFunction(LogisticRegressionCV(solver="liblinear")).fit(X, y)
    with pytest.raises(ValueError, match="refit=False"):
        InfluenceFunction(LogisticRegressionCV(refit=False)).fit(X, y)
    with pytest.raises(TypeError, match="RidgeClassifierCV.*PoissonRegressor"):
        InfluenceFunction(Lasso()).fit(X, y.astype(float))


# -- GridSearchCV over damping, each new family in a Pipeline with a scaler --------------------
GRID_CASES = {
    "poisson": lambda: _glm_data("poisson", n_train=80, n_test=0)[:2],
    "gamma": lambda: _glm_data("gamma", n_train=80, n_test=0)[:2],
    "tweedie": lambda: _glm_data("tweedie_1.5", n_train=80, n_test=0)[:2],
    "ridge_cv": lambda: _regression(1, 31, n_train=80)[:2],
    "ridge_classifier": lambda: _classification(3, 32, n_samples=90, n_train=80)[:2],
    "ridge_classifier_cv": lambda: _classification(2, 33, n_samples=90, n_train=80)[:2],
    "logistic_cv": lambda: _classification(3, 34, n_samples=90, n_train=80)[:2],
}
GRID_MODELS = {
    "poisson": lambda: PoissonRegressor(alpha=0.01, solver="newton-cholesky", tol=1e-10),
    "gamma": lambda: GammaRegressor(alpha=0.01, solver="newton-cholesky", tol=1e-10),
    "tweedie": lambda: TweedieRegressor(power=1.5, alpha=0.01, solver="newton-cholesky", tol=1e-10),
    "ridge_cv": lambda: RidgeCV(),
    "ridge_classifier": lambda: RidgeClassifier(),
    "ridge_classifier_cv": lambda: RidgeClassifierCV(),
    "logistic_cv": lambda: LogisticRegressionCV(Cs=(0.1, 1.0), cv=2),
}


@pytest.mark.parametrize("name", sorted(GRID_CASES))
def test_grid_search_over_damping_in_a_pipeline(name):
    X, y = GRID_CASES[name]()
    pipeline = make_pipeline(StandardScaler(), GRID_MODELS[name]())
    search = GridSearchCV(
        InfluenceFunction(pipeline, n_score_points=6, random_state=0),
        {"damping": [1e-3, 1.0]},
        cv=2,
    ).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert search.best_params_["damping"] in (1e-3, 1.0)


# scikit-learn's estimator checks for these families are in the one table of test_common.py.


def test_positive_only_target_tag_is_forwarded():
    from sklearn.frozen import FrozenEstimator
    from sklearn.utils import get_tags

    for model in (GammaRegressor(), make_pipeline(StandardScaler(), GammaRegressor())):
        assert get_tags(InfluenceFunction(model)).target_tags.positive_only
        frozen = FrozenEstimator(GammaRegressor().fit([[0.0], [1.0]], [1.0, 2.0]))
        assert get_tags(InfluenceFunction(frozen)).target_tags.positive_only
    assert not get_tags(InfluenceFunction(RidgeCV())).target_tags.positive_only
