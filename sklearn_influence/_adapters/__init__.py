"""Adapters: one functional torch view per model family (DESIGN.md §3).

A new model family is one new adapter module plus one entry in ``_FAMILIES``.
"""

from ._base import ModelAdapter
from ._linear import SUPPORTED_LINEAR_MODELS, LinearModelAdapter, _check_linear_configuration
from ._pipeline import unwrap

SUPPORTED_ESTIMATORS_TEXT = (
    "LinearRegression, Ridge, LogisticRegression (L2 or no penalty), "
    "SGDClassifier(loss='log_loss'), SGDRegressor(loss='squared_error'), "
    "a Pipeline ending in one of these, or a FrozenEstimator around any of them"
)

# (estimator types, check of the (unfitted) configuration, adapter class)
_FAMILIES = [
    (SUPPORTED_LINEAR_MODELS, _check_linear_configuration, LinearModelAdapter),
]


def _family(model):
    for types, check, adapter_class in _FAMILIES:
        if isinstance(model, types):
            return check, adapter_class
    raise TypeError(
        f"sklearn_influence does not support {type(model).__name__}. Supported estimators: "
        f"{SUPPORTED_ESTIMATORS_TEXT}."
    )


def check_supported(estimator):
    """Raise a clear error for an unsupported estimator or setting, before any fitting."""
    _, model = unwrap(estimator)
    check, _ = _family(model)
    check(model)


def make_adapter(estimator, n_train, device):
    """Build the adapter for a fitted ``estimator`` (possibly a pipeline or frozen)."""
    preprocess, model = unwrap(estimator)
    _, adapter_class = _family(model)
    return adapter_class(model, n_train, preprocess=preprocess, device=device)


__all__ = [
    "ModelAdapter",
    "LinearModelAdapter",
    "make_adapter",
    "check_supported",
    "unwrap",
    "SUPPORTED_ESTIMATORS_TEXT",
]
