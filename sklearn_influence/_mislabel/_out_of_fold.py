"""Out-of-fold suspicion: each training row scored by a model fitted without its fold.

A network fitted on a mislabeled row memorises it, so its in-sample loss (and self-influence)
stays small; a model that never saw the row predicts what its neighbours say. The score of
row i is the loss L(h₋ₖ(x_i), y_i) of the model fitted without i's fold k — for a classifier
with a log loss, −log p₋ₖ(y_i | x_i), which ranks exactly as 1 − p₋ₖ(y_i | x_i), the
"self-confidence" ranking of confident learning (cleanlab) on ``cross_val_predict``
probabilities. The folds are fitted through the package's fit path (seeded, sample weights
routed), in parallel over ``n_jobs``.
"""

from numbers import Integral

import numpy as np
import torch
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import KFold, StratifiedKFold, check_cv
from sklearn.utils import check_random_state
from sklearn.utils.parallel import Parallel, delayed

from .._base import fit_model_and_adapter, routed_fit_params
from .._torch_utils import resolve_device, seeded_torch, to_numpy
from ._scores import (
    class_log_probabilities,
    fit_detector_model,
    has_class_probabilities,
    model_outputs,
    training_positions,
)

#: rows of pred_probs must sum to 1 within this (float32 probabilities do to ~1e-6)
_SUM_TOL = 1e-4


def _take(data, rows):
    return data.iloc[rows] if hasattr(data, "iloc") else np.asarray(data)[rows]


def _fold_model(estimator):
    """The unfitted model each fold refits: a frozen model's own estimator, cloned."""
    return clone(estimator.estimator if isinstance(estimator, FrozenEstimator) else estimator)


def _fit_fold(estimator, X, y, train, test, fit_params, device, seed, batch_size):
    """Held-out outputs h₋ₖ(x) of the model fitted on ``train`` and its classes (or None)."""
    params = {name: value[train] for name, value in fit_params.items()}
    with seeded_torch(seed):
        _, adapter = fit_model_and_adapter(
            estimator, _take(X, train), _take(y, train), device, params
        )
    outputs = model_outputs(adapter, adapter.inputs(_take(X, test)), batch_size)
    return to_numpy(outputs), getattr(adapter, "classes_", None)


def _splits(detector, X, y, is_classifier):
    cv = 5 if detector.cv is None else detector.cv
    if isinstance(cv, Integral):
        kind = StratifiedKFold if is_classifier else KFold
        cv = kind(n_splits=cv, shuffle=True, random_state=detector.random_state)
        if is_classifier:
            _check_class_counts(y, cv.n_splits, detector.method_)
    else:
        cv = check_cv(cv, y, classifier=is_classifier)
    return list(cv.split(X, y))


def _check_class_counts(y, n_splits, method):
    labels, counts = np.unique(y, return_counts=True)
    if counts.min() < n_splits:
        rare = labels.tolist()[int(np.argmin(counts))]
        raise ValueError(
            f"method={method!r} with cv={n_splits} needs at least {n_splits} rows of every "
            f"class so that each fold's model sees every class, but class {rare!r} has "
            f"{counts.min()}; lower cv, or pass your own out-of-fold pred_probs to fit."
        )


def out_of_fold_outputs(detector, X, y, sample_weight, adapter):
    """h₋ₖ(x_i) for every training row i, fitted without its fold; shape (N, n_outputs)."""
    splits = _splits(detector, X, y, adapter.is_classifier)
    fit_params = routed_fit_params(detector, sample_weight)
    seed = detector.random_state
    if seed is not None and not isinstance(seed, Integral):  # one draw, the same for all folds
        seed = int(check_random_state(seed).randint(np.iinfo(np.int32).max))
    device = resolve_device(detector.device)
    model = _fold_model(detector.estimator)
    folds = Parallel(n_jobs=detector.n_jobs)(
        delayed(_fit_fold)(model, X, y, train, test, fit_params, device, seed, detector.batch_size)
        for train, test in splits
    )
    outputs = np.zeros((len(y), adapter.n_outputs))
    covered = np.zeros(len(y), dtype=bool)
    for (_, test), (fold_outputs, classes) in zip(splits, folds, strict=True):
        if classes is not None and not np.array_equal(classes, adapter.classes_):
            raise ValueError(
                f"A fold's model was fitted on {len(classes)} of the {len(adapter.classes_)} "
                "classes (a class missing from its training part): use fewer or stratified "
                "folds, or pass your own out-of-fold pred_probs to fit."
            )
        outputs[test] = fold_outputs
        covered[test] = True
    if not covered.all():
        raise ValueError(
            f"cv left {int((~covered).sum())} training rows out of every held-out part; "
            "method='out_of_fold' needs a partition (KFold, StratifiedKFold, GroupKFold)."
        )
    return torch.as_tensor(outputs, dtype=adapter.dtype, device=adapter.device)


