"""Mislabeled-example detection by self-influence, as an outlier detector."""

from numbers import Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch.func import vmap

from ._base import (
    INFLUENCE_CONSTRAINTS,
    MEMORY_CONSTRAINTS,
    MODEL_CONSTRAINTS,
    N_JOBS,
    WeightedFitRouterMixin,
    fit_model_and_adapter,
    routed_fit_params,
    warn_if_not_stationary,
)
from ._engine._gradients import batch_slices, measure
from ._engine._influence_engine import NonFiniteScores
from ._influence import InfluenceFunction
from ._response_estimators import PBRF
from ._torch_utils import resolve_device, seeded_torch, to_numpy
from ._validation import query_tensors, validate_sample_weight, validate_training_data

METHODS = ("self_influence", "pbrf_self_influence", "loss")


class _InfluenceScore:
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

    def training_scores(self):
        return self.influence.self_influence()

    def scores(self, inputs, targets):
        engine = self.influence.engine_
        return to_numpy(engine.query_self_influence(inputs, targets, self.damping))


class _LossScore:
    """The per-example loss L(h(θˢ, x), y) of the fitted model (a baseline)."""

    def __init__(self, detector, X, y, sample_weight):
        device = resolve_device(detector.device)
        fit_params = routed_fit_params(detector, sample_weight)
        with seeded_torch(detector.random_state):
            self.estimator, self.adapter = fit_model_and_adapter(
                detector.estimator, X, y, device, fit_params
            )
        warn_if_not_stationary(self.adapter, type(detector).__name__, stacklevel=4)
        self.batch_size = detector.batch_size
        self._training = (self.adapter.inputs(X), self.adapter.targets(y))

    def training_scores(self):
        return self.scores(*self._training)

    def scores(self, inputs, targets):
        adapter, theta = self.adapter, self.adapter.parameters()
        blocks = []
        with torch.no_grad():
            for rows in batch_slices(len(inputs), self.batch_size):
                outputs = adapter.outputs(theta, inputs[rows])
                block_targets = (
                    adapter.loss.predicted_targets(outputs) if targets is None else targets[rows]
                )
                blocks.append(adapter.loss(outputs, block_targets))
        return to_numpy(torch.cat(blocks)) if blocks else np.zeros(0)


class _PBRFScore:
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
        train = torch.cat(self._training, dim=1).cpu().numpy()
        query = torch.cat([inputs, targets], dim=1).cpu().numpy()
        _, first, inverse = np.unique(
            np.concatenate([train, query]), axis=0, return_index=True, return_inverse=True
        )
        positions = first[inverse.ravel()[len(train) :]]
        unknown = positions >= len(train)
        if np.any(unknown):
            raise ValueError(
                f"{int(unknown.sum())} of {len(query)} labelled points are not in the training "
                "set. PBRF self-influence is the response to removing a training point, so "
                "only training points (with their training labels) can be scored; use "
                "method='self_influence', its first-order approximation, for other points."
            )
        return positions


def _refuse_non_finite(scores):
    """Non-finite suspicion scores are never ranked: a ValueError names the rows and the fix."""
    report = NonFiniteScores(0, len(scores))
    report.add_training_values(slice(None), np.asarray(scores, dtype=np.float64))
    report.check("The mislabel scores that MislabelDetector ranks", refuse=True)


_SCORES = {"self_influence": _InfluenceScore, "loss": _LossScore, "pbrf_self_influence": _PBRFScore}


