"""RegressionDiagnostics and its Display against statsmodels, the independent oracle.

OLS and WLS are compared with ``OLSInfluence`` (WLS as the OLS of the whitened problem
√w·y on √w·X̃, the textbook weighted diagnostics; statsmodels' ``OLSInfluence`` of a ``WLS``
result mixes weighted and unweighted design), logistic and Poisson GLMs with
``GLMInfluence`` (leverage, studentized residuals, Cook's distance) and ``MLEInfluence``
(its one-step d_params and DFBETAS), all to 1e-10. scikit-learn's penalised models are
compared at penalty → 0 (``C=np.inf``, ``alpha=0``); penalised models' exact refits are
checked against scikit-learn refits.
"""

import numpy as np
import pytest

sm = pytest.importorskip("statsmodels.api")
pd = pytest.importorskip("pandas")
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.linear_model import (  # noqa: E402
    GammaRegressor,
    LinearRegression,
    LogisticRegression,
    PoissonRegressor,
    Ridge,
)
from statsmodels.stats.outliers_influence import (  # noqa: E402
    GLMInfluence,
    MLEInfluence,
    OLSInfluence,
)

from sklearn_influence import RegressionDiagnostics, RegressionDiagnosticsDisplay  # noqa: E402

ATOL = 1e-10
N = 120
TIGHT = {"solver": "newton-cholesky", "tol": 1e-12, "max_iter": 1000}


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(N, 3))
    eta = X @ [0.6, -0.4, 0.2]
    return {
        "X": X,
        "y": eta + rng.normal(size=N),
        "binary": (eta + rng.logistic(size=N) > 0).astype(int),
        "counts": rng.poisson(np.exp(eta)),
        "positive": rng.gamma(3.0, np.exp(eta) / 3.0),
        "weights": rng.uniform(0.5, 2.0, N),
    }


def _statsmodels_order(values):
    """Our parameters are [coef, intercept]; statsmodels' [const, coef]."""
    return np.column_stack([values[:, -1], values[:, :-1]])


def _compare(ours, theirs, *, external=True):
    np.testing.assert_allclose(ours.leverage_, theirs.hat_matrix_diag, rtol=0, atol=ATOL)
    np.testing.assert_allclose(
        ours.studentized_residuals_, theirs.resid_studentized, rtol=0, atol=ATOL
    )
    np.testing.assert_allclose(ours.cooks_distance_, theirs.cooks_distance[0], rtol=0, atol=ATOL)
    if external:
        np.testing.assert_allclose(
            ours.external_studentized_residuals_,
            theirs.resid_studentized_external,
            rtol=0,
            atol=ATOL,
        )
        np.testing.assert_allclose(ours.dffits_, theirs.dffits[0], rtol=0, atol=ATOL)
        np.testing.assert_allclose(
            _statsmodels_order(ours.dfbetas_), theirs.dfbetas, rtol=0, atol=ATOL
        )


@pytest.mark.parametrize("method", ["exact", "one_step"])
def test_ols_matches_statsmodels(data, method):
    X, y = data["X"], data["y"]
    ours = RegressionDiagnostics(LinearRegression(), method=method).fit(X, y)
    _compare(ours, OLSInfluence(sm.OLS(y, sm.add_constant(X)).fit()))
    assert ours.effective_parameters_ == pytest.approx(4.0)


def test_wls_matches_the_whitened_ols(data):
    X, y, w = data["X"], data["y"], data["weights"]
    ours = RegressionDiagnostics(LinearRegression()).fit(X, y, sample_weight=w)
    root = np.sqrt(w)
    whitened = sm.OLS(root * y, root[:, None] * sm.add_constant(X)).fit()
    _compare(ours, OLSInfluence(whitened))
    # the same fit as statsmodels' WLS
    fitted = sm.WLS(y, sm.add_constant(X), weights=w).fit()
    np.testing.assert_allclose(ours.parameters_[[3, 0, 1, 2]], fitted.params, atol=1e-12)


GLMS = {
    "logistic": (LogisticRegression(C=np.inf, **TIGHT), "binary", sm.families.Binomial()),
    "poisson": (PoissonRegressor(alpha=0.0, **TIGHT), "counts", sm.families.Poisson()),
}


@pytest.mark.parametrize("name", sorted(GLMS))
def test_glm_one_step_matches_statsmodels(data, name):
    model, target, family = GLMS[name]
    X, y = data["X"], data[target]
    result = sm.GLM(y, sm.add_constant(X), family=family).fit(tol=1e-14)
    ours = RegressionDiagnostics(model, method="one_step").fit(X, y)
    _compare(ours, GLMInfluence(result), external=False)
    general = MLEInfluence(result)  # the one-step Newton with the leave-one-out information
    shifts = _statsmodels_order(ours.parameters_ - ours.loo_parameters_)
    np.testing.assert_allclose(shifts, general.d_params, rtol=0, atol=ATOL)
    np.testing.assert_allclose(_statsmodels_order(ours.dfbetas_), general.dfbetas, atol=ATOL)
    # DFFITS at one step: r_i √(h_i/(1 − h_i)), dispersion 1
    h = ours.leverage_
    np.testing.assert_allclose(
        ours.dffits_, ours.studentized_residuals_ * np.sqrt(h / (1 - h)), atol=ATOL
    )


