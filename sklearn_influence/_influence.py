"""The public influence-function transformer."""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import Bunch, check_random_state, get_tags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_memory

from ._adapters import unwrap
from ._base import (
    INFLUENCE_CONSTRAINTS,
    MODEL_CONSTRAINTS,
    N_JOBS,
    WeightedFitRouterMixin,
    check_influence_choices,
    check_train_indices,
    correlation,
    fit_model_and_adapter,
    routed_fit_params,
    sample_training_points,
    warn_if_not_stationary,
)
from ._engine._gradients import resolve_query_targets
from ._engine._influence_engine import InfluenceEngine, NonFiniteScores, working_memory_bytes
from ._engine._self_check import approximation_agreement, is_poor, poor_agreement_message
from ._progress import Progress
from ._responses._removal import SCORE_TARGETS, check_score_options, removal_changes
from ._torch_utils import resolve_device, seeded_torch, to_numpy
from ._validation import (
    query_tensors,
    validate_query_data,
    validate_sample_weight,
    validate_training_data,
)
from .exceptions import ApproximationWarning

#: curvature rows of the self-check that ``fit`` runs for factored curvatures on networks
DEFAULT_CHECK_ROWS = 256

#: the warning of an undefined agreement (score, scorers, InfluenceFunctionCV)
UNDEFINED_AGREEMENT = (
    "The predicted or the actual loss changes are constant, so their correlation is "
    "undefined; the score is nan. Use more score points or a test set on which the "
    "removed points matter."
)


def _fit_engine(
    estimator,
    X,
    y,
    *,
    device,
    random_state,
    fit_params=None,
    progress=None,
    n_jobs=None,
    **engine_settings,
):
    """Fit (a clone of) the model and build its influence engine, factorization included.

    Module-level and free of ``self`` so that ``joblib.Memory`` can cache it across the
    clones that ``GridSearchCV`` makes: damping is not an argument, so every damping value
    reuses the same fit, gradients and factorization. ``fit_params`` (the routed
    ``sample_weight``) go to the model's ``fit``. ``progress`` (a :class:`~._progress.Progress`,
    not part of the cache key) reports the stages; ``n_jobs`` (not part of it either: the
    result does not depend on it) spreads the curvature's one-time passes.
    """
    progress = progress or Progress(0)
    check_influence_choices(estimator, **engine_settings)  # named errors before any fitting
    with seeded_torch(random_state) as seed:
        with progress.stage("model fitted and its gradients checked"):
            fitted, adapter = fit_model_and_adapter(estimator, X, y, device, fit_params)
        options = {"seed": seed, **(engine_settings.pop("solver_options") or {})}
        try:
            engine = InfluenceEngine(
                adapter,
                adapter.inputs(X),
                adapter.targets(y),
                solver_options=options,
                n_jobs=n_jobs,
                **engine_settings,
            )
            engine.progress = engine.curvature.progress = progress
            with progress.stage(
                f"curvature {engine.curvature.name!r} and solver {engine.solver_name!r} prepared"
            ):
                engine.solver.prepare()
        except torch.linalg.LinAlgError as error:
            raise ValueError(
                f"The curvature matrix could not be factorized ({error}). It is likely "
                "ill-scaled: unscaled or huge features make it overflow or lose all precision. "
                "Scale the features (e.g. StandardScaler in a Pipeline), or raise damping."
            ) from error
    return fitted, engine


def _removal_changes(
    adapter, theta, X, y, removed, target, n_jobs, X_query, y_query, fit_key, memory=None,
    verbose=0,
):  # fmt: skip
    """:func:`~._responses._removal.removal_changes` in the form that ``memory`` caches.

    ``target`` is ``(kind, pbrf_damping[, score_options])``. ``fit_key`` identifies the fit in
    the cache key instead of ``adapter`` and ``theta``, whose hash is not stable from one
    unpickled copy to the next (which made every clone retrain); ``fit_key`` (estimator,
    device, random_state) and the training data identify the fit. ``memory`` (ignored in the
    key) also saves the retraining's finished chunks as they complete, so an interrupted
    ``score`` resumes. ``verbose`` (ignored in the key) reports the progress of the
    retraining or the PBRF optimisation.
    """
    kind, pbrf_damping, *options = target
    options = dict(options[0]) if options and options[0] is not None else None
    return removal_changes(
        adapter, theta, X, y, removed, X_query, y_query, kind=kind, pbrf_damping=pbrf_damping,
        n_jobs=n_jobs, memory=memory, key=fit_key, pbrf_options=options, verbose=verbose,
    )  # fmt: skip


def _finite_removal_influence(matrix, removed):
    """The mean influence of each removed point over the queries; a ValueError naming the
    rows when it is not finite (a correlation of non-finite predictions is meaningless)."""
    columns = matrix[:, removed]
    report = NonFiniteScores(len(matrix), matrix.shape[1])
    report.queries |= ~np.isfinite(columns).all(1)
    report.check("The influence of the removed points", refuse=True)
    return columns.mean(0)


