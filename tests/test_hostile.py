"""Hostile input: every public parameter, degenerate data, numerical extremes, threads.

Each case states what the user must see: the error type and the words of its message, or
the truth the answer must equal. Unusual skorch modules are in ``test_hostile_modules.py``,
the property-based cases in ``test_hostile_properties.py``.
"""

import inspect
import warnings

import numpy as np
import pytest
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    Ridge,
    RidgeClassifier,
    SGDClassifier,
)
from sklearn.neural_network import MLPClassifier
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.class_weight import compute_sample_weight

import sklearn_influence
from sklearn_influence import (
    PBRF,
    InfluenceDecomposition,
    InfluenceFunction,
    InfluenceFunctionCV,
    LeaveOneOut,
    LinearizedPBRF,
    MislabelDetector,
    ProximalResponse,
    RegressionDiagnostics,
)
from sklearn_influence._engine._influence_engine import NonFiniteScores
from sklearn_influence.exceptions import NumericalWarning

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 3))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * RNG.normal(size=16)
LABELS = (X[:, 0] + 0.3 * RNG.normal(size=16) > 0).astype(int)


# -- every public parameter ------------------------------------------------------------------

#: every public estimator, built the cheapest way
MAKERS = {
    InfluenceFunction: lambda: InfluenceFunction(Ridge()),
    InfluenceFunctionCV: lambda: InfluenceFunctionCV(Ridge(), dampings=[1e-3, 1.0]),
    LeaveOneOut: lambda: LeaveOneOut(Ridge(), n_points=2),
    ProximalResponse: lambda: ProximalResponse(Ridge(), n_points=2),
    PBRF: lambda: PBRF(Ridge(), n_points=2),
    LinearizedPBRF: lambda: LinearizedPBRF(Ridge(), n_points=2),
    InfluenceDecomposition: lambda: InfluenceDecomposition(Ridge(), n_points=2),
    MislabelDetector: lambda: MislabelDetector(Ridge(), method="loss"),
    RegressionDiagnostics: lambda: RegressionDiagnostics(LinearRegression()),
}


