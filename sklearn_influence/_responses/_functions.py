"""Response functions: how the fitted model actually changes when training points are removed.

One function per object of DESIGN.md §2, each returning the parameters of the response for
every removed point (shape (k, p)) with what is known about its convergence:

=====================  ======================================================================
cold-start LOO         ``adapter.retrain(warm_start=False)`` (same θ⁰ and data order)
warm-start LOO         linear models: exact Newton from θˢ; others ``adapter.retrain(warm)``
PRF, PBRF              linear models: exact batched Newton; others: batched Adam/SGD from θˢ
linearized PBRF        θˢ + ε (G + λI)⁻¹ ∇L_m(θˢ) through the solver layer
=====================  ======================================================================

Removal is down-weighting by ε = 1/N; Δf = f(θ_resp) − f(θˢ) (:func:`measurement_changes`).
For a model fitted with per-row weights w_i the data terms are weighted means
Σ w_i (·)_i / W and removing m down-weights by its whole weight, ε_m = w_m / W
(:meth:`ResponseProblem.epsilons`); such models are linear, and their PRF/PBRF are solved by
Newton's method.
"""

import threading
import warnings

import numpy as np
import torch
from joblib import effective_n_jobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import Bunch
from torch.func import grad, jvp, vmap

from .._engine._cg import FactoredPreconditioner
from .._engine._cholesky import CholeskySolver
from .._engine._curvature import make_curvature
from .._engine._gradients import measure, per_example_gradients
from .._engine._shifts import gauss_newton_shifts
from .._torch_utils import FORWARD_AD_LOCK
from ..exceptions import NumericalWarning
from ._checkpoint import (
    CHUNK_SECONDS,
    ChunkStore,
    checkpoint_chunks,
    copies_within,
    forward_flops,
    problem_fingerprint,
)
from ._groups import RemovedGroups, group_curvature_weights, group_gradients, group_objective
from ._newton import CONVEX_TOL, minimize_convex_batched
from ._optimizers import (
    AUTO_STEPS,
    OPTIMIZER_CLASSES,
    auto_settings,
    bregman_divergence,
    make_optimizer,
    optimize_responses,
    own_names,
    resolve_optimizer,
    response_objective,
    warn_not_converged,
)
from ._second_order import GaussNewtonModel

#: response methods: exact Newton (models linear in θ) or a first-order optimizer
METHODS = ("auto", "newton", "optimizer")


def _retrain_without(adapter, X, y, index, warm_start):
    # ``index`` is one row position or a group's array of them (RemovedGroups)
    return adapter.retrain(X, y, exclude=np.atleast_1d(index).tolist(), warm_start=warm_start)


def leave_one_out_parameters(
    adapter, X, y, indices, *, warm_start=True, n_jobs=None, verbose=0, memory=None, key=None
):
    """Parameters refit without each training point in ``indices``, shape (len(indices), p).

    The refits run through :class:`sklearn.utils.parallel.Parallel`, so a joblib backend
    chosen by the caller (for example Dask) spreads them over workers. With ``memory`` each
    finished refit is saved as it completes (keyed by the fit, ``key`` — what fixes the
    retraining, such as the estimator and its seed — and the removed point), so an
    interrupted run resumes where it stopped (:mod:`._checkpoint`). ``indices`` may be a
    :class:`~._groups.RemovedGroups`: each group is then refit without all of its rows.
    """
    store = ChunkStore(memory, None, "warm_loo" if warm_start else "cold_loo", {}, name="LOO",
                       verbose=verbose)  # fmt: skip
    if store.enabled:
        store.fingerprint = problem_fingerprint(adapter, adapter.parameters(), X, y, key)
    if isinstance(indices, RemovedGroups):
        items = indices.split(len(indices))  # one group per refit
    else:
        items = [[index] for index in indices]
    thetas = store.run(
        items,
        _retrain_without,
        lambda number, chunk: (adapter, X, y, chunk[0], warm_start),
        n_jobs=n_jobs,
    )
    if not thetas:
        return adapter.parameters().new_zeros((0, adapter.parameters().numel()))
    return torch.stack([theta.to(adapter.device) for theta in thetas])


def measurement_changes(adapter, reference_theta, thetas, inputs, targets):
    """Δf[q, j] = f_q(thetas[j]) − f_q(reference_theta), shape (n_queries, len(thetas))."""

    def measure_at(theta):
        return measure(adapter, theta, inputs, targets)

    with torch.no_grad():
        changed = vmap(measure_at)(thetas).T
        return changed - measure_at(reference_theta).unsqueeze(1)


