"""Response estimators: leave-one-out retraining, the PRF, the PBRF and its linearisation.

Each estimator fits (or takes a frozen) model, removes the training points
``train_indices`` one at a time (ε = 1/N, DESIGN.md §2) — or each set of ``removed_groups``
at once (ε_S = Σ_{m∈S} w_m / W) — computes the response parameters and, in ``transform``,
returns the actual change Δf = f(θ_resp) − f(θˢ) of the same measurement
:class:`~sklearn_influence.InfluenceFunction` predicts: one column per removed point (or
group), in the order of ``train_indices_`` (or ``removed_groups_``).
"""

from numbers import Integral

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from ._base import (
    MEMORY_CONSTRAINTS,
    MEMORY_DOC,
    MODEL_CONSTRAINTS,
    OPTIMIZER_CONSTRAINTS,
    PARALLEL_CONSTRAINTS,
    SOLVER_CONSTRAINTS,
    FittedModelMixin,
    check_removed_groups,
    correlation,
    routed_fit_params,
)
from ._engine._gradients import per_example_gradients
from ._responses._functions import (
    cold_leave_one_out,
    linearized_pbrf,
    measurement_changes,
    proximal_response,
    warm_leave_one_out,
)
from ._responses._groups import RemovedGroups
from ._responses._linear_loo import exact_leave_one_out
from ._torch_utils import resolve_device, seeded_torch, to_numpy
from ._validation import validate_sample_weight, validate_training_data


