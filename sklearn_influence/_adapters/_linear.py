"""Adapter for scikit-learn linear models.

Parameters are laid out as W̃ = [coef | intercept] of shape (k, d + 1) (no intercept column
when ``fit_intercept=False``), flattened row-major; inputs carry a trailing column of ones,
so h(θ, z̃) = W̃ z̃. Each family's objective is rewritten as a mean loss plus
R(θ) = ½ Σ r_j θ_j² (DESIGN.md §2):

=====================  ====================================  =================
estimator              objective it minimises                 L(h, t), r
=====================  ====================================  =================
LinearRegression       Σ (y − ŷ)²                             ‖h − t‖², 0
Ridge                  Σ (y − ŷ)² + α‖w‖²                     ‖h − t‖², 2α/N
LogisticRegression     C Σ log-loss + ½‖w‖²                   log-loss, 1/(CN)
SGDClassifier (log)    mean log-loss + α·½‖w‖²                log-loss (OvR), α
SGDRegressor (squared) mean ½(y − ŷ)² + α·½‖w‖²               ½‖h − t‖², α
RidgeClassifier        Σ ‖Y − Ŷ‖² + α‖W‖², Y ∈ {−1, 1}         ‖h − (2t − 1)‖², 2α/N
=====================  ====================================  =================

**Sample and class weights.** With per-row weights w_i (``sample_weight`` times the class
weights that ``class_weight`` implies, combined as the estimator combines them:
:func:`training_weights`) the objective is written as the weighted mean over the total weight
W = Σ w_i, J = Σ w_i L_i / W + R, so that a point of integer weight w and w copies of it are
the same objective. The sums above become weighted sums and N becomes W in r (Ridge and
RidgeClassifier 2α/W, LogisticRegression 1/(CW) — scikit-learn itself divides the penalty by
the weight sum); SGD minimises (1/N) Σ w_i L_i + α·½‖w‖², so r = αN/W. Retraining refits
with the remaining rows' weights (and ``class_weight=None``: the class weights of the full
training set are kept, as the influence assumes).

Estimators that choose their own regularisation (``RidgeCV``, ``RidgeClassifierCV``,
``LogisticRegressionCV``) are treated as the plain estimator at the value they selected
(``alpha_``, ``C_``): the objective is the plain one at that fixed value, and retraining refits
the plain estimator (``Ridge(alpha=alpha_)``, ``RidgeClassifier(alpha=alpha_)``,
``LogisticRegression(C=C_)``, with the same other settings) without re-running the selection.
The selection itself is not differentiated.
"""

import warnings

import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    LogisticRegressionCV,
    Ridge,
    RidgeClassifier,
    RidgeClassifierCV,
    RidgeCV,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight

from ._base import Layer, LayerStructure, ModelAdapter
from ._losses import BinaryLogLoss, SignedSquaredError, SoftmaxCrossEntropy, SquaredError

SUPPORTED_LINEAR_MODELS = (
    LinearRegression,
    Ridge,
    RidgeCV,
    RidgeClassifier,
    RidgeClassifierCV,
    LogisticRegression,  # includes LogisticRegressionCV
    SGDClassifier,
    SGDRegressor,
)

# Tolerances used when the package itself retrains a convex model (leave-one-out targets):
# the loss change from removing one of N points is O(1/N), so the refit must be much tighter.
_RETRAIN_TOL = 1e-10
_RETRAIN_MAX_ITER = 10_000


def _refuse(estimator, problem, fix):
    raise ValueError(f"{type(estimator).__name__}: {problem} is not supported. {fix}")


