"""Tests of MislabelDetector's out-of-fold method and its cleanlab-style outputs: the scores
against hand-written loops of fold refits, the label quality, suggestions and pred_probs."""

import numpy as np
import pytest
import torch
from _nets import TanhMLP
from joblib import parallel_config
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, ShuffleSplit, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from skorch import NeuralNetClassifier

from sklearn_influence import MislabelDetector
from sklearn_influence._adapters import fit_with_weights
from sklearn_influence._torch_utils import seeded_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def noisy_iris():
    X, y = load_iris(return_X_y=True)
    rng = np.random.RandomState(0)
    order = rng.permutation(150)[:90]
    X, y = (X[order] - X.mean(0)) / X.std(0), y[order]
    noisy = y.copy()
    noisy[:9] = (noisy[:9] + rng.randint(1, 3, 9)) % 3
    return X, noisy, y


def tiny_net(**settings):
    return NeuralNetClassifier(
        TanhMLP,
        module__in_features=4,
        module__hidden=6,
        module__out_features=3,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=5e-2,
        max_epochs=20,
        batch_size=32,
        iterator_train__shuffle=True,
        train_split=None,
        verbose=0,
        **settings,
    )


def hand_out_of_fold(model, X, y, splits, seed=None):
    """−log p(y_i) of each row under a clone of ``model`` fitted by hand without its fold:
    ``predict_proba`` of the model fitted by the package's training hook (a skorch net's is
    the package's own seeded loop, as in every fit of the package) in ``seeded_torch(seed)``."""
    probs = np.zeros((len(y), len(np.unique(y))))
    for train, test in splits:
        fold = clone(model)
        with seeded_torch(seed):
            fit_with_weights(fold, X[train], y[train])
        probs[test] = fold.predict_proba(X[test])
    return -np.log(probs[np.arange(len(y)), y]), probs


