"""What the estimators share: fit-then-adapter, point sampling, correlations, constraints.

* :func:`fit_model_and_adapter` — fit a clone of the model (a ``FrozenEstimator`` is used
  as fitted) and build its functional torch view; every estimator fits its model this way,
  so the same ``random_state`` gives the same θˢ everywhere.
* :func:`sample_training_points` — the training points that scores and responses remove.
* :func:`correlation`, :func:`row_correlations`, :func:`mean_row_correlation` — Pearson or
  Spearman agreement of predicted and actual effects; undefined (nan) where one side is
  constant.
* ``*_CONSTRAINTS`` — the ``_parameter_constraints`` pieces that the estimators extend, as
  scikit-learn's linear models extend their base class's dict.
* :func:`stationarity` and :func:`warn_if_not_stationary` — how far the fitted parameters
  are from a stationary point of the training objective (the fitted ``stationarity_``), and
  the ``ConvergenceWarning`` for convex models that are not at their optimum.
* :class:`FittedModelMixin` — the fitted model, removed points and query tensors of the
  response estimators and the decomposition.
"""

import re
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from scipy.stats import rankdata, spearmanr
from sklearn.base import clone
from sklearn.frozen import FrozenEstimator
from sklearn.utils import check_random_state, metadata_routing
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metadata_routing import (
    MetadataRouter,
    MethodMapping,
    _routing_enabled,
    process_routing,
)
from sklearn.utils.validation import check_memory

from ._adapters import _family, fit_with_weights, make_adapter, unwrap
from ._engine._capabilities import check_pairing, model_capabilities
from ._engine._curvature import CURVATURES
from ._engine._gradients import batch_slices, per_example_gradients, resolve_query_targets
from ._engine._layers import (
    check_factored_gradients,
    factored_gradient_layers,
    factored_gradient_sum_and_norms,
    layer_gradient_factors,
)
from ._engine._solvers import SOLVERS
from ._responses._functions import METHODS, ResponseProblem
from ._responses._optimizers import OPTIMIZERS
from ._torch_utils import restore_seeded_state, seeded_state
from ._validation import query_tensors
from .exceptions import NotStationaryWarning, UndefinedCorrelationWarning

# -- parameter constraints -------------------------------------------------------------------


class DeviceName(StrOptions):
    """The ``device`` constraint: ``"cpu"``, ``"cuda"``, ``"cuda:<index>"``, ``"auto"`` or a
    :class:`torch.device` of those types (whether a GPU is there is checked at fit).

    A :class:`~sklearn.utils._param_validation.StrOptions` (the kinds scikit-learn's
    validation knows) that also accepts the indexed CUDA devices.

    Examples
    --------
    >>> from sklearn_influence._base import DeviceName
    >>> [DeviceName().is_satisfied_by(name) for name in ("cpu", "cuda:1", "auto", "tpu", 0)]
    [True, True, True, False, False]
    """

    _PATTERN = re.compile(r"cuda:\d+")

    def __init__(self):
        super().__init__({"cpu", "cuda", "auto"})

    def is_satisfied_by(self, val):
        if isinstance(val, torch.device):
            return val.type in ("cpu", "cuda")
        if not isinstance(val, str):
            return False
        return val in self.options or self._PATTERN.fullmatch(val) is not None

    def __str__(self):
        return "a str among {'cpu', 'cuda', 'cuda:<index>', 'auto'} or a torch.device"


#: the number of workers: joblib's convention (None, a positive count or -1, -2, ...; 0 has
#: no meaning and joblib would refuse it only when the first parallel call runs)
N_JOBS = [
    Interval(Integral, 1, None, closed="left"),
    Interval(Integral, None, -1, closed="right"),
    None,
]

#: the model, the damping λ, where the math runs and the seed: every estimator has them
MODEL_CONSTRAINTS = {
    "estimator": [HasMethods(["fit"])],
    "damping": [Interval(Real, 0, None, closed="left")],
    "device": [DeviceName()],
    "random_state": ["random_state"],
}

#: how the influence estimate applies (C + λI)⁻¹
SOLVER_CONSTRAINTS = {
    "solver": [StrOptions({"auto", *SOLVERS})],
    "solver_options": [dict, None],
}

#: the curvature C and the rows per vectorised batch of the influence estimate
INFLUENCE_CONSTRAINTS = {
    **SOLVER_CONSTRAINTS,
    "curvature": [StrOptions(set(CURVATURES))],
    "curvature_options": [dict, None],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
}