class _BaseResponse(
    FittedModelMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """fit / transform / score shared by the response estimators."""

    _parameter_constraints = {
        **MODEL_CONSTRAINTS,
        "train_indices": ["array-like", None],
        "removed_groups": ["array-like", None],
        "n_points": [Interval(Integral, 1, None, closed="left")],
    }

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None):
        """Fit the model (unless frozen) and compute the responses to removing each point.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Training targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Positive per-row weights of the model's objective (linear models and GLMs), as
            in :meth:`InfluenceFunction.fit`: removing a point removes all of its weight.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        X, y = validate_training_data(self, X, y)
        sample_weight = validate_sample_weight(self, sample_weight, len(y))
        device = resolve_device(self.device)
        indices = self._removed_set(len(y))
        with seeded_torch(self.random_state) as seed:
            problem = self._fit_problem(X, y, device, routed_fit_params(self, sample_weight))
            result = self._responses(problem, indices, seed)
        self.problem_ = problem
        self._shifts = {}
        groups = isinstance(indices, RemovedGroups)
        self.train_indices_ = None if groups else indices
        self.removed_groups_ = list(indices) if groups else None
        self.n_train_ = problem.n_train
        self.reference_parameters_ = to_numpy(problem.theta)
        self.parameters_ = to_numpy(result.parameters)
        self._n_features_out = len(indices)
        self._record(result)
        return self

    def _removed_set(self, n_train):
        """The checked ``removed_groups`` (a RemovedGroups), else the removed points."""
        if self.removed_groups is None:
            return self._removed_points(n_train)
        if self.train_indices is not None:
            raise ValueError(
                "train_indices and removed_groups are mutually exclusive: pass train_indices to "
                "remove points one at a time, or removed_groups to remove each group at once."
            )
        return RemovedGroups(check_removed_groups(self.removed_groups, n_train))

    @property
    def _removed(self):
        """What ``fit`` removed: the points, or the groups as a RemovedGroups."""
        if self.removed_groups_ is not None:
            return RemovedGroups(self.removed_groups_)
        return self.train_indices_

    def _responses(self, problem, indices, seed):
        raise NotImplementedError

    def _record(self, result):
        """Store what the method knows about convergence (fitted attributes)."""

    def transform(self, X, y_test=None):
        """Actual change of each query's measurement when each point is removed.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query inputs.
        y_test : array-like of shape (n_queries,) or (n_queries, n_targets), default=None
            Query targets: the measurement is the query's loss. Without them it is the loss
            at the predicted class (classifiers) or the prediction (single-output
            regressors), as in :class:`~sklearn_influence.InfluenceFunction`.

        Returns
        -------
        changes : ndarray of shape (n_queries, n_points) or (n_queries, n_groups)
            ``changes[q, j] = f_q(θ_j) − f_q(θˢ)`` for the response θ_j to removing training
            point ``train_indices_[j]`` (or group ``removed_groups_[j]``). Positive: removing
            it raises the query's loss (it helped the query), the sign convention of
            influence estimates.
        """
        check_is_fitted(self, "parameters_")
        inputs, targets = self._query_tensors(X, y_test)
        problem = self.problem_
        thetas = torch.as_tensor(self.parameters_, dtype=problem.theta.dtype).to(
            problem.theta.device
        )
        return to_numpy(
            measurement_changes(problem.adapter, problem.theta, thetas, inputs, targets)
        )

    def score(self, X, y):
        """How well influence estimates predict these responses on (X, y).

        The actual change of the mean loss on (X, y) under each removal (from
        :meth:`transform`) is correlated, across the removed points, with the first-order
        influence prediction (1/N) ∇f̄(θˢ)ᵀ(G + λI)⁻¹∇L_m at the fitted ``damping``.
        Higher is better; 1 means influence estimates rank and scale the removals exactly
        as this response does.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        y : array-like of shape (n_queries,) or (n_queries, n_targets)

        Returns
        -------
        score : float
            Pearson correlation (nan with a warning when undefined).
        """
        actual = self.transform(X, y).mean(0)
        inputs, targets = self._query_tensors(X, y)
        problem = self.problem_
        query_gradient = per_example_gradients(problem.adapter, problem.theta, inputs, targets)
        predicted = to_numpy(self._linearized_shift() @ query_gradient.mean(0))
        return correlation(predicted, actual, method="pearson")

    def _linearized_shift(self):
        """ε (G + λI)⁻¹ ∇L_m for the removed points at the fitted damping (cached)."""
        damping = self._fitted_damping
        if damping not in self._shifts:
            result = linearized_pbrf(self.problem_, self._removed, damping=damping)
            self._shifts[damping] = result.parameters - self.problem_.theta
        return self._shifts[damping]

    @property
    def _fitted_damping(self):
        return self.damping

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags


class LeaveOneOut(_BaseResponse):
    """Leave-one-out retraining: the model refit without each removed training point.

    ``warm_start=False`` (cold start) refits from the original initialisation with the
    original data order (a linear model is simply refit by scikit-learn to a tight
    tolerance); ``warm_start=True`` starts at the fitted parameters θˢ (for linear models
    the leave-one-out objective is then minimised exactly by Newton's method). For convex
    linear models and GLMs every removed point is refit exactly at once, at about the cost
    of one fit (``n_jobs`` and ``memory`` are then unused; see the user guide's "Regression
    diagnostics").

    Parameters
    ----------
    estimator : estimator object
        A supported model, a :class:`~sklearn.pipeline.Pipeline` ending in one, or a
        :class:`~sklearn.frozen.FrozenEstimator` around one. Cold starts of neural nets
        need the original initialisation, so pass them unfrozen.
    warm_start : bool, default=False
        Start the refits at θˢ instead of at the initialisation.
    train_indices : array-like of int, default=None
        Training row positions to remove, one at a time. None draws ``n_points`` of them
        with ``random_state``.
    removed_groups : list of array-like of int, default=None
        Groups of training row positions, each removed at once (ε_S = ``|S| / N``, or the sum of
        its members' weights over the total weight); groups may overlap. The responses then
        have one column per group. Mutually exclusive with ``train_indices``.
    n_points : int, default=20
        Number of points drawn when ``train_indices`` is None.
    damping : float, default=1e-3
        λ of the influence estimate that :meth:`score` compares the refits with.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``; results are returned as numpy on the CPU.
    n_jobs : int, default=None
        Parallel refits through :mod:`sklearn.utils.parallel` (the joblib backend, for
        example Dask, is chosen by the caller).
    memory : str or object with the joblib.Memory interface, default=None
        Saves each finished refit as it completes (a folder, or a ``joblib.Memory``): a
        long run that is interrupted (Ctrl-C, a killed job) and started again with the same
        ``memory`` refits only the points not yet done, with the same result. The fit on all
        points is saved too (when ``random_state`` is set and no ``random_state`` of the
        model is None), so a resumed run does not refit it. None: nothing is saved.
    random_state : int, RandomState instance or None, default=None
        Draws the removed points; seeds torch inside a forked RNG.
    verbose : int, default=0
        Progress over the refits (joblib's messages).

    Attributes
    ----------
    estimator_ : estimator object
        The fitted model.
    train_indices_ : ndarray of shape (n_points,) or None
        The removed training points, in the column order of :meth:`transform` (None with
        ``removed_groups``).
    removed_groups_ : list of ndarray of int or None
        The removed groups, in the column order of :meth:`transform` (None without
        ``removed_groups``).
    parameters_ : ndarray of shape (n_points, n_parameters)
        Refit parameters, one row per removed point.
    stationarity_ : float
        Relative gradient norm of the training objective at θˢ (0 at an optimum; see
        :attr:`InfluenceFunction.stationarity_ <sklearn_influence.InfluenceFunction>`); a
        convex model above 1e-2 raises a ``ConvergenceWarning`` at ``fit``.
    reference_parameters_ : ndarray of shape (n_parameters,)
        θˢ, the parameters of the model fit on all points.
    problem_ : ResponseProblem
        What the responses share, for extensions and the package's other estimators:
        ``adapter`` (the model's functional torch view), ``theta`` (θˢ in the working
        dtype: float64 wherever the model evaluates in it), ``inputs`` and ``targets`` (the
        training data as tensors), ``n_train``, ``epsilon`` (1/N) and ``outputs(thetas)``
        (the outputs on the training inputs at each row of ``thetas``).
    n_train_ : int
        Number of training points N.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``, when X has string column names.

    See Also
    --------
    PBRF : The proximal Bregman response function, what influence estimates approximate.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import LeaveOneOut
    >>> X, y = load_diabetes(return_X_y=True)
    >>> loo = LeaveOneOut(Ridge(alpha=1.0), train_indices=[0, 1, 2]).fit(X[:300], y[:300])
    >>> loo.transform(X[300:305], y[300:305]).shape
    (5, 3)

    Removing groups of points at once, one column per group:

    >>> groups = [[0, 1, 2], [10, 11]]
    >>> loo = LeaveOneOut(Ridge(alpha=1.0), removed_groups=groups).fit(X[:300], y[:300])
    >>> loo.transform(X[300:305], y[300:305]).shape
    (5, 2)
    >>> loo.removed_groups_[1]
    array([10, 11])
    """

    _parameter_constraints = {
        **_BaseResponse._parameter_constraints,
        **PARALLEL_CONSTRAINTS,
        **MEMORY_CONSTRAINTS,
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        estimator,
        *,
        warm_start=False,
        train_indices=None,
        removed_groups=None,
        n_points=20,
        damping=1e-3,
        device="cpu",
        n_jobs=None,
        memory=None,
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.warm_start = warm_start
        self.train_indices = train_indices
        self.removed_groups = removed_groups
        self.n_points = n_points
        self.damping = damping
        self.device = device
        self.n_jobs = n_jobs
        self.memory = memory
        self.random_state = random_state
        self.verbose = verbose

    def _responses(self, problem, indices, seed):
        exact = exact_leave_one_out(problem, indices, warm_start=self.warm_start)
        if exact is not None:  # convex linear models and GLMs: all rows at a fit's cost
            return exact
        common = {"n_jobs": self.n_jobs, "verbose": self.verbose}
        common.update(memory=self.memory, key=self._memory_key())
        if self.warm_start:
            return warm_leave_one_out(problem, indices, **common)
        return cold_leave_one_out(problem, indices, **common)


_OPTIMIZER_DOC = """
    method : {"auto", "newton", "optimizer"}, default="auto"
        ``"newton"`` minimises the (convex) objectives exactly — only for models linear in
        their parameters; ``"optimizer"`` runs ``optimizer`` from θˢ; ``"auto"`` picks
        Newton for linear models and the optimizer otherwise.
    optimizer : {"auto", "lbfgs", "gauss_newton", "sgd", "adam"}, default="<<optimizer>>"
        Optimizer of the objectives (one object per method behind one registry, each
        with its declared ``optimizer_options``). ``"auto"``: L-BFGS for the PRF with full
        batches; for the PBRF with full batches and at most 8,192 parameters, L-BFGS
        preconditioned by the exact (G + λI)⁻¹ at θˢ (``optimizer_options={"preconditioner":
        "gauss_newton"}``: one dense Gauss-Newton matrix and Cholesky factor shared by all
        points; its first step is the influence step, and the PBRF, nearly quadratic around
        θˢ, is then reached in a few steps unless it ends on an activation kink); SGD
        otherwise. L-BFGS (full batches only)
        keeps each point's own curvature pairs and line search, so it needs no step size
        beyond its first step. ``"gauss_newton"``: damped Gauss-Newton steps whose linear
        systems are solved by conjugate gradient on the Gauss-Newton matrix at each point's
        own iterate (the engine's products; the removed row's own Hessian exactly), with a
        K-FAC preconditioner and a line search; its first PBRF step is the linearized PBRF.
        SGD uses Nesterov momentum with step and momentum from the curvature at θˢ; with
        full batches each point's step is halved whenever its objective rises. A point
        whose iterate or objective becomes non-finite or explodes is stopped early and
        reported with a ``ResponseDivergenceWarning``.
    learning_rate : float or "auto", default="auto"
        Step size (L-BFGS: its first, steepest-descent step). ``"auto"``: 1/L for SGD and
        L-BFGS, where L is the largest eigenvalue of G + λI (estimated by power iteration
        at θˢ), which is stable for the objective's curvature near θˢ; for Adam,
        0.1·ε·‖θˢ‖_∞ per step.
    n_iter : int, default=<<n_iter>>
        Maximum number of optimizer steps per removed point (each stops as soon as it
        reaches ``tol``).
    batch_size : int, default=None
        Training rows per step (mini-batches in a seeded order); None uses all rows.
    tol : float, default=1e-4
        A removed point's optimisation stops when the norm of the full-batch gradient of
        its objective falls below ``tol`` times its value at θˢ (for the PBRF that is
        ε‖∇L_m(θˢ)‖, the size of the force that removes the point). Where the objective is
        not differentiable at the minimiser (a ReLU or max-pool kink), a point whose line
        search can no longer decrease the objective is certified instead by the smallest
        norm of a convex combination of gradients sampled within 0.1% of its move around
        it (gradient sampling: a measure of Clarke stationarity), against the same
        threshold. A PBRF minimiser more than 10 times farther from θˢ than the influence
        step is reported as not converged (it is not the local response influence
        estimates approximate; raise ``damping``). ``converged_`` records which points
        passed, and a ``ResponseConvergenceWarning`` says how many did not and what to raise.
    optimizer_options : dict, default=None
        SGD: ``momentum`` (default ``"auto"``: (√κ − 1)/(√κ + 1) for the condition number
        κ = L/(λ + min r) of the damped objective, at most 0.99) and ``nesterov`` (True);
        Adam: ``betas`` (two numbers in [0, 1)) and ``eps``; L-BFGS: ``history`` (≥ 1, 30
        curvature pairs, 2 × 30 parameter vectors per removed point),
        ``max_halvings`` (30) of its line search and ``preconditioner`` (None, or
        ``"gauss_newton"``: the exact (G + λI)⁻¹ at θˢ, first step 1); Gauss-Newton:
        ``cg_maxiter`` (100),
        ``cg_tol`` (0.1, the loosest relative residual of a step), ``max_halvings`` and
        ``preconditioner`` ("kfac", "ekfac" or None). Unknown names and values outside
        these ranges raise ``InvalidParameterError`` before any work.
"""


_PROXIMAL_PARAMETERS_DOC = (
    """    Parameters
    ----------
    estimator : estimator object
        A supported model, a :class:`~sklearn.pipeline.Pipeline` ending in one, or a
        :class:`~sklearn.frozen.FrozenEstimator` around one.
    damping : float, default=1e-3
        λ, the weight of the proximity term (the same λ as the damping of
        :class:`~sklearn_influence.InfluenceFunction`).
    train_indices : array-like of int, default=None
        Training row positions to remove, one at a time. None draws ``n_points`` of them.
    removed_groups : list of array-like of int, default=None
        Groups of training row positions, each removed at once (ε_S = ``|S| / N``, or the sum of
        its members' weights over the total weight); groups may overlap. The responses then
        have one column per group. Mutually exclusive with ``train_indices``.
    n_points : int, default=20
        Number of points drawn when ``train_indices`` is None."""
    + "<<optimizer_doc>>"
    + """    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``; results are returned as numpy on the CPU.
    n_jobs : int, default=None
        The removed points are split into one chunk per worker; each chunk is one batched
        (vmap) optimisation. Uses :mod:`sklearn.utils.parallel`.
"""
    + MEMORY_DOC
    + """
    random_state : int, RandomState instance or None, default=None
        Draws the removed points and the mini-batch order; seeds torch in a forked RNG.
    verbose : int, default=0
        Progress messages of the optimisation.

    Attributes
    ----------
    estimator_ : estimator object
        The fitted model.
    train_indices_ : ndarray of shape (n_points,) or None
        The removed training points, in the column order of :meth:`transform` (None with
        ``removed_groups``).
    removed_groups_ : list of ndarray of int or None
        The removed groups, in the column order of :meth:`transform` (None without
        ``removed_groups``).
    parameters_ : ndarray of shape (n_points, n_parameters)
        Response parameters, one row per removed point.
    stationarity_ : float
        Relative gradient norm of the training objective at θˢ (0 at an optimum; see
        :attr:`InfluenceFunction.stationarity_ <sklearn_influence.InfluenceFunction>`); a
        convex model above 1e-2 raises a ``ConvergenceWarning`` at ``fit``.
    reference_parameters_ : ndarray of shape (n_parameters,)
        θˢ.
    problem_ : ResponseProblem
        What the responses share, for extensions and the package's other estimators:
        ``adapter`` (the model's functional torch view), ``theta`` (θˢ in the working
        dtype: float64 wherever the model evaluates in it), ``inputs`` and ``targets`` (the
        training data as tensors), ``n_train``, ``epsilon`` (1/N) and ``outputs(thetas)``
        (the outputs on the training inputs at each row of ``thetas``).
    converged_ : ndarray of bool, shape (n_points,)
        Whether each optimisation reached ``tol`` (Newton: gradient norm ≤ 1e-12).
    gradient_norm_ : ndarray of shape (n_points,)
        Final gradient norm of each objective relative to its value at θˢ.
    n_iter_ : ndarray of shape (n_points,)
        Steps (or Newton iterations) per removed point.
    method_ : str
        ``"newton"`` or ``"optimizer"``.
    n_train_ : int
        Number of training points N.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``, when X has string column names.

"""
)


def _proximal_parameters_doc(optimizer, n_iter):
    """The parameters section with this estimator's optimizer defaults."""
    options = _OPTIMIZER_DOC.replace("<<optimizer>>", optimizer)
    return _PROXIMAL_PARAMETERS_DOC.replace(
        "<<optimizer_doc>>", options.replace("<<n_iter>>", str(n_iter))
    )


class _ProximalBase(_BaseResponse):
    _objective = None

    _parameter_constraints = {
        **_BaseResponse._parameter_constraints,
        **OPTIMIZER_CONSTRAINTS,
        **PARALLEL_CONSTRAINTS,
        **MEMORY_CONSTRAINTS,
    }

    def __init__(
        self,
        estimator,
        *,
        damping=1e-3,
        train_indices=None,
        removed_groups=None,
        n_points=20,
        method="auto",
        optimizer="sgd",
        learning_rate="auto",
        n_iter=1000,
        batch_size=None,
        tol=1e-4,
        optimizer_options=None,
        device="cpu",
        n_jobs=None,
        memory=None,
        random_state=None,
        verbose=0,
    ):
        self.estimator = estimator
        self.damping = damping
        self.train_indices = train_indices
        self.removed_groups = removed_groups
        self.n_points = n_points
        self.method = method
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.n_iter = n_iter
        self.batch_size = batch_size
        self.tol = tol
        self.optimizer_options = optimizer_options
        self.device = device
        self.n_jobs = n_jobs
        self.memory = memory
        self.random_state = random_state
        self.verbose = verbose

    def _optimizer_settings(self, seed):
        return {
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "n_iter": self.n_iter,
            "batch_size": self.batch_size,
            "tol": self.tol,
            "seed": seed,
            "optimizer_options": self.optimizer_options,
        }

    def _responses(self, problem, indices, seed):
        return proximal_response(
            problem,
            self._objective,
            indices,
            damping=self.damping,
            method=self.method,
            n_jobs=self.n_jobs,
            verbose=self.verbose,
            name=type(self).__name__,
            memory=self.memory,
            key=self._memory_key(),
            **self._optimizer_settings(seed),
        )

    def _record(self, result):
        self.method_ = self.problem_.method(self.method)
        self.converged_ = np.asarray(result.converged, dtype=bool)
        self.gradient_norm_ = np.asarray(result.relative_gradient_norm, dtype=float)
        self.n_iter_ = np.asarray(result.n_iter)


class ProximalResponse(_ProximalBase):
    __doc__ = (
        """Proximal response function (PRF): warm-started removal with a proximity term.

    For each removed point m the PRF minimises, from θˢ,

    .. math:: J(\\theta) - \\varepsilon L_m(\\theta)
              + \\frac{\\lambda}{2}\\|\\theta - \\theta^s\\|^2

    with ε = 1/N: leave-one-out training kept close to the fitted parameters.

"""
        + _proximal_parameters_doc("sgd", 1000)
        + """    See Also
    --------
    PBRF : The same with the training loss replaced by its Bregman divergence from θˢ.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_influence import ProximalResponse
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> model = make_pipeline(StandardScaler(), LogisticRegression())
    >>> prf = ProximalResponse(model, n_points=4, random_state=0).fit(X[:400], y[:400])
    >>> prf.transform(X[400:403], y[400:403]).shape
    (3, 4)
    >>> bool(prf.converged_.all())
    True
    """
    )

    _objective = "prf"

    # the PRF's own defaults: L-BFGS and a larger step budget (measured in
    # benchmarks/bench_prf.py: an unconverged regression MLP needs up to ~1,600 L-BFGS steps
    # per point at tol=1e-4; each point stops as soon as it converges)
    def __init__(
        self,
        estimator,
        *,
        damping=1e-3,
        train_indices=None,
        removed_groups=None,
        n_points=20,
        method="auto",
        optimizer="auto",
        learning_rate="auto",
        n_iter=3000,
        batch_size=None,
        tol=1e-4,
        optimizer_options=None,
        device="cpu",
        n_jobs=None,
        memory=None,
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            estimator,
            damping=damping,
            train_indices=train_indices,
            removed_groups=removed_groups,
            n_points=n_points,
            method=method,
            optimizer=optimizer,
            learning_rate=learning_rate,
            n_iter=n_iter,
            batch_size=batch_size,
            tol=tol,
            optimizer_options=optimizer_options,
            device=device,
            n_jobs=n_jobs,
            memory=memory,
            random_state=random_state,
            verbose=verbose,
        )


class PBRF(_ProximalBase):
    __doc__ = (
        """Proximal Bregman response function: what influence estimates approximate.

    For each removed point m the PBRF minimises, from θˢ,

    .. math:: \\frac{1}{N}\\sum_i D_L(h(\\theta, x_i), h(\\theta^s, x_i)) + D_R(\\theta,
              \\theta^s) - \\varepsilon L_m(\\theta) + \\frac{\\lambda}{2}
              \\|\\theta - \\theta^s\\|^2

    with ε = 1/N, the output-space Bregman divergence D_L of the loss (MSE: squared
    distance; softmax cross-entropy: KL divergence; binary log-loss: Bernoulli KL) and
    D_R = ½Σ r_j(θ_j − θˢ_j)² of the L2 regularizer (Bae et al., NeurIPS 2022). θˢ is its
    minimiser at ε = 0 even when training did not converge, and its Hessian there is
    G + λI, so the influence estimate of :class:`~sklearn_influence.InfluenceFunction`
    (Gauss-Newton, same damping) is its first-order approximation.

"""
        + _proximal_parameters_doc("sgd", 1000)
        + """    See Also
    --------
    LinearizedPBRF : Its closed-form first-order approximation.
    InfluenceDecomposition : All response functions side by side.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import PBRF, InfluenceFunction
    >>> X, y = load_diabetes(return_X_y=True)
    >>> pbrf = PBRF(Ridge(alpha=1.0), train_indices=[0, 1, 2]).fit(X[:300], y[:300])
    >>> changes = pbrf.transform(X[300:302], y[300:302])
    >>> influence = InfluenceFunction(Ridge(alpha=1.0)).fit(X[:300], y[:300])
    >>> predicted = influence.transform(X[300:302], y[300:302])[:, [0, 1, 2]]
    >>> bool(np.corrcoef(changes.ravel(), predicted.ravel())[0, 1] > 0.99)
    True
    """
    )

    _objective = "pbrf"


class LinearizedPBRF(_BaseResponse):
    """Linearized PBRF: the closed form θˢ + ε (G + λI)⁻¹ ∇L_m(θˢ) with ε = 1/N.

    The parameters that first-order influence estimates move to, solved by the package's
    solvers (``"direct"``: an exact eigendecomposition of the Gauss-Newton matrix G).
    :meth:`transform` evaluates the measurement there, so comparing it with
    :class:`~sklearn_influence.InfluenceFunction` isolates the solver error and comparing
    it with :class:`PBRF` the linearization error.

    Parameters
    ----------
    estimator : estimator object
        A supported model, a :class:`~sklearn.pipeline.Pipeline` ending in one, or a
        :class:`~sklearn.frozen.FrozenEstimator` around one.
    damping : float, default=1e-3
        λ.
    train_indices : array-like of int, default=None
        Training row positions to remove, one at a time. None draws ``n_points`` of them.
    removed_groups : list of array-like of int, default=None
        Groups of training row positions, each removed at once (ε_S = ``|S| / N``, or the sum of
        its members' weights over the total weight); groups may overlap. The responses then
        have one column per group. Mutually exclusive with ``train_indices``.
    n_points : int, default=20
        Number of points drawn when ``train_indices`` is None.
    solver : str, default="auto"
        A solver of the package (``"auto"`` picks the exact direct solver while the dense
        matrix is small).
    solver_options : dict, default=None
        Extra settings of the solver.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``; results are returned as numpy on the CPU.
    random_state : int, RandomState instance or None, default=None
        Draws the removed points; seeds torch in a forked RNG.

    Attributes
    ----------
    estimator_ : estimator object
        The fitted model.
    train_indices_ : ndarray of shape (n_points,) or None
        The removed training points, in the column order of :meth:`transform` (None with
        ``removed_groups``).
    removed_groups_ : list of ndarray of int or None
        The removed groups, in the column order of :meth:`transform` (None without
        ``removed_groups``).
    parameters_ : ndarray of shape (n_points, n_parameters)
        Linearized responses, one row per removed point.
    stationarity_ : float
        Relative gradient norm of the training objective at θˢ (0 at an optimum; see
        :attr:`InfluenceFunction.stationarity_ <sklearn_influence.InfluenceFunction>`); a
        convex model above 1e-2 raises a ``ConvergenceWarning`` at ``fit``.
    reference_parameters_ : ndarray of shape (n_parameters,)
        θˢ.
    problem_ : ResponseProblem
        What the responses share, for extensions and the package's other estimators:
        ``adapter`` (the model's functional torch view), ``theta`` (θˢ in the working
        dtype: float64 wherever the model evaluates in it), ``inputs`` and ``targets`` (the
        training data as tensors), ``n_train``, ``epsilon`` (1/N) and ``outputs(thetas)``
        (the outputs on the training inputs at each row of ``thetas``).
    solver_ : str
        The solver used.
    n_train_ : int
        Number of training points N.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``, when X has string column names.

    See Also
    --------
    PBRF : The response this linearizes.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import LinearizedPBRF
    >>> X, y = load_diabetes(return_X_y=True)
    >>> linear = LinearizedPBRF(Ridge(alpha=1.0), n_points=5, random_state=0)
    >>> linear.fit(X[:300], y[:300]).transform(X[300:304], y[300:304]).shape
    (4, 5)
    """

    _parameter_constraints = {**_BaseResponse._parameter_constraints, **SOLVER_CONSTRAINTS}

    def __init__(
        self,
        estimator,
        *,
        damping=1e-3,
        train_indices=None,
        removed_groups=None,
        n_points=20,
        solver="auto",
        solver_options=None,
        device="cpu",
        random_state=None,
    ):
        self.estimator = estimator
        self.damping = damping
        self.train_indices = train_indices
        self.removed_groups = removed_groups
        self.n_points = n_points
        self.solver = solver
        self.solver_options = solver_options
        self.device = device
        self.random_state = random_state

    def _responses(self, problem, indices, seed):
        return linearized_pbrf(
            problem,
            indices,
            damping=self.damping,
            solver=self.solver,
            solver_options={"seed": seed, **(self.solver_options or {})},
        )

    def _record(self, result):
        self.solver_ = result.solver
