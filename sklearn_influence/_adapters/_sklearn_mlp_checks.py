"""Which scikit-learn MLP settings the package accepts, and the clear refusal of the others.

An :class:`~sklearn.neural_network.MLPClassifier` or
:class:`~sklearn.neural_network.MLPRegressor` is accepted when its objective maps exactly
onto the mean form of DESIGN.md §2: it trains on exactly the rows passed to ``fit`` (no
early-stopping hold-out), with a loss that is a closed form of its pre-activation outputs
(squared error or log-loss, not Poisson), on single-label targets.
"""

import numpy as np
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.utils.multiclass import type_of_target

SKLEARN_MLPS = (MLPClassifier, MLPRegressor)

_STOCHASTIC_SOLVERS = ("sgd", "adam")


def _refuse(estimator, problem, fix):
    raise ValueError(f"{type(estimator).__name__}: {problem}. {fix}")


def check_mlp_configuration(estimator):
    """Refuse MLP settings whose objective the package cannot reproduce exactly.

    Parameters
    ----------
    estimator : MLPClassifier or MLPRegressor
        The (fitted or unfitted) network.

    Returns
    -------
    name : str
        The estimator's class name.

    Raises
    ------
    ValueError
        For ``early_stopping=True`` with the ``sgd``/``adam`` solvers (a held-out validation
        split), ``loss='poisson'``, or a fitted multilabel classifier.

    Examples
    --------
    >>> from sklearn.neural_network import MLPClassifier
    >>> from sklearn_influence._adapters._sklearn_mlp_checks import check_mlp_configuration
    >>> check_mlp_configuration(MLPClassifier())
    'MLPClassifier'
    >>> check_mlp_configuration(MLPClassifier(early_stopping=True))
    Traceback (most recent call last):
    ...
    ValueError: MLPClassifier: early_stopping=True holds out...
    """
    params = estimator.get_params(deep=False)
    if params["early_stopping"] and params["solver"] in _STOCHASTIC_SOLVERS:
        _refuse(
            estimator,
            f"early_stopping=True holds out validation_fraction={params['validation_fraction']}"
            " of the data passed to fit (and keeps the weights that scored best on it), so the "
            "network is not trained on the training set the influence estimates refer to",
            "Pass early_stopping=False (fix max_iter instead).",
        )
    if isinstance(estimator, MLPRegressor) and params.get("loss", "squared_error") != (
        "squared_error"
    ):
        _refuse(
            estimator,
            f"loss={params['loss']!r} is not supported (its exponential output layer is not "
            "mapped onto the package's losses)",
            "Use loss='squared_error'.",
        )
    binarizer = getattr(estimator, "_label_binarizer", None)
    if binarizer is not None and getattr(binarizer, "y_type_", None) == "multilabel-indicator":
        _refuse_multilabel(estimator)
    return type(estimator).__name__


def _refuse_multilabel(estimator):
    _refuse(
        estimator,
        "multilabel targets (an indicator matrix y) are not supported",
        "Fit one MLPClassifier per label, or encode the label sets as single classes.",
    )


def check_mlp_targets(estimator, y):
    """Refuse targets whose fit the adapter could not represent, before training."""
    if isinstance(estimator, MLPClassifier) and type_of_target(np.asarray(y)) == (
        "multilabel-indicator"
    ):
        _refuse_multilabel(estimator)
