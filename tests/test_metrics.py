"""Tests of sklearn_influence.metrics against independent computations.

Truth used here: scipy.stats for correlations, brute-force inspection loops (and an exact
average over tie orders) for the recall curve, scikit-learn's ROC AUC for the area, and
closed-form numpy ridge regressions for the linear datamodeling score.
"""

import itertools
import sys

import joblib
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from skorch import NeuralNetRegressor

from sklearn_influence import InfluenceFunction, MislabelDetector
from sklearn_influence.metrics import (
    MislabelRecallDisplay,
    influence_correlation,
    linear_datamodeling_score,
    mislabel_detection_auc,
    mislabel_detection_recall,
    mislabel_recall_curve,
)
from sklearn_influence.metrics import _removal_masks as removal_masks


# -- influence_correlation -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_influence_correlation_matches_scipy(method):
    rng = np.random.RandomState(0)
    predicted = rng.normal(size=(4, 30))
    actual = predicted + rng.normal(scale=0.7, size=predicted.shape)
    actual[1, :10] = actual[1, 0]  # ties, to exercise average ranks
    reference = stats.pearsonr if method == "pearson" else stats.spearmanr

    flat = influence_correlation(predicted, actual, method=method)
    assert isinstance(flat, float)
    assert flat == pytest.approx(reference(predicted.ravel(), actual.ravel())[0], rel=1e-12)

    per_row = influence_correlation(predicted, actual, method=method, axis=1)
    expected_rows = [reference(p, a)[0] for p, a in zip(predicted, actual, strict=True)]
    np.testing.assert_allclose(per_row, expected_rows, rtol=1e-12)

    per_column = influence_correlation(predicted, actual, method=method, axis=0)
    expected_columns = [reference(p, a)[0] for p, a in zip(predicted.T, actual.T, strict=True)]
    np.testing.assert_allclose(per_column, expected_columns, rtol=1e-10, atol=1e-12)

    one_dimensional = influence_correlation(predicted[0], actual[0], method=method, axis=0)
    assert one_dimensional == pytest.approx(expected_rows[0], rel=1e-12)


def test_influence_correlation_constant_slice_is_nan_with_warning():
    predicted = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    actual = np.array([[1.0, 3.0, 2.0], [0.0, 1.0, 2.0]])
    with pytest.warns(UserWarning, match="1 of 2 slices are constant"):
        result = influence_correlation(predicted, actual, axis=1)
    assert result[0] == pytest.approx(0.5)
    assert np.isnan(result[1])


@pytest.mark.parametrize(
    "predicted, actual, kwargs, match",
    [
        (np.zeros((2, 3)), np.zeros((3, 2)), {}, "same shape"),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), {}, "NaN or infinity"),
        (np.ones((2, 3)), np.ones((2, 3)), {"axis": 2}, "out of range"),
        (np.ones((3, 1)), np.ones((3, 1)), {"axis": 1}, "at least 2 values"),
    ],
)
def test_influence_correlation_rejects_bad_input(predicted, actual, kwargs, match):
    with pytest.raises(ValueError, match=match):
        influence_correlation(predicted, actual, **kwargs)


# -- recall curve, recall, AUC ---------------------------------------------------------------
def brute_force_recall(is_mislabeled, scores):
    """Recall after inspecting k points, k = 0..n, with ties broken in every possible order
    and averaged (exact expected recall under random tie-breaking)."""
    n = len(scores)
    values = np.unique(scores)[::-1]
    groups = [np.flatnonzero(scores == value) for value in values]
    total = np.zeros(n + 1)
    orders = list(itertools.product(*[itertools.permutations(group) for group in groups]))
    for order in orders:
        sequence = np.concatenate([np.array(part) for part in order])
        total += np.r_[0, np.cumsum(is_mislabeled[sequence])] / is_mislabeled.sum()
    return np.arange(n + 1) / n, total / len(orders)