class Content:
    """A value of the right type whose content is refused (a ``ValueError`` naming it)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"Content({self.value!r})"


#: parameter name → values that every estimator having it must refuse, before any numerical
#: work, with an InvalidParameterError naming the parameter (Content: a ValueError naming
#: it). A new parameter without an entry here fails test_every_parameter_has_hostile_values.
HOSTILE = {
    "estimator": ["Ridge", None],
    "damping": [-1.0, np.nan, np.inf, "small"],
    "dampings": ["small", Content([-1.0]), Content([np.inf]), Content([]), Content(["a"])],
    "cv": ["five", 1],
    "correlation": ["kendall"],
    "curvature": ["fisher", None],
    "solver": ["newton", None],
    "solver_options": ["fast", [("tol", 1e-3)]],
    "curvature_options": ["fast", [("n_samples", 10)]],
    "score_options": ["fast", [("n_iter", 10)]],
    "device": ["tpu", "cuda:x", 0],
    "batch_size": [0, 2.5, "big"],
    "n_score_points": [1, 2.5],
    "score_target": ["exact"],
    "score_damping": [-1.0, np.nan, np.inf],
    "memory": [3, ["folder"]],
    "n_jobs": [0, 1.5, "all"],
    "random_state": [-1, 1.5, "seed"],
    "train_indices": ["abc", Content([-1]), Content([0.5]), Content([10**6]), Content([0, 0])],
    "removed_groups": [
        "abc",
        Content([]),
        Content([[]]),
        Content([[-1]]),
        Content([[0.5]]),
        Content([[10**6]]),
        Content([[0, 0]]),
    ],
    "n_points": [0, 2.5],
    "method": ["newton_x"],
    "optimizer": ["rmsprop_x"],
    "learning_rate": [0, -1.0, np.inf, "fast"],
    "n_iter": [0, 1.5],
    "tol": [-1.0, np.nan, "tight"],
    "optimizer_options": ["fast", [("history", 5)]],
    "verbose": [-1, "loud"],
    "warm_start": ["yes", 2],
    "contamination": [0.0, 0.75, np.nan],
    "response_options": ["fast"],
}


def _parameters(cls):
    return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]


PARAMETER_CASES = [
    pytest.param(cls, name, value, id=f"{cls.__name__}-{name}-{value!r}")
    for cls in MAKERS
    for name in _parameters(cls)
    for value in HOSTILE.get(name, [])
]


def test_every_public_estimator_is_in_the_table():
    public = {
        obj
        for name in sklearn_influence.__all__
        if isinstance(obj := getattr(sklearn_influence, name), type) and hasattr(obj, "get_params")
    }
    assert public == set(MAKERS)


@pytest.mark.parametrize("cls", list(MAKERS), ids=lambda cls: cls.__name__)
def test_every_parameter_has_a_constraint_and_hostile_values(cls):
    """A new parameter without a real constraint, or without hostile values here, fails."""
    constraints = cls._parameter_constraints
    for name in _parameters(cls):
        assert name in constraints, f"{cls.__name__}.{name} has no _parameter_constraints entry"
        assert "no_validation" not in constraints[name], f"{cls.__name__}.{name}"
        assert constraints[name] not in ([object], []), f"{cls.__name__}.{name}"
        assert HOSTILE.get(name), f"add hostile values of {cls.__name__}.{name} to HOSTILE"


@pytest.mark.parametrize("cls, name, value", PARAMETER_CASES)
def test_hostile_parameter_is_refused_naming_it(cls, name, value):
    estimator = MAKERS[cls]()
    content = isinstance(value, Content)
    estimator.set_params(**{name: value.value if content else value})
    expected = ValueError if content else InvalidParameterError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(expected, match=name):
            estimator.fit(X, Y)


@pytest.fixture(scope="module")
def ridge():
    return InfluenceFunction(Ridge(), solver="direct").fit(X, Y)


@pytest.mark.parametrize("value", [np.inf, np.nan, "big", 0, -1.0, True])
def test_working_memory_argument_is_validated(ridge, value):
    with pytest.raises(InvalidParameterError, match="working_memory.*the working_memory argument"):
        next(ridge.transform_chunked(X[:2], working_memory=value))


@pytest.mark.parametrize("value", [np.inf, np.nan, "big", 0, -1.0])
@pytest.mark.parametrize("call", ["transform", "most_influential", "self_influence"])
def test_working_memory_of_the_config_is_validated(ridge, value, call):
    methods = {
        "transform": lambda: ridge.transform(X[:2]),
        "most_influential": lambda: ridge.most_influential(X[:2], k=2),
        "self_influence": ridge.self_influence,
    }
    with sklearn.config_context(working_memory=value):
        with pytest.raises(InvalidParameterError, match=r"working_memory.*config_context"):
            methods[call]()


@pytest.mark.parametrize("value", [np.inf, "big"])
@pytest.mark.parametrize("cls", list(MAKERS), ids=lambda cls: cls.__name__)
def test_working_memory_of_the_config_is_validated_before_fitting(monkeypatch, cls, value):
    _refusing_fit(monkeypatch, Ridge)
    with sklearn.config_context(working_memory=value):
        with pytest.raises(InvalidParameterError, match=r"working_memory.*config_context"):
            MAKERS[cls]().fit(X, Y)


# -- weights wherever they come from ---------------------------------------------------------


def _refusing_fit(monkeypatch, model_class):
    """Make ``model_class.fit`` fail loudly: a refusal must come before any training."""

    def fit(*args, **kwargs):
        raise AssertionError("the model was trained before the input was refused")

    monkeypatch.setattr(model_class, "fit", fit)


@pytest.mark.parametrize("weight", [0, -1, np.nan, np.inf, "heavy"])
@pytest.mark.parametrize(
    "model_class", [LogisticRegression, RidgeClassifier], ids=lambda c: c.__name__
)
def test_class_weight_must_be_finite_and_positive(monkeypatch, weight, model_class):
    _refusing_fit(monkeypatch, model_class)
    model = model_class(class_weight={0: weight, 1: 1.0})
    with pytest.raises(ValueError, match=r"class_weight=.*class 0.*finite and positive"):
        InfluenceFunction(model).fit(X, LABELS)


def test_class_weight_of_sgd_is_checked_too(monkeypatch):
    _refusing_fit(monkeypatch, SGDClassifier)
    model = SGDClassifier(loss="log_loss", class_weight={1: 0.0})
    with pytest.raises(ValueError, match="class 1 the weight 0.0"):
        InfluenceFunction(model).fit(X, LABELS)


@pytest.mark.parametrize("class_weight", [{0: 3.0, 1: 0.5}, "balanced"], ids=["dict", "balanced"])
@pytest.mark.parametrize(
    "make", [lambda **kw: LogisticRegression(**kw), lambda **kw: RidgeClassifier(**kw)],
    ids=["logistic", "ridge_classifier"],
)  # fmt: skip
def test_class_weights_equal_the_implied_sample_weight(class_weight, make):
    implied = compute_sample_weight(class_weight, LABELS)
    weighted = InfluenceFunction(make(class_weight=class_weight), solver="direct")
    weighted.fit(X, LABELS)
    explicit = InfluenceFunction(make(), solver="direct").fit(X, LABELS, sample_weight=implied)
    np.testing.assert_allclose(
        weighted.transform(X[:4], LABELS[:4]), explicit.transform(X[:4], LABELS[:4]),
        rtol=1e-6, atol=1e-12,
    )  # fmt: skip
    self_influence = weighted.self_influence()
    np.testing.assert_allclose(self_influence, explicit.self_influence(), rtol=1e-6, atol=1e-12)
    assert np.all(self_influence >= 0)


# -- factored curvatures on models without layers --------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"curvature": "ekfac"},
        {"curvature": "kfac"},
        {"solver": "cg", "solver_options": {"preconditioner": "ekfac"}},
        {"solver": "cg", "solver_options": {"preconditioner": "kfac"}},
    ],
    ids=["ekfac", "kfac", "cg-ekfac", "cg-kfac"],
)
@pytest.mark.parametrize("owner", [InfluenceFunction, MislabelDetector], ids=lambda c: c.__name__)
def test_sklearn_mlp_with_a_factored_curvature_is_refused_before_training(
    monkeypatch, settings, owner
):
    _refusing_fit(monkeypatch, MLPClassifier)
    estimator = owner(MLPClassifier(hidden_layer_sizes=(3,)), **settings)
    asked = "curvature" if "curvature" in settings else "preconditioner"
    message = rf"{asked}.*not available for MLPClassifier.*gauss_newton"
    with pytest.raises(ValueError, match=message):
        estimator.fit(X, LABELS)


# -- finite or refused -------------------------------------------------------------------------


def _overflowing_queries(rows=(1,)):
    queries = X[:4].copy()
    queries[list(rows)] *= 1e200  # finite features whose squared loss gradient overflows
    return queries


def test_overflowing_query_rows_warn_naming_them_and_the_rest_is_exact(ridge):
    queries = _overflowing_queries()
    with pytest.warns(NumericalWarning, match=r"query rows \[1\] .*Scale the features"):
        matrix = ridge.transform(queries, Y[:4])
    assert not np.isfinite(matrix[1]).any()
    kept = [0, 2, 3]
    np.testing.assert_allclose(matrix[kept], ridge.transform(queries[kept], Y[kept]), rtol=1e-12)


def test_overflowing_queries_are_never_ranked(ridge):
    with pytest.raises(ValueError, match=r"most_influential.*query rows \[1\].*Scale the features"):
        ridge.most_influential(_overflowing_queries(), Y[:4], k=3)


def test_only_overflowing_queries_is_an_error(ridge):
    with pytest.raises(ValueError, match=r"query rows \[0, 1\] \(2 of 2\).*Scale the features"):
        ridge.transform(_overflowing_queries((0, 1))[:2], Y[:2])


def test_chunks_warn_about_overflowing_queries(ridge):
    with pytest.warns(NumericalWarning, match=r"query rows \[1\]"):
        chunks = list(ridge.transform_chunked(_overflowing_queries(), Y[:4]))
    assert np.isfinite(np.hstack(chunks)[[0, 2, 3]]).all()


@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.NumericalWarning")
def test_score_with_overflowing_queries_is_refused(ridge):
    with pytest.raises(ValueError, match=r"removed points.*query rows \[1\]"):
        ridge.score(_overflowing_queries(), Y[:4])


@pytest.mark.parametrize("scale", [1e160, 1e200])
def test_huge_training_features_are_refused_at_fit_naming_the_fix(scale):
    huge = X.copy()
    huge[3] *= scale  # finite, but Ridge's own computations overflow
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="overflowed.*huge features.*StandardScaler"):
            InfluenceFunction(Ridge()).fit(huge, Y)


# Ridge's own solver stops short of the optimum at this scale; the test checks finiteness
@pytest.mark.filterwarnings("ignore::sklearn_influence.exceptions.NotStationaryWarning")
def test_a_huge_training_row_that_the_model_fits_gives_finite_influence():
    huge = X.copy()
    huge[3] *= 1e150
    influence = InfluenceFunction(Ridge()).fit(huge, Y)
    assert np.isfinite(influence.transform(X[:2], Y[:2])).all()
    assert np.all(np.isfinite(influence.self_influence()) & (influence.self_influence() >= 0))


def test_non_finite_training_rows_are_named():
    report = NonFiniteScores(2, 4)
    block = np.array([[1.0, np.nan, 2.0, 0.0], [0.0, np.inf, 1.0, 0.0]])
    report.add_block(slice(0, 2), slice(0, 4), block)
    with pytest.warns(NumericalWarning, match=r"training rows \[1\] \(1 of 4\)"):
        report.check("The influence matrix", refuse=False)
    with pytest.raises(ValueError, match=r"training rows \[1\]"):
        report.check("The influence matrix", refuse=True)


def test_mislabel_scores_that_are_not_finite_are_never_ranked():
    from sklearn_influence._mislabel._scores import refuse_non_finite

    with pytest.raises(ValueError, match=r"MislabelDetector ranks.*training rows \[2\]"):
        refuse_non_finite(np.array([0.1, 0.2, np.nan, 0.3]))


# -- degenerate data ---------------------------------------------------------------------------


def test_constant_feature_gives_the_influence_without_it():
    """At damping 0 a constant column (absorbed by the intercept) changes nothing."""
    with_constant = np.c_[X, np.full(len(X), 5.0)]
    kwargs = {"damping": 0.0, "solver": "direct"}
    got = InfluenceFunction(Ridge(), **kwargs).fit(with_constant, Y)
    truth = InfluenceFunction(Ridge(), **kwargs).fit(X, Y)
    np.testing.assert_allclose(
        got.transform(with_constant[:3], Y[:3]), truth.transform(X[:3], Y[:3]), rtol=1e-4
    )


def test_duplicated_column_gives_the_influence_of_the_rescaled_column():
    """Ridge on [a, b, b] is Ridge on [a, √2·b]: the same influence at damping 0."""
    duplicated = np.c_[X, X[:, 2]]
    rescaled = np.c_[X[:, :2], np.sqrt(2) * X[:, 2]]
    kwargs = {"damping": 0.0, "solver": "direct"}
    got = InfluenceFunction(Ridge(), **kwargs).fit(duplicated, Y).transform(duplicated[:3], Y[:3])
    truth = InfluenceFunction(Ridge(), **kwargs).fit(rescaled, Y).transform(rescaled[:3], Y[:3])
    np.testing.assert_allclose(got, truth, rtol=1e-4)


def test_duplicated_rows_have_equal_columns_and_self_influence():
    doubled = np.r_[X, X[:1]]
    influence = InfluenceFunction(Ridge(), solver="direct").fit(doubled, np.r_[Y, Y[:1]])
    matrix = influence.transform(X[:3], Y[:3])
    np.testing.assert_allclose(matrix[:, 0], matrix[:, -1], rtol=1e-10)
    self_influence = influence.self_influence()
    np.testing.assert_allclose(self_influence[0], self_influence[-1], rtol=1e-10)


def test_constant_target_gives_zero_influence():
    constant = np.full(len(X), 3.0)
    influence = InfluenceFunction(Ridge()).fit(X, constant)
    np.testing.assert_array_equal(influence.transform(X[:3], constant[:3]), 0.0)
    np.testing.assert_array_equal(influence.self_influence(), 0.0)


def test_one_class_is_refused_naming_it():
    with pytest.raises(ValueError, match="one class"):
        InfluenceFunction(LogisticRegression()).fit(X, np.zeros(len(X), dtype=int))


@pytest.mark.parametrize("scale", [1e-150, 1e-8, 1e8, 1e100])
def test_extreme_but_representable_scales_give_finite_rankings(scale):
    influence = InfluenceFunction(Ridge(), solver="direct").fit(X * scale, Y)
    matrix = influence.transform(X[:3] * scale, Y[:3])
    assert np.isfinite(matrix).all()
    top = influence.most_influential(X[:3] * scale, Y[:3], k=3)
    np.testing.assert_array_equal(top.helpful_values, -np.sort(-matrix, axis=1)[:, :3])
    np.testing.assert_array_equal(top.harmful_values, np.sort(matrix, axis=1)[:, :3])


def test_top_k_across_many_blocks_equals_a_full_sort(ridge):
    queries = X[:5]
    with sklearn.config_context(working_memory=1e-4):  # blocks of a few training points
        matrix = ridge.transform(queries, Y[:5])
        top = ridge.most_influential(queries, Y[:5], k=4)
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(top.helpful_indices, order)
    np.testing.assert_array_equal(top.helpful_values, np.take_along_axis(matrix, order, 1))
