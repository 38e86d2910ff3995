"""The in-sample suspicion scores: influence self-influence, PBRF self-influence, the loss.

Each is a class built from the detector's settings and the training data; it fits the model
(through the package's fit path) and offers ``training_scores()``, ``scores(inputs,
targets)`` for labelled queries, and ``training_log_probabilities()``, the fitted model's
class log-probabilities on the training rows (None for a model without them), from which the
suggested labels are read.
"""

import numpy as np
import torch
from torch.func import vmap

from .._adapters._losses import BinaryLogLoss, SoftmaxCrossEntropy
from .._base import fit_model_and_adapter, routed_fit_params, warn_if_not_stationary
from .._engine._gradients import batch_slices, measure
from .._engine._influence_engine import NonFiniteScores
from .._influence import InfluenceFunction
from .._response_estimators import PBRF
from .._torch_utils import resolve_device, seeded_torch, to_numpy


def model_outputs(adapter, inputs, batch_size):
    """h(θ, x) of the adapter's fitted parameters on ``inputs``, in row batches (a tensor)."""
    theta = adapter.parameters()
    with torch.no_grad():
        slices = batch_slices(len(inputs), batch_size)
        blocks = [adapter.outputs(theta, inputs[rows]) for rows in slices]
    return torch.cat(blocks) if blocks else inputs.new_zeros((0, adapter.n_outputs))


#: losses that are −log p(y | x) of a probability vector over the classes
_LOG_LOSSES = (SoftmaxCrossEntropy, BinaryLogLoss)


def fit_detector_model(detector, X, y, sample_weight):
    """``(fitted model, adapter)`` of the detector's estimator on the labelled training set,
    seeded by its ``random_state``; warns when a convex model is not at its optimum."""
    fit_params = routed_fit_params(detector, sample_weight)
    with seeded_torch(detector.random_state):
        fitted = fit_model_and_adapter(
            detector.estimator, X, y, resolve_device(detector.device), fit_params
        )
    warn_if_not_stationary(fitted[1], type(detector).__name__, stacklevel=5)
    return fitted


def has_class_probabilities(adapter):
    """Whether the model's loss is −log p(y | x) of a probability vector over its classes."""
    return adapter.is_classifier and isinstance(adapter.loss, _LOG_LOSSES)


def class_log_probabilities(adapter, outputs):
    """log p(c | x) for every class c, shape (n, n_classes), or None for a model whose loss
    is not a log loss (regressors, ``RidgeClassifier``): L(h, e_c) = −log p(c | x)."""
    if not has_class_probabilities(adapter):
        return None
    n_rows = len(outputs)
    with torch.no_grad():
        columns = [
            -adapter.loss(outputs, adapter.targets(np.full(n_rows, label)))
            for label in adapter.classes_
        ]
    return to_numpy(torch.stack(columns, dim=1))


class _InSampleScore:
    """What every in-sample score shares: the fitted model's outputs on the training rows."""

    def training_log_probabilities(self):
        outputs = model_outputs(self.adapter, self._training_inputs, self.batch_size)
        return class_log_probabilities(self.adapter, outputs)


class _InfluenceScore(_InSampleScore):
    """Self-influence ∇L(x, y)ᵀ(C + λI)⁻¹∇L(x, y)/N from a fitted InfluenceFunction."""

    def __init__(self, detector, X, y, sample_weight):
        self.influence = InfluenceFunction(
            detector.estimator,
            damping=detector.damping,
            curvature=detector.curvature,
            solver=detector.solver,
            device=detector.device,
            batch_size=detector.batch_size,
            solver_options=detector.solver_options,
            curvature_options=detector.curvature_options,
            n_jobs=detector.n_jobs,
            memory=detector.memory,
            verbose=detector.verbose,
            random_state=detector.random_state,
        ).fit(X, y, sample_weight=sample_weight)
        self.estimator = self.influence.estimator_
        self.adapter = self.influence.engine_.adapter
        self.damping = detector.damping
        self.batch_size = detector.batch_size
        self._training_inputs = self.adapter.inputs(X)

    def training_scores(self):
        return self.influence.self_influence()

    def scores(self, inputs, targets):
        engine = self.influence.engine_
        return to_numpy(engine.query_self_influence(inputs, targets, self.damping))