def _check_linear_configuration(estimator):
    """Refuse settings whose objective is not a smooth mean loss plus an L2 penalty."""
    params = estimator.get_params(deep=False)
    name = type(estimator).__name__
    if params.get("positive", False):
        _refuse(estimator, "positive=True (a constrained fit)", "Use positive=False.")
    if params.get("early_stopping", False):
        _refuse(
            estimator,
            "early_stopping=True (it trains on a hidden subset)",
            "Use early_stopping=False so the model trains on exactly the data passed to fit.",
        )
    if isinstance(estimator, LogisticRegression):
        penalty = params.get("penalty", "deprecated")
        l1_ratio = params.get("l1_ratio")
        if penalty in ("l1", "elasticnet") or (l1_ratio not in (None, 0, 0.0)):
            _refuse(estimator, "an L1 or elastic-net penalty", "Use l1_ratio=0 (an L2 penalty).")
        if params["solver"] == "liblinear":
            _refuse(
                estimator,
                "solver='liblinear' (it penalises the intercept and fits one-vs-rest)",
                "Use solver='lbfgs' or 'newton-cholesky'.",
            )
    if isinstance(estimator, LogisticRegressionCV):
        l1_ratios = params.get("l1_ratios")
        if not (l1_ratios is None or isinstance(l1_ratios, str)) and np.any(
            np.asarray(l1_ratios, dtype=float) != 0
        ):
            _refuse(
                estimator,
                "a grid of L1 or elastic-net penalties (l1_ratios)",
                "Use l1_ratios=(0,) (an L2 penalty).",
            )
        if not params.get("refit", True):
            _refuse(
                estimator,
                "refit=False (its coefficients are averages over folds, not the minimiser "
                "of an objective)",
                "Use refit=True.",
            )
    if isinstance(estimator, (SGDClassifier, SGDRegressor)):
        wanted = "log_loss" if isinstance(estimator, SGDClassifier) else "squared_error"
        if params["loss"] != wanted:
            _refuse(estimator, f"loss={params['loss']!r}", f"Use loss={wanted!r}.")
        if params["penalty"] not in ("l2", None):
            _refuse(estimator, f"penalty={params['penalty']!r}", "Use penalty='l2' or None.")
    return name


def _selected_logistic_c(estimator):
    """The single C a fitted LogisticRegressionCV selected (C_ may be repeated per class)."""
    values = np.unique(np.ravel(np.asarray(estimator.C_, dtype=np.float64)))
    if len(values) != 1:
        raise ValueError(
            f"LogisticRegressionCV selected different C per class ({values.tolist()}); the "
            "influence needs one objective. Fit a LogisticRegression at one C instead."
        )
    l1_ratio = getattr(estimator, "l1_ratio_", None)
    if l1_ratio is not None and np.any(
        np.asarray([0.0 if r is None else r for r in np.ravel(l1_ratio)], dtype=float) != 0
    ):
        _refuse(estimator, "a selected L1 or elastic-net penalty", "Use l1_ratios=(0,).")
    return float(values[0])


def fixed_hyperparameter_model(estimator):
    """The plain estimator minimising the same objective as a fitted CV estimator.

    ``RidgeCV`` → ``Ridge(alpha=alpha_)``, ``RidgeClassifierCV`` →
    ``RidgeClassifier(alpha=alpha_)``, ``LogisticRegressionCV`` → ``LogisticRegression(C=C_)``,
    each with the CV estimator's other settings; any other estimator is returned as is.
    """
    if isinstance(estimator, RidgeCV):
        return Ridge(alpha=estimator.alpha_, fit_intercept=estimator.fit_intercept)
    if isinstance(estimator, RidgeClassifierCV):
        return RidgeClassifier(alpha=estimator.alpha_, fit_intercept=estimator.fit_intercept)
    if isinstance(estimator, LogisticRegressionCV):
        return LogisticRegression(
            C=_selected_logistic_c(estimator),
            l1_ratio=0.0,
            fit_intercept=estimator.fit_intercept,
            intercept_scaling=estimator.intercept_scaling,
            solver=estimator.solver,
            tol=estimator.tol,
            max_iter=estimator.max_iter,
            random_state=estimator.random_state,
        )
    return estimator


