"""Unwrapping of the containers that may hold a supported model.

A :class:`~sklearn.frozen.FrozenEstimator` is used as fitted; in a
:class:`~sklearn.pipeline.Pipeline` the earlier steps only transform X and the influence
lives in the last step's parameters.
"""

from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline


def unwrap(estimator):
    """Return ``(preprocess, model)``: a callable for the fitted earlier steps (or None) and
    the final fitted model, looking through frozen estimators and pipelines."""
    if isinstance(estimator, FrozenEstimator):
        return unwrap(estimator.estimator)
    if isinstance(estimator, Pipeline):
        prefix, last = estimator[:-1], estimator.steps[-1][1]
        inner_preprocess, model = unwrap(last)
        if inner_preprocess is not None:

            def preprocess(X):
                return inner_preprocess(prefix.transform(X))
        elif len(prefix.steps) == 0:
            preprocess = None
        else:
            preprocess = prefix.transform
        return preprocess, model
    return None, estimator


def pipeline_steps(estimator):
    """``(name, step)`` for every step of ``estimator``, looking through frozen estimators and
    (nested) pipelines; ``name`` is None for a model that is not inside a pipeline."""
    if isinstance(estimator, FrozenEstimator):
        return pipeline_steps(estimator.estimator)
    if isinstance(estimator, Pipeline):
        steps = []
        for name, step in estimator.steps:
            inner = pipeline_steps(step)
            steps.extend((name if inner_name is None else inner_name, s) for inner_name, s in inner)
        return steps
    return [(None, estimator)]