@pytest.mark.parametrize("with_ties", [False, True])
def test_recall_curve_matches_brute_force(with_ties):
    rng = np.random.RandomState(1)
    n = 9
    is_mislabeled = np.zeros(n, dtype=bool)
    is_mislabeled[[1, 4, 6]] = True
    scores = rng.permutation(n).astype(float)
    if with_ties:
        scores = np.array([3, 5, 3, 1, 3, 5, 2, 1, 0], dtype=float)
    fraction, recall = mislabel_recall_curve(is_mislabeled, scores)
    grid, expected = brute_force_recall(is_mislabeled, scores)
    assert fraction[0] == 0 and fraction[-1] == 1 and recall[0] == 0 and recall[-1] == 1
    assert np.all(np.diff(fraction) > 0) and np.all(np.diff(recall) >= 0)
    np.testing.assert_allclose(np.interp(grid, fraction, recall), expected, atol=1e-12)
    if not with_ties:
        np.testing.assert_array_equal(fraction, grid)


def test_recall_at_fraction_matches_counting_the_top():
    rng = np.random.RandomState(2)
    is_mislabeled = rng.rand(200) < 0.1
    scores = rng.normal(size=200) + 2.0 * is_mislabeled
    order = np.argsort(-scores)
    for fraction in (0.05, 0.1, 0.2, 0.5):
        k = round(fraction * 200)
        expected = is_mislabeled[order[:k]].sum() / is_mislabeled.sum()
        assert mislabel_detection_recall(is_mislabeled, scores, fraction=fraction) == expected
    several = mislabel_detection_recall(is_mislabeled, scores, fraction=[0.1, 0.2])
    assert several.shape == (2,)


@pytest.mark.parametrize("with_ties", [False, True])
def test_auc_equals_gain_identity_with_roc_auc(with_ties):
    # area under recall-vs-fraction = p/2 + (1 − p)·ROC AUC for a fraction p of positives
    rng = np.random.RandomState(3)
    is_mislabeled = rng.rand(300) < 0.15
    scores = rng.normal(size=300) + 1.5 * is_mislabeled
    if with_ties:
        scores = np.round(scores)
    p = is_mislabeled.mean()
    expected = p / 2 + (1 - p) * roc_auc_score(is_mislabeled, scores)
    assert mislabel_detection_auc(is_mislabeled, scores) == pytest.approx(expected, rel=1e-12)


def test_auc_of_random_order_and_partial_area():
    is_mislabeled = np.r_[np.ones(10, bool), np.zeros(90, bool)]
    tied = np.zeros(100)  # no information: the expected random curve, the diagonal
    assert mislabel_detection_auc(is_mislabeled, tied) == pytest.approx(0.5)
    assert mislabel_detection_auc(is_mislabeled, tied, max_fraction=0.2) == pytest.approx(0.1)
    perfect = is_mislabeled.astype(float)
    # recall rises linearly to 1 at 10% inspected: area on [0, 0.2] is 0.05 + 0.1
    assert mislabel_detection_auc(is_mislabeled, perfect, max_fraction=0.2) == pytest.approx(
        0.15 / 0.2
    )
    assert mislabel_detection_auc(is_mislabeled, perfect) == pytest.approx(1 - 0.1 / 2)


@pytest.mark.parametrize(
    "is_mislabeled, scores, match",
    [
        ([0, 0, 0], [1.0, 2.0, 3.0], "no mislabeled point"),
        ([0, 2, 1], [1.0, 2.0, 3.0], "must be boolean"),
        ([0, 1], [1.0, 2.0, 3.0], "inconsistent numbers of samples"),
        ([0, 1, 1], [1.0, np.inf, 3.0], "NaN or infinity"),
    ],
)
def test_detection_metrics_reject_bad_input(is_mislabeled, scores, match):
    with pytest.raises(ValueError, match=match):
        mislabel_recall_curve(is_mislabeled, scores)


def test_recall_rejects_fraction_outside_unit_interval():
    with pytest.raises(ValueError, match="fraction"):
        mislabel_detection_recall([0, 1], [0.0, 1.0], fraction=1.5)


