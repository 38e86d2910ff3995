"""Property-based hostile input (hypothesis): shapes, dtypes and magnitudes.

Derandomized, few examples, no deadline: each property is checked on the same cases every
run, in a few seconds.
"""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression, Ridge

from sklearn_influence import InfluenceFunction
from sklearn_influence.exceptions import NumericalWarning

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROPERTY = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def problems(draw):
    """A small regression problem: shape, dtype and feature scale drawn."""
    n_train = draw(st.integers(3, 12))
    n_features = draw(st.integers(1, 4))
    n_queries = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = 10.0 ** draw(st.integers(-3, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n_train + n_queries, n_features)) * scale).astype(dtype)
    y = rng.normal(size=n_train + n_queries)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


@PROPERTY
@given(problems())
def test_matrix_ranking_and_self_influence_are_consistent(problem):
    """Whatever the shape, dtype and scale: a finite float64 matrix of the documented shape,
    rankings equal to a full sort of its rows, self-influence ≥ 0."""
    X, y, X_query, y_query = problem
    influence = InfluenceFunction(Ridge(alpha=1.0), solver="direct").fit(X, y)
    matrix = influence.transform(X_query, y_query)
    assert matrix.shape == (len(X_query), len(X)) and matrix.dtype == np.float64
    assert np.isfinite(matrix).all()
    k = min(3, len(X))
    top = influence.most_influential(X_query, y_query, k=k)
    np.testing.assert_array_equal(top.helpful_values, -np.sort(-matrix, axis=1)[:, :k])
    np.testing.assert_array_equal(top.harmful_values, np.sort(matrix, axis=1)[:, :k])
    rows = np.arange(len(matrix))[:, None]
    np.testing.assert_array_equal(matrix[rows, top.helpful_indices], top.helpful_values)
    self_influence = influence.self_influence()
    assert self_influence.shape == (len(X),) and np.all(self_influence >= 0)


@pytest.fixture(scope="module")
def ridge():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 3))
    return InfluenceFunction(Ridge(), solver="direct").fit(X, X.sum(1)), X


@PROPERTY
@given(
    exponents=st.lists(st.integers(0, 250), min_size=1, max_size=4),
    model=st.sampled_from(["ridge", "logistic"]),
)
def test_magnitudes_give_finite_answers_or_name_the_rows(exponents, model):
    """Queries scaled by 10^0 … 10^250: the matrix is finite, or a NumericalWarning names
    exactly the non-finite rows (a ValueError when no row is finite); a ranking is finite or
    refused naming them — NaN is never ranked."""
    rng = np.random.default_rng(len(exponents))
    X = rng.normal(size=(12, 3))
    y = X.sum(1) if model == "ridge" else (X[:, 0] > 0).astype(int)
    estimator = Ridge() if model == "ridge" else LogisticRegression()
    influence = InfluenceFunction(estimator, solver="direct").fit(X, y)
    queries = X[: len(exponents)] * 10.0 ** np.array(exponents, dtype=float)[:, None]
    targets = y[: len(exponents)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            matrix = influence.transform(queries, targets)
        except ValueError as error:
            assert "Scale the features" in str(error)
            matrix = None
    numerical = [w for w in caught if issubclass(w.category, NumericalWarning)]
    event("refused" if matrix is None else "warned" if numerical else "finite")
    if matrix is not None:
        bad = np.flatnonzero(~np.isfinite(matrix).all(1))
        if len(bad):
            assert len(numerical) == 1
            assert f"query rows [{', '.join(map(str, bad))}]" in str(numerical[0].message)
        else:
            assert not numerical
    try:
        top = influence.most_influential(queries, targets, k=3)
    except ValueError as error:
        assert "query rows" in str(error) and "Scale the features" in str(error)
        assert matrix is None or not np.isfinite(matrix).all()
    else:
        assert np.isfinite(top.helpful_values).all() and np.isfinite(top.harmful_values).all()
        assert matrix is not None and np.isfinite(matrix).all()


@PROPERTY
@given(dtype=st.sampled_from(["int64", "int32", "float32", "float64", "bool", "uint8"]))
def test_query_dtypes_give_the_float64_answer(ridge, dtype):
    """Any numeric dtype of the queries: the answer of their float64 values."""
    influence, X = ridge
    queries = np.round(X[:3] * 2).astype(dtype)
    expected = influence.transform(queries.astype(np.float64))
    np.testing.assert_array_equal(influence.transform(queries), expected)