def check_pred_probs(pred_probs, n_rows, classes):
    """``pred_probs`` as a float64 (n_rows, n_classes) array of probabilities, else a
    ValueError naming the problem and the fix."""
    fix = (
        "pass out-of-fold probabilities as sklearn.model_selection.cross_val_predict("
        "model, X, y, method='predict_proba') returns them: one row per training row, one "
        "column per class in sorted order, each row summing to 1."
    )
    try:
        probs = np.asarray(pred_probs, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"pred_probs is not a numeric array ({error}); {fix}") from error
    if probs.shape != (n_rows, len(classes)):
        raise ValueError(
            f"pred_probs has shape {probs.shape} but the training set has {n_rows} rows and "
            f"{len(classes)} classes, so shape ({n_rows}, {len(classes)}) was expected; {fix}"
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"pred_probs contains NaN or infinity; {fix}")
    if probs.min() < 0 or probs.max() > 1:
        raise ValueError(
            f"pred_probs has values outside [0, 1] (from {probs.min():.3g} to "
            f"{probs.max():.3g}), so they are not probabilities; {fix}"
        )
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > _SUM_TOL:
        raise ValueError(
            f"pred_probs rows must sum to 1, but row {worst} sums to {sums[worst]:.6g}; {fix}"
        )
    return probs


class OutOfFoldScore:
    """The out-of-fold loss of each training row; other labelled points are scored by the
    model fitted on all rows (for which they are out of sample too).

    With ``add_in_sample`` (``method="out_of_fold_and_loss"``) the row's in-sample loss
    under the model fitted on all rows is added: −log(p₋ₖ(y_i) p(y_i)), the loss of the
    two models' product of experts — a second, independently trained opinion, which lowers
    the variance of a single fold model's (other points: twice the full model's loss).

    ``pred_probs`` (probabilities of the classes, e.g. from ``cross_val_predict``) replace
    the fold fits: the score is then −log p(y_i) of the given row (floored at the smallest
    positive float, so that a probability 0 is the most suspicious, not infinite).
    """

    def __init__(self, detector, X, y, sample_weight, pred_probs=None, add_in_sample=False):
        self.estimator, self.adapter = fit_detector_model(detector, X, y, sample_weight)
        adapter, self.batch_size = self.adapter, detector.batch_size
        self._training = (adapter.inputs(X), adapter.targets(y))
        if pred_probs is not None:
            if not has_class_probabilities(adapter):
                raise ValueError(
                    f"pred_probs are class probabilities, but {type(self.estimator).__name__} "
                    "is not a probabilistic classifier; fit without pred_probs."
                )
            probs = self.pred_probs = check_pred_probs(pred_probs, len(y), adapter.classes_)
            self.log_probabilities = np.log(np.maximum(probs, np.finfo(np.float64).tiny))
            positions = np.searchsorted(adapter.classes_, np.asarray(y))
            self._training_scores = -self.log_probabilities[np.arange(len(y)), positions]
        else:
            self.pred_probs = None
            outputs = out_of_fold_outputs(detector, X, y, sample_weight, adapter)
            with torch.no_grad():
                self._training_scores = to_numpy(adapter.loss(outputs, self._training[1]))
            self.log_probabilities = class_log_probabilities(adapter, outputs)
        self.in_sample = 1 + add_in_sample  # how often the full model's loss counts
        if add_in_sample:
            self._training_scores = self._training_scores + self._full_loss(*self._training)

    def _full_loss(self, inputs, targets):
        outputs = model_outputs(self.adapter, inputs, self.batch_size)
        with torch.no_grad():
            return to_numpy(self.adapter.loss(outputs, targets))

    def training_scores(self):
        return self._training_scores

    def scores(self, inputs, targets):
        if targets is None:
            outputs = model_outputs(self.adapter, inputs, self.batch_size)
            targets = self.adapter.loss.predicted_targets(outputs)
        scores = self.in_sample * self._full_loss(inputs, targets)
        positions = training_positions(self._training, inputs, targets)
        known = positions >= 0
        scores[known] = self._training_scores[positions[known]]
        return scores

    def training_log_probabilities(self):
        return self.log_probabilities
