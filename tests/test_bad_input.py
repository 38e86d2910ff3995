"""Bad input to InfluenceFunction: each gets a clear message naming the problem and the fix."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import (
    ElasticNet,
    Lasso,
    LogisticRegression,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier

from sklearn_influence import InfluenceFunction


@pytest.fixture
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


@pytest.mark.parametrize(
    "model",
    [SVC(), LinearSVC(), Lasso(), ElasticNet(), DecisionTreeClassifier(), KNeighborsClassifier()],
    ids=lambda model: type(model).__name__,
)
def test_unsupported_estimator_names_it_and_the_supported_ones(iris, model):
    X, y = iris
    with pytest.raises(TypeError, match=rf"does not support {type(model).__name__}.*Supported"):
        InfluenceFunction(model).fit(X, y)
    with pytest.raises(TypeError, match="LogisticRegression"):
        InfluenceFunction(make_pipeline(StandardScaler(), model)).fit(X, y)


@pytest.mark.parametrize(
    "model, match",
    [
        (SGDClassifier(loss="hinge"), r"loss='hinge' is not supported.*loss='log_loss'"),
        (SGDClassifier(loss="log_loss", penalty="l1"), r"penalty='l1'.*penalty='l2'"),
        (SGDRegressor(early_stopping=True), r"early_stopping=True.*early_stopping=False"),
        (LogisticRegression(l1_ratio=0.5, solver="saga"), r"L1 or elastic-net.*l1_ratio=0"),
        (LogisticRegression(solver="liblinear"), r"liblinear.*'lbfgs'"),
        (
            SGDClassifier(loss="log_loss", class_weight="balanced"),
            r"class_weight with more than two classes.*sample_weight",
        ),
        (Ridge(positive=True), r"positive=True.*positive=False"),
    ],
    ids=[
        "hinge",
        "l1_sgd",
        "early_stopping",
        "elastic_net",
        "liblinear",
        "class_weight",
        "positive",
    ],
)
def test_unsupported_settings_are_refused_before_fitting(iris, model, match):
    X, y = iris
    with pytest.raises(ValueError, match=match):
        InfluenceFunction(model).fit(X, y)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_or_inf_in_training_or_query_data(iris, bad_value):
    X, y = iris
    broken = X.copy()
    broken[3, 1] = bad_value
    with pytest.raises(ValueError, match="NaN|infinity"):
        InfluenceFunction(LogisticRegression()).fit(broken, y)
    influence = InfluenceFunction(LogisticRegression()).fit(X, y)
    with pytest.raises(ValueError, match="NaN|infinity"):
        influence.transform(broken)


def test_nan_reaching_the_model_through_a_pipeline(iris):
    """StandardScaler lets NaN through; the adapter catches it with a fix in the message."""
    X, y = iris
    influence = InfluenceFunction(make_pipeline(StandardScaler(), LogisticRegression())).fit(X, y)
    broken = X.copy()
    broken[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity.*SimpleImputer"):
        influence.transform(broken)


def test_wrong_feature_count(iris):
    X, y = iris
    influence = InfluenceFunction(LogisticRegression()).fit(X, y)
    with pytest.raises(ValueError, match="3 features.*expecting 4 features"):
        influence.transform(X[:, :3])


def test_unseen_label_and_wrong_length_of_y_test(iris):
    X, y = iris
    influence = InfluenceFunction(LogisticRegression()).fit(X, y)
    with pytest.raises(ValueError, match=r"labels the model was not trained on: \[7\]"):
        influence.transform(X[:3], [0, 7, 1])
    with pytest.raises(ValueError, match="y_test has 2 rows but X has 3"):
        influence.transform(X[:3], [0, 1])


def test_negative_damping_at_fit_and_after_set_params(iris):
    X, y = iris
    with pytest.raises(ValueError, match=r"'damping' parameter.*range \[0.0, inf\)"):
        InfluenceFunction(LogisticRegression(), damping=-1.0).fit(X, y)
    influence = InfluenceFunction(LogisticRegression()).fit(X, y)
    influence.set_params(damping=-0.5)
    with pytest.raises(ValueError, match=r"'damping' parameter.*range \[0.0, inf\)"):
        influence.transform(X[:2])


def test_changing_curvature_after_fit_asks_for_a_refit(iris):
    X, y = iris
    influence = InfluenceFunction(LogisticRegression()).fit(X, y)
    influence.set_params(curvature="identity")
    with pytest.raises(ValueError, match="curvature changed since fit; call fit again"):
        influence.transform(X[:2])


@pytest.mark.parametrize("method", ["transform", "self_influence", "most_influential", "score"])
def test_unfitted_use(iris, method):
    X, y = iris
    influence = InfluenceFunction(LogisticRegression())
    arguments = {"transform": (X,), "self_influence": (), "most_influential": (X,), "score": (X, y)}
    with pytest.raises(NotFittedError, match="not fitted yet.*fit"):
        getattr(influence, method)(*arguments[method])


def test_bad_k_for_most_influential(iris):
    X, y = iris
    influence = InfluenceFunction(LogisticRegression()).fit(X, y)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        influence.most_influential(X[:2], k=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(iris):
    X, y = iris
    with pytest.raises(ValueError, match="no CUDA GPU is available.*device='cpu'.*'auto'"):
        InfluenceFunction(LogisticRegression(), device="cuda").fit(X, y)


def test_device_auto_falls_back_to_cpu(iris):
    X, y = iris
    influence = InfluenceFunction(LogisticRegression(), device="auto").fit(X, y)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert influence.engine_.theta.device.type == expected
    assert isinstance(influence.transform(X[:2]), np.ndarray)


def test_multi_output_regressor_needs_y_test(iris):
    X, _ = iris
    targets = np.column_stack([X[:, 0], X[:, 1]])
    influence = InfluenceFunction(Ridge()).fit(X[:, 2:], targets)
    with pytest.raises(ValueError, match="single output.*pass y_test"):
        influence.transform(X[:3, 2:])
    assert influence.transform(X[:3, 2:], targets[:3]).shape == (3, len(X))


@pytest.mark.parametrize("device", ["tpu", "mps", "gpu", "cuda:x", "meta"])
def test_unknown_device_names_the_parameter_and_the_accepted_values(iris, device):
    X, y = iris
    with pytest.raises(ValueError, match=r"'device' parameter.*'cpu', 'cuda'.*'auto'"):
        InfluenceFunction(LogisticRegression(), device=device).fit(X, y)
