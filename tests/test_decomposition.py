"""The five-term decomposition and its display."""

import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_influence import (
    InfluenceDecomposition,
    InfluenceDecompositionDisplay,
    InfluenceFunction,
)
from sklearn_influence._decomposition import OBJECTS, TERMS, row_correlations


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(160, 5, n_informative=4, n_redundant=0, random_state=0)
    return X[:120], y[:120], X[120:], y[120:]


@pytest.fixture(scope="module")
def converged(data):
    X, y, _, _ = data
    model = LogisticRegression(C=0.5, tol=1e-12, max_iter=1000)
    return InfluenceDecomposition(model, damping=1e-3, n_points=12, random_state=0).fit(X, y)


def _relative_gap(parts, first, second):
    """Output distance of two objects relative to how far removal moves the outputs."""
    problem = parts._problem
    warm = torch.as_tensor(parts.parameters_["warm_loo"])
    moved = float((problem.outputs(warm) - problem.reference_outputs).norm(dim=-1).mean())
    return parts.output_distances_[first, second] / moved


def test_table_layout(converged, data):
    _, _, X_test, y_test = data
    table = converged.decompose(X_test, y_test)
    assert list(table.index) == [term for term, _, _ in TERMS]
    assert list(table.columns) == ["from", "to", "output_distance", "pearson", "spearman"]
    assert table.loc["proximity_gap", "from"] == "warm_loo"
    assert (table["output_distance"] >= 0).all()
    assert set(converged.parameters_) == set(OBJECTS)
    assert all(value.shape == (12, 6) for value in converged.parameters_.values())
    agreement = converged.agreement(X_test, y_test)
    assert list(agreement.index) == list(OBJECTS[:-1])
    with pytest.raises(ValueError, match="reference must be one of"):
        converged.agreement(X_test, y_test, reference="pbfr")


def test_dict_without_pandas(converged, data, monkeypatch):
    _, _, X_test, y_test = data
    monkeypatch.setitem(sys.modules, "pandas", None)
    table = converged.decompose(X_test, y_test)
    assert isinstance(table, dict)
    assert table["term"] == [term for term, _, _ in TERMS]
    assert len(table["spearman"]) == 5


def test_converged_convex_model_has_no_warm_start_non_convergence_or_solver_gap(converged, data):
    """For a converged strictly convex model cold and warm LOO coincide, θˢ minimises J so
    the PRF and PBRF objectives coincide, and the direct Gauss-Newton solve *is* the
    linearized PBRF; only the proximity gap and the linearization error remain."""
    _, _, X_test, y_test = data
    parts = converged
    for first, second in [("cold_loo", "warm_loo"), ("prf", "pbrf")]:
        assert _relative_gap(parts, first, second) < 1e-5
    assert _relative_gap(parts, "linearized_pbrf", "influence") < 1e-10
    assert _relative_gap(parts, "warm_loo", "prf") > 1e-3  # λ = 1e-3 > 0
    assert _relative_gap(parts, "pbrf", "linearized_pbrf") > 1e-8
    table = parts.decompose(X_test, y_test)
    assert table.loc["warm_start_gap", "pearson"] > 0.9999
    assert table.loc["non_convergence_gap", "pearson"] > 0.9999
    agreement = parts.agreement(X_test, y_test)
    assert agreement.loc["pbrf", "spearman"] > 0.95


def test_unconverged_model_has_a_non_convergence_gap(data, converged):
    X, y, _, _ = data
    model = LogisticRegression(C=0.5, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        parts = InfluenceDecomposition(model, n_points=12, random_state=0).fit(X, y)
    # θˢ is far from the optimum: the PRF (on J itself) moves towards it, the PBRF does not
    assert _relative_gap(parts, "prf", "pbrf") > 1e3 * _relative_gap(converged, "prf", "pbrf")
    assert _relative_gap(parts, "prf", "pbrf") > 0.1  # comparable to the removal effect


def test_influence_row_is_the_influence_function(converged, data):
    X, y, X_test, y_test = data
    changes = converged.measurement_changes(X_test, y_test)
    reference = InfluenceFunction(
        LogisticRegression(C=0.5, tol=1e-12, max_iter=1000), damping=1e-3
    ).fit(X, y)
    np.testing.assert_allclose(
        changes["influence"],
        reference.transform(X_test, y_test)[:, converged.train_indices_],
        rtol=1e-8,
        atol=1e-14,
    )
    assert changes["pbrf"].shape == (len(X_test), 12)


def test_row_correlations_against_scipy():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.RandomState(0)
    first, second = rng.normal(size=(4, 9)), rng.normal(size=(4, 9))
    second[:, 0] = first[:, 0]  # a tie-free but correlated column
    expected = np.mean([pearsonr(a, b)[0] for a, b in zip(first, second, strict=True)])
    assert row_correlations(first, second) == pytest.approx(expected, rel=1e-12)
    ranks = np.mean([spearmanr(a, b)[0] for a, b in zip(first, second, strict=True)])
    assert row_correlations(first, second, rank=True) == pytest.approx(ranks, rel=1e-12)
    constant = np.ones((2, 9))
    assert np.isnan(row_correlations(constant, second[:2]))


def test_display(converged, data):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    _, _, X_test, y_test = data
    display = InfluenceDecompositionDisplay.from_estimator(converged, X_test, y_test)
    assert len(display.bars_) == 5
    assert display.ax_.get_yscale() == "log"
    assert "LogisticRegression" in display.ax_.get_title()
    display.plot(metric="spearman")
    assert display.ax_.get_yscale() == "linear"
    with pytest.raises(ValueError, match="metric must be one of"):
        display.plot(metric="kendall")
    with pytest.raises(TypeError, match="fitted InfluenceDecomposition"):
        InfluenceDecompositionDisplay.from_estimator(Ridge(), X_test, y_test)


def test_display_without_matplotlib(converged, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    display = InfluenceDecompositionDisplay({"term": []})
    with pytest.raises(ImportError, match="pip install matplotlib"):
        display.plot()


@parametrize_with_checks([InfluenceDecomposition(Ridge(), n_points=2, random_state=0)])
def test_scikit_learn_contract(estimator, check):
    check(estimator)