#: how the PRF and PBRF objectives are minimised (``batch_size=None``: full batches)
OPTIMIZER_CONSTRAINTS = {
    "method": [StrOptions(set(METHODS))],
    "optimizer": [StrOptions(set(OPTIMIZERS))],
    "learning_rate": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
    "n_iter": [Interval(Integral, 1, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    "tol": [Interval(Real, 0, None, closed="left")],
    "optimizer_options": [dict, None],
}

#: parallel workers and progress messages
PARALLEL_CONSTRAINTS = {"n_jobs": N_JOBS, "verbose": ["verbose"]}

#: where long runs save their finished chunks (a folder or a joblib.Memory)
MEMORY_CONSTRAINTS = {"memory": [None, str, HasMethods(["cache"])]}

#: the docstring entry of ``memory`` for the estimators that compute responses
MEMORY_DOC = """    memory : str or object with the joblib.Memory interface, default=None
        Saves the finished chunks of removed points as they complete (a folder, or a
        ``joblib.Memory``): a long run that is interrupted (Ctrl-C, a killed job) and
        started again with the same ``memory`` computes only what was not finished, and its
        result is bitwise identical to an uninterrupted run with ``memory``. What precedes
        the first chunk is saved too: the model's fit (when ``random_state`` is set and no
        ``random_state`` of the model is None; a frozen model is never refit) and the
        automatic optimizer settings (step size, momentum). With it the chunks are fixed by
        the removed points and the problem alone (at least 20, whatever ``n_jobs``), and
        each is at most ~30 s of work by a cost model (the step budget times the counted
        flops of a pass at an assumed 1e9 flop/s on a CPU, 5e10 on a GPU), so an
        interruption loses at most that. None: nothing is saved."""


# -- declared choices ------------------------------------------------------------------------


def check_influence_choices(
    estimator, *, curvature, solver, solver_options=None, curvature_options=None, **_
):
    """Check the curvature/solver choices and their options against their declarations.

    Before any fitting: an unknown or invalid option is scikit-learn's
    ``InvalidParameterError``; a pairing the model family cannot support (scikit-learn's
    ``MLPClassifier`` with ``curvature="kfac"``: no layer structure) or the choices
    cannot support together (``solver="factored"`` with ``curvature="gauss_newton"``) is an
    :class:`~sklearn_influence._engine._capabilities.UnsupportedCombinationError` (a
    ValueError) naming both and the fix.
    """
    curvature_class = CURVATURES[curvature]
    curvature_class.check_options(curvature_options)
    solver_class = None if solver == "auto" else SOLVERS[solver]
    if solver_class is not None:
        solver_class.check_options(solver_options)
    _, model = unwrap(estimator)
    try:
        _, _, adapter_class = _family(model)
    except (TypeError, ValueError):  # an unsupported estimator: refused by its own check
        return
    check_pairing(
        curvature_class,
        solver_class,
        offered=model_capabilities(adapter_class),
        options=solver_options,
        model_name=type(model).__name__,
    )


# -- fitting -------------------------------------------------------------------------------


def fit_model_and_adapter(estimator, X, y, device, fit_params=None, memory=None):
    """Fit a clone of ``estimator`` and build its adapter; ``(fitted, adapter)``.

    A :class:`~sklearn.frozen.FrozenEstimator` is used as fitted (no clone, no refit). Call
    it inside :func:`~sklearn_influence._torch_utils.seeded_torch` when the fit is random.

    Parameters
    ----------
    estimator : estimator object
        A supported model (see :class:`~sklearn_influence.InfluenceFunction`).
    X, y : array-like
        The training data, already validated.
    device : torch.device
        Where the adapter keeps its parameters.
    fit_params : dict or None
        Parameters of the model's ``fit`` (``sample_weight``, already validated and routed:
        :func:`routed_fit_params`). The weights the final model is fitted with (a frozen
        model: ``fit_params["sample_weight"]``) are the weights of its objective.
    memory : None, str or joblib.Memory
        Where the fit is saved (:func:`_cached_fit`): an interrupted long run started again
        with the same ``memory`` does not refit the model.

    The adapter records :func:`stationarity` at the fitted parameters as its attribute
    ``stationarity``; non-finite gradients stop here, before any other numerical work, with
    a ``ValueError`` naming the likely cause.
    """
    fit_params = fit_params or {}
    if isinstance(estimator, FrozenEstimator):
        fitted, fit_state = estimator, None
        sample_weight = fit_params.get("sample_weight")
    else:
        fitted, fit_state, sample_weight = _cached_fit(estimator, X, y, fit_params, memory)
    adapter = make_adapter(fitted, len(y), device, fit_state, sample_weight=sample_weight, y=y)
    #: the weights the final model was fitted with (before any class weights), or None
    adapter.fit_sample_weight = sample_weight
    adapter.stationarity = stationarity(adapter, adapter.inputs(X), adapter.targets(y))
    return fitted, adapter


def _fit_clone(estimator, X, y, fit_params, generator_state):
    """``(fitted clone, fit state, its weights, the seeded generator's state after)``.

    ``generator_state`` (the :func:`~._torch_utils.seeded_torch` generator's state before the
    fit, which fixes a network's initialisation and data order) is only a cache key.
    """
    fitted = clone(estimator)
    try:
        fit_state, sample_weight = fit_with_weights(fitted, X, y, **fit_params)
    except ValueError as error:
        _explain_overflowing_fit(error, fitted, X)
        raise
    return fitted, fit_state, sample_weight, seeded_state()


def _cached_fit(estimator, X, y, fit_params, memory):
    """:func:`_fit_clone`, saved in ``memory`` when the fit is reproducible.

    Reproducible: inside a :func:`~._torch_utils.seeded_torch` block, with no
    ``random_state=None`` among the model's parameters (such a model draws from numpy's
    global generator, so its fit is not a function of its inputs and is always redone). The
    key is the model's parameters, the data, the fit parameters and the generator state; a
    saved fit leaves the generator in the state the fit would have, so everything drawn
    after it is what an uncached run draws, and the result is bitwise the same.
    """
    memory = check_memory(memory)
    state = seeded_state()
    seeded = state is not None and not any(
        name.split("__")[-1] == "random_state" and value is None
        for name, value in estimator.get_params(deep=True).items()
    )
    if getattr(memory, "location", None) is None or not seeded:
        fitted, fit_state, sample_weight, _ = _fit_clone(estimator, X, y, fit_params, None)
        return fitted, fit_state, sample_weight
    fit = memory.cache(_fit_clone, verbose=0)
    fitted, fit_state, sample_weight, after = fit(estimator, X, y, fit_params, state.numpy())
    restore_seeded_state(after)
    return fitted, fit_state, sample_weight


def _explain_overflowing_fit(error, model, X):
    """Re-raise a model's own "contains NaN/inf" error on finite data as what it is: its
    computations overflowed on huge features (the fix: scale them). Else return."""
    text = str(error).lower()
    if "inf" not in text and "nan" not in text:
        return
    try:
        values = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):  # a pipeline's raw input (strings, frames): not ours
        return
    if not (values.size and np.all(np.isfinite(values))):
        return
    largest = float(np.abs(values).max())
    raise ValueError(
        f"The fit of {type(model).__name__} failed ({error}) although the training data are "
        f"finite: its computations overflowed. The likely cause is unscaled or huge features "
        f"(largest |feature|: {largest:.3g}); scale them, e.g. with StandardScaler in a "
        "Pipeline."
    ) from error


def routed_fit_params(owner, sample_weight):
    """The ``fit`` parameters of ``owner.estimator``: ``{"sample_weight": w}`` or ``{}``.

    With scikit-learn's metadata routing enabled (``sklearn.set_config(
    enable_metadata_routing=True)``) the weights go where the wrapped model requested them
    (``set_fit_request(sample_weight=True)``, on the model or on steps of a pipeline), as in
    scikit-learn's meta-estimators; without it they go to the model (the final step of a
    pipeline). A ``FrozenEstimator`` is not fitted: the weights describe the objective it
    was fitted with.
    """
    if sample_weight is None:
        return {}
    if _routing_enabled() and not isinstance(owner.estimator, FrozenEstimator):
        routed = process_routing(owner, "fit", sample_weight=sample_weight)
        return dict(routed.estimator.fit)
    return {"sample_weight": sample_weight}


class WeightedFitRouterMixin:
    """Metadata routing of ``fit``'s ``sample_weight`` to the wrapped ``estimator``.

    The estimators of the package are routers (as scikit-learn's meta-estimators): the
    weights are the wrapped model's, so they go where it requests them, and are never
    requested by the estimator itself (its other metadata, such as ``transform``'s
    ``y_test``, is requested as usual with ``set_transform_request``).
    """

    __metadata_request__fit = {"sample_weight": metadata_routing.UNUSED}

    def get_metadata_routing(self):
        """Get the metadata routing of this object.

        Returns
        -------
        routing : MetadataRouter
            ``fit`` routes ``sample_weight`` to ``estimator.fit`` when the estimator requests
            it (see :ref:`sklearn:metadata_routing`); the estimator's own requests (such as
            ``transform``'s ``y_test``) are kept.
        """
        return (
            MetadataRouter(owner=self)
            .add_self_request(self)
            .add(
                estimator=self.estimator,
                method_mapping=MethodMapping().add(caller="fit", callee="fit"),
            )
        )


# -- stationarity ----------------------------------------------------------------------------

#: relative gradient norm (:func:`stationarity`) above which a convex model is warned about.
#: Measured on 600 digits, a frozen LogisticRegression gives 0.17 / 0.050 / 0.013 at
#: max_iter 2 / 5 / 20 (influence matrices correlating 0.50 / 0.60 / 0.99 with the tightly
#: converged model's), 7e-4 with scikit-learn's defaults (tol=1e-4) and 1e-7 at tol=1e-10;
#: fitted on other data, 0.14
STATIONARITY_TOL = 1e-2


def stationarity(adapter, inputs, targets, *, batch_size=512):
    """Relative gradient norm of the training objective at the fitted parameters θˢ.

    .. math:: s = \\frac{\\lVert \\nabla J(\\theta^s) \\rVert}
              {\\frac{1}{N}\\sum_i \\lVert \\nabla L_i(\\theta^s) \\rVert
               + \\lVert \\nabla R(\\theta^s) \\rVert}

    with J = (1/N) Σ_i L_i + R (weighted models: w̃_i L_i and w̃_i ‖∇L_i‖, w̃ of mean 1). By
    the triangle inequality 0 ≤ s ≤ 1: 0 at a stationary
    point (the per-example gradients cancel against each other and the penalty), 1 when they
    all point the same way. Influence functions assume s = 0; the per-example gradients are
    computed in blocks of ``batch_size`` rows (never all N × p at once).

    Raises ``ValueError`` naming the likely cause (unscaled or huge features) when θˢ, a
    gradient or a squared gradient norm is not finite — before any curvature is formed.
    """
    theta = adapter.parameters()
    weights = adapter.row_weights  # w̃_i (mean 1), or None
    if not bool(torch.isfinite(theta).all()):
        raise ValueError(
            "The fitted model's parameters contain NaN or infinity, so influence cannot be "
            "computed. The fit diverged: scale the features (e.g. StandardScaler in a "
            "Pipeline) or regularize more."
        )
    total = torch.zeros_like(theta)
    norms = theta.new_zeros(())
    # a network of Linear/Conv2d layers only: sums and norms from per-layer factors, without
    # the (rows, p) per-example gradients (at p = 10⁶ they made this check cost minutes)
    # (weighted rows: only models linear in θ take weights, and those have no factored layers)
    factored = len(inputs) > 0 and weights is None
    layers = factored_gradient_layers(adapter, theta) if factored else None
    if layers is not None and not check_factored_gradients(
        adapter, theta, layers, inputs[:2], targets[:2]
    ):
        layers = None
    # blocks of at most ~2**26 gradient entries, whatever p
    batch_size = max(1, min(batch_size, (1 << 26) // max(theta.numel(), 1)))
    if layers is not None:
        batch_size = 512
    for rows in batch_slices(len(inputs), batch_size):
        if layers is not None:
            with torch.no_grad():
                factors = layer_gradient_factors(
                    adapter, theta, inputs[rows], targets[rows], layers
                )
                block_sum, block_norms = factored_gradient_sum_and_norms(layers, factors)
        else:
            gradients = per_example_gradients(
                adapter, theta, inputs[rows], targets[rows], batch_size
            )
            if weights is None:
                block_sum, block_norms = gradients.sum(0), gradients.norm(dim=1)
            else:
                row_weights = weights[rows].to(gradients.dtype)
                block_sum, block_norms = (
                    row_weights @ gradients,
                    gradients.norm(dim=1) * row_weights,
                )
        total += block_sum
        norms += block_norms.sum()
        # a non-finite gradient entry makes its row's norm non-finite: checking the norms
        # (and the sum) is enough, without a pass over the (rows, p) gradients
        if not (bool(torch.isfinite(norms)) and bool(torch.isfinite(block_sum).all())):
            largest = float(inputs.abs().max()) if inputs.is_floating_point() else float("nan")
            raise ValueError(
                "The per-example gradients of the training loss are not finite (or their "
                "squared norms overflow), so neither the curvature nor the influence can be "
                f"computed. The likely cause is unscaled or huge features (largest |feature| "
                f"the model sees: {largest:.3g}); scale them, e.g. with StandardScaler in a "
                "Pipeline."
            )
    penalty = adapter.regularizer_diagonal().to(theta.dtype) * theta
    gradient = total / len(inputs) + penalty
    scale = norms / len(inputs) + penalty.norm()
    if not float(scale) > 0:
        return 0.0
    return float(gradient.norm() / scale)


def warn_if_not_stationary(adapter, name, *, stacklevel=3):
    """``ConvergenceWarning`` when a convex model's ``adapter.stationarity`` exceeds the tol.

    Networks are not warned about: they are rarely at a stationary point, which is why
    influence estimates for them approximate the PBRF rather than leave-one-out retraining.
    """
    figure = adapter.stationarity
    if adapter.is_convex and figure > STATIONARITY_TOL:
        warnings.warn(
            f"{name}: the fitted model is not at an optimum of its training objective on the "
            f"data passed to fit: relative gradient norm stationarity_ = {figure:.3g} (0 at the "
            f"optimum; warned above {STATIONARITY_TOL:g}). Influence functions assume an "
            "optimum; from this point the estimates disagree with actual retraining. Fit the "
            "model to convergence (a tighter tol, a larger max_iter), or, for a "
            "FrozenEstimator, pass fit the data the model was really fitted on.",
            NotStationaryWarning,
            stacklevel=stacklevel,
        )


def sample_training_points(n_train, n_points, random_state, *, sort=False):
    """``min(n_points, n_train)`` distinct training positions drawn with ``random_state``."""
    rng = check_random_state(random_state)
    points = rng.choice(n_train, size=min(n_points, n_train), replace=False)
    return np.sort(points) if sort else points


def _row_positions(values, n_train, where, *, empty, duplicates):
    """``values`` as an intp array of distinct training row positions, or a ValueError that
    names ``where``; ``empty`` and ``duplicates`` finish the messages of those two cases."""
    positions = np.asarray(values)
    if positions.size == 0:
        raise ValueError(f"{where} is empty; {empty}")
    if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(
            f"{where} must be a 1-d array of integer row positions of the training data, "
            f"got an array of dtype {positions.dtype} and shape {positions.shape}."
        )
    if positions.min() < 0 or positions.max() >= n_train:
        raise ValueError(
            f"{where} must lie in [0, {n_train - 1}] (the training set has {n_train} rows); "
            f"got values from {positions.min()} to {positions.max()}."
        )
    if len(np.unique(positions)) != len(positions):
        raise ValueError(f"{where} contains duplicates; {duplicates}")
    return positions.astype(np.intp)


def check_train_indices(train_indices, n_train):
    """``train_indices`` as distinct row positions of the training set (an intp array)."""
    return _row_positions(
        train_indices, n_train, "train_indices",
        empty="pass at least one training row position.",
        duplicates="pass each row position once.",
    )  # fmt: skip


def check_removed_groups(removed_groups, n_train, name="removed_groups"):
    """``removed_groups`` as a list of intp arrays of distinct row positions (groups may
    overlap each other)."""
    if isinstance(removed_groups, (str, bytes)) or not hasattr(removed_groups, "__len__"):
        raise ValueError(
            f"{name} must be a list of arrays of training row positions, one array per "
            f"group removed at once; got {type(removed_groups).__name__}."
        )
    if len(removed_groups) == 0:
        raise ValueError(f"{name} is empty; pass at least one group of row positions.")
    hints = {
        "empty": "each group needs at least one row position.",
        "duplicates": "list each row of a group once (groups may overlap each other).",
    }
    return [
        _row_positions(group, n_train, f"{name}[{number}]", **hints)
        for number, group in enumerate(removed_groups)
    ]


# -- correlations ----------------------------------------------------------------------------

#: warning of :func:`correlation` when it is undefined (the caller may word its own)
UNDEFINED_CORRELATION = (
    "One side of the correlation is constant (or has fewer than two entries), so it is "
    "undefined and nan is returned. Use more removed points or queries on which the removed "
    "points matter."
)


def correlation(first, second, *, method="pearson", message=UNDEFINED_CORRELATION, stacklevel=2):
    """Pearson or Spearman correlation of two 1-d arrays.

    nan, with a ``UserWarning`` saying ``message``, when either side is constant or has fewer
    than two entries. ``stacklevel`` counts from the caller of this function.
    """
    first, second = np.asarray(first, float), np.asarray(second, float)
    if len(first) < 2 or np.std(first) == 0 or np.std(second) == 0:
        warnings.warn(message, UndefinedCorrelationWarning, stacklevel=stacklevel + 1)
        return float("nan")
    if method == "spearman":
        return float(spearmanr(first, second).statistic)
    return float(np.corrcoef(first, second)[0, 1])


def row_correlations(first, second, *, method="pearson"):
    """Correlation along the last axis, vectorised; ``(correlation, constant)``.

    ``correlation`` is nan where either side is constant (``constant`` is True there); no
    warning, so that the caller says how many slices are undefined. ``"spearman"`` is the
    Pearson correlation of average ranks, as :func:`scipy.stats.spearmanr`.
    """
    first, second = np.asarray(first, float), np.asarray(second, float)
    if method == "spearman":
        first, second = rankdata(first, axis=-1), rankdata(second, axis=-1)
    constant = np.all(first == first[..., :1], axis=-1) | np.all(second == second[..., :1], axis=-1)
    first = first - first.mean(-1, keepdims=True)
    second = second - second.mean(-1, keepdims=True)
    numerator = (first * second).sum(-1)
    denominator = np.sqrt((first**2).sum(-1) * (second**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.clip(numerator / denominator, -1.0, 1.0)
    return np.where(constant, np.nan, values), constant


def mean_row_correlation(first, second, *, method="pearson"):
    """Mean over rows of :func:`row_correlations`; rows without one are skipped, silently.

    nan when no row has a correlation.
    """
    values, constant = row_correlations(first, second, method=method)
    if np.all(constant):
        return float("nan")
    return float(np.mean(values[~constant]))


# -- the response estimators' model --------------------------------------------------------


class FittedModelMixin(WeightedFitRouterMixin):
    """Fitting of the base model, the removed points and the query tensors of an estimator.

    Shared by the response estimators and :class:`~sklearn_influence.InfluenceDecomposition`:
    the model is fitted (or used frozen) exactly as :class:`~sklearn_influence.InfluenceFunction`
    does it, so that the same ``random_state`` gives the same θˢ. The estimator stores the
    :class:`~sklearn_influence._responses._functions.ResponseProblem` as ``problem_``.
    """

    def _fit_problem(self, X, y, device, fit_params=None):
        """Fit a clone of the estimator (or take the frozen one); return the response problem."""
        self._fit_params = fit_params or {}
        self.estimator_, adapter = fit_model_and_adapter(
            self.estimator, X, y, device, fit_params, memory=getattr(self, "memory", None)
        )
        self.stationarity_ = adapter.stationarity
        warn_if_not_stationary(adapter, type(self).__name__, stacklevel=4)
        return ResponseProblem(adapter, X, y)

    def _memory_key(self):
        """What, with θˢ and the training data, fixes the responses saved in ``memory``."""
        key = (self.estimator, str(self.device), self.random_state)
        fit_params = getattr(self, "_fit_params", None)
        return (*key, fit_params) if fit_params else key

    def _removed_points(self, n_train):
        """``train_indices`` checked, or ``n_points`` distinct indices drawn by random_state."""
        if n_train < 2:
            raise ValueError(
                f"{type(self).__name__} removes training points one at a time, which needs at "
                f"least 2 training samples; got n_samples = {n_train}. Pass more data."
            )
        if self.train_indices is None:
            return sample_training_points(n_train, self.n_points, self.random_state, sort=True)
        return check_train_indices(self.train_indices, n_train)

    def _query_tensors(self, X, y_test):
        """Query inputs and measurement targets (the prediction when ``y_test`` is None)."""
        problem = self.problem_
        inputs, targets = query_tensors(self, problem.adapter, X, y_test)
        inputs = problem.tensor(inputs)
        targets = None if targets is None else problem.tensor(targets)
        return inputs, resolve_query_targets(problem.adapter, problem.theta, inputs, targets)
