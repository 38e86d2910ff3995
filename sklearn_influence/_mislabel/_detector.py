"""Mislabeled-example detection as an outlier detector over labelled points."""

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._adapters import _family, unwrap
from .._base import (
    INFLUENCE_CONSTRAINTS,
    MEMORY_CONSTRAINTS,
    MODEL_CONSTRAINTS,
    N_JOBS,
    WeightedFitRouterMixin,
)
from .._validation import query_tensors, validate_sample_weight, validate_training_data
from ._out_of_fold import OutOfFoldScore
from ._scores import IN_SAMPLE_SCORES, refuse_non_finite

OUT_OF_FOLD = ("out_of_fold", "out_of_fold_and_loss")
METHODS = ("auto", *OUT_OF_FOLD, "self_influence", "pbrf_self_influence", "loss")


def resolve_method(method, estimator):
    """The method "auto" stands for: "out_of_fold_and_loss" for networks, whose training
    objective is not convex (they memorise flipped labels, so in-sample evidence alone
    fades), "self_influence" for the linear models and GLMs (which cannot memorise them)."""
    if method != "auto":
        return method
    _, _, adapter_class = _family(unwrap(estimator)[1])
    # a class attribute False marks the networks; a GLM's convexity is a property of the
    # instance (its link and power), but it is a linear model either way
    return "out_of_fold_and_loss" if adapter_class.is_convex is False else "self_influence"


def label_quality(scores, log_probabilities, method):
    """Per-row label quality in [0, 1] (1 = clean), decreasing in the suspicion ``scores``.

    For a loss of a probabilistic classifier (``"loss"``, ``"out_of_fold"``) it is the
    probability of the given label, exp(−score); otherwise the fraction of the other training
    rows that are more suspicious (0 for the most suspicious row, 1 for the least).
    """
    if log_probabilities is not None and method in ("loss", "out_of_fold"):
        return np.exp(-scores)
    if log_probabilities is not None and method == "out_of_fold_and_loss":
        return np.exp(-scores / 2)  # the geometric mean of the two probabilities
    more_suspicious = len(scores) - np.searchsorted(np.sort(scores), scores, side="right")
    return more_suspicious / max(len(scores) - 1, 1)


