"""Validation of training and query data shared by every estimator of the package.

A model given as a :class:`~sklearn.pipeline.Pipeline` converts X itself (its steps may need
a DataFrame's columns or non-numeric values), so for it only shapes and the scikit-learn
bookkeeping (``n_features_in_``, ``feature_names_in_``) are checked and X is passed on as
given; any other model gets a validated numeric array.

A skorch net (not inside a pipeline) takes X in the shape its module takes: an array with
more than two dimensions, such as images of shape (n, 1, 8, 8) or token sequences of shape
(n, 8, 8), is checked as an n-d numeric array (finite, one row per target, the same trailing
shape at query time as at fit time). ``n_features_in_`` then follows scikit-learn's rule for
n-d arrays (``X.shape[1]``, as :func:`sklearn.utils.validation.validate_data` would record).
skorch's dict inputs (several named arrays passed to ``forward`` as keywords) are checked
array by array (numeric, finite, one row per target, the same names and trailing shapes at
query time) and kept as separate arrays (:mod:`._adapters._rows`). A
:class:`torch.utils.data.Dataset` X is passed on as it is (its items are loaded a block at a
time by the adapter); its targets are ``y`` or, with ``y=None``, its items' second elements.
"""

from collections.abc import Mapping
from numbers import Real

import numpy as np
from scipy.sparse import issparse
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import (
    _check_feature_names,
    _check_n_features,
    check_array,
    check_X_y,
    validate_data,
)

from ._adapters import (
    FACTORED_CURVATURES,
    SKORCH_NETS,
    check_class_weight_targets,
    check_sample_weight_supported,
    check_supported,
    has_layer_structure,
)
from ._adapters._pipeline import unwrap
from ._adapters._rows import is_dataset, item_target
from ._engine._capabilities import UnsupportedCombinationError
from ._engine._influence_engine import working_memory_bytes


def is_pipeline(model):
    """Whether ``model`` (or the model inside a FrozenEstimator) is a Pipeline."""
    if isinstance(model, FrozenEstimator):
        model = model.estimator
    return isinstance(model, Pipeline)


def _takes_nd_input(model):
    """Whether X goes straight to a skorch net's module (which may take n-d arrays)."""
    if is_pipeline(model):
        return False
    _, final = unwrap(model)
    return isinstance(final, SKORCH_NETS)


def dataset_targets(estimator, X, y):
    """The targets of a data set X: ``y`` (one per item), else the items' second elements
    (read in one pass; the inputs are not kept)."""
    if y is None:
        targets = [item_target(X[i]) for i in range(len(X))]
        if any(target is None for target in targets):
            raise ValueError(
                f"{type(estimator).__name__}: the data set's items are not (input, target) "
                "pairs, so pass the targets as y (one per item)."
            )
        y = targets
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(f"y has {len(y)} rows but the data set has {len(X)} items.")
    return y


def _is_dict(X):
    return isinstance(X, Mapping) and not issparse(X)  # scipy's dok arrays are dicts


def _check_dict(estimator, X, n_rows=None, reset=False):
    """skorch's named inputs as a dict of validated numeric arrays with equal row counts."""
    name = type(estimator).__name__
    if not X:
        raise ValueError(f"{name} got an empty dict X; pass the module's named inputs.")
    arrays = {key: check_array(A, allow_nd=True, ensure_2d=False, estimator=estimator,
                               input_name=f"X[{key!r}]") for key, A in X.items()}  # fmt: skip
    lengths = {key: len(A) for key, A in arrays.items()}
    if len(set(lengths.values())) > 1 or (n_rows is not None and n_rows not in lengths.values()):
        raise ValueError(
            f"The arrays of dict X must have one row per sample ({n_rows or 'equal'} rows), "
            f"got rows {lengths}; pass arrays of the same length."
        )
    shapes = {key: A.shape[1:] for key, A in arrays.items()}
    if reset:
        estimator._sample_shape = shapes
        estimator.__dict__.pop("n_features_in_", None)
    elif getattr(estimator, "_sample_shape", None) != shapes:
        raise ValueError(
            f"X has named inputs of shapes {shapes}, but {name} was fitted on "
            f"{getattr(estimator, '_sample_shape', None)}; pass the same keys and shapes."
        )
    return arrays


def _is_nd(X):
    """Whether X is an array-like with more than two dimensions (n-d inputs of a net)."""
    if hasattr(X, "ndim"):
        return X.ndim > 2
    if isinstance(X, (list, tuple)):
        try:
            return np.asarray(X).ndim > 2
        except ValueError:  # ragged: let check_array explain
            return False
    return False


def _record_sample_shape(estimator, X):
    estimator._sample_shape = tuple(X.shape[1:])


def _check_sample_shape(estimator, X):
    expected = getattr(estimator, "_sample_shape", None)
    if expected is not None and tuple(X.shape[1:]) != expected:
        raise ValueError(
            f"X has samples of shape {tuple(X.shape[1:])}, but {type(estimator).__name__} "
            f"was fitted on samples of shape {expected}; pass data shaped like the training "
            "data."
        )