class InfluenceFunction(
    WeightedFitRouterMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Influence of each training point on the predictions of a fitted model.

    ``fit`` fits a clone of ``estimator`` (a :class:`~sklearn.frozen.FrozenEstimator` is used
    as fitted), then computes per-example training gradients and the damped curvature.
    ``transform`` returns the influence matrix

    .. math:: I[q, m] = \\frac{1}{N} \\nabla f_q(\\theta^s)^\\top (C + \\lambda I)^{-1}
              \\nabla_\\theta L(h(\\theta^s, x_m), t_m),

    the predicted change of query q's measurement when training point m is removed
    (first-order, ε = 1/N). For a model fitted with per-row weights w_i (``sample_weight``,
    ``class_weight``) the objective is the weighted mean Σ w_i L_i / W + R over the total
    weight W = Σ w_i, the curvature is weighted likewise, and removing m removes all of its
    weight: the factor 1/N becomes ε_m = w_m / W (a point of integer weight w has the summed
    influence of w copies of it). **Sign**: ``I[q, m] > 0`` means removing m is predicted to
    raise the query loss — m helps q (a proponent); ``I[q, m] < 0`` means m hurts q (an
    opponent). Rows are queries, columns are training points in the order passed to ``fit``.

    Parameters
    ----------
    estimator : estimator object
        A supported model: scikit-learn's ``LinearRegression``, ``Ridge``, ``RidgeCV``,
        ``RidgeClassifier``, ``RidgeClassifierCV``, ``LogisticRegression`` and
        ``LogisticRegressionCV`` (L2 or no penalty), ``SGDClassifier(loss="log_loss")``,
        ``SGDRegressor(loss="squared_error")``, ``PoissonRegressor``, ``GammaRegressor``,
        ``TweedieRegressor``, ``MLPClassifier`` and ``MLPRegressor`` (without early
        stopping); a skorch ``NeuralNetClassifier`` (NLLLoss on probabilities or
        CrossEntropyLoss on logits), ``NeuralNetBinaryClassifier`` (BCEWithLogitsLoss) or
        ``NeuralNetRegressor`` (MSELoss) with ``train_split=None`` and any module that
        :mod:`torch.func` can trace (MLPs, convolutional, residual and Transformer nets; X may
        have the n-d shape the module takes); a :class:`~sklearn.pipeline.Pipeline` ending in
        one of them, or a :class:`~sklearn.frozen.FrozenEstimator` around any of them. The
        objective each one maps to is tabulated in the README. A skorch net's
        ``optimizer__weight_decay`` (SGD, Adam, …) is its L2 term; AdamW's decoupled decay is
        refused. Networks are evaluated in eval mode.
    damping : float, default=1e-3
        λ ≥ 0 added to the curvature. Changing it with ``set_params`` after ``fit`` is cheap:
        the factorization is reused.
    curvature : {"gauss_newton", "hessian", "identity", "kfac", "ekfac"}, \
            default="gauss_newton"
        C: the Gauss-Newton matrix, the Hessian of the training objective, the identity
        (a gradient dot-product baseline), or a Kronecker-factored approximation of the
        Gauss-Newton matrix per ``nn.Linear``/``nn.Conv2d`` layer (``"kfac"``; ``"ekfac"``
        refits its eigenvalues on per-example gradients). Parameters outside such layers get
        their exact diagonal Gauss-Newton block (a warning names them).
    solver : {"auto", "direct", "cholesky", "cg", "near_exact", "lissa", "factored"}, \
            default="auto"
        How (C + λI)⁻¹ is applied. ``"direct"`` eigendecomposes the dense C once and caches
        it; ``"cholesky"`` factors C + λI for each damping. ``"cg"`` never forms C: block
        conjugate gradient on all right-hand sides of a block at once, with batched
        curvature-vector products (forward then reverse mode over the training data) and a
        randomized Nyström preconditioner of the Gauss-Newton matrix; it warns
        (``ConvergenceWarning``, with the residual) when ``tol`` is not reached.
        ``"lissa"`` is the stochastic Neumann-series recursion of Agarwal et al. (2017),
        seeded by ``random_state``; a diverging recursion raises a ``ValueError`` that names
        ``scale``. The iterative solvers solve again for each damping and each
        :meth:`transform`. ``"near_exact"`` is block CG on the exact Gauss-Newton matrix
        to relative residual 1e-2 (the tolerance the rankings need), started from the factored
        answer with ``curvature="kfac"``/``"ekfac"`` (which it then only uses as a start);
        its products come from the stored whitened Jacobians when they fit and are the
        cheaper products (convolutional, residual, attention nets; ``curvature_options``).
        ``"auto"`` picks ``"direct"`` when the dense matrix fits comfortably in memory and
        factorizes in seconds (p ≤ 4,000, and three float64 p × p arrays within 2 GiB and a
        quarter of the free memory), else ``"near_exact"`` for the Gauss-Newton matrix and
        ``"cg"`` for the others; with ``"kfac"``/``"ekfac"``
        it picks ``"factored"``, the factored curvature's own damped inverse (fast and
        approximate; a new damping never refactors).
    device : {"cpu", "cuda", "auto"} or str, default="cpu"
        Where the heavy math runs; results are always returned as numpy arrays on the CPU.
    batch_size : int, default=512
        Rows per vectorised batch of per-example gradients.
    solver_options : dict, default=None
        Extra settings of the solver (every solver refuses keys it does not know).
        ``"cg"`` (and ``"near_exact"``, whose ``tol`` defaults to 1e-2 and which adds
        ``start``: ``"auto"``, ``"factored"`` or ``"zero"``): ``tol`` (1e-3, relative
        residual of every right-hand side), ``maxiter``
        (100), ``preconditioner`` (``"nystrom"``, ``"kfac"``, ``"ekfac"`` or None), ``rank``
        (``"auto"`` or the Nyström sketch size), ``max_rank`` (512), ``sketch_coverage``
        (0.95: share of the Gauss-Newton trace carried by the training rows the sketch
        uses), ``block_size`` (128 right-hand sides per block).
        ``"lissa"``: ``scale`` (``"auto"``: 1.5 × the top eigenvalue of C + λI by power
        iteration), ``depth`` (1000), ``repeat`` (1), ``minibatch_size`` (training rows per
        step; default ``batch_size``), ``block_size``. The seed of the Nyström sketch and of
        LiSSA's minibatches is drawn from ``random_state``.
    curvature_options : dict, default=None
        Settings of the curvature (each curvature refuses keys it does not know, before any
        fitting). Every curvature: ``n_samples`` (None: all training rows; an int or a
        fraction in (0, 1]: the curvature — factors, Gauss-Newton products — is built on
        that many rows drawn with ``random_state``, while the training gradients are still
        streamed over all rows). ``"gauss_newton"``: ``jacobian_products`` (``"auto"``:
        products from the stored whitened output Jacobians, two matrix multiplies, when the
        N × outputs × parameters numbers take at most half of scikit-learn's
        ``working_memory``; True/False to force).
    n_score_points : int, default=30
        Number of training points removed and actually refit by :meth:`score`.
    score_target : {"loo", "warm_loo", "pbrf"}, default="loo"
        What :meth:`score` compares the estimates with. ``"loo"``: leave-one-out retraining
        (for linear models the exact optimum without the point, by Newton's method — cheap,
        about the cost of one fit for all points together; for networks a cold retraining per
        point, as expensive as ``n_score_points + 1`` trainings). ``"warm_loo"``: retraining
        started from the fitted parameters (networks: the same number of epochs again).
        ``"pbrf"``: the proximal Bregman response function at damping ``score_damping``, one
        batched optimisation from the fitted parameters (networks: much cheaper than
        retraining, and what influence estimates approximate best).
    score_damping : float, default=1e-3
        The fixed proximity damping of the ``"pbrf"`` score target, independent of
        ``damping`` so that different damping values are compared with the same target.
    score_options : dict, default=None
        Settings of the ``"pbrf"`` target's optimisation: ``optimizer`` (``"auto"``: for
        up to 8,192 parameters L-BFGS whose initial inverse Hessian is the exact (G + λI)⁻¹
        at the fitted parameters — one dense Gauss-Newton matrix and Cholesky factor shared
        by all points, so the first step is the influence step — else SGD with the step and
        momentum of the curvature there; ``"lbfgs"``, ``"gauss_newton"``, ``"sgd"``,
        ``"adam"``), ``n_iter`` (``"auto"``: 200 steps for the preconditioned L-BFGS, else
        the optimizer's step budget), ``tol`` (1e-4: each point
        stops when its gradient norm is below ``tol`` times its value at the fitted
        parameters; see :class:`~sklearn_influence.PBRF`), ``learning_rate`` and
        ``optimizer_options``. A point that misses the tolerance or diverges raises a
        warning naming these options. Checked when :meth:`score` runs.
    memory : str or object with the joblib.Memory interface, default=None
        Caches the model fit, gradients, factorization and retraining targets, as in
        :class:`~sklearn.pipeline.Pipeline`. With it, the clones that ``GridSearchCV`` makes for
        each damping value share all of that work, so a damping sweep costs little more than
        one value. The retraining of :meth:`score` saves its finished chunks (and a PBRF
        target its automatic optimizer settings) as they complete, each chunk at most ~30 s
        of work by a cost model, so an interrupted ``score`` resumes where it stopped.
        None: no caching.
    n_jobs : int, default=None
        Workers for the blocks of :meth:`transform`, the refits of :meth:`score` and, in
        :meth:`fit`, the passes over training batches that build K-FAC/EK-FAC factors, through
        :mod:`sklearn.utils.parallel`; a joblib backend such as Dask is chosen by the caller
        with ``joblib.parallel_config``. Results do not depend on it.
    verbose : int, default=0
        Progress of long work, by scikit-learn's convention: 0 silent; 1 one line per stage
        (model fit, curvature and solver, each influence computation) with its time; 2 also
        one line per streamed block or curvature pass batch, with an estimate of the time
        left; 3 a tqdm progress bar instead of those lines (``pip install
        sklearn-influence[progress]``).
    random_state : int, RandomState instance or None, default=None
        Chooses the score points; seeds torch inside a forked RNG.

    Attributes
    ----------
    estimator_ : estimator object
        The fitted model (the given object itself when it is a ``FrozenEstimator``).
    n_train_ : int
        Number of training points N; the number of columns of :meth:`transform`.
    solver_ : str
        The solver actually used.
    stationarity_ : float
        How far the fitted parameters θˢ are from a stationary point of the training
        objective J on the data passed to ``fit``: ‖∇J(θˢ)‖ / ((1/N) Σ_m ‖∇L_m(θˢ)‖ +
        ‖∇R(θˢ)‖), between 0 (an optimum) and 1 (every per-example gradient pointing the
        same way). Influence functions assume 0. For convex models (linear models, the
        convex GLMs) a value above 1e-2 raises a ``ConvergenceWarning``: the model was not
        fitted to convergence, or (a ``FrozenEstimator``) on other data. Networks are rarely
        at a stationary point and are not warned about; there the figure measures how far
        leave-one-out retraining (which moves to a new optimum) is from the local object
        influence estimates approximate, the PBRF.
    engine_ : InfluenceEngine
        The fitted influence machinery, for extensions and the package's other estimators:
        ``adapter`` (the model's functional torch view: ``parameters()``, ``outputs``,
        ``loss``, ``inputs``/``targets`` encoding, ``retrain``), ``theta`` (θˢ, a tensor of
        shape (n_parameters,)), ``train_gradients(rows)`` (per-example ∇L_m of the given
        training rows, shape (len(rows), n_parameters), computed on demand: the N × p
        gradients are never all held, except as a small cache, see "Memory" in the user
        guide), ``solver`` (applies (C + λI)⁻¹ for any λ: ``solve(B, λ)`` and the block
        quadratic form ``quadratic(G, λ)``) and the methods ``influence``, ``top_k``,
        ``influence_chunks``, ``self_influence`` and ``query_self_influence``.
    X_train_ : array-like of shape (n_train_, n_features_in_)
        The training inputs as validated by ``fit`` (as given, for a ``Pipeline``): what
        the retraining of :meth:`score` and :meth:`removal_agreement` refits on.
    y_train_ : ndarray of shape (n_train_,) or (n_train_, n_targets)
        The training targets.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``, when X has string column names.

    See Also
    --------
    sklearn.frozen.FrozenEstimator : Use an already fitted model without refitting it.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import InfluenceFunction
    >>> X, y = load_diabetes(return_X_y=True)
    >>> influence = InfluenceFunction(Ridge(alpha=1.0)).fit(X[:300], y[:300])
    >>> matrix = influence.transform(X[300:305], y[300:305])
    >>> matrix.shape
    (5, 300)
    >>> top = influence.most_influential(X[300:301], y[300:301], k=3)
    >>> top.helpful_indices.shape
    (1, 3)
    """

    _parameter_constraints = {
        **MODEL_CONSTRAINTS,
        **INFLUENCE_CONSTRAINTS,
        "n_score_points": [Interval(Integral, 2, None, closed="left")],
        "score_target": [StrOptions(set(SCORE_TARGETS))],
        "score_damping": [Interval(Real, 0, None, closed="left")],
        "score_options": [dict, None],
        "memory": [None, str, HasMethods(["cache"])],
        "n_jobs": N_JOBS,
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        estimator,
        *,
        damping=1e-3,
        curvature="gauss_newton",
        solver="auto",
        device="cpu",
        batch_size=512,
        solver_options=None,
        curvature_options=None,
        n_score_points=30,
        score_target="loo",
        score_damping=1e-3,
        score_options=None,
        memory=None,
        n_jobs=None,
        verbose=0,
        random_state=None,
    ):
        self.estimator = estimator
        self.damping = damping
        self.curvature = curvature
        self.solver = solver
        self.device = device
        self.batch_size = batch_size
        self.solver_options = solver_options
        self.curvature_options = curvature_options
        self.n_score_points = n_score_points
        self.score_target = score_target
        self.score_damping = score_damping
        self.score_options = score_options
        self.memory = memory
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.random_state = random_state

    # -- fitting ------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None):
        """Fit the model (unless frozen) and prepare gradients and curvature.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs. They are the training set of the influence estimates.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Training targets (any class labels for classifiers).
        sample_weight : array-like of shape (n_samples,), default=None
            Positive per-row weights of the model's training objective (linear models and
            GLMs). The model is fitted with them (a ``FrozenEstimator``: they are the weights
            it was fitted with), and retraining refits with the remaining rows' weights.
            With metadata routing enabled (``sklearn.set_config(enable_metadata_routing=
            True)``) they go where the model requests them
            (``set_fit_request(sample_weight=True)``, also on the steps of a ``Pipeline``);
            without it, to the model (the final step of a pipeline).

        Returns
        -------
        self : InfluenceFunction
            The fitted transformer.

        Examples
        --------
        A point of weight 2 has the influence of two copies of it:

        >>> import numpy as np
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.linear_model import Ridge
        >>> from sklearn_influence import InfluenceFunction
        >>> X, y = load_diabetes(return_X_y=True)
        >>> X, y = X[:50], y[:50]
        >>> weights = np.ones(50)
        >>> weights[0] = 2.0
        >>> weighted = InfluenceFunction(Ridge()).fit(X, y, sample_weight=weights)
        >>> copies = InfluenceFunction(Ridge()).fit(np.vstack([X[:1], X]), np.r_[y[:1], y])
        >>> a = weighted.transform(X[:3], y[:3])[:, 0]
        >>> b = copies.transform(X[:3], y[:3])[:, :2].sum(1)
        >>> bool(np.allclose(a, b))
        True
        """
        X, y = validate_training_data(self, X, y)
        sample_weight = validate_sample_weight(self, sample_weight, len(y))
        self._fit_params = routed_fit_params(self, sample_weight)
        self.estimator_, self.engine_ = self._fit_engine(X, y, self._fit_params)
        self.engine_.progress = self.engine_.curvature.progress = self._progress()
        # outside the cached fit, so that a cached fit warns too
        self.stationarity_ = self.engine_.adapter.stationarity
        warn_if_not_stationary(self.engine_.adapter, type(self).__name__, stacklevel=4)
        self.X_train_, self.y_train_ = X, y
        self._fitted_settings = self._settings()
        self.n_train_ = self._n_features_out = len(y)
        self.solver_ = self.engine_.solver_name
        self.approximation_ = None
        if self._self_check_by_default():
            # cheap: both curvatures on at most 256 random rows, a loose exact reference
            # (its Pearson with the tight one is 1.0000 on the digits CNN)
            self.approximation_ = self.check_approximation(
                n_train=300, n_rows=min(self.n_train_, DEFAULT_CHECK_ROWS), reference_tol=1e-3
            )
        return self

    def fit_transform(self, X, y, sample_weight=None):
        """Fit, then the influence of every training point on every training point.

        ``fit(X, y, sample_weight=sample_weight).transform(X, y)``: the training labels are
        the queries' labels, so the measurement is each training point's own loss (the
        diagonal is its self-influence). Inside a :class:`~sklearn.pipeline.Pipeline` this is
        what ``pipeline.fit_transform(X, y)`` returns.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs, also the queries.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Training targets, also the queries' labels.
        sample_weight : array-like of shape (n_samples,), default=None
            See :meth:`fit`.

        Returns
        -------
        influence : ndarray of shape (n_samples, n_samples)
            ``influence[q, m]``: predicted change of training point q's loss when training
            point m is removed. Positive means m helps q.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.linear_model import Ridge
        >>> from sklearn_influence import InfluenceFunction
        >>> X, y = load_diabetes(return_X_y=True)
        >>> matrix = InfluenceFunction(Ridge()).fit_transform(X[:50], y[:50])
        >>> matrix.shape
        (50, 50)
        >>> fitted = InfluenceFunction(Ridge()).fit(X[:50], y[:50])
        >>> bool(np.allclose(matrix, fitted.transform(X[:50], y[:50])))
        True
        """
        return self.fit(X, y, sample_weight=sample_weight).transform(X, y)

    def _self_check_by_default(self):
        """Whether ``fit`` measures the approximation (curvature option ``self_check``)."""
        curvature = self.engine_.curvature
        setting = curvature.settings.get("self_check", False)
        if setting == "auto":
            return not self.engine_.adapter.linear_layout and self.n_train_ >= 2
        return bool(setting)

    def check_approximation(
        self, X=None, y_test=None, *, n_queries=10, n_train=500, n_rows="auto", k=10,
        reference_tol=1e-6,
    ):  # fmt: skip
        """Agreement of this estimator's influence with the exact Gauss-Newton influence.

        On a random sample (drawn with ``random_state``): the influence of ``n_train``
        training points on ``n_queries`` queries from this estimator's curvature and solver,
        and from block CG on the exact damped Gauss-Newton matrix (relative residual 1e-6).
        With ``n_rows`` below the number of training points, both curvatures are built on
        the same random ``n_rows`` rows, which measures the approximation method at that
        sample size in a fraction of the fit's time. An
        :class:`~sklearn_influence.exceptions.ApproximationWarning` naming the figures and
        the fix (``solver="near_exact"``) is issued when the Pearson correlation is below
        0.9 or the top-k overlap below 0.7. Queries drawn from the training set are never
        among the compared training points (self-influence would dominate the figures).
        ``fit`` runs this check for ``curvature="kfac"``/``"ekfac"`` on networks (the
        curvature option ``self_check``) on at most 256 random rows with ``reference_tol=1e-3``,
        and stores it as ``approximation_``.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features), default=None
            Query inputs; None draws ``n_queries`` training points (with their labels).
        y_test : array-like of shape (n_queries,), default=None
            Query targets, see :meth:`transform`.
        n_queries : int, default=10
            Queries drawn when ``X`` is None.
        n_train : int, default=500
            Training points (columns) compared.
        n_rows : "auto", int or None, default="auto"
            Training rows of both curvatures; None: all of them (the fitted object itself);
            ``"auto"``: all when there are at most 1,000, else max(1,000, N / 20).
        k : int, default=10
            The k of the top-k overlap.
        reference_tol : float, default=1e-6
            Relative residual of the exact reference's block CG.

        Returns
        -------
        agreement : :class:`~sklearn.utils.Bunch`
            ``pearson``, ``spearman`` (over the sampled entries), ``top_k_overlap`` (mean
            shared fraction of the k most helpful points per query), ``k``, ``n_queries``,
            ``n_train``, ``n_rows``, ``approximation``, ``reference``, ``seconds``, and the
            sampled blocks ``approximate``, ``exact`` with their ``train_indices``.

        Examples
        --------
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.linear_model import Ridge
        >>> from sklearn_influence import InfluenceFunction
        >>> X, y = load_diabetes(return_X_y=True)
        >>> influence = InfluenceFunction(Ridge(), curvature="kfac").fit(X[:100], y[:100])
        >>> agreement = influence.check_approximation(n_queries=5, n_train=50)
        >>> round(agreement.pearson, 6), agreement.n_train
        (1.0, 50)
        """
        self._check_ready()
        for name, value in (("n_queries", n_queries), ("n_train", n_train), ("k", k)):
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if n_rows == "auto":
            n_rows = None if self.n_train_ <= 1000 else max(1000, self.n_train_ // 20)
        elif n_rows is not None and (not isinstance(n_rows, Integral) or n_rows < 1):
            raise ValueError(f"n_rows must be 'auto', a positive integer or None, got {n_rows!r}.")
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(0, 2**31 - 1))
        rows = None
        if X is None:
            rows = np.sort(rng.choice(self.n_train_, min(n_queries, self.n_train_), replace=False))
            inputs, targets = self.engine_.inputs[rows], self.engine_.targets[rows]
        else:
            inputs, targets = self._query_tensors(X, y_test)
            targets = resolve_query_targets(self.engine_.adapter, self.engine_.theta, inputs,
                                            targets)  # fmt: skip
        with seeded_torch(seed):
            agreement = approximation_agreement(
                self.engine_, self._damping(), inputs, targets, n_rows=n_rows, n_train=n_train,
                k=k, seed=seed, reference_tol=reference_tol, exclude=rows,
            )  # fmt: skip
        if is_poor(agreement):
            warnings.warn(poor_agreement_message(agreement), ApproximationWarning, stacklevel=2)
        return agreement

    def _fit_engine(self, X, y, fit_params=None):
        """``(fitted model, engine)`` on (X, y), cached by ``memory`` across clones."""
        return check_memory(self.memory).cache(_fit_engine, ignore=["progress", "n_jobs"])(
            self.estimator,
            X,
            y,
            device=resolve_device(self.device),
            random_state=self.random_state,
            fit_params=fit_params or {},
            progress=self._progress(),
            n_jobs=self.n_jobs,
            curvature=self.curvature,
            solver=self.solver,
            batch_size=self.batch_size,
            solver_options=self.solver_options,
            curvature_options=self.curvature_options,
        )

    def _progress(self):
        """This estimator's :class:`~._progress.Progress` (its ``verbose``)."""
        return Progress(getattr(self, "verbose", 0), type(self).__name__)

    def _fit_key(self):
        """What, with the training data, determines the fit (a cache key for its results)."""
        key = (self.estimator, str(resolve_device(self.device)), self.random_state)
        fit_params = getattr(self, "_fit_params", None)
        return (*key, fit_params) if fit_params else key

    def _damping(self):
        """The damping λ in use (a subclass may select it during fit)."""
        return self.damping

    def _settings(self):
        return {
            "curvature": self.curvature,
            "solver": self.solver,
            "batch_size": self.batch_size,
            "solver_options": self.solver_options,
            "curvature_options": self.curvature_options,
        }

    def _check_ready(self):
        check_is_fitted(self, "engine_")
        self._validate_params()  # catches set_params(damping=-1) after fit
        changed = [
            name for name, value in self._settings().items() if self._fitted_settings[name] != value
        ]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} changed since fit; call fit again. Only damping can be "
                "changed on a fitted InfluenceFunction."
            )

    def _query_tensors(self, X, y_test):
        return query_tensors(self, self.engine_.adapter, X, y_test)

    # -- influence ----------------------------------------------------------------------
    def transform(self, X, y_test=None):
        """Influence of every training point on each query.

        The training gradients are streamed in blocks sized by scikit-learn's
        ``working_memory`` (see :meth:`transform_chunked`), and the matrix is written into
        one preallocated array: the memory used is the returned matrix plus one block.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query inputs.
        y_test : array-like of shape (n_queries,) or (n_queries, n_targets), default=None
            Query targets. The measurement is the query's loss. Without them
            (``transform(X)``) it is not the loss at the true label but, for classifiers,
            the loss at the class the model predicts (the influence on the model's
            confidence in its own prediction) and, for single-output regressors, the
            prediction itself (the influence on the predicted value); a multi-output
            regressor needs ``y_test``. Named ``y_test``, not ``y``, so that metadata routing
            can pass it: in a :class:`~sklearn.pipeline.Pipeline`, request it with
            ``set_transform_request(y_test=True)`` and call
            ``pipeline.transform(X, y_test=labels)``.

        Returns
        -------
        influence : ndarray of shape (n_queries, n_train_)
            ``influence[q, m]``: predicted change of query q's measurement when training
            point m is removed. Positive means m helps q.

        Warns
        -----
        NumericalWarning
            When some entries are not finite (a query's loss gradient overflows, e.g.
            unscaled features of 1e200): the warning names the query and training rows
            concerned and the fix (scale the features); those entries are NaN or infinite,
            the others are exact. When no entry is finite it is a ``ValueError``.

        See Also
        --------
        fit_transform : The training set's influence on itself, with its labels.

        Examples
        --------
        The labels of the queries reach ``transform`` inside a pipeline through metadata
        routing:

        >>> import sklearn
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn.pipeline import make_pipeline
        >>> from sklearn.preprocessing import StandardScaler
        >>> from sklearn_influence import InfluenceFunction
        >>> X, y = load_iris(return_X_y=True)
        >>> with sklearn.config_context(enable_metadata_routing=True):
        ...     influence = InfluenceFunction(LogisticRegression(), random_state=0)
        ...     pipeline = make_pipeline(
        ...         StandardScaler(), influence.set_transform_request(y_test=True)
        ...     ).fit(X, y)
        ...     matrix = pipeline.transform(X[:5], y_test=y[:5])
        >>> matrix.shape
        (5, 150)
        """
        return self._influence_matrix(X, y_test)

    def _influence_matrix(self, X, y_test):
        """The influence matrix as numpy, whatever ``set_output`` says about ``transform``."""
        self._check_ready()
        inputs, targets = self._query_tensors(X, y_test)
        with self._progress().stage(f"influence matrix {len(inputs)} × {self.n_train_}"):
            matrix = self.engine_.influence(inputs, targets, self._damping(), self.n_jobs)
        return to_numpy(matrix)

    def transform_chunked(self, X, y_test=None, *, reduce_func=None, working_memory=None):
        """Generate the influence matrix block by block of training points (columns).

        In the style of :func:`sklearn.metrics.pairwise_distances_chunked`: the queries are
        preconditioned once, then each block of training points gives one chunk
        ``influence[:, start:start + width]`` — the matrix of :meth:`transform`, never held
        as a whole. Use it to reduce the matrix on the fly (sums per class, counts above a
        threshold, a custom top-k) when n_queries × n_train would not fit in memory.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query inputs.
        y_test : array-like of shape (n_queries,) or (n_queries, n_targets), default=None
            Query targets, see :meth:`transform`.
        reduce_func : callable, default=None
            Called as ``reduce_func(chunk, start)`` on each chunk, with ``start`` the index
            of the chunk's first training point (its first column); what it returns is
            yielded instead of the chunk. None yields the chunks themselves.
        working_memory : float, default=None
            The memory (MiB) a chunk of training gradients and its columns may take. None
            uses ``sklearn.get_config()["working_memory"]``. Too small for one training
            point is a ValueError.

        Yields
        ------
        chunk : ndarray of shape (n_queries, width)
            Consecutive column blocks of the influence matrix, in training order (the widths
            sum to ``n_train_``), or what ``reduce_func`` returns for each. The
            preconditioned queries (n_queries × n_parameters) are held while the generator
            runs.

        See Also
        --------
        transform : The whole influence matrix.
        most_influential : The k strongest entries per query, streamed the same way.

        Examples
        --------
        Sum the influence of each class of training points on every query, holding at most
        one chunk of the matrix:

        >>> import numpy as np
        >>> import sklearn
        >>> from sklearn.datasets import load_iris
        >>> from sklearn.linear_model import LogisticRegression
        >>> from sklearn_influence import InfluenceFunction
        >>> X, y = load_iris(return_X_y=True)
        >>> influence = InfluenceFunction(LogisticRegression(max_iter=1000)).fit(X, y)
        >>> def per_class(chunk, start):
        ...     labels = y[start:start + chunk.shape[1]]
        ...     return np.stack([chunk[:, labels == c].sum(1) for c in range(3)], axis=1)
        >>> sums = sum(influence.transform_chunked(X[:4], y[:4], reduce_func=per_class,
        ...                                        working_memory=0.01))
        >>> sums.shape
        (4, 3)
        >>> full = influence.transform(X[:4], y[:4])
        >>> bool(np.allclose(sums[:, 0], full[:, y == 0].sum(1)))
        True
        """
        self._check_ready()
        inputs, targets = self._query_tensors(X, y_test)
        if reduce_func is not None and not callable(reduce_func):
            raise TypeError(f"reduce_func must be callable or None, got {reduce_func!r}.")
        if working_memory is not None:
            working_memory_bytes(working_memory)  # a clear error before any work
        chunks = self.engine_.influence_chunks(
            inputs, targets, self._damping(), self.n_jobs, working_memory=working_memory
        )
        for rows, chunk in chunks:
            yield chunk if reduce_func is None else reduce_func(chunk, rows.start)

    def self_influence(self):
        """Self-influence ∇L_mᵀ(C + λI)⁻¹∇L_m / N ≥ 0 of every training point.

        Large values flag points the model fits only because they are in the training set —
        often mislabeled examples. The quadratic forms are streamed over blocks of training
        points sized by ``working_memory`` (through ``n_jobs`` workers).

        Returns
        -------
        self_influence : ndarray of shape (n_train_,)
        """
        self._check_ready()
        with self._progress().stage(f"self-influence of {self.n_train_} training points"):
            values = self.engine_.self_influence(self._damping(), self.n_jobs)
        return to_numpy(values)

    def most_influential(self, X, y_test=None, k=10):
        """The k most helpful and k most harmful training points for each query.

        Streamed: each block of training points (sized by scikit-learn's
        ``working_memory``) keeps only its k strongest entries per query, merged with the
        best so far, so the memory is O(n_queries · k) plus one block — the influence matrix
        is never held. The result equals a full sort of :meth:`transform`'s rows.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        y_test : array-like of shape (n_queries,), default=None
            See :meth:`transform`.
        k : int, default=10
            Between 1 and ``n_train_`` (a larger k is a ValueError).

        Returns
        -------
        result : :class:`~sklearn.utils.Bunch`
            ``helpful_indices``, ``helpful_values`` (largest influence first),
            ``harmful_indices``, ``harmful_values`` (most negative first), each of shape
            (n_queries, k). Equal values are listed by training index, lower first; when
            tied values straddle the k-th place, which of them are returned is unspecified.

        Raises
        ------
        ValueError
            When an influence to rank is not finite (NaN is never ranked): the message names
            the query or training rows that overflow and the fix (scale the features). The
            queries are checked before any training block is streamed.

        Examples
        --------
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.linear_model import Ridge
        >>> from sklearn_influence import InfluenceFunction
        >>> X, y = load_diabetes(return_X_y=True)
        >>> influence = InfluenceFunction(Ridge()).fit(X[:300], y[:300])
        >>> top = influence.most_influential(X[300:302], y[300:302], k=3)
        >>> top.helpful_indices.shape, top.harmful_values.shape
        ((2, 3), (2, 3))
        """
        if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        self._check_ready()
        if k > self.n_train_:
            raise ValueError(
                f"k={k} is larger than the number of training points n_train_={self.n_train_}; "
                "use k <= n_train_ (or transform for the whole matrix)."
            )
        inputs, targets = self._query_tensors(X, y_test)
        with self._progress().stage(f"top {k} of {self.n_train_} for {len(inputs)} queries"):
            helpful, helpful_values, harmful, harmful_values = self.engine_.top_k(
                inputs, targets, self._damping(), k, self.n_jobs
            )
        return Bunch(
            helpful_indices=helpful,
            helpful_values=helpful_values,
            harmful_indices=harmful,
            harmful_values=harmful_values,
        )

    # -- agreement with retraining -------------------------------------------------------
    def score(self, X, y):
        """Pearson correlation of predicted and actual loss changes under removal.

        ``n_score_points`` training points (drawn with ``random_state``) are removed one at a
        time and the model is retrained as ``score_target`` says. The actual change of the
        mean loss on (X, y), relative to the same retraining on all points, is compared with
        the mean influence on (X, y). Higher is better, so ``GridSearchCV`` over ``damping``
        selects the damping that best predicts retraining. The retraining does not depend on
        ``damping`` and is cached by ``memory``. :meth:`removal_agreement` gives the changes
        themselves and the Spearman correlation.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        y : array-like of shape (n_queries,) or (n_queries, n_targets)

        Returns
        -------
        score : float
            nan, with a warning, when the predicted or the actual changes are constant.
        """
        return self.removal_agreement(X, y).pearson

    def removal_agreement(self, X, y, *, train_indices=None, target=None, pbrf_damping=None):
        """Predicted and actual change of the mean loss on (X, y) when training points go.

        Each training point of ``train_indices`` is removed in turn and the model retrained
        as ``target`` says (see ``score_target``); the actual change of the mean loss on
        (X, y) is compared with its prediction, the mean influence of the point on (X, y)
        (:meth:`transform` at the fitted damping). :meth:`score` is the ``pearson`` field
        with the estimator's settings. The retraining does not depend on ``damping`` and is
        cached by ``memory``.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
            Query inputs.
        y : array-like of shape (n_queries,) or (n_queries, n_targets)
            Query targets; the measurement is the mean loss over the queries.
        train_indices : array-like of int, default=None
            Training row positions to remove, one at a time. None draws ``n_score_points``
            of them with ``random_state``, the points :meth:`score` removes.
        target : {"loo", "warm_loo", "pbrf"}, default=None
            The retraining compared with; None uses ``score_target``.
        pbrf_damping : float, default=None
            Proximity damping of the ``"pbrf"`` target; None uses ``score_damping``.

        Returns
        -------
        agreement : :class:`~sklearn.utils.Bunch`
            ``removed`` (ndarray of shape (n_removed,), the training positions removed),
            ``predicted`` and ``actual`` (ndarrays of shape (n_removed,), the predicted and
            actual change of the mean loss on (X, y) for each removed point; positive means
            removing it raises the loss), ``pearson`` and ``spearman`` (floats, their
            correlation across the removed points; nan, with one warning, when either side
            is constant).

        Examples
        --------
        >>> from sklearn.datasets import load_diabetes
        >>> from sklearn.linear_model import Ridge
        >>> from sklearn_influence import InfluenceFunction
        >>> X, y = load_diabetes(return_X_y=True)
        >>> influence = InfluenceFunction(Ridge(alpha=1.0)).fit(X[:300], y[:300])
        >>> agreement = influence.removal_agreement(X[300:], y[300:], train_indices=[0, 5, 9])
        >>> agreement.actual.shape
        (3,)
        >>> bool(agreement.pearson > 0.99)
        True
        """
        self._check_ready()
        target = self.score_target if target is None else target
        if target not in SCORE_TARGETS:
            raise ValueError(f"target must be one of {SCORE_TARGETS}, got {target!r}.")
        pbrf_damping = self.score_damping if pbrf_damping is None else pbrf_damping
        if not isinstance(pbrf_damping, Real) or not pbrf_damping >= 0:
            raise ValueError(f"pbrf_damping must be a number >= 0, got {pbrf_damping!r}.")
        if train_indices is None:
            removed = sample_training_points(self.n_train_, self.n_score_points, self.random_state)
        else:
            removed = check_train_indices(train_indices, self.n_train_)
        inputs, targets = self._query_tensors(X, y)
        X = validate_query_data(self, X)
        (predicted,), actual = self._removal_effects(
            self.engine_, self.X_train_, self.y_train_, (X, y, inputs, targets), removed,
            (target, pbrf_damping, self._score_options(target)), [self._damping()],
        )  # fmt: skip
        pearson = correlation(
            predicted, actual, method="pearson", message=UNDEFINED_AGREEMENT, stacklevel=2
        )
        spearman = pearson if np.isnan(pearson) else correlation(
            predicted, actual, method="spearman"
        )  # fmt: skip
        return Bunch(
            removed=removed, predicted=predicted, actual=actual, pearson=pearson, spearman=spearman
        )

    def _score_options(self, target):
        """The checked ``score_options`` as a hashable tuple (None for other targets)."""
        if target != "pbrf":
            return None
        # InfluenceFunctionCV has no score_options: its PBRF target keeps the defaults
        options = getattr(self, "score_options", None)
        return tuple(sorted(check_score_options(options).items()))

    def _removal_effects(self, engine, X_train, y_train, queries, removed, target, dampings):
        """Predicted (one array per damping) and actual mean changes over the queries.

        ``queries`` is ``(X, y, inputs, targets)``: the query data and its tensors. The actual
        changes (:func:`~._responses._removal.removal_changes`) do not depend on the damping:
        ``memory`` caches them with the fit, across the clones of a grid search.
        """
        X_query, y_query, inputs, targets = queries
        predicted = [
            _finite_removal_influence(
                to_numpy(engine.influence(inputs, targets, damping, self.n_jobs)), removed
            )
            for damping in dampings
        ]
        cached = check_memory(self.memory).cache(
            _removal_changes, ignore=["adapter", "theta", "n_jobs", "memory", "verbose"]
        )
        actual = cached(
            engine.adapter, engine.theta, X_train, y_train, removed, target, self.n_jobs,
            X_query, y_query, self._fit_key(), self.memory, getattr(self, "verbose", 0),
        )  # fmt: skip
        return predicted, actual

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        # the wrapped model's target support (GammaRegressor: y > 0), looking through
        # pipelines (which do not forward it) and frozen estimators
        _, model = unwrap(self.estimator)
        tags.target_tags.positive_only = get_tags(model).target_tags.positive_only
        return tags
