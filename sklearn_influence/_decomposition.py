"""The five-term decomposition of the gap between influence estimates and leave-one-out.

Bae et al. (NeurIPS 2022) order six objects so that consecutive ones differ by one
approximation (DESIGN.md §2):

    cold-start LOO → warm-start LOO → PRF → PBRF → linearized PBRF → influence estimate
             warm-start gap · proximity gap · non-convergence gap ·
             linearization error · solver error

:class:`InfluenceDecomposition` computes all six on the same removed points and reports each
term (a) as the mean distance between the two objects' outputs on the training inputs and
(b) as the correlation of their measurement changes on queries.
"""

import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, _fit_context
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import (
    INFLUENCE_CONSTRAINTS,
    MEMORY_CONSTRAINTS,
    MODEL_CONSTRAINTS,
    OPTIMIZER_CONSTRAINTS,
    PARALLEL_CONSTRAINTS,
    FittedModelMixin,
    mean_row_correlation,
    routed_fit_params,
)
from ._engine._shifts import parameter_shifts
from ._influence import InfluenceFunction
from ._progress import Progress
from ._responses._functions import (
    cold_leave_one_out,
    linearized_pbrf,
    measurement_changes,
    proximal_response,
    warm_leave_one_out,
)
from ._responses._optimizers import AUTO_STEPS, resolve_optimizer
from ._torch_utils import resolve_device, seeded_torch, to_numpy
from ._validation import validate_sample_weight, validate_training_data
from .exceptions import NotStationaryWarning
from .metrics._display import _check_matplotlib

#: the six objects, from actual retraining to the practical estimate
OBJECTS = ("cold_loo", "warm_loo", "prf", "pbrf", "linearized_pbrf", "influence")

#: the five terms: (name, object a, object b)
TERMS = (
    ("warm_start_gap", "cold_loo", "warm_loo"),
    ("proximity_gap", "warm_loo", "prf"),
    ("non_convergence_gap", "prf", "pbrf"),
    ("linearization_error", "pbrf", "linearized_pbrf"),
    ("solver_error", "linearized_pbrf", "influence"),
)


def _table(rows, index_name):
    """A pandas DataFrame indexed by ``index_name`` when pandas is installed, else a dict.

    ``rows`` is a list of dicts with the same keys; the dict form maps each column name
    (the index included) to a list of values.
    """
    try:
        import pandas as pd
    except ImportError:
        keys = list(rows[0]) if rows else [index_name]
        return {key: [row[key] for row in rows] for key in keys}
    return pd.DataFrame(rows).set_index(index_name)


