"""Damping selection with one factorization per fold, in the spirit of ``RidgeCV``."""

import numpy as np
from sklearn.model_selection import check_cv
from sklearn.utils._param_validation import InvalidParameterError, StrOptions

from ._base import correlation, sample_training_points
from ._influence import UNDEFINED_AGREEMENT, InfluenceFunction


def _take(data, rows):
    return data.iloc[rows] if hasattr(data, "iloc") else np.asarray(data)[rows]


class InfluenceFunctionCV(InfluenceFunction):
    """Influence function whose damping is selected by agreement with retraining.

    For each damping in ``dampings`` the influence estimates are compared with actual
    retraining (``score_target``) exactly as :meth:`InfluenceFunction.score` does, and the
    best value becomes ``damping_``. The model fit, gradients, factorization and retraining
    targets are computed once per fold and shared by every damping value; only the cheap
    products are repeated.

    With ``cv=None`` the queries are the training points themselves (one fit, one
    factorization). With ``cv`` an int or splitter, each fold's influence is fit on its
    training part and scored on its held-out part, then the model is fit on all data.

    Parameters
    ----------
    estimator : estimator object
        See :class:`InfluenceFunction`.
    dampings : array-like of shape (n_dampings,), default=np.logspace(-8, 0, 9)
        Candidate dampings (≥ 0).
    cv : int, cross-validation generator, iterable or None, default=None
        How to split the training data for scoring (see above).
    correlation : {"pearson", "spearman"}, default="pearson"
        Agreement measure between predicted and actual loss changes.
    curvature, solver, device, batch_size, solver_options, curvature_options :
        As in :class:`InfluenceFunction`.
    n_score_points, score_target, score_damping, memory, n_jobs, verbose, random_state :
        As in :class:`InfluenceFunction`.

    Attributes
    ----------
    damping_ : float
        The selected damping, used by ``transform`` and ``self_influence``.
    cv_scores_ : ndarray of shape (n_dampings,)
        Mean agreement for each damping.
    estimator_, n_train_, solver_, n_features_in_ :
        As in :class:`InfluenceFunction`.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import InfluenceFunctionCV
    >>> X, y = load_diabetes(return_X_y=True)
    >>> influence = InfluenceFunctionCV(
    ...     Ridge(alpha=1.0), dampings=[1e-6, 1e-2, 10.0], random_state=0
    ... ).fit(X[:300], y[:300])
    >>> influence.cv_scores_.shape
    (3,)
    >>> float(influence.damping_) in (1e-6, 1e-2, 10.0)
    True
    """

    _parameter_constraints = {
        **{k: v for k, v in InfluenceFunction._parameter_constraints.items() if k != "damping"},
        "dampings": ["array-like"],
        "cv": ["cv_object", None],
        "correlation": [StrOptions({"pearson", "spearman"})],
    }

    def __init__(
        self,
        estimator,
        *,
        dampings=None,
        cv=None,
        correlation="pearson",
        curvature="gauss_newton",
        solver="auto",
        device="cpu",
        batch_size=512,
        solver_options=None,
        curvature_options=None,
        n_score_points=30,
        score_target="loo",
        score_damping=1e-3,
        memory=None,
        n_jobs=None,
        verbose=0,
        random_state=None,
    ):
        self.estimator = estimator
        self.dampings = dampings
        self.cv = cv
        self.correlation = correlation
        self.curvature = curvature
        self.solver = solver
        self.device = device
        self.batch_size = batch_size
        self.solver_options = solver_options
        self.curvature_options = curvature_options
        self.n_score_points = n_score_points
        self.score_target = score_target
        self.score_damping = score_damping
        self.memory = memory
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.random_state = random_state

    def _damping(self):
        return self.damping_

    def _candidate_dampings(self):
        if self.dampings is None:
            return np.logspace(-8, 0, 9)
        try:
            dampings = np.asarray(self.dampings, dtype=np.float64)
        except (TypeError, ValueError):
            dampings = None
        if (
            dampings is None
            or dampings.ndim != 1
            or len(dampings) == 0
            or not np.all(np.isfinite(dampings) & (dampings >= 0))
        ):
            raise InvalidParameterError(
                "dampings must be a non-empty 1-d list of values >= 0 (finite numbers), got "
                f"{self.dampings!r}; e.g. np.logspace(-8, 0, 9) (the default)."
            )
        return dampings

    def fit(self, X, y, sample_weight=None):
        """Select the damping, then fit on all of (X, y).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None
            Per-row weights of the model's objective, see :meth:`InfluenceFunction.fit`;
            each fold's model is fitted with its training rows' weights.

        Returns
        -------
        self : InfluenceFunctionCV
        """
        dampings = self._candidate_dampings()
        super().fit(X, y, sample_weight)
        X, y = self.X_train_, self.y_train_
        full_params = self._fit_params

        def fold_params(train):
            return {name: np.asarray(value)[train] for name, value in full_params.items()}

        splits = [(slice(None), slice(None))] if self.cv is None else check_cv(self.cv).split(X, y)
        splits = list(splits)
        progress, scores = self._progress(), []
        for number, (train, test) in enumerate(splits, 1):
            with progress.stage(f"fold {number}/{len(splits)} fitted and scored"):
                fold = (self.engine_, X, y, X, y)
                if self.cv is not None:
                    engine = self._fit_engine(_take(X, train), _take(y, train), fold_params(train))[
                        1
                    ]
                    fold = (
                        engine,
                        _take(X, train),
                        _take(y, train),
                        _take(X, test),
                        _take(y, test),
                    )
                scores.append(self._fold_scores(*fold, dampings))
        scores = np.array(scores)
        self.cv_scores_ = scores.mean(0)
        if np.all(np.isnan(self.cv_scores_)):
            raise ValueError(
                f"No damping could be scored (n_samples={self.n_train_}): the predicted or the "
                "actual loss changes were constant for every value. Use more training data or a "
                "larger n_score_points."
            )
        self.damping_ = float(dampings[int(np.nanargmax(self.cv_scores_))])
        return self

    def _fold_scores(self, engine, X_train, y_train, X_query, y_query, dampings):
        """Agreement of each damping on one fold, as :meth:`removal_agreement` measures it."""
        removed = sample_training_points(len(y_train), self.n_score_points, self.random_state)
        adapter = engine.adapter
        queries = (X_query, y_query, adapter.inputs(X_query), adapter.targets(y_query))
        predicted, actual = self._removal_effects(
            engine,
            X_train,
            y_train,
            queries,
            removed,
            (self.score_target, self.score_damping),
            dampings,
        )
        return [
            correlation(each, actual, method=self.correlation, message=UNDEFINED_AGREEMENT)
            for each in predicted
        ]
