"""Adapters: one functional torch view per model family (DESIGN.md §3).

A new model family is one new adapter module plus one entry in ``_FAMILIES``.
"""

from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from ._base import ModelAdapter, fit_model
from ._glm import GLM_MODELS, GeneralizedLinearModelAdapter, check_glm_configuration
from ._linear import SUPPORTED_LINEAR_MODELS, LinearModelAdapter, _check_linear_configuration
from ._pipeline import pipeline_steps, unwrap
from ._sklearn_mlp import SKLEARN_MLPS, SklearnMLPAdapter, check_mlp_configuration, fit_sklearn_mlp
from ._skorch import SKORCH_NETS, SkorchAdapter, check_skorch_configuration, fit_skorch

SUPPORTED_ESTIMATORS_TEXT = (
    "LinearRegression, Ridge, LogisticRegression (L2 or no penalty), "
    "RidgeCV, RidgeClassifier, RidgeClassifierCV, LogisticRegressionCV (L2, refit=True), "
    "PoissonRegressor, GammaRegressor, TweedieRegressor, "
    "SGDClassifier(loss='log_loss'), SGDRegressor(loss='squared_error'), "
    "skorch's NeuralNetClassifier, NeuralNetBinaryClassifier or NeuralNetRegressor "
    "(with train_split=None), "
    "MLPClassifier or MLPRegressor (without early stopping), "
    "a Pipeline ending in one of these, or a FrozenEstimator around any of them"
)

# (estimator types, check of the (unfitted) configuration, training hook, adapter class).
# The training hook fits the final model and returns what the adapter needs to know about
# that fit (for example a network's initial weights), or None.
_FAMILIES = [
    (SUPPORTED_LINEAR_MODELS, _check_linear_configuration, fit_model, LinearModelAdapter),
    (GLM_MODELS, check_glm_configuration, fit_model, GeneralizedLinearModelAdapter),
    (SKORCH_NETS, check_skorch_configuration, fit_skorch, SkorchAdapter),
    (SKLEARN_MLPS, check_mlp_configuration, fit_sklearn_mlp, SklearnMLPAdapter),
]


def _family(model):
    if isinstance(model, type):
        raise TypeError(
            f"estimator must be an estimator instance, got the class {model.__name__} itself; "
            f"pass an instance, e.g. {model.__name__}() instead of {model.__name__}."
        )
    for types, check, fit_hook, adapter_class in _FAMILIES:
        if isinstance(model, types):
            return check, fit_hook, adapter_class
    raise TypeError(
        f"sklearn_influence does not support {type(model).__name__}. Supported estimators: "
        f"{SUPPORTED_ESTIMATORS_TEXT}."
    )


def check_supported(estimator):
    """Raise a clear error for an unsupported estimator or setting, before any fitting."""
    _, model = unwrap(estimator)
    check, _, _ = _family(model)
    check(model)
    if isinstance(estimator, FrozenEstimator):
        check_frozen_is_fitted(estimator)


def _is_fitted(step):
    """Whether a step of a frozen model is fitted (skorch: initialised with a module)."""
    if isinstance(step, SKORCH_NETS):
        return bool(getattr(step, "initialized_", False)) and hasattr(step, "module_")
    if step is None or step == "passthrough":
        return True
    try:
        check_is_fitted(step)
    except NotFittedError:
        return False
    return True


def check_frozen_is_fitted(estimator):
    """``NotFittedError`` when a frozen model (or any step of a frozen pipeline) is unfitted.

    A ``FrozenEstimator`` is used as it is, never fitted, so an unfitted model inside it
    cannot be explained; this check runs before any numerical work.
    """
    for name, step in pipeline_steps(estimator):
        if _is_fitted(step):
            continue
        where = "" if name is None else f" (pipeline step {name!r})"
        if isinstance(step, SKORCH_NETS):
            raise NotFittedError(
                f"The {type(step).__name__} inside FrozenEstimator{where} is not initialized, "
                "and a FrozenEstimator is never fitted. For pre-trained weights call "
                "net.initialize(), then net.module_.load_state_dict(state_dict), and wrap "
                "that net; or pass the net without FrozenEstimator to let the estimator "
                "train it."
            )
        raise NotFittedError(
            f"The {type(step).__name__} inside FrozenEstimator{where} is not fitted, and a "
            "FrozenEstimator is used as it is, never fitted. Fit the model first "
            f"({type(step).__name__}(...).fit(X, y)) and then freeze it, or pass it without "
            "FrozenEstimator to let the estimator fit a clone."
        )


def fit_estimator(estimator, X, y):
    """Fit an (unfrozen) estimator or pipeline; return the final family's fit state.

    Earlier pipeline steps are fit and applied as scikit-learn does; the final model is fit
    by its family's training hook.
    """
    preprocess_steps, model = (
        (estimator[:-1], estimator.steps[-1][1])
        if isinstance(estimator, Pipeline)
        else (None, estimator)
    )
    if preprocess_steps is not None and len(preprocess_steps.steps):
        X = preprocess_steps.fit_transform(X, y)
    if isinstance(model, Pipeline):
        return fit_estimator(model, X, y)
    _, fit_hook, _ = _family(model)
    return fit_hook(model, X, y)


def make_adapter(estimator, n_train, device, fit_state=None):
    """Build the adapter for a fitted ``estimator`` (possibly a pipeline or frozen)."""
    preprocess, model = unwrap(estimator)
    _, _, adapter_class = _family(model)
    return adapter_class(model, n_train, preprocess=preprocess, device=device, fit_state=fit_state)


__all__ = [
    "SUPPORTED_ESTIMATORS_TEXT",
    "LinearModelAdapter",
    "ModelAdapter",
    "SklearnMLPAdapter",
    "SkorchAdapter",
    "check_supported",
    "fit_estimator",
    "make_adapter",
    "unwrap",
]