# -- linear datamodeling score ---------------------------------------------------------------
def ridge_subset_losses(X, y, X_test, y_test, alpha, masks):
    """Squared test errors of ridge regressions refit in closed form on each subset."""
    losses = []
    for removed in masks:
        Xs, ys = X[~removed], y[~removed]
        x_mean, y_mean = Xs.mean(0), ys.mean()
        centred = Xs - x_mean
        coef = np.linalg.solve(
            centred.T @ centred + alpha * np.eye(X.shape[1]), centred.T @ (ys - y_mean)
        )
        intercept = y_mean - x_mean @ coef
        losses.append((y_test - X_test @ coef - intercept) ** 2)
    return np.array(losses).T  # (n_queries, n_subsets)


def test_lds_matches_closed_form_ridge_retraining():
    X, y = load_diabetes(return_X_y=True)
    X_train, y_train, X_test, y_test = X[:150], y[:150], X[150:170], y[150:170]
    influence = InfluenceFunction(Ridge(alpha=0.5), damping=0.0).fit(X_train, y_train)
    lds, per_query = linear_datamodeling_score(
        influence,
        X_test,
        y_test,
        train_fraction=0.7,
        n_subsets=12,
        random_state=4,
        return_per_query=True,
    )
    masks = removal_masks(150, 0.7, 12, 4)
    assert masks.sum(1).tolist() == [45] * 12
    actual = ridge_subset_losses(X_train, y_train, X_test, y_test, 0.5, masks)
    predicted = influence.transform(X_test, y_test) @ masks.T
    expected = [stats.spearmanr(p, a)[0] for p, a in zip(predicted, actual, strict=True)]
    np.testing.assert_allclose(per_query, expected, atol=1e-12)
    assert lds == pytest.approx(np.mean(expected))
    # summed influence predicts 30% removals of a ridge regression well
    assert lds > 0.8


def test_lds_classifier_matches_scikit_learn_refits_and_is_parallel_invariant():
    X, y = load_iris(return_X_y=True)
    order = np.random.RandomState(0).permutation(150)
    X_train, y_train = X[order[:100]], y[order[:100]]
    X_test, y_test = X[order[100:110]], y[order[100:110]]
    model = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000)
    influence = InfluenceFunction(model, damping=0.0).fit(X_train, y_train)
    kwargs = dict(train_fraction=0.8, n_subsets=8, random_state=5, return_per_query=True)
    lds, per_query = linear_datamodeling_score(influence, X_test, y_test, **kwargs)
    # the subsets are drawn before the retrainings are dispatched: any n_jobs (and backend)
    # gives the same result; threads keep the test free of process start-up costs
    with joblib.parallel_config(backend="threading"):
        _, per_query_parallel = linear_datamodeling_score(
            influence, X_test, y_test, n_jobs=2, **kwargs
        )
    np.testing.assert_array_equal(per_query, per_query_parallel)

    # truth: scikit-learn refits on each subset; LogisticRegression(C) minimises
    # C·Σ_S L_i + ½‖w‖², which has the minimiser of the package's (1/N)Σ_S L_i + ‖w‖²/(2CN)
    masks = removal_masks(100, 0.8, 8, 5)
    actual = []
    for removed in masks:
        kept = ~removed
        refit = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(
            X_train[kept], y_train[kept]
        )
        probabilities = refit.predict_proba(X_test)
        actual.append(-np.log(probabilities[np.arange(len(y_test)), y_test]))
    actual = np.array(actual).T
    predicted = influence.transform(X_test, y_test) @ masks.T
    expected = [stats.spearmanr(p, a)[0] for p, a in zip(predicted, actual, strict=True)]
    np.testing.assert_allclose(per_query, expected, atol=1e-6)
    assert lds == pytest.approx(np.mean(expected), abs=1e-6)


