"""Adapters: one functional torch view per model family (DESIGN.md §3).

A new model family is one new adapter module plus one entry in ``_FAMILIES``.
"""

from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.metadata_routing import _routing_enabled, process_routing
from sklearn.utils.validation import check_is_fitted

from ._base import ModelAdapter, fit_model
from ._glm import GLM_MODELS, GeneralizedLinearModelAdapter, check_glm_configuration
from ._huber import HUBER_MODELS, HuberAdapter, check_huber_configuration
from ._linear import (
    SUPPORTED_LINEAR_MODELS,
    LinearModelAdapter,
    _check_linear_configuration,
    check_class_weight_targets,
    training_weights,
)
from ._pipeline import pipeline_steps, unwrap
from ._sklearn_mlp import (
    SKLEARN_MLPS,
    SklearnMLPAdapter,
    check_mlp_configuration,
    check_mlp_sample_weight,
    fit_sklearn_mlp,
)
from ._skorch import SKORCH_NETS, SkorchAdapter, check_skorch_configuration, fit_skorch

SUPPORTED_ESTIMATORS_TEXT = (
    "LinearRegression, Ridge, LogisticRegression (L2 or no penalty), "
    "RidgeCV, RidgeClassifier, RidgeClassifierCV, LogisticRegressionCV (L2, refit=True), "
    "PoissonRegressor, GammaRegressor, TweedieRegressor, HuberRegressor, "
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
    (HUBER_MODELS, check_huber_configuration, fit_model, HuberAdapter),
    (SKORCH_NETS, check_skorch_configuration, fit_skorch, SkorchAdapter),
    (SKLEARN_MLPS, check_mlp_configuration, fit_sklearn_mlp, SklearnMLPAdapter),
]


#: the families whose objective takes per-row weights (sample_weight, class_weight)
WEIGHTED_MODELS = (
    *SUPPORTED_LINEAR_MODELS,
    *GLM_MODELS,
    *HUBER_MODELS,
    *SKLEARN_MLPS,
    *SKORCH_NETS,
)

WEIGHTED_MODELS_TEXT = (
    "LinearRegression, Ridge(CV), RidgeClassifier(CV), LogisticRegression(CV), "
    "SGDClassifier, SGDRegressor, PoissonRegressor, GammaRegressor, TweedieRegressor, "
    "HuberRegressor, MLPClassifier, MLPRegressor and skorch's nets"
)


def check_sample_weight_supported(estimator):
    """Refuse ``sample_weight`` for a model family whose weighted objective is not mapped.

    The linear models, GLMs, scikit-learn's MLPs (scikit-learn ≥ 1.7) and skorch nets take
    per-row weights.
    """
    _, model = unwrap(estimator)
    if isinstance(model, SKLEARN_MLPS):
        check_mlp_sample_weight(model, True)
    if isinstance(model, WEIGHTED_MODELS):
        return
    raise ValueError(
        f"sample_weight is not supported for {type(model).__name__}: influence with per-row "
        f"weights is implemented for {WEIGHTED_MODELS_TEXT}. Fit without sample_weight, "
        "or, for integer weights, repeat each row as many times as its weight "
        "(np.repeat(X, weights, axis=0)) — the same objective."
    )


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


#: the curvatures (and CG preconditioners) built from a model's layer structure
FACTORED_CURVATURES = ("kfac", "ekfac")


def has_layer_structure(model):
    """Whether ``model``'s adapter declares its layers (``layer_structure``), which the
    factored curvatures need: the declaration is implementing the method."""
    _, _, adapter_class = _family(model)
    return adapter_class.layer_structure is not ModelAdapter.layer_structure


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


def fit_estimator(estimator, X, y, **fit_params):
    """Fit an (unfrozen) estimator or pipeline; return the final family's fit state.

    Earlier pipeline steps are fit and applied as scikit-learn does; the final model is fit
    by its family's training hook. ``fit_params`` (``sample_weight``) are those of the
    estimator's ``fit``, see :func:`fit_with_weights`.
    """
    return fit_with_weights(estimator, X, y, **fit_params)[0]


def _fit_transform_step(step, X, y, params):
    """Fit one earlier pipeline step with its routed parameters and transform X (as
    scikit-learn's Pipeline does)."""
    if hasattr(step, "fit_transform"):
        return step.fit_transform(X, y, **params.get("fit_transform", {}))
    return step.fit(X, y, **params.get("fit", {})).transform(X, **params.get("transform", {}))


def fit_with_weights(estimator, X, y, **fit_params):
    """Fit an (unfrozen) estimator or pipeline; ``(fit state, the final model's weights)``.

    ``fit_params`` are the parameters of the estimator's ``fit`` (``sample_weight``). A plain
    model gets them. In a pipeline, with scikit-learn's metadata routing enabled, every step
    gets what it requested (``set_fit_request``), as in :meth:`Pipeline.fit`; without it the
    final model gets ``sample_weight`` and the earlier steps are fit unweighted. The second
    value is the ``sample_weight`` the final model was fitted with (None if it got none):
    the weights of the objective the influence describes.
    """
    if isinstance(estimator, Pipeline):
        steps = estimator.steps
        if _routing_enabled():
            routed = process_routing(estimator, "fit", **fit_params)
            for name, step in steps[:-1]:
                if step is not None and step != "passthrough":
                    X = _fit_transform_step(step, X, y, routed[name])
            final_params = dict(routed[steps[-1][0]].get("fit", {}))
        else:
            prefix = estimator[:-1]
            if len(prefix.steps):
                X = prefix.fit_transform(X, y)
            final_params = dict(fit_params)
        return fit_with_weights(steps[-1][1], X, y, **final_params)
    _, fit_hook, _ = _family(estimator)
    return fit_hook(estimator, X, y, **fit_params), fit_params.get("sample_weight")


def make_adapter(estimator, n_train, device, fit_state=None, *, sample_weight=None, y=None):
    """Build the adapter for a fitted ``estimator`` (possibly a pipeline or frozen).

    ``sample_weight`` are the per-row weights the final model was fitted with; with a
    ``class_weight`` the training targets ``y`` are needed too, for the weights it implies
    (:func:`~._linear.training_weights`).
    """
    preprocess, model = unwrap(estimator)
    _, _, adapter_class = _family(model)
    settings = {"preprocess": preprocess, "device": device, "fit_state": fit_state}
    if isinstance(model, WEIGHTED_MODELS):
        if getattr(model, "class_weight", None) is not None and y is None:
            raise ValueError(
                f"{type(model).__name__} has class_weight={model.class_weight!r}, whose "
                "per-sample weights depend on the training targets; pass y."
            )
        weights = training_weights(model, y, sample_weight)
        if weights is not None:
            settings["sample_weight"] = weights
    elif sample_weight is not None:
        check_sample_weight_supported(model)
    return adapter_class(model, n_train, **settings)


__all__ = [
    "FACTORED_CURVATURES",
    "SUPPORTED_ESTIMATORS_TEXT",
    "HuberAdapter",
    "LinearModelAdapter",
    "ModelAdapter",
    "SklearnMLPAdapter",
    "SkorchAdapter",
    "check_class_weight_targets",
    "check_sample_weight_supported",
    "check_supported",
    "fit_estimator",
    "fit_with_weights",
    "has_layer_structure",
    "make_adapter",
    "unwrap",
]
