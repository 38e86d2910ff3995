"""``memory`` caches the fit, gradients, factorization and retraining targets across clones."""

import numpy as np
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.preprocessing import StandardScaler

from sklearn_influence import InfluenceFunction


class CountingLogisticRegression(LogisticRegression):
    """LogisticRegression that counts its fits in a class attribute."""

    n_fits = 0

    def fit(self, X, y, sample_weight=None):
        type(self).n_fits += 1
        return super().fit(X, y, sample_weight=sample_weight)


def _search(memory):
    X, y = load_wine(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    search = GridSearchCV(
        InfluenceFunction(
            CountingLogisticRegression(C=0.5, max_iter=2000),
            n_score_points=8,
            random_state=0,
            memory=memory,
        ),
        {"damping": [1e-6, 1e-4, 1e-2, 1.0]},
        cv=KFold(2, shuffle=True, random_state=0),
        refit=False,
    )
    return search.fit(X, y)


def test_memory_shares_fits_across_dampings_and_changes_no_result(tmp_path):
    CountingLogisticRegression.n_fits = 0
    uncached = _search(memory=None)
    assert CountingLogisticRegression.n_fits == 8  # 2 folds × 4 dampings

    CountingLogisticRegression.n_fits = 0
    cached = _search(memory=str(tmp_path))
    assert CountingLogisticRegression.n_fits == 2  # one fit per fold
    np.testing.assert_allclose(
        cached.cv_results_["mean_test_score"], uncached.cv_results_["mean_test_score"], rtol=1e-10
    )


def test_memory_computes_the_retraining_targets_once_per_fold(tmp_path, monkeypatch):
    from sklearn_influence._responses import _removal

    calls = []
    original = _removal.removal_parameters

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_removal, "removal_parameters", counting)
    _search(memory=None)
    assert len(calls) == 8  # every damping of every fold retrains
    calls.clear()
    _search(memory=str(tmp_path))
    assert len(calls) == 2  # once per fold, shared by the 4 dampings
    calls.clear()
    _search(memory=str(tmp_path))
    assert len(calls) == 0  # a second search reuses everything