class MislabelDetector(WeightedFitRouterMixin, OutlierMixin, BaseEstimator):
    """Rank training points by how likely their label is wrong, as an outlier detector.

    ``fit(X, y)`` fits the model on the labelled training set and scores every training
    point by its **self-influence** ∇L_mᵀ(C + λI)⁻¹∇L_m / N: how much the model's loss on
    point m depends on m being in the training set. A mislabeled point contradicts its
    neighbours, so the model can fit it only by bending towards it, which gives it a large
    self-influence. The per-example loss is available as a baseline.

    **The ranking is of labelled points.** Unlike scikit-learn's outlier detectors, whose
    ``predict(X)`` judges inputs alone, a label is suspicious only together with its input,
    so :meth:`predict`, :meth:`score_samples` and :meth:`decision_function` take ``(X, y)``.
    Their primary use is on the training set itself; :meth:`fit_predict` and the fitted
    ``mislabel_scores_`` and ``ranking_`` give that directly. Other labelled points are
    scored by the self-influence (or loss) they would have as training points, without
    refitting; PBRF self-influence is defined for training points only. Without ``y`` the
    model's predicted class is used as the label: the score then says how much the
    prediction relies on the training set, not whether a label is wrong.

    **Orientation** follows scikit-learn's outlier detectors: :meth:`score_samples` is
    *higher for more normal points* (it is minus the suspicion), :meth:`decision_function`
    is ``score_samples − offset_`` and is negative for the ``contamination`` fraction of the
    training points with the highest suspicion, which :meth:`predict` labels −1.

    Parameters
    ----------
    estimator : estimator object
        A model supported by :class:`~sklearn_influence.InfluenceFunction` (a scikit-learn
        linear model, a skorch net, a pipeline ending in one, or a ``FrozenEstimator``).
    method : {"self_influence", "pbrf_self_influence", "loss"}, default="self_influence"
        The suspicion score. ``"self_influence"``: the influence estimate above.
        ``"pbrf_self_influence"``: the change L_m(θ_m) − L_m(θˢ) of point m's own loss
        at the proximal Bregman response θ_m to removing m (:class:`~sklearn_influence.PBRF`,
        the object influence estimates approximate to first order). It needs one
        optimisation per training point — exact Newton for linear models, a first-order
        optimiser for networks — and is defined for training points only.
        ``"loss"``: the training loss of each point (a baseline).
    contamination : float in (0, 0.5], default=0.1
        Expected fraction of mislabeled points: the fraction of training points with the
        highest suspicion that :meth:`predict` flags as −1.
    damping : float, default=1e-3
        The damping λ ≥ 0 added to the curvature (and the proximity weight of the PBRF).
    curvature : {"gauss_newton", "hessian", "identity", "kfac", "ekfac"}, \
            default="gauss_newton"
        Curvature of the influence estimate, see :class:`InfluenceFunction`.
    solver : str, default="auto"
        Solver of the influence estimate, see :class:`InfluenceFunction`.
    device : {"cpu", "cuda", "auto"} or str, default="cpu"
        Where the heavy math runs.
    batch_size : int, default=512
        Rows per vectorised batch.
    solver_options : dict, default=None
        Extra settings of the solver.
    curvature_options : dict, default=None
        Settings of the curvature, see :class:`InfluenceFunction`.
    response_options : dict, default=None
        Settings of the PBRF responses (``method="pbrf_self_influence"`` only), passed to
        :class:`~sklearn_influence.PBRF`: ``method``, ``optimizer``, ``learning_rate``,
        ``n_iter``, ``batch_size``, ``tol``, ``optimizer_options``, ``verbose``.
    n_jobs : int, default=None
        Parallel workers, through :mod:`sklearn.utils.parallel`, for the PBRF responses and
        the influence computations that support it.
    memory : str or object with the joblib.Memory interface, default=None
        Caches the influence fit, and saves the finished chunks of the PBRF responses
        (``method="pbrf_self_influence"``) as they complete: an interrupted ``fit`` started
        again with the same ``memory`` computes only what was not finished, with a bitwise
        identical result. None: nothing is saved.
    verbose : int, default=0
        Progress of long work, as in :class:`InfluenceFunction`: 0 silent, 1 a line per stage
        with its time, 2 one per block (with the time left), 3 a tqdm bar.
    random_state : int, RandomState instance or None, default=None
        Seeds model fitting and any stochastic solver inside a forked torch RNG.

    Attributes
    ----------
    estimator_ : estimator object
        The fitted model.
    influence_ : InfluenceFunction or None
        The fitted influence transformer (``method="self_influence"``), else None.
    response_ : PBRF or None
        The fitted PBRF responses to removing each training point
        (``method="pbrf_self_influence"``; see its ``converged_``), else None.
    stationarity_ : float
        Relative gradient norm of the training objective at the fitted parameters (0 at an
        optimum; see :attr:`InfluenceFunction.stationarity_
        <sklearn_influence.InfluenceFunction>`); a convex model above 1e-2 raises a
        ``ConvergenceWarning`` at ``fit``.
    mislabel_scores_ : ndarray of shape (n_train,)
        Suspicion of each training point (higher = more likely mislabeled); equal to
        ``-score_samples(X_train, y_train)``.
    ranking_ : ndarray of shape (n_train,)
        Training-point indices from the most to the least suspicious (ties keep their order).
    offset_ : float
        The ``contamination`` quantile of the training ``score_samples``; the threshold of
        :meth:`decision_function`.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``, when X has string column names.

    See Also
    --------
    sklearn_influence.InfluenceFunction : Influence of training points on any query.
    sklearn_influence.metrics.mislabel_recall_curve : Evaluate the ranking when the
        corruption is known.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn_influence import MislabelDetector
    >>> from sklearn_influence.datasets import load_digits_split
    >>> from sklearn_influence.metrics import mislabel_detection_recall
    >>> data = load_digits_split(n_train=600, flip_fraction=0.1, random_state=0)
    >>> detector = MislabelDetector(LogisticRegression(max_iter=1000), contamination=0.1)
    >>> labels = detector.fit_predict(data.X_train, data.y_train)
    >>> int((labels == -1).sum())
    60
    >>> is_flipped = data.y_train != data.y_train_clean
    >>> recall = mislabel_detection_recall(is_flipped, detector.mislabel_scores_, fraction=0.2)
    >>> bool(recall > 0.9)
    True
    """

    _parameter_constraints = {
        **MODEL_CONSTRAINTS,
        **INFLUENCE_CONSTRAINTS,
        "method": [StrOptions(set(METHODS))],
        "contamination": [Interval(Real, 0, 0.5, closed="right")],
        "response_options": [dict, None],
        "n_jobs": N_JOBS,
        "verbose": ["verbose"],
        **MEMORY_CONSTRAINTS,
    }

    def __init__(
        self,
        estimator,
        *,
        method="self_influence",
        contamination=0.1,
        damping=1e-3,
        curvature="gauss_newton",
        solver="auto",
        device="cpu",
        batch_size=512,
        solver_options=None,
        curvature_options=None,
        response_options=None,
        n_jobs=None,
        memory=None,
        verbose=0,
        random_state=None,
    ):
        self.estimator = estimator
        self.method = method
        self.contamination = contamination
        self.damping = damping
        self.curvature = curvature
        self.solver = solver
        self.device = device
        self.batch_size = batch_size
        self.solver_options = solver_options
        self.curvature_options = curvature_options
        self.response_options = response_options
        self.n_jobs = n_jobs
        self.memory = memory
        self.verbose = verbose
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None):
        """Fit the model on the labelled training set and score every training point.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.
        y : array-like of shape (n_samples,)
            Training labels, possibly wrong — those are what the detector looks for.
        sample_weight : array-like of shape (n_samples,), default=None
            Positive per-row weights of the model's objective (linear models and GLMs), as
            in :meth:`InfluenceFunction.fit`: removing a point removes all of its weight.

        Returns
        -------
        self : MislabelDetector
            The fitted detector.
        """
        X, y = validate_training_data(self, X, y)
        sample_weight = validate_sample_weight(self, sample_weight, len(y))
        self._score = _SCORES[self.method](self, X, y, sample_weight)
        self.estimator_ = self._score.estimator
        self.stationarity_ = self._score.adapter.stationarity
        self.influence_ = getattr(self._score, "influence", None)
        self.response_ = getattr(self._score, "response", None)
        self.mislabel_scores_ = self._score.training_scores()
        _refuse_non_finite(self.mislabel_scores_)
        self.ranking_ = np.argsort(-self.mislabel_scores_, kind="stable")
        self.offset_ = float(np.percentile(-self.mislabel_scores_, 100.0 * self.contamination))
        return self

    def _query_tensors(self, X, y):
        check_is_fitted(self, "_score")
        return query_tensors(self, self._score.adapter, X, y, name="y")

    def score_samples(self, X, y=None):
        """Minus the suspicion of each labelled point: higher means more normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs, usually the training inputs.
        y : array-like of shape (n_samples,), default=None
            Their labels. None uses the model's predicted labels (see the class docstring).

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            ``-suspicion``; for the training set, ``-mislabel_scores_``.
        """
        inputs, targets = self._query_tensors(X, y)
        return -self._score.scores(inputs, targets)

    def decision_function(self, X, y=None):
        """``score_samples(X, y) − offset_``: negative for suspected mislabeled points.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs, usually the training inputs.
        y : array-like of shape (n_samples,), default=None
            Their labels. None uses the model's predicted labels.

        Returns
        -------
        decision : ndarray of shape (n_samples,)
            Negative for points more suspicious than the ``contamination`` quantile of the
            training set.
        """
        return self.score_samples(X, y) - self.offset_

    def predict(self, X, y=None):
        """−1 for suspected mislabeled points, 1 otherwise.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs, usually the training inputs.
        y : array-like of shape (n_samples,), default=None
            Their labels. None uses the model's predicted labels.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            −1 where ``decision_function`` is negative (suspected mislabeled), else 1.
        """
        return np.where(self.decision_function(X, y) < 0, -1, 1)

    def fit_predict(self, X, y):
        """Fit, then label the training points (−1: suspected mislabeled).

        Uses the scores computed during ``fit``; equal to ``fit(X, y).predict(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.
        y : array-like of shape (n_samples,)
            Training labels, possibly wrong.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            −1 for the ``contamination`` fraction of most suspicious training points, else 1.
        """
        self.fit(X, y)
        return np.where(-self.mislabel_scores_ - self.offset_ < 0, -1, 1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
