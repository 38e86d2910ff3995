"""Validation of training and query data shared by every estimator of the package.

A model given as a :class:`~sklearn.pipeline.Pipeline` converts X itself (its steps may need
a DataFrame's columns or non-numeric values), so for it only shapes and the scikit-learn
bookkeeping (``n_features_in_``, ``feature_names_in_``) are checked and X is passed on as
given; any other model gets a validated numeric array.
"""

import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import validate_data

from ._adapters import check_supported


def is_pipeline(model):
    """Whether ``model`` (or the model inside a FrozenEstimator) is a Pipeline."""
    if isinstance(model, FrozenEstimator):
        model = model.estimator
    return isinstance(model, Pipeline)


def validate_training_data(estimator, X, y):
    """Refuse an unsupported model, then validate (X, y) and record the feature bookkeeping."""
    check_supported(estimator.estimator)
    if is_pipeline(estimator.estimator):
        validate_data(estimator, X, y, dtype=None, ensure_all_finite=False, multi_output=True)
        return X, np.asarray(y)
    return validate_data(estimator, X, y, multi_output=True, y_numeric=False)


def validate_query_data(estimator, X):
    """Validate query inputs against what ``estimator`` saw at fit time."""
    if is_pipeline(estimator.estimator):
        validate_data(estimator, X, reset=False, dtype=None, ensure_all_finite=False)
        return X
    return validate_data(estimator, X, reset=False)


def query_tensors(estimator, adapter, X, y, *, name="y_test"):
    """Model inputs of X and, when ``y`` is given, its targets (one per row of X)."""
    inputs = adapter.inputs(validate_query_data(estimator, X))
    if y is None:
        return inputs, None
    y = np.asarray(y)
    if len(y) != len(inputs):
        raise ValueError(
            f"{name} has {len(y)} rows but X has {len(inputs)}; pass one target per row of X."
        )
    return inputs, adapter.targets(y)