def check_class_weight_values(model):
    """Refuse a ``class_weight`` dict with a weight that is not finite and positive.

    The same rule as ``sample_weight`` (:func:`validate_sample_weight`), since class weights
    are per-sample weights of the objective: a zero weight takes a class out of it (its
    columns of the influence matrix would be exactly 0), a negative one makes
    self-influence negative.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_influence._validation import check_class_weight_values
    >>> check_class_weight_values(LogisticRegression(class_weight={0: 2.0, 1: 1.0}))
    >>> check_class_weight_values(LogisticRegression(class_weight={0: 0}))
    Traceback (most recent call last):
    ...
    ValueError: LogisticRegression(class_weight={0: 0}) gives class 0 the weight 0; ...
    """
    class_weight = getattr(model, "class_weight", None)
    if not isinstance(class_weight, Mapping):
        return
    for label, weight in class_weight.items():
        valid = isinstance(weight, Real) and not isinstance(weight, bool)
        if valid and np.isfinite(weight) and weight > 0:
            continue
        raise ValueError(
            f"{type(model).__name__}(class_weight={dict(class_weight)!r}) gives class "
            f"{label!r} the weight {weight!r}; class weights are per-sample weights of the "
            "objective and must be finite and positive, as sample_weight must. A weight of 0 "
            "takes the class out of the training objective (drop its rows instead); a "
            "negative weight makes the objective non-convex and self-influence negative. "
            "Pass positive weights."
        )


def check_curvature_supported(estimator):
    """Refuse a factored curvature or preconditioner (K-FAC, EK-FAC) for a model family
    without the layer structure they are built from, before any fitting.

    The adapter declares its layers by implementing ``layer_structure``; scikit-learn's
    MLPs do not (their weights are arrays, not torch layers).
    """
    curvature = getattr(estimator, "curvature", None)
    options = getattr(estimator, "solver_options", None)
    preconditioner = options.get("preconditioner") if isinstance(options, Mapping) else None
    asked = [f"curvature={curvature!r}"] if curvature in FACTORED_CURVATURES else []
    if preconditioner in FACTORED_CURVATURES:
        asked.append(f"solver_options={{'preconditioner': {preconditioner!r}}}")
    if not asked:
        return
    _, model = unwrap(estimator.estimator)
    if has_layer_structure(model):
        return
    raise UnsupportedCombinationError(
        f"{' and '.join(asked)} is not available for {type(model).__name__}: K-FAC and EK-FAC "
        "are built from the torch layers of a network, which this model family does not "
        "expose. Use curvature='gauss_newton' (exact; with solver='cg' and the default "
        "Nyström preconditioner for large networks), or train the same network as a skorch "
        "net, which supports curvature='kfac'/'ekfac'."
    )


def validate_training_data(estimator, X, y):
    """Refuse an unsupported model, then validate (X, y) and record the feature bookkeeping."""
    check_supported(estimator.estimator)
    working_memory_bytes()  # scikit-learn's working_memory setting, before any fitting
    check_class_weight_values(unwrap(estimator.estimator)[1])
    check_curvature_supported(estimator)
    check_class_weight_targets(unwrap(estimator.estimator)[1], y)
    if is_pipeline(estimator.estimator):
        validate_data(estimator, X, y, dtype=None, ensure_all_finite=False, multi_output=True)
        return X, np.asarray(y)
    if _takes_nd_input(estimator.estimator):
        if is_dataset(X):
            estimator.__dict__.pop("_sample_shape", None)
            return X, dataset_targets(estimator, X, y)
        if _is_dict(X):
            return _check_dict(estimator, X, len(y), reset=True), np.asarray(y)
        if _is_nd(X):
            X, y = check_X_y(
                X, y, allow_nd=True, multi_output=True, y_numeric=False, estimator=estimator
            )
            _check_n_features(estimator, X, reset=True)
            _check_feature_names(estimator, X, reset=True)
            _record_sample_shape(estimator, X)
            return X, y
        estimator.__dict__.pop("_sample_shape", None)
    return validate_data(estimator, X, y, multi_output=True, y_numeric=False)


def validate_sample_weight(estimator, sample_weight, n_samples):
    """``sample_weight`` as a float64 array of shape (n_samples,), or None; clear errors.

    Refused before any numerical work: a model family that takes no weights, a weight array
    of the wrong shape or length, non-numeric values, NaN or infinity, and weights ≤ 0 (a
    zero weight says "this row is not in the training set": drop the row instead, so that
    the influence matrix has one column per training point).
    """
    if sample_weight is None:
        return None
    check_sample_weight_supported(estimator.estimator)
    try:
        weights = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"sample_weight must be numeric ({error}); pass one positive number per training row."
        ) from error
    if weights.ndim != 1 or len(weights) != n_samples:
        raise ValueError(
            f"sample_weight has shape {weights.shape} but X has {n_samples} rows; pass a 1-d "
            f"array of shape ({n_samples},), one weight per training row."
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError(
            "sample_weight contains NaN or infinity; pass finite positive weights (drop or "
            "impute those rows)."
        )
    if np.any(weights < 0):
        raise ValueError(
            f"sample_weight contains negative values (the smallest is {weights.min():g}); "
            "weights must be positive."
        )
    if np.any(weights == 0):
        raise ValueError(
            f"sample_weight contains zero weights ({int(np.sum(weights == 0))} rows): a "
            "row of weight zero is not part of the training objective. Drop those rows "
            "from X, y and sample_weight, so that every column of the influence matrix is a "
            "training point."
        )
    return weights


def validate_query_data(estimator, X):
    """Validate query inputs against what ``estimator`` saw at fit time."""
    if is_pipeline(estimator.estimator):
        validate_data(estimator, X, reset=False, dtype=None, ensure_all_finite=False)
        return X
    if _takes_nd_input(estimator.estimator):
        if is_dataset(X):
            return X
        if _is_dict(X) or isinstance(getattr(estimator, "_sample_shape", None), dict):
            return _check_dict(estimator, X if _is_dict(X) else {None: X})
        if _is_nd(X) or getattr(estimator, "_sample_shape", None) is not None:
            X = check_array(X, allow_nd=True, estimator=estimator)
            _check_sample_shape(estimator, X)
            _check_n_features(estimator, X, reset=False)
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