@pytest.mark.parametrize("name", sorted(GLMS))
def test_glm_exact_refits_match_statsmodels_refits(data, name):
    """The exact Cook's distance uses refits: statsmodels' GLM refit without a few rows."""
    model, target, family = GLMS[name]
    X, y = data["X"], data[target]
    Xc = sm.add_constant(X)
    full = sm.GLM(y, Xc, family=family).fit(tol=1e-14)
    ours = RegressionDiagnostics(model).fit(X, y)
    assert ours.converged_.all()
    information = np.linalg.inv(full.cov_params())
    for i in (0, 5, 60):
        keep = np.arange(N) != i
        refit = sm.GLM(y[keep], Xc[keep], family=family).fit(tol=1e-14).params
        np.testing.assert_allclose(
            _statsmodels_order(ours.loo_parameters_[[i]])[0], refit, rtol=0, atol=1e-9
        )
        change = full.params - refit
        cooks = change @ information @ change / 4
        assert ours.cooks_distance_[i] == pytest.approx(cooks, rel=1e-7)


def test_gamma_dispersion_and_studentized_residuals(data):
    """Estimated dispersion: Pearson χ²/(n − p) and GLMInfluence's studentized residuals.

    A non-canonical link: the leverages are the IRLS (Fisher, expected-information) ones of
    McCullagh & Nelder and R's ``hatvalues``, statsmodels' ``observed=False``.
    """
    X, y = data["X"], data["positive"]
    family = sm.families.Gamma(sm.families.links.Log())
    result = sm.GLM(y, sm.add_constant(X), family=family).fit(tol=1e-14)
    ours = RegressionDiagnostics(GammaRegressor(alpha=0.0, **TIGHT), method="one_step").fit(X, y)
    assert ours.dispersion_ == pytest.approx(result.scale, rel=1e-9)
    expected = result.get_hat_matrix_diag(observed=False)
    theirs = GLMInfluence(result, hat_matrix_diag=expected)
    np.testing.assert_allclose(ours.leverage_, expected, atol=ATOL)
    np.testing.assert_allclose(ours.studentized_residuals_, theirs.resid_studentized, atol=1e-9)
    np.testing.assert_allclose(ours.cooks_distance_, theirs.cooks_distance[0], atol=ATOL)


def test_ridge_refits_and_hat_matrix(data):
    """Penalised: exact refits are scikit-learn's; leverages are the ridge hat diagonal."""
    X, y = data["X"], data["y"]
    ours = RegressionDiagnostics(Ridge(alpha=5.0)).fit(X, y)
    for i in (0, 9):
        keep = np.arange(N) != i
        refit = Ridge(alpha=5.0).fit(X[keep], y[keep])
        np.testing.assert_allclose(
            ours.loo_parameters_[i], np.r_[refit.coef_, refit.intercept_], atol=1e-12
        )
    Z = np.column_stack([X, np.ones(N)])
    penalty = np.diag([5.0, 5.0, 5.0, 0.0])
    hat = Z @ np.linalg.solve(Z.T @ Z + penalty, Z.T)
    np.testing.assert_allclose(ours.leverage_, np.diag(hat), atol=1e-13)
    assert ours.effective_parameters_ == pytest.approx(np.trace(hat))


def test_pandas_output_keeps_the_index(data):
    X = pd.DataFrame(data["X"], columns=["a", "b", "c"], index=[f"row{i}" for i in range(N)])
    diagnostics = RegressionDiagnostics(LinearRegression()).set_output(transform="pandas")
    table = diagnostics.fit_transform(X, data["y"])
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == list(X.index)
    assert list(table.columns[-4:]) == ["dfbetas_a", "dfbetas_b", "dfbetas_c", "dfbetas_intercept"]
    np.testing.assert_array_equal(table["cooks_distance"], diagnostics.cooks_distance_)


def test_transform_refuses_other_rows_and_multiclass(data):
    X, y = data["X"], data["y"]
    diagnostics = RegressionDiagnostics(LinearRegression()).fit(X, y)
    with pytest.raises(ValueError, match="describes the rows it was fitted on"):
        diagnostics.transform(X[:10])
    labels = np.arange(N) % 3
    with pytest.raises(ValueError, match="single-output models"):
        RegressionDiagnostics(LogisticRegression()).fit(X, labels)


def test_display(data):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X, y = data["X"], data["y"].copy()
    y[11] += 8.0
    model = LinearRegression().fit(X, y)
    display = RegressionDiagnosticsDisplay.from_estimator(model, X, y)
    assert display.ax_.shape == (2,) and display.figure_ is display.ax_[0].figure
    texts = [text.get_text() for text in display.ax_[0].texts]
    assert "11" in texts  # the outlier is labelled
    assert display.ax_[0].get_title() == "Cook's distance: LinearRegression"
    _, ax = plt.subplots()
    again = display.plot(ax=ax, kind="leverage")
    assert again.ax_ is ax and again.cooks_stems_ is None and len(again.contours_) == 4
    frozen = RegressionDiagnostics(FrozenEstimator(model)).fit(X, y)
    from_fitted = RegressionDiagnosticsDisplay.from_diagnostics(frozen, kind="cooks")
    np.testing.assert_allclose(from_fitted.cooks_distance, display.cooks_distance)
    with pytest.raises(ValueError, match="draws 2 panel"):
        display.plot(ax=ax)
    plt.close("all")


def test_rows_of_leverage_one_are_named(data):
    """A feature only row 4 has: the fit interpolates it, and the warning says so."""
    from sklearn_influence.exceptions import NumericalWarning

    X = np.column_stack([data["X"], np.eye(N)[4]])
    with pytest.warns(NumericalWarning, match=r"leverage 1 \(rows \[4\]\)"):
        diagnostics = RegressionDiagnostics(LinearRegression()).fit(X, data["y"])
    assert diagnostics.leverage_[4] == pytest.approx(1.0)
    assert np.isfinite(np.delete(diagnostics.cooks_distance_, 4)).all()