class InfluenceDecomposition(FittedModelMixin, BaseEstimator):
    """Cold and warm LOO, PRF, PBRF, linearized PBRF and influence on the same removals.

    ``fit`` fits the model once (or takes a frozen one), removes each point of
    ``train_indices`` (ε = 1/N) and computes all six objects of Bae et al. (2022):
    cold-start leave-one-out retraining, warm-start leave-one-out, the proximal response
    function, the PBRF, the linearized PBRF and the influence estimate of
    :class:`~sklearn_influence.InfluenceFunction` with its ``solver`` and ``curvature``.
    :meth:`decompose` reports the five differences between consecutive objects.

    Parameters
    ----------
    estimator : estimator object
        A supported model, a :class:`~sklearn.pipeline.Pipeline` ending in one, or a
        :class:`~sklearn.frozen.FrozenEstimator` around one (cold-start refits of neural
        nets need the original initialisation: pass them unfrozen).
    damping : float, default=1e-3
        λ: the proximity weight of the PRF and PBRF and the damping of the linearized PBRF
        and of the influence estimate.
    curvature : {"gauss_newton", "hessian", "identity", "kfac", "ekfac"}, \
            default="gauss_newton"
        Curvature of the influence estimate.
    solver : str, default="auto"
        Solver of the influence estimate (the linearized PBRF always uses an exact solve
        while the dense matrix is small).
    solver_options : dict, default=None
        Settings of the influence estimate's solver.
    curvature_options : dict, default=None
        Settings of the influence estimate's curvature, see :class:`InfluenceFunction`.
    train_indices : array-like of int, default=None
        Training row positions to remove, one at a time. None draws ``n_points`` of them.
    n_points : int, default=50
        Number of points drawn when ``train_indices`` is None.
    method : {"auto", "newton", "optimizer"}, default="auto"
        How PRF and PBRF are minimised (see :class:`~sklearn_influence.PBRF`).
    optimizer : {"auto", "lbfgs", "sgd", "adam"}, default="auto"
        ``"auto"``: L-BFGS for the PRF with full batches (it finishes the training, far
        from θˢ, where SGD's step from the curvature at θˢ does not converge), SGD for the
        PBRF (nearly quadratic around θˢ).
    learning_rate : float or "auto", default="auto"
    n_iter : int or "auto", default="auto"
        Maximum steps per removed point. ``"auto"``: 3000 for L-BFGS, 1000 for SGD and Adam
        (the defaults of :class:`~sklearn_influence.ProximalResponse` and
        :class:`~sklearn_influence.PBRF`).
    batch_size : int, default=None
    tol : float, default=1e-4
    optimizer_options : dict, default=None
        Optimizer settings of PRF and PBRF, as in :class:`~sklearn_influence.PBRF`.
    device : str, default="cpu"
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    n_jobs : int, default=None
        Parallel refits and chunks of batched optimisations (:mod:`sklearn.utils.parallel`).
    memory : str or object with the joblib.Memory interface, default=None
        Saves the finished refits and chunks of PRF/PBRF optimisations as they complete (a
        folder, or a ``joblib.Memory``): an interrupted ``fit`` started again with the same
        ``memory`` computes only what was not finished, with a bitwise identical result.
        The model's fit (when ``random_state`` is set) and the automatic optimizer settings
        are saved too, and each chunk is at most ~30 s of work by a cost model (see
        :class:`~sklearn_influence.PBRF`). None: nothing is saved.
    random_state : int, RandomState instance or None, default=None
        Draws the removed points; seeds torch in a forked RNG.
    verbose : int, default=0
        Progress, as in :class:`InfluenceFunction`: 1 a line per response (and influence
        stage) with its time, 2 also the refits as they finish, with the time left.

    Attributes
    ----------
    estimator_ : estimator object
        The fitted model.
    influence_ : InfluenceFunction
        The fitted influence estimator (on the frozen model).
    train_indices_ : ndarray of shape (n_points,)
        The removed training points.
    parameters_ : dict of str to ndarray of shape (n_points, n_parameters)
        Parameters of each object (keys: ``"cold_loo"``, ``"warm_loo"``, ``"prf"``,
        ``"pbrf"``, ``"linearized_pbrf"``, ``"influence"``).
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
    converged_ : dict of str to ndarray of bool
        Convergence of each removed point's PRF and PBRF optimisation.
    output_distances_ : dict of (str, str) to float
        Mean over removed points and training inputs of ‖h(θ_a, x) − h(θ_b, x)‖ for every
        pair of objects.
    n_train_ : int
        Number of training points N.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``, when X has string column names.

    See Also
    --------
    InfluenceDecompositionDisplay : Bar plot of the five terms.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn_influence import InfluenceDecomposition
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1))
    >>> parts = InfluenceDecomposition(model, n_points=10, random_state=0).fit(X[:300], y[:300])
    >>> table = parts.decompose(X[300:320], y[300:320])
    >>> list(table.index)  # doctest: +NORMALIZE_WHITESPACE
    ['warm_start_gap', 'proximity_gap', 'non_convergence_gap', 'linearization_error',
     'solver_error']
    >>> list(table.columns)
    ['from', 'to', 'output_distance', 'pearson', 'spearman']
    """

    _parameter_constraints = {
        **MODEL_CONSTRAINTS,
        **INFLUENCE_CONSTRAINTS,
        **OPTIMIZER_CONSTRAINTS,  # batch_size: the optimizer's (None: full batches)
        "n_iter": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        **PARALLEL_CONSTRAINTS,
        **MEMORY_CONSTRAINTS,
        "train_indices": ["array-like", None],
        "n_points": [Interval(Integral, 2, None, closed="left")],
    }

    def __init__(
        self,
        estimator,
        *,
        damping=1e-3,
        curvature="gauss_newton",
        solver="auto",
        solver_options=None,
        curvature_options=None,
        train_indices=None,
        n_points=50,
        method="auto",
        optimizer="auto",
        learning_rate="auto",
        n_iter="auto",
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
        self.curvature = curvature
        self.solver = solver
        self.solver_options = solver_options
        self.curvature_options = curvature_options
        self.train_indices = train_indices
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

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, sample_weight=None):
        """Fit the model and compute the six objects for every removed point.

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
        self : InfluenceDecomposition
            The fitted decomposition.
        """
        X, y = validate_training_data(self, X, y)
        sample_weight = validate_sample_weight(self, sample_weight, len(y))
        device = resolve_device(self.device)
        indices = self._removed_points(len(y))
        with seeded_torch(self.random_state) as seed:
            problem = self._fit_problem(X, y, device, routed_fit_params(self, sample_weight))
            results = self._objects(problem, indices, seed)
        with warnings.catch_warnings():
            # the same model and data: _fit_problem has warned already
            warnings.simplefilter("ignore", NotStationaryWarning)
            self.influence_ = InfluenceFunction(
                FrozenEstimator(self.estimator_),
                damping=self.damping,
                curvature=self.curvature,
                solver=self.solver,
                solver_options=self.solver_options,
                curvature_options=self.curvature_options,
                device=self.device,
                verbose=self.verbose,
                random_state=self.random_state,
            ).fit(X, y, sample_weight=problem.adapter.fit_sample_weight)
        engine = self.influence_.engine_
        index = torch.as_tensor(indices, device=problem.theta.device)
        shift = parameter_shifts(
            engine.solver, engine.train_gradients(index), self.damping, problem.epsilons(indices)
        )
        results["influence"] = problem.theta + shift
        self.problem_ = problem
        self.train_indices_ = indices
        self.n_train_ = problem.n_train
        self.reference_parameters_ = to_numpy(problem.theta)
        self.parameters_ = {name: to_numpy(results[name]) for name in OBJECTS}
        self.output_distances_ = self._output_distances(problem, results)
        return self

    def _objects(self, problem, indices, seed):
        """Parameters of the five response objects, shape (n_points, p) each."""
        common = {"n_jobs": self.n_jobs, "verbose": self.verbose, "memory": self.memory}
        common["key"] = self._memory_key()
        settings = {
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "n_iter": self.n_iter,
            "batch_size": self.batch_size,
            "tol": self.tol,
            "seed": seed,
            "optimizer_options": self.optimizer_options,
        }
        progress = Progress(self.verbose, type(self).__name__)
        with progress.stage(f"cold-start leave-one-out: {len(indices)} refits"):
            cold = cold_leave_one_out(problem, indices, **common)
        with progress.stage(f"warm-start leave-one-out: {len(indices)} refits"):
            warm = warm_leave_one_out(problem, indices, **common)
        proximal = {}
        for kind in ("prf", "pbrf"):
            settings["n_iter"] = self._steps(kind, problem.n_train)
            with progress.stage(f"{kind.upper()}: {len(indices)} batched optimisations"):
                proximal[kind] = proximal_response(
                    problem, kind, indices, damping=self.damping, method=self.method, **common,
                    **settings,
                )  # fmt: skip
        with progress.stage("linearized PBRF"):
            linear = linearized_pbrf(problem, indices, damping=self.damping)
        self.converged_ = {kind: np.asarray(proximal[kind].converged) for kind in proximal}
        return {
            "cold_loo": cold.parameters,
            "warm_loo": warm.parameters,
            "prf": proximal["prf"].parameters,
            "pbrf": proximal["pbrf"].parameters,
            "linearized_pbrf": linear.parameters,
        }

    def _steps(self, kind, n_train):
        """``n_iter="auto"``: the step budget of the optimizer ``kind`` resolves to."""
        if self.n_iter != "auto":
            return self.n_iter
        optimizer = resolve_optimizer(kind, self.optimizer, self.batch_size, n_train)
        return AUTO_STEPS[optimizer]

    @staticmethod
    def _output_distances(problem, results):
        outputs = {name: problem.outputs(results[name]) for name in OBJECTS}
        distances = {}
        for position, first in enumerate(OBJECTS):
            for second in OBJECTS[position + 1 :]:
                gap = (outputs[first] - outputs[second]).norm(dim=-1).mean()
                distances[first, second] = distances[second, first] = float(gap)
        return distances

    def measurement_changes(self, X, y_test=None):
        """Δf of every object on the queries.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        y_test : array-like of shape (n_queries,), default=None
            Query targets (see :meth:`InfluenceFunction.transform`).

        Returns
        -------
        changes : dict of str to ndarray of shape (n_queries, n_points)
            For the five response objects the actual change f(θ_resp) − f(θˢ); for
            ``"influence"`` the influence estimate itself (its first-order prediction).
        """
        check_is_fitted(self, "parameters_")
        inputs, targets = self._query_tensors(X, y_test)
        problem = self.problem_
        changes = {}
        for name in OBJECTS[:-1]:
            thetas = torch.as_tensor(self.parameters_[name], dtype=problem.theta.dtype)
            changes[name] = to_numpy(
                measurement_changes(
                    problem.adapter,
                    problem.theta,
                    thetas.to(problem.theta.device),
                    inputs,
                    targets,
                )
            )
        estimate = self.influence_.transform(X, y_test)
        changes["influence"] = estimate[:, self.train_indices_]
        return changes

    def decompose(self, X, y_test=None):
        """The five terms, both in output space and as agreement on the queries.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        y_test : array-like of shape (n_queries,), default=None
            Query targets (see :meth:`InfluenceFunction.transform`).

        Returns
        -------
        table : pandas.DataFrame or dict
            One row per term (index ``term``: ``warm_start_gap``, ``proximity_gap``,
            ``non_convergence_gap``, ``linearization_error``, ``solver_error``) with the
            objects compared (``from``, ``to``), ``output_distance`` (mean over removed
            points and training inputs of ‖h(θ_from, x) − h(θ_to, x)‖; small is a small
            gap) and ``pearson`` / ``spearman`` (correlation across removed points of the
            two objects' Δf, averaged over queries; 1 is full agreement). A dict of
            columns when pandas is not installed.
        """
        changes = self.measurement_changes(X, y_test)
        rows = [
            self._row(changes, first, second) | {"term": term, "from": first, "to": second}
            for term, first, second in TERMS
        ]
        order = ("term", "from", "to", "output_distance", "pearson", "spearman")
        return _table([{key: row[key] for key in order} for row in rows], "term")

    def agreement(self, X, y_test=None, *, reference="influence"):
        """How each object agrees with ``reference`` (by default the influence estimate).

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        y_test : array-like of shape (n_queries,), default=None
        reference : str, default="influence"
            One of the six objects.

        Returns
        -------
        table : pandas.DataFrame or dict
            One row per other object (index ``object``) with ``output_distance``,
            ``pearson`` and ``spearman`` against ``reference``, as in :meth:`decompose`.
        """
        if reference not in OBJECTS:
            raise ValueError(f"reference must be one of {OBJECTS}, got {reference!r}.")
        changes = self.measurement_changes(X, y_test)
        rows = [
            {"object": name} | self._row(changes, reference, name)
            for name in OBJECTS
            if name != reference
        ]
        return _table(rows, "object")

    def _row(self, changes, first, second):
        return {
            "output_distance": self.output_distances_[first, second],
            "pearson": mean_row_correlation(changes[first], changes[second]),
            "spearman": mean_row_correlation(changes[first], changes[second], method="spearman"),
        }