def _refuse_multiclass_sgd_class_weight(estimator):
    _refuse(
        estimator,
        "class_weight with more than two classes (one-vs-rest weighs each binary problem's "
        "positive class only, which is not a per-sample weight)",
        "Use class_weight=None and pass the per-sample weights you want as sample_weight, "
        "or use LogisticRegression(class_weight=...).",
    )


def check_class_weight_targets(estimator, y):
    """Refuse, before fitting, a class weighting that is not a per-sample weight."""
    if (
        isinstance(estimator, SGDClassifier)
        and estimator.class_weight is not None
        and len(np.unique(np.ravel(np.asarray(y)))) > 2
    ):
        _refuse_multiclass_sgd_class_weight(estimator)


def training_weights(estimator, y, sample_weight):
    """The per-row weights of ``estimator``'s objective, or None when every row has weight 1.

    ``sample_weight`` (validated, or None) times the per-sample weights that the estimator's
    ``class_weight`` implies, computed exactly as the estimator computes them:
    ``LogisticRegression``(``CV``) balances the classes by their *weighted* counts
    (:func:`~sklearn.utils.class_weight.compute_class_weight` with ``sample_weight``), the
    ridge classifiers by the plain counts
    (:func:`~sklearn.utils.class_weight.compute_sample_weight`), ``SGDClassifier`` by the
    plain counts of a binary problem (its one-vs-rest class weights are not per-sample
    weights and are refused).
    """
    class_weight = getattr(estimator, "class_weight", None)
    if class_weight is None or (isinstance(class_weight, dict) and not class_weight):
        return None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    labels = np.ravel(np.asarray(y))
    if isinstance(estimator, (LogisticRegression, SGDClassifier)):
        classes = np.asarray(estimator.classes_)
        if isinstance(estimator, SGDClassifier):
            if len(classes) > 2:
                _refuse_multiclass_sgd_class_weight(estimator)
            per_class = compute_class_weight(class_weight, classes=classes, y=labels)
        else:
            per_class = compute_class_weight(
                class_weight, classes=classes, y=labels, sample_weight=sample_weight
            )
        implied = np.asarray(per_class, dtype=np.float64)[np.searchsorted(classes, labels)]
    else:  # RidgeClassifier(CV)
        implied = np.asarray(compute_sample_weight(class_weight, labels), dtype=np.float64)
    if sample_weight is None:
        return implied
    return np.asarray(sample_weight, dtype=np.float64) * implied


def _penalty_per_weight(estimator, total_weight, n_rows=None):
    """r for the coefficients (scalar or one value per output); the intercept has r = 0.

    ``total_weight`` is W = Σ w_i (N without weights); ``n_rows`` is N when the rows are
    weighted (SGD's penalty is not divided by the weight sum, so r = αN/W), else None.
    """
    if isinstance(estimator, (Ridge, RidgeClassifier)):
        return 2.0 * np.asarray(estimator.alpha, dtype=np.float64) / total_weight
    if isinstance(estimator, LinearRegression):
        return 0.0
    if isinstance(estimator, LogisticRegression):
        if estimator.penalty is None or not np.isfinite(estimator.C):
            return 0.0
        return 1.0 / (estimator.C * total_weight)
    # SGD: alpha · ½‖w‖² next to the plain mean (1/N) Σ w_i L_i
    if estimator.penalty is None:
        return 0.0
    if n_rows is None:
        return float(estimator.alpha)
    return float(estimator.alpha) * n_rows / total_weight


def _output_loss(estimator, n_outputs):
    if isinstance(estimator, SGDRegressor):
        return SquaredError(0.5)
    if isinstance(estimator, RidgeClassifier):
        return SignedSquaredError()
    if isinstance(estimator, (LinearRegression, Ridge)):
        return SquaredError(1.0)
    if isinstance(estimator, LogisticRegression) and n_outputs > 1:
        return SoftmaxCrossEntropy()
    return BinaryLogLoss()  # binary logistic, or SGD's one-vs-rest