class _LossScore(_InSampleScore):
    """The per-example loss L(h(θˢ, x), y) of the fitted model (a baseline)."""

    def __init__(self, detector, X, y, sample_weight):
        self.estimator, self.adapter = fit_detector_model(detector, X, y, sample_weight)
        self.batch_size = detector.batch_size
        self._training_inputs = self.adapter.inputs(X)
        self._training_targets = self.adapter.targets(y)

    def training_scores(self):
        return self.scores(self._training_inputs, self._training_targets)

    def scores(self, inputs, targets):
        outputs = model_outputs(self.adapter, inputs, self.batch_size)
        if targets is None:
            targets = self.adapter.loss.predicted_targets(outputs)
        with torch.no_grad():
            return to_numpy(self.adapter.loss(outputs, targets))


class _PBRFScore(_InSampleScore):
    """PBRF self-influence: L_m(θ_m) − L_m(θˢ) for the PBRF response θ_m to removing m.

    The responses come from :class:`~sklearn_influence.PBRF` with every training point
    removed in turn; to first order the value is the influence self-influence. It is defined
    for training points only, so :meth:`scores` looks the queried pairs up in the training set.
    """

    #: PBRF parameters the detector sets itself
    _OWN = ("estimator", "damping", "device", "n_jobs", "memory", "random_state", "train_indices")

    def __init__(self, detector, X, y, sample_weight):
        options = dict(detector.response_options or {})
        allowed = sorted(set(PBRF(None).get_params()) - set(self._OWN) - {"n_points"})
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"response_options has unknown key(s) {unknown}; the PBRF responses accept "
                f"{allowed} (damping, device, n_jobs, memory and random_state come from the "
                "detector)."
            )
        self.response = PBRF(
            detector.estimator,
            damping=detector.damping,
            train_indices=np.arange(len(y)),
            device=detector.device,
            n_jobs=detector.n_jobs,
            memory=detector.memory,
            random_state=detector.random_state,
            **{"verbose": detector.verbose, **options},
        ).fit(X, y, sample_weight=sample_weight)
        self.estimator = self.response.estimator_
        problem = self.response.problem_
        self.adapter = problem.adapter
        self._training = (problem.inputs, problem.targets)
        self._training_inputs, self.batch_size = self.adapter.inputs(X), detector.batch_size
        thetas = torch.as_tensor(
            self.response.parameters_, dtype=problem.theta.dtype, device=problem.theta.device
        )
        own_loss = vmap(lambda theta, x, t: measure(self.adapter, theta, x[None], t[None])[0])
        with torch.no_grad():
            changed = own_loss(thetas, problem.inputs, problem.targets)
            reference = measure(self.adapter, problem.theta, problem.inputs, problem.targets)
        self._training_scores = to_numpy(changed - reference)

    def training_scores(self):
        return self._training_scores

    def scores(self, inputs, targets):
        if targets is None:
            adapter = self.adapter
            with torch.no_grad():
                outputs = adapter.outputs(adapter.parameters(), inputs)
            targets = adapter.loss.predicted_targets(outputs)
        return self._training_scores[self._training_positions(inputs, targets)]

    def _training_positions(self, inputs, targets):
        """Position in the training set of each (input, target) pair; refuse any other pair."""
        positions = training_positions(self._training, inputs, targets)
        unknown = positions < 0
        if np.any(unknown):
            raise ValueError(
                f"{int(unknown.sum())} of {len(positions)} labelled points are not in the "
                "training set. PBRF self-influence is the response to removing a training "
                "point, so only training points (with their training labels) can be scored; "
                "use method='self_influence', its first-order approximation, for other points."
            )
        return positions


def training_positions(training, inputs, targets):
    """Position in the training set ``training = (inputs, targets)`` of each queried (input,
    target) pair, −1 for a pair that is not a training pair."""

    def rows(pair):  # images and other nd inputs are compared flattened
        return torch.cat([part.reshape(len(part), -1) for part in pair], dim=1).cpu().numpy()

    train, query = rows(training), rows((inputs, targets))
    _, first, inverse = np.unique(
        np.concatenate([train, query]), axis=0, return_index=True, return_inverse=True
    )
    positions = first[inverse.ravel()[len(train) :]]
    return np.where(positions < len(train), positions, -1)


def refuse_non_finite(scores):
    """Non-finite suspicion scores are never ranked: a ValueError names the rows and the fix."""
    report = NonFiniteScores(0, len(scores))
    report.add_training_values(slice(None), np.asarray(scores, dtype=np.float64))
    report.check("The mislabel scores that MislabelDetector ranks", refuse=True)


IN_SAMPLE_SCORES = {
    "self_influence": _InfluenceScore,
    "loss": _LossScore,
    "pbrf_self_influence": _PBRFScore,
}