class InfluenceDecompositionDisplay:
    """Bar plot of the five terms of an :class:`InfluenceDecomposition`.

    Build it with :meth:`from_estimator`; matplotlib is needed only to plot.

    Parameters
    ----------
    table : pandas.DataFrame or dict
        The output of :meth:`InfluenceDecomposition.decompose`.
    estimator_name : str, default=None
        Shown in the title.

    Attributes
    ----------
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    bars_ : matplotlib BarContainer

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sklearn.datasets import load_diabetes
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence import InfluenceDecomposition, InfluenceDecompositionDisplay
    >>> X, y = load_diabetes(return_X_y=True)
    >>> parts = InfluenceDecomposition(Ridge(), n_points=5, random_state=0).fit(X[:200], y[:200])
    >>> display = InfluenceDecompositionDisplay.from_estimator(parts, X[200:220], y[200:220])
    >>> len(display.bars_)
    5
    """

    METRICS = ("output_distance", "pearson", "spearman")

    def __init__(self, table, *, estimator_name=None):
        self.table = table
        self.estimator_name = estimator_name

    def _columns(self):
        table = self.table
        if isinstance(table, dict):
            return list(table["term"]), {key: list(table[key]) for key in self.METRICS}
        return list(table.index), {key: list(table[key]) for key in self.METRICS}

    def plot(self, ax=None, *, metric="output_distance", log=None, **bar_kwargs):
        """Draw one bar per term.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Axes to draw on; a new figure when None.
        metric : {"output_distance", "pearson", "spearman"}, default="output_distance"
        log : bool, default=None
            Logarithmic y axis; by default for ``output_distance`` only.
        **bar_kwargs
            Passed to :meth:`matplotlib.axes.Axes.bar`.

        Returns
        -------
        display : InfluenceDecompositionDisplay
        """
        plt = _check_matplotlib(f"{type(self).__name__}.plot")
        if metric not in self.METRICS:
            raise ValueError(f"metric must be one of {self.METRICS}, got {metric!r}.")
        terms, columns = self._columns()
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3.5))
        labels = [term.replace("_", " ") for term in terms]
        self.bars_ = ax.bar(labels, columns[metric], **bar_kwargs)
        if log if log is not None else metric == "output_distance":
            ax.set_yscale("log")
        ax.set_ylabel(metric.replace("_", " "))
        ax.tick_params(axis="x", labelrotation=20)
        title = "Influence vs leave-one-out: five terms"
        ax.set_title(title if self.estimator_name is None else f"{title} ({self.estimator_name})")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_estimator(
        cls, estimator, X, y_test=None, *, ax=None, metric="output_distance", **bar_kwargs
    ):
        """Decompose on (X, y_test) with a fitted :class:`InfluenceDecomposition` and plot.

        Parameters
        ----------
        estimator : InfluenceDecomposition
            Fitted.
        X : array-like of shape (n_queries, n_features)
        y_test : array-like of shape (n_queries,), default=None
        ax : matplotlib Axes, default=None
        metric : {"output_distance", "pearson", "spearman"}, default="output_distance"
        **bar_kwargs
            Passed to :meth:`matplotlib.axes.Axes.bar`.

        Returns
        -------
        display : InfluenceDecompositionDisplay
        """
        _check_matplotlib(f"{cls.__name__}.from_estimator")
        if not isinstance(estimator, InfluenceDecomposition):
            raise TypeError(
                f"from_estimator needs a fitted InfluenceDecomposition, got "
                f"{type(estimator).__name__}."
            )
        table = estimator.decompose(X, y_test)
        name = type(estimator.estimator_).__name__
        return cls(table, estimator_name=name).plot(ax=ax, metric=metric, **bar_kwargs)