class MislabelDetector(WeightedFitRouterMixin, OutlierMixin, BaseEstimator):
    """Rank training points by how likely their label is wrong, as an outlier detector.

    ``fit(X, y)`` fits the model on the labelled training set and scores every training
    point by a **suspicion** (higher = more likely mislabeled), chosen by ``method``:

    * ``"out_of_fold"``: the loss of row i under a clone of the model fitted without i's
      fold (``cv`` stratified folds); for a classifier −log p₋ₖ(y_i | x_i), which ranks as
      confident learning's (cleanlab's) self-confidence on ``cross_val_predict``
      probabilities. A model that never saw the row predicts what its neighbours say.
    * ``"out_of_fold_and_loss"``: that loss plus the row's in-sample loss under the model
      fitted on all rows, −log(p₋ₖ(y_i) p(y_i)): two independently trained opinions, the one
      that saw the row and the one that did not, which lowers the variance of one fold model.
    * ``"self_influence"``: ∇L_mᵀ(C + λI)⁻¹∇L_m / N, how much the model's loss on point m
      depends on m being in the training set. A mislabeled point contradicts its neighbours,
      so the model can fit it only by bending towards it.
    * ``"pbrf_self_influence"``: the object self-influence approximates to first order.
    * ``"loss"``: the in-sample training loss (a baseline).

    ``"auto"`` (the default) takes ``"out_of_fold_and_loss"`` for networks (skorch nets,
    scikit-learn MLPs) and ``"self_influence"`` for linear models and GLMs. Measured with 10%
    of the labels flipped (``benchmarks/bench_mislabel.py``, README), a network memorises
    flipped labels, so in-sample evidence alone fades and the out-of-fold methods find them
    far better (also better than cleanlab on the same model); a regularised linear model
    cannot memorise them and in-sample evidence works, there ``"loss"`` and
    ``"out_of_fold_and_loss"`` measured as good as or better than ``"self_influence"``.

    As in cleanlab, the fitted detector also gives a per-row ``label_quality_`` in [0, 1], the
    flagged rows ``label_issues_``, the ``suggested_labels_`` with their
    ``suggested_confidence_``, and ``fit`` accepts your own out-of-fold ``pred_probs``.

    **The ranking is of labelled points.** Unlike scikit-learn's outlier detectors, whose
    ``predict(X)`` judges inputs alone, a label is suspicious only together with its input,
    so :meth:`predict`, :meth:`score_samples` and :meth:`decision_function` take ``(X, y)``.
    Their primary use is on the training set itself; :meth:`fit_predict` and the fitted
    ``mislabel_scores_`` and ``ranking_`` give that directly. Other labelled points are
    scored by the self-influence (or loss) they would have as training points, without
    refitting (out of fold: by the loss under the model fitted on all rows, for which they
    are out of sample, counted twice by ``"out_of_fold_and_loss"``); PBRF self-influence is
    defined for training points only. Without ``y`` the model's predicted class is used as
    the label: the score then says how much the prediction relies on the training set, not
    whether a label is wrong.

    **Orientation** follows scikit-learn's outlier detectors: :meth:`score_samples` is
    *higher for more normal points* (it is minus the suspicion), :meth:`decision_function`
    is ``score_samples − offset_`` and is negative for the ``contamination`` fraction of the
    training points with the highest suspicion, which :meth:`predict` labels −1.

    Parameters
    ----------
    estimator : estimator object
        A model supported by :class:`~sklearn_influence.InfluenceFunction` (a scikit-learn
        linear model, a skorch net, a pipeline ending in one, or a ``FrozenEstimator``).
    method : {"auto", "out_of_fold", "out_of_fold_and_loss", "self_influence", \
            "pbrf_self_influence", "loss"}, default="auto"
        The suspicion score (see above). ``"pbrf_self_influence"`` is the change
        L_m(θ_m) − L_m(θˢ) of point m's own loss at the proximal Bregman response θ_m to
        removing m (:class:`~sklearn_influence.PBRF`, which influence estimates approximate
        to first order); it needs one optimisation per training point — exact Newton for
        linear models, a first-order optimiser for networks — and is defined for training
        points only.
    contamination : float in (0, 0.5], default=0.1
        Expected fraction of mislabeled points: the fraction of training points with the
        highest suspicion that :meth:`predict` flags as −1.
    cv : int, cross-validation generator, iterable or None, default=5
        The folds of the out-of-fold methods: an int k is ``StratifiedKFold(k, shuffle=True,
        random_state=random_state)`` for classifiers (``KFold`` for regressors), which needs
        k rows of every class (None: 5); a splitter must partition the rows. Each fold
        refits a clone of ``estimator`` (of a ``FrozenEstimator``'s inner model), seeded
        with ``random_state`` as the full fit is; unused by the other methods.
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
        Parallel workers, through :mod:`sklearn.utils.parallel`, for the fold fits of the
        out-of-fold methods, the PBRF responses and the influence computations that support it.
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
        The model fitted on all training rows.
    method_ : str
        The method used (what ``"auto"`` resolved to).
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
    label_issues_ : ndarray of shape (n_train,), dtype=bool
        True for the flagged training rows: the ``contamination`` fraction with the highest
        suspicion (``fit_predict(X, y) == -1``).
    label_quality_ : ndarray of shape (n_train,)
        Quality of each training label in [0, 1], 1 = clean, ordered as the suspicion (lower
        for every more suspicious row, equal for ties). For ``"out_of_fold"`` and ``"loss"``
        on a probabilistic classifier it is the probability of the given label (out of fold:
        cleanlab's self-confidence), for ``"out_of_fold_and_loss"`` the geometric mean of
        the two probabilities; otherwise the fraction of the other training rows that are
        more suspicious.
    suggested_labels_ : ndarray of shape (n_train,) or None
        The most probable class of each training row (out of fold for the out-of-fold
        methods, else under the fitted model, which may have memorised the given label); None for a
        model without class probabilities (regressors, ``RidgeClassifier``).
    suggested_confidence_ : ndarray of shape (n_train,) or None
        The probability of each suggested label; None as ``suggested_labels_``.
    pred_probs_ : ndarray of shape (n_train, n_classes) or None
        The out-of-fold class probabilities (the out-of-fold methods on a probabilistic
        classifier; the ``pred_probs`` passed to ``fit``, when given), else None.
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
    >>> detector.method_  # "auto": a linear model is ranked in sample
    'self_influence'
    >>> bool(detector.label_issues_.sum() == 60 and 0 <= detector.label_quality_.min())
    True
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
        "cv": ["cv_object"],
        "response_options": [dict, None],
        "n_jobs": N_JOBS,
        "verbose": ["verbose"],
        **MEMORY_CONSTRAINTS,
    }

    def __init__(
        self,
        estimator,
        *,
        method="auto",
        contamination=0.1,
        cv=5,
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
        self.cv = cv
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
    def fit(self, X, y, sample_weight=None, pred_probs=None):
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
        pred_probs : array-like of shape (n_samples, n_classes), default=None
            Your own out-of-fold class probabilities (columns in sorted class order, as
            ``cross_val_predict(model, X, y, method="predict_proba")`` returns them), used
            instead of the fold fits by the out-of-fold methods (``"auto"`` with a network);
            the model is still fitted on all rows for ``estimator_`` and the queries.
            Refused by the other methods, and when not probabilities (shape, finite values in
            [0, 1], rows summing to 1).

        Returns
        -------
        self : MislabelDetector
            The fitted detector.
        """
        X, y = validate_training_data(self, X, y)
        sample_weight = validate_sample_weight(self, sample_weight, len(y))
        self.method_ = resolve_method(self.method, self.estimator)
        if self.method_ in OUT_OF_FOLD:
            in_sample = self.method_ == "out_of_fold_and_loss"
            self._score = OutOfFoldScore(
                self, X, y, sample_weight, pred_probs=pred_probs, add_in_sample=in_sample
            )
        elif pred_probs is not None:
            raise ValueError(
                f"pred_probs are out-of-fold probabilities, which method={self.method_!r} does "
                "not use; pass method='out_of_fold' or 'out_of_fold_and_loss' (what 'auto' "
                "picks for a network) to use them."
            )
        else:
            self._score = IN_SAMPLE_SCORES[self.method_](self, X, y, sample_weight)
        self.estimator_ = self._score.estimator
        self.stationarity_ = self._score.adapter.stationarity
        self.influence_ = getattr(self._score, "influence", None)
        self.response_ = getattr(self._score, "response", None)
        self.mislabel_scores_ = self._score.training_scores()
        refuse_non_finite(self.mislabel_scores_)
        self.ranking_ = np.argsort(-self.mislabel_scores_, kind="stable")
        self.offset_ = float(np.percentile(-self.mislabel_scores_, 100.0 * self.contamination))
        self.label_issues_ = -self.mislabel_scores_ - self.offset_ < 0
        self._set_label_suggestions(self._score.training_log_probabilities())
        return self

    def _set_label_suggestions(self, log_probabilities):
        """label_quality_, suggested_labels_, suggested_confidence_ and pred_probs_."""
        self.label_quality_ = label_quality(self.mislabel_scores_, log_probabilities, self.method_)
        self.suggested_labels_ = self.suggested_confidence_ = self.pred_probs_ = None
        if log_probabilities is None:
            return
        best = np.argmax(log_probabilities, axis=1)
        self.suggested_labels_ = self._score.adapter.classes_[best]
        rows = np.arange(len(best))
        self.suggested_confidence_ = np.exp(log_probabilities[rows, best])
        if self.method_ in OUT_OF_FOLD:
            given = self._score.pred_probs  # the validated pred_probs of fit, as passed
            self.pred_probs_ = np.exp(log_probabilities) if given is None else given

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
        return np.where(self.label_issues_, -1, 1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