class LinearModelAdapter(ModelAdapter):
    """Functional view of a fitted scikit-learn linear model (possibly after preprocessing).

    Parameters
    ----------
    estimator : fitted linear model
        One of :data:`SUPPORTED_LINEAR_MODELS`.
    n_train : int
        Number of training samples N, needed to express sum-form objectives as means.
    preprocess : callable or None
        Maps raw X to the model's features (the earlier steps of a pipeline).
    device : torch.device
    fit_state : None
        Linear models need nothing recorded at fit time.
    sample_weight : ndarray of shape (N,) or None
        The per-row weights the model was fitted with, class weights included
        (:func:`training_weights`); None: every row has weight 1. The objective is then
        Σ w_i L_i / W + R with W = Σ w_i (see the module notes).

    Notes
    -----
    A CV estimator (``RidgeCV``, ``RidgeClassifierCV``, ``LogisticRegressionCV``) is viewed at
    the hyper-parameter it selected; the selection is not differentiated, and retraining
    refits the plain estimator at that fixed value (:func:`fixed_hyperparameter_model`).
    """

    linear_layout = True
    #: a loss convex in h composed with a linear h plus an L2 penalty: J is convex in θ
    is_convex = True

    def __init__(
        self, estimator, n_train, *, preprocess=None, device=None, fit_state=None,
        sample_weight=None,
    ):  # fmt: skip
        self._check_configuration(estimator)
        self.estimator = estimator
        #: the estimator whose objective at fixed hyper-parameters the adapter writes down,
        #: and which retraining refits (the estimator itself unless it is a CV estimator)
        self.fixed_model = fixed_hyperparameter_model(estimator)
        self.n_train = n_train
        self.preprocess = preprocess
        self.device = torch.device("cpu") if device is None else device
        self.dtype = torch.float64
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
        self.n_outputs, self.n_features = coef.shape
        self.fit_intercept = bool(estimator.fit_intercept)
        self.is_classifier = hasattr(estimator, "classes_")
        self.classes_ = getattr(estimator, "classes_", None)
        self.loss = self._make_loss(self.fixed_model)
        self._theta = self._pack(estimator)
        if sample_weight is None:
            self._penalty = self._penalty_for(self.fixed_model, n_train)
        else:
            self.sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if self.sample_weight.shape != (n_train,):
                raise ValueError(
                    f"sample_weight has shape {self.sample_weight.shape} but the model has "
                    f"{n_train} training rows; pass one weight per training row."
                )
            total = float(self.sample_weight.sum())
            self.row_weights = self._tensor(self.sample_weight * (n_train / total))
            self._penalty = self._penalty_for(self.fixed_model, total, n_train)

    # -- family hooks (overridden by the GLM adapter) ------------------------------------
    def _check_configuration(self, estimator):
        _check_linear_configuration(estimator)

    def _make_loss(self, estimator):
        return _output_loss(estimator, self.n_outputs)

    def _penalty_for(self, estimator, total_weight, n_rows=None):
        return _penalty_per_weight(estimator, total_weight, n_rows)

    # -- layout -------------------------------------------------------------------------
    def _pack(self, estimator):
        coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
        if self.fit_intercept:
            intercept = np.broadcast_to(
                np.asarray(estimator.intercept_, np.float64), (self.n_outputs,)
            )
            coef = np.column_stack([coef, intercept])
        return self._tensor(coef.ravel())

    def _unpack_into(self, estimator, theta):
        """Write θ into a (clone of the) estimator's coef_ and intercept_, keeping their shapes."""
        weights = theta.detach().cpu().numpy().reshape(self.n_outputs, -1)
        coef, intercept = (
            (weights[:, :-1], weights[:, -1]) if self.fit_intercept else (weights, None)
        )
        original = np.asarray(self.estimator.coef_)
        estimator.coef_ = coef.reshape(original.shape).copy()
        if intercept is not None:
            original_intercept = np.asarray(self.estimator.intercept_)
            estimator.intercept_ = (
                intercept.reshape(original_intercept.shape).copy()
                if original_intercept.ndim
                else float(intercept[0])
            )
        return estimator

    # -- data ---------------------------------------------------------------------------
    def features(self, X):
        Z = X if self.preprocess is None else self.preprocess(X)
        Z = np.asarray(Z, dtype=np.float64)
        return self._checked_feature_matrix(Z, "model")

    def inputs(self, X):
        Z = self.features(X)
        if self.fit_intercept:
            Z = np.column_stack([Z, np.ones(len(Z))])
        return self._tensor(Z)

    # -- model --------------------------------------------------------------------------
    def parameters(self):
        return self._theta

    def outputs(self, theta, inputs):
        return inputs @ theta.reshape(self.n_outputs, -1).T

    def layer_structure(self):
        """One linear layer over all of θ: h = W̃ z̃, W̃ of shape (k, d + 1) with the intercept
        as its last column (no separate bias: the input z̃ carries the ones column)."""
        width = self.n_features + int(self.fit_intercept)
        layer = Layer(
            name="", kind="linear", weight=slice(0, self.n_outputs * width),
            weight_shape=(self.n_outputs, width),
        )  # fmt: skip
        return LayerStructure(layers=(layer,), uncovered=(), n_params=self.n_outputs * width)

    def regularizer_diagonal(self):
        width = self.n_features + int(self.fit_intercept)
        rows = np.broadcast_to(
            np.asarray(self._penalty, np.float64).reshape(-1, 1), (self.n_outputs, 1)
        )
        diagonal = np.repeat(rows, width, axis=1).copy()
        if self.fit_intercept:
            diagonal[:, -1] = 0.0
        return self._tensor(diagonal.ravel())

    # -- retraining ---------------------------------------------------------------------
    def _retraining_clone(self, warm_start):
        model = clone(self.fixed_model)
        params = model.get_params(deep=False)
        if "tol" in params and not isinstance(model, (SGDClassifier, SGDRegressor)):
            tol = params["tol"]
            model.set_params(tol=_RETRAIN_TOL if tol is None else min(tol, _RETRAIN_TOL))
        if "max_iter" in params and not isinstance(model, (SGDClassifier, SGDRegressor)):
            model.set_params(max_iter=max(params["max_iter"] or 0, _RETRAIN_MAX_ITER))
        if self.sample_weight is not None and params.get("class_weight") is not None:
            # the class weights of the full training set are in sample_weight already
            model.set_params(class_weight=None)
        if warm_start and "warm_start" in params:
            model.set_params(warm_start=True)
            self._unpack_into(model, self._theta)
            if self.is_classifier:
                model.classes_ = self.classes_
        return model

    def retrain(self, X, y, *, exclude=(), warm_start=True):
        """Refit the final linear model with scikit-learn on (X, y) without rows ``exclude``.

        X is raw (earlier pipeline steps stay fixed). Convex families are solved to a tight
        tolerance so that the O(1/N) change caused by removing one point is resolved;
        ``warm_start`` starts from θˢ where the estimator supports it. A weighted model is
        refit with the remaining rows' weights.
        """
        keep = np.ones(len(y), dtype=bool)
        keep[np.asarray(exclude, dtype=int)] = False
        model = self._retraining_clone(warm_start)
        fit_params = {}
        if self.sample_weight is not None:
            fit_params["sample_weight"] = self.sample_weight[keep]
        with warnings.catch_warnings():
            if warm_start:
                # a warm start from an already-optimal point makes the solvers report
                # line-search failures at machine precision; the solution is the optimum
                warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(self.features(X)[keep], np.asarray(y)[keep], **fit_params)
        return self._pack(model)