class SmallRegressor(torch.nn.Module):
    """3 → 8 (tanh) → 1."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        )

    def forward(self, x):
        return self.layers(x)


def test_lds_of_a_network_retrains_through_its_adapter():
    """Networks are retrained by their adapter (cold start from θ⁰, seeded data order), so
    the LDS is reproducible and independent of n_jobs."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (np.sin(X[:, 0]) + 0.5 * X[:, 1]).astype(np.float32).reshape(-1, 1)
    net = NeuralNetRegressor(
        SmallRegressor,
        optimizer=torch.optim.Adam,
        lr=0.05,
        max_epochs=20,
        batch_size=60,
        train_split=None,
        verbose=0,
    )
    influence = InfluenceFunction(net, damping=1e-2, random_state=0).fit(X[:50], y[:50])
    kwargs = dict(train_fraction=0.7, n_subsets=3, random_state=0, return_per_query=True)
    lds, per_query = linear_datamodeling_score(influence, X[50:], y[50:], **kwargs)
    with joblib.parallel_config(backend="threading"):
        _, again = linear_datamodeling_score(influence, X[50:], y[50:], n_jobs=2, **kwargs)
    np.testing.assert_array_equal(per_query, again)
    assert per_query.shape == (10,) and np.all(np.abs(per_query) <= 1)
    assert np.isfinite(lds)


def test_lds_scores_given_attributions_and_rejects_bad_input():
    X, y = load_diabetes(return_X_y=True)
    influence = InfluenceFunction(Ridge(alpha=1.0)).fit(X[:80], y[:80])
    kwargs = dict(n_subsets=6, train_fraction=0.8, random_state=0)
    noise = np.random.RandomState(0).normal(size=(5, 80))
    good = linear_datamodeling_score(influence, X[80:85], y[80:85], **kwargs)
    poor = linear_datamodeling_score(influence, X[80:85], y[80:85], attributions=noise, **kwargs)
    assert good > poor
    with pytest.raises(ValueError, match="attributions has shape"):
        linear_datamodeling_score(influence, X[80:85], y[80:85], attributions=noise[:, :5])
    with pytest.raises(ValueError, match="keeps 80 of 80"):
        linear_datamodeling_score(influence, X[80:85], y[80:85], train_fraction=0.999)
    with pytest.raises(TypeError, match=r"fitted sklearn_influence\.InfluenceFunction"):
        linear_datamodeling_score(Ridge(), X[80:85], y[80:85])


# -- display --------------------------------------------------------------------------------
def test_display_from_predictions_draws_the_curve():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    is_mislabeled = np.array([0, 1, 0, 1, 0, 0], bool)
    scores = np.array([0.1, 0.9, 0.3, 0.2, 0.0, 0.05])
    display = MislabelRecallDisplay.from_predictions(
        is_mislabeled, scores, name="loss", plot_chance_level=True
    )
    fraction, recall = mislabel_recall_curve(is_mislabeled, scores)
    x, y = display.line_.get_data()
    np.testing.assert_array_equal(x, fraction)
    np.testing.assert_array_equal(y, recall)
    assert display.auc == mislabel_detection_auc(is_mislabeled, scores)
    assert display.line_.get_label().startswith("loss (AUC = ")
    assert display.chance_level_ is not None
    assert display.ax_.get_xlabel() == "Fraction of the data inspected"
    # plotting again on other axes reuses the computed curve
    _, ax = plt.subplots()
    assert display.plot(ax=ax).ax_ is ax
    plt.close("all")


def test_display_from_estimator_uses_minus_score_samples():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X, y = load_iris(return_X_y=True)
    noisy = y.copy()
    noisy[:10] = (noisy[:10] + 1) % 3
    detector = MislabelDetector(LogisticRegression(max_iter=1000)).fit(X, noisy)
    display = MislabelRecallDisplay.from_estimator(detector, X, noisy, noisy != y)
    # iris has duplicate rows, whose tie may or may not survive rounding: compare on a grid
    grid = np.linspace(0, 1, 151)
    expected = np.interp(grid, *mislabel_recall_curve(noisy != y, detector.mislabel_scores_))
    np.testing.assert_allclose(np.interp(grid, *display.line_.get_data()), expected, atol=1e-12)
    assert display.line_.get_label().startswith("MislabelDetector (self_influence)")
    with pytest.raises(TypeError, match="from_predictions"):
        MislabelRecallDisplay.from_estimator(object(), X, noisy, noisy != y)
    plt.close("all")


def test_display_without_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        MislabelRecallDisplay.from_predictions([0, 1], [0.0, 1.0])