def test_out_of_fold_scores_equal_a_loop_of_logistic_refits(noisy_iris):
    X, noisy, _ = noisy_iris
    model = LogisticRegression(C=1.0, tol=1e-10, max_iter=5000)
    detector = MislabelDetector(model, method="out_of_fold", cv=4, random_state=3)
    detector.fit(X, noisy)
    splits = StratifiedKFold(4, shuffle=True, random_state=3).split(X, noisy)
    expected, probs = hand_out_of_fold(model, X, noisy, splits)
    np.testing.assert_allclose(detector.mislabel_scores_, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(detector.pred_probs_, probs, rtol=1e-12, atol=1e-14)
    # the full fit serves estimator_ and the queries; training pairs keep their fold score
    np.testing.assert_allclose(
        detector.estimator_.coef_, clone(model).fit(X, noisy).coef_, rtol=1e-12
    )
    np.testing.assert_array_equal(-detector.score_samples(X, noisy), detector.mislabel_scores_)
    other = detector.estimator_.predict_proba(X[:5])[np.arange(5), (noisy[:5] + 1) % 3]
    np.testing.assert_allclose(-detector.score_samples(X[:5], (noisy[:5] + 1) % 3), -np.log(other))


def test_out_of_fold_scores_equal_a_loop_of_network_refits(noisy_iris):
    """Each fold seeded as the full fit is."""
    X, noisy, _ = noisy_iris
    net = tiny_net()
    detector = MislabelDetector(net, method="out_of_fold", cv=3, random_state=0).fit(X, noisy)
    splits = StratifiedKFold(3, shuffle=True, random_state=0).split(X, noisy)
    expected, probs = hand_out_of_fold(net, X, noisy, splits, seed=0)
    # skorch's predict_proba runs in float64 here (the test net's dtype), as does the detector
    np.testing.assert_allclose(detector.mislabel_scores_, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(detector.suggested_confidence_, probs.max(1), rtol=1e-10)


def test_out_of_fold_and_loss_adds_the_in_sample_loss(noisy_iris):
    X, noisy, _ = noisy_iris
    model = LogisticRegression(max_iter=5000)
    both = MislabelDetector(model, method="out_of_fold_and_loss", random_state=0).fit(X, noisy)
    folds = MislabelDetector(model, method="out_of_fold", random_state=0).fit(X, noisy)
    in_sample = -np.log(clone(model).fit(X, noisy).predict_proba(X)[np.arange(90), noisy])
    np.testing.assert_allclose(
        both.mislabel_scores_, folds.mislabel_scores_ + in_sample, rtol=1e-10
    )
    np.testing.assert_array_equal(both.suggested_labels_, folds.suggested_labels_)
    np.testing.assert_array_equal(-both.score_samples(X, noisy), both.mislabel_scores_)
    # a point that is not a training pair: both opinions are the full model's
    other = (noisy[:3] + 1) % 3
    np.testing.assert_allclose(
        -both.score_samples(X[:3], other), -2 * folds.score_samples(X[:3], other), rtol=1e-12
    )


def test_folds_in_parallel_equal_the_serial_folds(noisy_iris):
    X, noisy, _ = noisy_iris
    net = tiny_net()  # method "auto": out_of_fold_and_loss
    serial = MislabelDetector(net, cv=3, random_state=0).fit(X, noisy)
    parallel = MislabelDetector(net, cv=3, random_state=0, n_jobs=2)
    with parallel_config(backend="threading"):  # the package's fits are thread-safe; no spawn
        parallel.fit(X, noisy)
    np.testing.assert_array_equal(parallel.mislabel_scores_, serial.mislabel_scores_)


def test_regression_out_of_fold_is_the_held_out_squared_error():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(40, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=40)
    y[:2] += 4.0
    detector = MislabelDetector(Ridge(alpha=1.0), method="out_of_fold", random_state=0).fit(X, y)
    residual = np.zeros(40)
    for train, test in KFold(5, shuffle=True, random_state=0).split(X):
        residual[test] = Ridge(alpha=1.0).fit(X[train], y[train]).predict(X[test]) - y[test]
    # Ridge's own objective Σ r² + α‖w‖², per row: L = r² (DESIGN.md §2)
    np.testing.assert_allclose(detector.mislabel_scores_, residual**2, rtol=1e-10)
    assert set(detector.ranking_[:2]) == {0, 1}
    assert detector.suggested_labels_ is None and detector.pred_probs_ is None


@pytest.mark.parametrize(
    "method", ["out_of_fold", "out_of_fold_and_loss", "self_influence", "loss"]
)
def test_label_quality_is_in_unit_interval_and_ranks_as_the_scores(noisy_iris, method):
    X, noisy, _ = noisy_iris
    model = LogisticRegression(max_iter=5000)
    detector = MislabelDetector(model, method=method, random_state=0).fit(X, noisy)
    quality, scores = detector.label_quality_, detector.mislabel_scores_
    assert quality.shape == (90,) and np.all((quality >= 0) & (quality <= 1))
    # every pair of rows: more suspicious ⇔ lower quality, equally suspicious ⇔ equal
    more = scores[:, None] > scores[None, :]
    np.testing.assert_array_equal(more, quality[:, None] < quality[None, :])
    np.testing.assert_array_equal(detector.label_issues_, detector.predict(X, noisy) == -1)
    assert detector.label_issues_.sum() == 9
    rows = np.arange(90)
    in_sample = detector.estimator_.predict_proba(X)[rows, noisy]
    if method == "self_influence":  # a rank: most suspicious 0, least suspicious 1
        assert quality[detector.ranking_[0]] == 0 and quality[detector.ranking_[-1]] == 1
    elif method == "loss":  # the probability of the given label
        np.testing.assert_allclose(quality, in_sample, rtol=1e-10)
    elif method == "out_of_fold":  # out of fold: cleanlab's self-confidence
        np.testing.assert_allclose(quality, detector.pred_probs_[rows, noisy], rtol=1e-10)
    else:  # the geometric mean of the out-of-fold and the in-sample probability
        out_of_fold = detector.pred_probs_[rows, noisy]
        np.testing.assert_allclose(quality, np.sqrt(out_of_fold * in_sample), rtol=1e-10)


def test_planted_mislabel_on_a_separable_problem_is_ranked_first():
    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(-3, 1, size=(20, 2)), rng.normal(3, 1, size=(20, 2))]
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    y[7] = 1
    for model in (LogisticRegression(), MLPClassifier((8,), max_iter=2000, random_state=0)):
        detector = MislabelDetector(model, method="out_of_fold", random_state=0).fit(X, y)
        assert detector.ranking_[0] == 7
        assert detector.suggested_labels_[7] == 0 and detector.suggested_confidence_[7] > 0.9
        assert detector.label_quality_[7] < 0.1
    # "auto": out of fold and in sample for a network, self-influence for a linear model
    auto = MislabelDetector(model, random_state=0).fit(X, y)
    assert auto.method_ == "out_of_fold_and_loss" and auto.ranking_[0] == 7
    assert MislabelDetector(LogisticRegression()).fit(X, y).method_ == "self_influence"


def test_own_pred_probs_replace_the_fold_fits(noisy_iris):
    X, noisy, _ = noisy_iris
    model = LogisticRegression(max_iter=5000)
    folds = MislabelDetector(model, method="out_of_fold", random_state=0).fit(X, noisy)
    given = MislabelDetector(FrozenEstimator(folds.estimator_), method="out_of_fold")
    given.fit(X, noisy, pred_probs=folds.pred_probs_)
    np.testing.assert_allclose(given.mislabel_scores_, folds.mislabel_scores_, rtol=1e-12)
    np.testing.assert_array_equal(given.pred_probs_, folds.pred_probs_)
    np.testing.assert_array_equal(given.suggested_labels_, folds.suggested_labels_)
    # a probability 0 of the given label is the most suspicious, not infinite
    probs = np.full((90, 3), 1 / 3)
    probs[4] = [1.0, 0.0, 0.0] if noisy[4] != 0 else [0.0, 1.0, 0.0]
    zero = MislabelDetector(model, method="out_of_fold").fit(X, noisy, pred_probs=probs)
    assert zero.ranking_[0] == 4 and np.isfinite(zero.mislabel_scores_).all()


def test_pred_probs_are_validated(noisy_iris):
    X, noisy, _ = noisy_iris
    detector = MislabelDetector(LogisticRegression(max_iter=5000), method="out_of_fold")
    good = np.full((90, 3), 1 / 3)
    bad_rows = good.copy()
    bad_rows[5] = [0.5, 0.4, 0.3]
    negative = good.copy()
    negative[2] = [1.2, -0.1, -0.1]
    cases = [
        (good[:, :2], r"shape \(90, 2\).*shape \(90, 3\) was expected"),
        (good[:10], r"shape \(10, 3\)"),
        (np.where(np.eye(90, 3) > 0, np.nan, good), "NaN or infinity"),
        (negative, r"outside \[0, 1\]"),
        (bad_rows, "row 5 sums to 1.2"),
        ([["a", "b", "c"]] * 90, "not a numeric array"),
    ]
    for pred_probs, message in cases:
        with pytest.raises(ValueError, match=message):
            detector.fit(X, noisy, pred_probs=pred_probs)
    with pytest.raises(ValueError, match="method='self_influence' does not use"):
        MislabelDetector(LogisticRegression()).fit(X, noisy, pred_probs=good)
    with pytest.raises(ValueError, match="Ridge is not a probabilistic classifier"):
        MislabelDetector(Ridge(), method="out_of_fold").fit(X, noisy, pred_probs=good)


def test_fold_errors_name_the_fix(noisy_iris):
    X, noisy, _ = noisy_iris
    model = LogisticRegression(max_iter=5000)
    rare = noisy.copy()
    rare[:2] = 3  # a fourth class with two rows
    with pytest.raises(ValueError, match="class 3 has 2; lower cv, or pass your own"):
        MislabelDetector(model, method="out_of_fold").fit(X, rare)
    with pytest.raises(ValueError, match="needs a partition"):
        splitter = ShuffleSplit(2, test_size=0.2, random_state=0)
        MislabelDetector(model, method="out_of_fold", cv=splitter).fit(X, noisy)