class ResponseProblem:
    """What every response of one fitted model shares: θˢ, the training data and ε = 1/N.

    Responses are computed in float64 even for a float32 model: they are changes of order
    ε = 1/N, and the gradients of the response objectives near θˢ are differences of
    nearly equal terms, which float32 resolves to only a few digits. When the model cannot
    be evaluated in float64 (for example float32 buffers of a batch-norm layer) its own
    dtype is kept, with a warning.

    Parameters
    ----------
    adapter : ModelAdapter
    X, y : array-like
        The training data exactly as passed to ``fit`` (retraining needs it raw).
    """

    def __init__(self, adapter, X, y):
        self.adapter = adapter
        self.X, self.y = X, y
        self.dtype = _working_dtype(adapter, X)
        self.inputs = self.tensor(adapter.inputs(X))
        self.targets = self.tensor(adapter.targets(y))
        self.theta = self.tensor(adapter.parameters().detach())
        self.n_train = len(self.inputs)
        self.epsilon = 1.0 / self.n_train
        #: w̃_i = N w_i / W of a weighted model (mean 1), or None
        self.weights = self.tensor(adapter.row_weights)
        with torch.no_grad():
            self.reference_outputs = adapter.outputs(self.theta, self.inputs)
        self._lock = threading.Lock()
        self._preconditioners = {}  # damping → Cholesky solver of G + λI at θˢ

    def __getstate__(self):
        # pickled for workers, caches and fitted estimators: no lock, and the p × p
        # preconditioner factors are rebuilt on demand rather than shipped
        state = self.__dict__.copy()
        del state["_lock"]
        state["_preconditioners"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def gauss_newton_preconditioner(self, damping):
        """``precondition(R)``: rows of (G + λI)⁻¹ r with G the Gauss-Newton matrix at θˢ.

        Formed once per damping (dense, in the model's own dtype: a preconditioner need
        not be exact, the gradients that decide convergence stay in the working dtype)
        and factorized by the engine's Cholesky solver in float64; shared by every chunk
        of removed points, under a lock so that threaded chunks build it once.
        """
        key = float(damping)
        with self._lock:
            solver = self._preconditioners.get(key)
            if solver is None:
                model_dtype = self.adapter.dtype
                curvature = make_curvature(
                    "gauss_newton", self.adapter, self.theta.to(model_dtype),
                    self.inputs.to(model_dtype), self.targets, weights=self.weights,
                )  # fmt: skip
                matrix = curvature.dense().to(self.dtype)
                solver = CholeskySolver.from_matrix(matrix)
                solver.solve(matrix[:1], key)  # factorize now, under the lock
                self._preconditioners[key] = solver

        def precondition(residuals):
            return solver.solve(residuals.to(self.dtype), key).to(residuals.dtype)

        return precondition

    def epsilons(self, indices, epsilon=None):
        """ε_m for each removed point (a tensor of shape (len(indices),)).

        ``epsilon`` (a number) for every point when given; else w_m / W = w̃_m / N (1/N for
        an unweighted model): removing m removes all of its weight.
        """
        index = torch.as_tensor(np.asarray(indices, dtype=int), device=self.inputs.device)
        if epsilon is not None or self.weights is None:
            value = self.epsilon if epsilon is None else float(epsilon)
            return self.theta.new_full((len(index),), value)
        return self.weights[index] / self.n_train

    def tensor(self, value):
        """``value`` in the working dtype (floating tensors only) on the adapter's device."""
        # a RowBatch (named inputs) converts its floating tensors in ``to``
        if value is None or (isinstance(value, torch.Tensor) and not value.is_floating_point()):
            return value
        return value.to(device=self.adapter.device, dtype=self.dtype)

    def method(self, method):
        """Resolve ``"auto"``: exact Newton for models linear in θ, else the optimizer."""
        if method == "auto":
            return "newton" if self.adapter.linear_layout else "optimizer"
        if method == "newton" and not self.adapter.linear_layout:
            raise ValueError(
                f"method='newton' solves the response objectives exactly only for models "
                f"linear in their parameters; {type(self.adapter).__name__} is not. Use "
                "method='auto' or 'optimizer'."
            )
        return method

    def outputs(self, thetas, batch=256):
        """h(θ_j, x_i) on the training inputs for each row of ``thetas``: (k, N, n_outputs)."""
        with torch.no_grad():
            blocks = [
                vmap(self.adapter.outputs, in_dims=(0, None))(thetas[rows], self.inputs)
                for rows in (slice(s, s + batch) for s in range(0, len(thetas), batch))
            ]
        return torch.cat(blocks) if blocks else self.reference_outputs.new_zeros((0,))


def _working_dtype(adapter, X):
    """float64 when the model evaluates in it, else the adapter's own dtype (warned)."""
    if adapter.dtype == torch.float64:
        return torch.float64
    probe = adapter.inputs(X[:1] if hasattr(X, "__getitem__") else X)
    try:
        with torch.no_grad():
            adapter.outputs(adapter.parameters().double(), probe.double())
    except (RuntimeError, TypeError) as error:
        warnings.warn(
            f"The model cannot be evaluated in float64 ({error}); response functions are "
            f"computed in {adapter.dtype}, which resolves changes of order 1/N to only a few "
            "digits. Convert the model to float64 (module.double()) for exact responses.",
            NumericalWarning,
            stacklevel=4,
        )
        return adapter.dtype
    return torch.float64


def cold_leave_one_out(problem, indices, *, n_jobs=None, verbose=0, memory=None, key=None):
    """Retrain from the original initialisation without each point (cold-start LOO)."""
    return _retrained(problem, indices, False, n_jobs, verbose, memory, key)


def _retrained(problem, indices, warm_start, n_jobs, verbose, memory, key):
    """The adapter's refits without each point, as a response (convergence unknown)."""
    thetas = leave_one_out_parameters(
        problem.adapter,
        problem.X,
        problem.y,
        indices,
        warm_start=warm_start,
        n_jobs=n_jobs,
        verbose=verbose,
        memory=memory,
        key=key,
    )
    return Bunch(parameters=problem.tensor(thetas), converged=None)


def warm_leave_one_out(
    problem, indices, *, method="auto", n_jobs=None, verbose=0, memory=None, key=None, **settings
):
    """Leave-one-out optima started at θˢ (warm-start LOO).

    Linear models: the leave-one-out objective J − εL_m (= the PRF with λ = 0) minimised
    exactly by Newton; other models: ``adapter.retrain(warm_start=True)``.
    """
    if problem.method(method) == "newton":
        return proximal_response(
            problem,
            "prf",
            indices,
            damping=0.0,
            method="newton",
            n_jobs=n_jobs,
            verbose=verbose,
            memory=memory,
            key=key,
            **settings,
        )
    return _retrained(problem, indices, True, n_jobs, verbose, memory, key)


def proximal_response(
    problem,
    kind,
    indices,
    *,
    damping,
    method="auto",
    epsilon=None,
    n_jobs=None,
    verbose=0,
    name=None,
    memory=None,
    key=None,
    names=own_names,
    **optimizer_settings,
):
    """Minimisers of the PRF (``kind="prf"``) or PBRF (``kind="pbrf"``) objectives.

    The removed points are split into one chunk per worker of ``n_jobs``; each chunk is one
    batched optimisation
    (:func:`~sklearn_influence._responses._optimizers.optimize_responses` or the
    exact batched Newton for linear models). ``epsilon`` defaults to 1/N. ``indices`` may be
    a :class:`~._groups.RemovedGroups`: each group is one copy, removed with its own
    ε_S = Σ_{m∈S} w_m / W (``epsilon`` must then be None).

    With ``memory`` (a folder or ``joblib.Memory``) the chunks are fixed by the removed
    points alone (:func:`~._checkpoint.checkpoint_chunks`, at least 20) and each finished
    chunk is saved as it completes, keyed by the fit (θˢ, the training data, ``key``), the
    objective, its settings and the chunk: an interrupted run started again with the same
    ``memory`` computes only the unfinished chunks, and its result is bitwise identical to
    an uninterrupted run with ``memory``.

    Returns
    -------
    result : Bunch
        ``parameters`` (k, p), ``converged`` (k,) bool, ``relative_gradient_norm`` (k,),
        ``n_iter`` (k,) steps per removed point.
    """
    method = problem.method(method)
    if problem.weights is not None and method == "optimizer":
        raise ValueError(
            "The responses of a model fitted with sample weights are solved by Newton's "
            "method; use method='auto' or 'newton'."
        )
    groups = isinstance(indices, RemovedGroups)
    if groups and epsilon is not None:
        raise ValueError("A group's ε_S = Σ w_m / W is fixed by its members; pass epsilon=None.")
    weighted = problem.weights is not None and epsilon is None
    # a weighted model removes each point's own weight (ε_m = w_m / W, per point)
    epsilon = problem.epsilon if epsilon is None else float(epsilon)
    if not groups:
        indices = np.asarray(indices, dtype=int)
    label = name or kind.upper()
    store = ChunkStore(memory, None, kind, None, name=label, verbose=verbose)
    if store.enabled:
        store.fingerprint = problem_fingerprint(
            problem.adapter, problem.theta, problem.inputs, problem.targets, key
        )
    if method == "optimizer":
        scale = float(indices.epsilons(problem).mean()) if groups and len(indices) else epsilon
        # saved with the chunks: a resumed run does not redo the power iterations
        optimizer_settings = store.once(
            ("settings", float(damping), scale, optimizer_settings),
            _resolve_auto, problem, kind, damping, scale, optimizer_settings,
        )  # fmt: skip
        # the options are checked before any numerical work (InvalidParameterError)
        make_optimizer(
            optimizer_settings["optimizer"], optimizer_settings.get("optimizer_options"),
            channel=names("optimizer_options"),
        )  # fmt: skip
    store.settings = {
        "method": method,
        "damping": float(damping),
        "epsilon": "weighted" if weighted or groups else epsilon,
        **optimizer_settings,
    }
    if store.enabled:
        per_chunk = _copies_per_chunk(problem, optimizer_settings)
        if method == "optimizer":
            per_chunk = min(per_chunk, _copies_in_time(problem, optimizer_settings))
        # positions: their chunks depend on the number of removed points (or groups) only
        chunks = checkpoint_chunks(np.arange(len(indices)), per_chunk)
    else:
        per_chunk = _copies_per_chunk(problem, optimizer_settings)
        n_chunks = max(effective_n_jobs(n_jobs), -(-len(indices) // per_chunk))
        positions = np.array_split(np.arange(len(indices)), min(n_chunks, len(indices)))
        chunks = [chunk for chunk in positions if len(chunk)]
    # chunks of positions → of the removed points (or groups)
    chunks = [indices.subset(chunk) if groups else indices[chunk] for chunk in chunks]
    run = _newton_chunk if method == "newton" else _optimizer_chunk

    def arguments(number, chunk):
        progress = _progress(label, number, len(chunks), verbose)
        chunk_epsilon = None if weighted or groups else epsilon  # a group's own ε_S
        return problem, kind, chunk, damping, chunk_epsilon, optimizer_settings, progress

    parts = store.run(chunks, run, arguments, n_jobs=n_jobs)
    if not parts:
        empty = problem.theta.new_zeros((0, problem.theta.numel()))
        return Bunch(
            parameters=empty,
            converged=np.zeros(0, bool),
            relative_gradient_norm=np.zeros(0),
            n_iter=np.zeros(0, int),
        )
    result = Bunch(
        parameters=torch.cat([part.parameters.to(problem.theta.device) for part in parts]),
        converged=np.concatenate([part.converged for part in parts]),
        relative_gradient_norm=np.concatenate([part.relative_gradient_norm for part in parts]),
        n_iter=np.concatenate([part.n_iter for part in parts]),
    )
    for field in ("diverged", "far", "certified"):
        result[field] = np.concatenate(
            [part.get(field, np.zeros(len(part.converged), bool)) for part in parts]
        )
    if method == "optimizer":
        warn_not_converged(
            name or kind.upper(),
            result.converged,
            result.relative_gradient_norm,
            optimizer_settings.get("n_iter"),
            optimizer_settings.get("optimizer"),
            diverged=result.diverged,
            far=result.far,
            names=names,
        )
    return result


#: memory allowed for one batched optimisation's per-copy tensors (bytes)
RESPONSE_MEMORY_BYTES = 2 * 1024**3


def _copies_per_chunk(problem, settings=None):
    """How many parameter copies one batched optimisation may hold.

    Each copy keeps about six p-vectors (parameters, gradient, optimizer state, last move;
    L-BFGS: eight plus its 2 × ``history`` curvature pairs) and its outputs on the training
    rows for the forward and backward pass; chunks of removed points are sized to keep that
    under :data:`RESPONSE_MEMORY_BYTES`. (Hidden activations are not counted: lower
    ``batch_size`` if a large network runs out of memory.)
    """
    itemsize = torch.empty((), dtype=problem.dtype).element_size()
    settings = settings or {}
    vectors = 6
    if settings.get("optimizer") in OPTIMIZER_CLASSES:
        optimizer = make_optimizer(settings["optimizer"], settings.get("optimizer_options"))
        vectors = optimizer.vectors_per_copy
    per_copy = itemsize * (vectors * problem.theta.numel() + 4 * problem.reference_outputs.numel())
    return max(1, RESPONSE_MEMORY_BYTES // per_copy)


def _copies_in_time(problem, settings):
    """How many removed points a checkpointed chunk may hold to take at most
    :data:`~._checkpoint.CHUNK_SECONDS` by the cost model (the step budget, the optimizer's
    passes per step, the counted flops of a forward and backward pass over the rows)."""
    optimizer = make_optimizer(settings["optimizer"], settings.get("optimizer_options"))
    batch = settings.get("batch_size") or problem.n_train
    rows = min(batch, problem.n_train)
    flops = 3 * rows * forward_flops(problem.adapter, problem.theta, problem.inputs)
    return copies_within(
        CHUNK_SECONDS, settings["n_iter"], optimizer.passes_per_step, flops, problem.theta.device
    )


#: largest parameter count for which the PBRF's ``optimizer="auto"`` forms the dense
#: Gauss-Newton matrix at θˢ to precondition L-BFGS (8 bytes × p² for its Cholesky factor)
PRECONDITIONED_MAX_PARAMS = 8192
#: step budget of the preconditioned L-BFGS: on the 6k-parameter ReLU CNN of
#: benchmarks/bench_prf.py part C a point converged within 4 steps or not within 300
PRECONDITIONED_STEPS = 200
#: steps without a 10% drop of its gradient norm after which a copy of that L-BFGS stops
#: (it sits on a kink: the points that stalled there never converged later)
PRECONDITIONED_PATIENCE = 25


def _preconditioned_pbrf(problem, kind, settings):
    """Whether ``optimizer="auto"`` of this PBRF is L-BFGS preconditioned by (G + λI)⁻¹ at θˢ:
    full batches, a loss with Gauss-Newton factors and a dense matrix that is small enough.
    """
    if kind != "pbrf" or settings.get("optimizer", "auto") != "auto":
        return False
    batch_size = settings.get("batch_size")
    if batch_size is not None and batch_size < problem.n_train:
        return False
    if problem.theta.numel() > PRECONDITIONED_MAX_PARAMS or not _has_factor(problem):
        return False
    return True


def _has_factor(problem):
    try:
        problem.adapter.loss.hessian_factor(problem.reference_outputs[:1])
    except NotImplementedError:
        return False
    return True


def _resolve_auto(problem, kind, damping, epsilon, settings):
    settings = dict(settings)
    if _preconditioned_pbrf(problem, kind, settings):
        settings["optimizer"] = "lbfgs"
        options = dict(settings.get("optimizer_options") or {})
        options.setdefault("preconditioner", "gauss_newton")
        options.setdefault("patience", PRECONDITIONED_PATIENCE)
        settings["optimizer_options"] = options
    settings["optimizer"] = resolve_optimizer(
        kind, settings.get("optimizer", "auto"), settings.get("batch_size"), problem.n_train
    )
    preconditioned = (settings.get("optimizer_options") or {}).get("preconditioner")
    if settings.get("n_iter", "auto") == "auto":
        steps = PRECONDITIONED_STEPS if preconditioned else AUTO_STEPS[settings["optimizer"]]
        settings["n_iter"] = steps
    if settings["optimizer"] == "lbfgs" and preconditioned:
        if settings.get("learning_rate", "auto") == "auto":  # the first step: the influence step
            settings["learning_rate"] = 1.0
        return settings
    if OPTIMIZER_CLASSES[settings["optimizer"]].needs_model:  # no step size to set
        settings["learning_rate"] = 1.0
        return settings
    settings["learning_rate"], settings["optimizer_options"] = auto_settings(
        problem.adapter,
        problem.theta,
        problem.inputs,
        problem.targets,
        problem.reference_outputs,
        damping=damping,
        epsilon=epsilon,
        optimizer=settings.get("optimizer", "sgd"),
        learning_rate=settings.get("learning_rate", "auto"),
        optimizer_options=settings.get("optimizer_options"),
        batch_size=settings.get("batch_size"),
        seed=settings.get("seed", 0),
    )
    return settings


def _progress(name, number, n_chunks, verbose):
    if not verbose:
        return None

    def report(step, n_converged):
        print(f"[{name}] chunk {number}/{n_chunks}: step {step}, {n_converged} converged")

    return report


def _removed_points(problem, chunk):
    if isinstance(chunk, RemovedGroups):  # each group's members, (k, s, ...)
        return chunk.rows(problem)[:2]
    index = torch.as_tensor(chunk, device=problem.inputs.device)
    return problem.inputs[index], problem.targets[index]


def _optimizer_chunk(problem, kind, chunk, damping, epsilon, settings, progress):
    groups = isinstance(chunk, RemovedGroups)
    objective = response_objective(
        problem.adapter, kind, problem.theta, damping=damping,
        epsilon=0.0 if groups else (problem.epsilon if epsilon is None else epsilon),
    )  # fmt: skip
    removed_weights = None
    if groups:  # the group's Σ_j (w_j/W) L_j replaces ε L_m
        objective = group_objective(problem.adapter, objective)
        removed_weights = chunk.coefficients(problem)
    removed_inputs, removed_targets = _removed_points(problem, chunk)
    settings = dict(settings)
    optimizer = make_optimizer(settings.pop("optimizer"), settings.pop("optimizer_options"))
    model = None
    if optimizer.needs_model:
        model = gauss_newton_model(problem, chunk, damping, epsilon, optimizer, kind)
    precondition = None
    if optimizer.settings.get("preconditioner") == "gauss_newton":
        precondition = problem.gauss_newton_preconditioner(damping)
    influence_steps = None
    if kind == "pbrf":  # the PBRF is sought near θˢ: within FAR_FACTOR influence steps
        influence_steps = _influence_steps(problem, chunk, damping, epsilon, precondition)
    thetas, converged, relative, n_steps, info = optimize_responses(
        objective,
        problem.theta,
        removed_inputs,
        removed_targets,
        problem.inputs,
        problem.targets,
        problem.reference_outputs,
        progress=progress,
        optimizer=optimizer,
        model=model,
        return_info=True,
        influence_steps=influence_steps,
        removed_weights=removed_weights,
        precondition=precondition,
        **settings,
    )
    far = info.far.cpu().numpy()
    return Bunch(
        parameters=thetas.detach(),
        converged=converged.cpu().numpy(),
        relative_gradient_norm=relative.detach().cpu().numpy(),
        n_iter=n_steps.cpu().numpy(),
        diverged=info.diverged.cpu().numpy(),
        certified=info.certified.cpu().numpy(),
        far=far,
    )


def gauss_newton_model(problem, chunk, damping, epsilon, optimizer=None, kind_of_model="pbrf"):
    """The Gauss-Newton model of the chunk's objectives: products at any θ and the
    preconditioner (a K-FAC inverse of G + λI at θˢ, built once per chunk).

    Products run in float32 when the model is float32 (the linear systems are solved to a
    relative residual of 1e-1 … 1e-4, far above float32's rounding; the gradients and the
    objective, which decide convergence, stay in the working dtype).
    """
    adapter = problem.adapter
    kind = "kfac"
    if optimizer is not None and "preconditioner" in optimizer.settings:
        kind = optimizer.settings["preconditioner"]
    product_dtype = adapter.dtype if adapter.dtype == torch.float32 else problem.dtype
    preconditioner = None
    if kind is not None and _has_layers(adapter):
        curvature = make_curvature(
            "gauss_newton", adapter, problem.theta.to(product_dtype),
            problem.inputs.to(product_dtype), problem.targets, weights=problem.weights,
        )  # fmt: skip
        preconditioner = FactoredPreconditioner(curvature, kind).for_damping(damping)
    removed_inputs, removed_targets = _removed_points(problem, chunk)
    if isinstance(chunk, RemovedGroups):  # (k, s) members; a member's ε is its share
        shares = chunk.coefficients(problem)
        removed_term = _removed_hessian(
            problem, kind_of_model, removed_inputs, removed_targets, chunk.rows(problem)[2],
            shares, shares, group=True,
        )  # fmt: skip
        member_inputs = removed_inputs
    else:
        shares = problem.epsilons(chunk).unsqueeze(1)  # w_m / W: the data term's share of m
        epsilons = problem.epsilons(chunk, epsilon)
        index = torch.as_tensor(np.asarray(chunk, dtype=int), device=problem.inputs.device)
        removed_term = _removed_hessian(
            problem, kind_of_model, removed_inputs, removed_targets,
            problem.reference_outputs[index], shares[:, 0], epsilons,
        )  # fmt: skip
        member_inputs = removed_inputs.unsqueeze(1)
    return GaussNewtonModel(
        adapter, problem.inputs, member_inputs, shares, damping,
        problem.weights, dtype=product_dtype, preconditioner=preconditioner,
        removed_term=removed_term,
    )  # fmt: skip


def _has_layers(adapter):
    """Whether the adapter describes its layers (K-FAC needs them; some adapters do not)."""
    try:
        adapter.layer_structure()
    except NotImplementedError:
        return False
    return True


def _removed_hessian(
    problem, kind, inputs, targets, reference_outputs, shares, epsilons, group=False
):
    """Exact Hessian-vector products of each copy's removed-row terms (see GaussNewtonModel).

    φ_m(θ) = (w_m/W) ℓ_m(θ) − ε_m L_m(θ), with ℓ the row's data term (PBRF: its Bregman
    divergence from θˢ; PRF: its loss, so that φ_m = 0 for an unweighted removal). With
    ``group`` each copy has (s, ...) member rows and (s,) shares and ε's, and φ_S = Σ_j φ_j.
    """
    adapter = problem.adapter
    loss = adapter.loss

    def phi(theta, x, t, reference, share, epsilon):
        outputs = adapter.outputs(theta, x.unsqueeze(0))
        t = t.unsqueeze(0)
        if kind == "pbrf":
            data = bregman_divergence(loss, outputs, reference.unsqueeze(0), t)[0]
        else:
            data = loss(outputs, t)[0]
        return share * data - epsilon * loss(outputs, t)[0]

    if group:  # a group's terms add up over its members (padded members: share 0)
        one_row = phi

        def phi(theta, x, t, reference, share, epsilon):
            rows = vmap(one_row, in_dims=(None, 0, 0, 0, 0, 0))
            return rows(theta, x, t, reference, share, epsilon).sum()

    def hvp(theta, vector, x, t, reference, share, epsilon):
        def gradient(theta_):
            return grad(phi)(theta_, x, t, reference, share, epsilon)

        return jvp(gradient, (theta,), (vector,))[1]

    batched = vmap(hvp)

    def product(thetas, vectors, copies):
        thetas, vectors = thetas.to(problem.dtype), vectors.to(problem.dtype)
        with FORWARD_AD_LOCK:
            return batched(
                thetas, vectors, inputs[copies], targets[copies], reference_outputs[copies],
                shares[copies], epsilons[copies],
            ).detach()  # fmt: skip

    return product


def _influence_steps(problem, chunk, damping, epsilon, precondition=None):
    """‖ε(G + λI)⁻¹∇L_m‖ per removed point, by the engine's CG to 1%: the length of the
    influence step, which scales the PBRF's trust region (only the length is needed; a CG
    that stops short of 1% still gives the right order of magnitude). With the exact
    ``precondition`` = (G + λI)⁻¹ the step is exact."""
    if not _has_factor(problem):  # a loss without an output-Hessian factor: no GN products
        return None  # then no trust region (the optimisation runs as before)
    if precondition is not None:
        index = torch.as_tensor(np.asarray(chunk, dtype=int), device=problem.inputs.device)
        gradients = per_example_gradients(
            problem.adapter, problem.theta, problem.inputs[index], problem.targets[index], 512
        )
        epsilons = problem.epsilons(chunk, epsilon).unsqueeze(1)
        return (epsilons * precondition(gradients)).norm(dim=1)
    with warnings.catch_warnings():  # an internal length estimate, not a result
        warnings.simplefilter("ignore", ConvergenceWarning)
        linear = linearized_pbrf(
            problem, chunk, damping=damping, solver="cg",
            solver_options={"tol": 1e-2, "maxiter": 50, "preconditioner": None},
            epsilon=epsilon,
        )  # fmt: skip
    return (linear.parameters - problem.theta).norm(dim=1)


def _weighted_objective(problem, kind, damping):
    """The PRF/PBRF objective of a weighted model: ``objective(θ, x_m, t_m, ε_m)``.

    As :func:`~._optimizers.response_objective` on all training rows, with the data term the
    weighted mean (1/N) Σ w̃_i (·)_i = Σ w_i (·)_i / W and the removed point's own ε_m.
    """
    adapter, reference, weights = problem.adapter, problem.theta, problem.weights
    inputs, targets, reference_outputs = problem.inputs, problem.targets, problem.reference_outputs
    reg = adapter.regularizer_diagonal().to(reference.dtype)

    def objective(theta, removed_input, removed_target, epsilon):
        outputs = adapter.outputs(theta, inputs)
        shift = theta - reference
        if kind == "pbrf":
            rows = bregman_divergence(adapter.loss, outputs, reference_outputs, targets)
            regularizer = 0.5 * (reg * shift**2).sum()
        else:
            rows = adapter.loss(outputs, targets)
            regularizer = 0.5 * (reg * theta**2).sum()
        data = (rows * weights).mean()
        removed_loss = adapter.loss(
            adapter.outputs(theta, removed_input.unsqueeze(0)), removed_target.unsqueeze(0)
        )[0]
        return data + regularizer - epsilon * removed_loss + 0.5 * damping * (shift**2).sum()

    return objective


def _newton_chunk(problem, kind, chunk, damping, epsilon, settings, progress):
    """Exact batched Newton for models linear in θ (their Gauss-Newton matrix is exact).

    A weighted model's objective has weighted data terms; ``epsilon`` None then means each
    removed point's own ε_m = w_m / W.
    """
    adapter = problem.adapter
    inputs, targets, reference_outputs = problem.inputs, problem.targets, problem.reference_outputs
    if isinstance(chunk, RemovedGroups):
        return _newton_groups(problem, kind, chunk, damping, progress)
    removed_inputs, removed_targets = _removed_points(problem, chunk)
    if problem.weights is not None:
        single = _weighted_objective(problem, kind, damping)
        per_copy = (removed_inputs, removed_targets, problem.epsilons(chunk, epsilon))
    else:
        objective = response_objective(
            adapter, kind, problem.theta, damping=damping, epsilon=epsilon
        )

        def single(theta, removed_input, removed_target):
            return objective(
                theta, removed_input, removed_target, inputs, targets, reference_outputs
            )

        per_copy = (removed_inputs, removed_targets)

    def curvature_at(theta):
        matrix = make_curvature(
            "gauss_newton", adapter, theta, inputs, targets, weights=problem.weights
        ).dense()
        matrix.diagonal().add_(damping)
        return matrix

    starts = problem.theta.unsqueeze(0).repeat(len(chunk), 1)
    initial = vmap(grad(single))(starts, *per_copy).norm(dim=1)
    thetas, norms, n_iter = minimize_convex_batched(
        single, starts, per_copy, curvature_at, tol=CONVEX_TOL
    )
    if progress is not None:
        progress(n_iter, len(chunk))
    relative = torch.where(initial > 0, norms / initial.clamp_min(1e-300), norms)
    return Bunch(
        parameters=thetas.detach(),
        converged=(norms <= CONVEX_TOL).cpu().numpy(),
        relative_gradient_norm=relative.detach().cpu().numpy(),
        n_iter=np.full(len(chunk), n_iter),
    )


def _newton_groups(problem, kind, groups, damping, progress):
    """Exact Newton for each group of a model linear in θ, with the group's exact Hessian
    (the Gauss-Newton matrix with its members' weights zeroed, see
    :func:`~._groups.group_curvature_weights`): one step for a quadratic objective."""
    adapter = problem.adapter
    inputs, targets, reference_outputs = problem.inputs, problem.targets, problem.reference_outputs
    if problem.weights is not None:
        weighted = _weighted_objective(problem, kind, damping)

        def single(theta, removed_input, removed_target):
            return weighted(theta, removed_input, removed_target, 0.0)
    else:
        objective = response_objective(adapter, kind, problem.theta, damping=damping, epsilon=0.0)

        def single(theta, removed_input, removed_target):
            return objective(
                theta, removed_input, removed_target, inputs, targets, reference_outputs
            )

    group_single = group_objective(adapter, single)
    removed_inputs, removed_targets, _ = groups.rows(problem)
    coefficients = groups.coefficients(problem)
    parts = []
    for j, group in enumerate(groups):
        weights = group_curvature_weights(problem, group)

        def curvature_at(theta, weights=weights):
            matrix = make_curvature(
                "gauss_newton", adapter, theta, inputs, targets, weights=weights
            ).dense()
            matrix.diagonal().add_(damping)
            return matrix

        per_copy = (removed_inputs[j : j + 1], removed_targets[j : j + 1], coefficients[j : j + 1])
        start = problem.theta.unsqueeze(0)
        initial = vmap(grad(group_single))(start, *per_copy).norm(dim=1)
        theta, norms, n_iter = minimize_convex_batched(
            group_single, start, per_copy, curvature_at, tol=CONVEX_TOL
        )
        relative = torch.where(initial > 0, norms / initial.clamp_min(1e-300), norms)
        parts.append((theta, norms, relative, n_iter))
    if progress is not None:
        progress(max(part[3] for part in parts), len(groups))
    return Bunch(
        parameters=torch.cat([part[0] for part in parts]).detach(),
        converged=torch.cat([part[1] for part in parts]).cpu().numpy() <= CONVEX_TOL,
        relative_gradient_norm=torch.cat([part[2] for part in parts]).detach().cpu().numpy(),
        n_iter=np.array([part[3] for part in parts]),
    )


def linearized_pbrf(
    problem, indices, *, damping, solver="auto", solver_options=None, batch_size=512, epsilon=None
):
    """θˢ + ε (G + λI)⁻¹ ∇L_m(θˢ) for every m, shape (k, p), via the solver layer.

    The Gauss-Newton system is solved by ``solver`` (``"auto"``: the exact direct solver
    while the dense matrix is small), reusing the package's solvers and curvature products.
    A weighted model uses its weighted Gauss-Newton matrix and each point's ε_m = w_m / W.
    For a :class:`~._groups.RemovedGroups` the shift of group S is
    (G + λI)⁻¹ Σ_{m∈S} (w_m/W) ∇L_m(θˢ), the sum of its members' shifts.
    """
    gradients = None
    if isinstance(indices, RemovedGroups):  # ε_S and the members' weighted mean gradient
        if epsilon is not None:
            raise ValueError("A group's ε_S is fixed by its members; pass epsilon=None.")
        epsilon = indices.epsilons(problem)
        gradients = group_gradients(problem.adapter, problem.theta, indices, problem)
        gradients = gradients / epsilon.unsqueeze(1)
        indices = []
    elif problem.weights is not None and epsilon is None:
        epsilon = problem.epsilons(indices)
    else:
        epsilon = problem.epsilon if epsilon is None else float(epsilon)
    shift, name = gauss_newton_shifts(
        problem.adapter, problem.theta, problem.inputs, problem.targets,
        np.asarray(indices, dtype=int), damping, epsilon, solver=solver,
        solver_options=solver_options, batch_size=batch_size, weights=problem.weights,
        gradients=gradients,
    )  # fmt: skip
    return Bunch(parameters=problem.theta + shift, converged=None, solver=name)
