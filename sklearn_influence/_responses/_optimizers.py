"""Proximal response objectives (PRF, PBRF) and their batched optimisation.

For the removal of training point m, with ε the down-weighting (1/N for removal) and λ the
damping, DESIGN.md §2 defines

    PRF:   J(θ) − ε L_m(θ) + (λ/2)‖θ − θˢ‖²
    PBRF:  (1/N) Σ_i D_L(h(θ, x_i), h(θˢ, x_i); t_i) + D_R(θ, θˢ) − ε L_m(θ) + (λ/2)‖θ − θˢ‖²

with the output-space Bregman divergence D_L of the loss and D_R = ½ Σ_j r_j (θ_j − θˢ_j)²
for R = ½ Σ_j r_j θ_j². Warm-started leave-one-out is the PRF with λ = 0 and ε = 1/N.

:func:`optimize_responses` minimises k such objectives together — k parameter copies, one per
removed point, updated by one :func:`torch.func.vmap`-ed gradient per step — with Adam or
SGD on full or mini-batches, starting at θˢ.
"""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import Bunch
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    _Constraint,
)
from torch.func import jvp, vmap

from .._adapters._losses import OutputLoss
from .._engine._power_iteration import top_eigenvalue
from .._options import check_options
from .._torch_utils import FORWARD_AD_LOCK
from ..exceptions import ResponseConvergenceWarning, ResponseDivergenceWarning
from ._second_order import gauss_newton_minimize, sampled_gradient_norm

OBJECTIVES = ("prf", "pbrf")
OPTIMIZERS = ("auto", "gauss_newton", "lbfgs", "sgd", "adam")

#: step budgets of the estimators' defaults: L-BFGS on an unconverged network's PRF takes up
#: to ~1,600 steps per point (benchmarks/results/bench_prf.md), SGD on the PBRF converges in
#: a few hundred
AUTO_STEPS = {"gauss_newton": 100, "lbfgs": 3000, "sgd": 1000, "adam": 1000}


def bregman_divergence(loss, outputs, reference_outputs, targets):
    """D_L(h, hˢ; t) = L(h, t) − L(hˢ, t) − ∇_h L(hˢ, t)ᵀ(h − hˢ), per row.

    Uses the loss's own closed form when it has one (MSE, softmax and binary log-loss), else
    the definition with a forward-mode directional derivative, valid for any loss on outputs.
    """
    if type(loss).bregman is not OutputLoss.bregman:
        return loss.bregman(outputs, reference_outputs)

    def loss_at(values):
        return loss(values, targets)

    with FORWARD_AD_LOCK:  # forward-mode AD is not thread-safe in torch
        reference_loss, slope = jvp(loss_at, (reference_outputs,), (outputs - reference_outputs,))
    return loss_at(outputs) - reference_loss - slope


def response_objective(adapter, kind, reference, *, damping, epsilon):
    """The objective of one removed point as a function of θ, for :func:`torch.func.vmap`.

    Returns ``objective(theta, removed_input, removed_target, inputs, targets,
    reference_outputs)``: the data term is the mean over the given rows (all training rows
    give the exact objective, a mini-batch an unbiased estimate of it).

    Parameters
    ----------
    adapter : ModelAdapter
    kind : {"prf", "pbrf"}
    reference : Tensor of shape (p,)
        θˢ, the centre of the proximity and Bregman terms.
    damping : float
        λ of the proximity term.
    epsilon : float
        ε, the weight by which the removed point's loss is subtracted.
    """
    if kind not in OBJECTIVES:
        raise ValueError(f"Unknown response objective {kind!r}; choose one of {OBJECTIVES}.")
    reg = adapter.regularizer_diagonal().to(reference.dtype)
    loss = adapter.loss

    def objective(theta, removed_input, removed_target, inputs, targets, reference_outputs):
        outputs = adapter.outputs(theta, inputs)
        shift = theta - reference
        if kind == "pbrf":
            data = bregman_divergence(loss, outputs, reference_outputs, targets).mean()
            regularizer = 0.5 * (reg * shift**2).sum()
        else:
            data = loss(outputs, targets).mean()
            regularizer = 0.5 * (reg * theta**2).sum()
        removed_loss = loss(
            adapter.outputs(theta, removed_input.unsqueeze(0)), removed_target.unsqueeze(0)
        )[0]
        return data + regularizer - epsilon * removed_loss + 0.5 * damping * (shift**2).sum()

    return objective


class BatchSchedule:
    """Which training rows each optimisation step sees.

    Full batch when ``batch_size`` is None or at least N; otherwise consecutive slices of a
    fresh permutation per epoch drawn from ``seed``, so that every chunk of removed points
    (and a one-at-a-time run) sees exactly the same sequence of mini-batches.
    """

    def __init__(self, n_train, batch_size, seed):
        self.n_train = n_train
        self.full = batch_size is None or batch_size >= n_train
        self.batch_size = n_train if self.full else int(batch_size)
        self.seed = seed
        self.steps_per_epoch = 1 if self.full else -(-n_train // self.batch_size)

    def __iter__(self):
        if self.full:
            while True:
                yield slice(None)
        rng = np.random.RandomState(self.seed)
        while True:
            order = rng.permutation(self.n_train)
            for start in range(0, self.n_train, self.batch_size):
                yield order[start : start + self.batch_size]


def _adam_update(state, gradients, lr, options):
    beta1, beta2 = options.get("betas", (0.9, 0.999))
    eps = options.get("eps", 1e-8)
    state["step"] += 1
    state["m"].mul_(beta1).add_(gradients, alpha=1 - beta1)
    state["v"].mul_(beta2).addcmul_(gradients, gradients, value=1 - beta2)
    m_hat = state["m"] / (1 - beta1 ** state["step"])
    v_hat = state["v"] / (1 - beta2 ** state["step"])
    return lr * m_hat / (v_hat.sqrt() + eps)


def _sgd_update(state, gradients, lr, options):
    momentum = options.get("momentum", 0.9)  # "auto" is resolved by auto_settings
    if momentum == 0:
        return lr * gradients
    state["m"].mul_(momentum).add_(gradients)
    if options.get("nesterov", True):
        return lr * (gradients + momentum * state["m"])
    return lr * state["m"]


_UPDATES = {"adam": _adam_update, "sgd": _sgd_update}


def _safeguard(state, values, gradients, active):
    """Per-copy safeguards of full-batch SGD on objectives that are not quadratic.

    A copy whose objective rose since the previous step halves its step size; a copy whose
    gradient points along its last move (gᵀΔθ > 0, the adaptive restart of O'Donoghue &
    Candès) has overshot and drops its momentum. Both act per copy only, so a copy's
    trajectory does not depend on the others.
    """
    slack = 64 * torch.finfo(values.dtype).eps * values.abs().clamp_min(1.0)
    rose = active & (values > state["value"] + slack)
    state["lr"] = torch.where(rose, 0.5 * state["lr"], state["lr"])
    overshot = rose | ((gradients * state["move"]).sum(1) > 0)
    state["m"][overshot] = 0.0
    state["value"] = torch.where(active, values, state["value"])


class _Betas(_Constraint):
    """Adam's (β₁, β₂): two numbers in [0, 1)."""

    def is_satisfied_by(self, val):
        return (
            isinstance(val, tuple | list)
            and len(val) == 2
            and all(isinstance(b, Real) and 0 <= b < 1 for b in val)
        )

    def __str__(self):
        return "a pair (beta1, beta2) of numbers in [0, 1)"


#: an iterate this far from θˢ (relative to max(1, ‖θˢ‖)) has exploded
EXPLODED = 1e4
#: a PBRF iterate farther from θˢ than this many influence steps is reported as far away
FAR_FACTOR = 10.0
#: longest step of a line-search optimizer on the PBRF, in influence steps
MAX_STEP = 1.0


class ResponseOptimizer:
    """One method of minimising the response objectives of k removed points at once.

    Each subclass declares its ``options`` (name → default) and ``option_constraints``
    (scikit-learn parameter constraints), checked by :func:`~.._options.check_options`
    when the optimizer is made, before any numerical work; :meth:`minimize` runs all
    copies in one batched loop on a :class:`~sklearn.utils.Bunch` ``task`` prepared by
    :func:`optimize_responses`.
    """

    name = None
    options = {}
    option_constraints = {}
    #: whether a line search needs full batches
    full_batch_only = False
    #: whether it needs the Gauss-Newton model (products and preconditioner)
    needs_model = False
    #: p-vectors held per copy (sizes the chunks of removed points)
    vectors_per_copy = 6
    #: step budget of the estimators' n_iter="auto"
    default_steps = 1000
    #: passes over the training rows per step, typically (the checkpoints' cost model)
    passes_per_step = 1

    def __init__(self, options=None, *, channel="optimizer_options"):
        self.settings = check_options(
            options, self.options, self.option_constraints, channel=channel,
            owner=f"optimizer={self.name!r}",
        )  # fmt: skip

    def minimize(self, task):
        raise NotImplementedError


class _FirstOrder(ResponseOptimizer):
    """SGD and Adam: one update per step on full or mini-batches."""

    update = None

    def minimize(self, task):
        thetas, active, n_steps, k = task.thetas, task.active, task.n_steps, len(task.thetas)
        settings = self.settings
        state = {
            "step": 0,
            "m": torch.zeros_like(thetas),
            "v": torch.zeros_like(thetas),
            "lr": torch.full((k,), float(task.learning_rate), dtype=thetas.dtype,
                             device=thetas.device),
            "move": torch.zeros_like(thetas),
            "value": task.objective_values,
        }  # fmt: skip
        schedule = task.schedule
        safeguarded = self.name == "sgd" and schedule.full
        check_every = schedule.steps_per_epoch
        values, gradients = task.objective_values, task.gradients
        for step, rows in zip(range(1, task.n_iter + 1), schedule, strict=False):
            if not bool(active.any()):
                break
            if step > 1:  # at step 1 the full-batch values and gradients at θˢ are known
                values, gradients = task.batch(thetas, rows)
            if schedule.full:
                active &= gradients.norm(dim=1) > task.threshold
            if safeguarded:
                _safeguard(state, values, gradients, active)
            moves = type(self).update(state, gradients, 1.0, settings)
            moves = moves * (state["lr"] * active).unsqueeze(1)
            thetas = thetas - moves
            state["move"] = -moves
            n_steps += active
            task.check_divergence(thetas, values, active)
            if not schedule.full and step % check_every == 0:
                active &= task.full(thetas)[1].norm(dim=1) > task.threshold
            if task.progress is not None and (step % max(check_every, 100) == 0):
                task.progress(step, int(k - active.sum()))
        return thetas, task.full(thetas)[1]


class SGD(_FirstOrder):
    """Nesterov SGD, step and momentum from the curvature at θˢ (``auto_settings``)."""

    name = "sgd"
    options = {"momentum": "auto", "nesterov": True}
    option_constraints = {
        "momentum": [Interval(Real, 0, 1, closed="left"), StrOptions({"auto"})],
        "nesterov": ["boolean"],
    }
    update = staticmethod(_sgd_update)


class Adam(_FirstOrder):
    name = "adam"
    options = {"betas": (0.9, 0.999), "eps": 1e-8}
    option_constraints = {
        "betas": [tuple, list],
        "eps": [Interval(Real, 0, None, closed="neither")],
    }
    vectors_per_copy = 7
    update = staticmethod(_adam_update)

    def __init__(self, options=None, *, channel="optimizer_options"):
        super().__init__(options, channel=channel)
        if not _Betas().is_satisfied_by(self.settings["betas"]):
            raise InvalidParameterError(
                f"The 'betas' parameter of {channel} of optimizer='adam' must be "
                f"{_Betas()}. Got {self.settings['betas']!r} instead."
            )


class LBFGS(ResponseOptimizer):
    """Batched L-BFGS with per-copy line searches (:func:`_lbfgs`).

    ``preconditioner="gauss_newton"`` (PBRF): the initial inverse-Hessian approximation of
    every copy is the exact (G + λI)⁻¹ at θˢ, applied through one Cholesky factor shared by
    all copies (:meth:`~._functions.ResponseProblem.gauss_newton_preconditioner`). The first
    step, of unit length, is then exactly the influence step ε(G + λI)⁻¹∇L_m, and the
    curvature pairs only learn how the objective differs from its quadratic model at θˢ.

    ``patience``: a copy whose gradient norm has not fallen below 0.9 times its best so far
    within that many steps stops (None: never). A point whose minimiser sits on a ReLU or
    max-pool kink has no small gradient anywhere near it, so its gradient norm only
    oscillates: measured on the 6k-parameter CNN of ``benchmarks/bench_prf.py`` part C, such
    points spent their whole step budget at 1.4–1.6% of the starting gradient. It stops
    such a point early and reports it not converged (with the kink certificate); the PBRF's
    ``optimizer="auto"`` sets 25 when it preconditions.
    """

    name = "lbfgs"
    options = {"history": 30, "max_halvings": 30, "preconditioner": None, "patience": None}
    option_constraints = {
        "history": [Interval(Integral, 1, None, closed="left")],
        "max_halvings": [Interval(Integral, 0, None, closed="left")],
        "preconditioner": [StrOptions({"gauss_newton"}), None],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
    }
    full_batch_only = True
    default_steps = 3000
    passes_per_step = 2  # the gradient and, mostly, one line-search trial

    @property
    def vectors_per_copy(self):
        return 8 + 2 * self.settings["history"]

    def minimize(self, task):
        settings = dict(self.settings)
        if settings.pop("preconditioner") is not None and task.get("precondition") is None:
            raise ValueError("optimizer_options['preconditioner'] needs the preconditioner.")
        return _lbfgs(
            task.full, task.thetas, task.objective_values, task.gradients, task.threshold,
            task.active, task.n_steps, first_step=float(task.learning_rate), n_iter=task.n_iter,
            progress=task.progress, max_step=task.max_step, check=task.check_divergence,
            precondition=task.get("precondition"), **settings,
        )  # fmt: skip


class GaussNewtonOptimizer(ResponseOptimizer):
    """Damped Gauss-Newton steps solved by CG on the engine (:mod:`._second_order`)."""

    name = "gauss_newton"
    options = {"cg_maxiter": 100, "cg_tol": 0.1, "max_halvings": 30, "preconditioner": "kfac"}
    option_constraints = {
        "cg_maxiter": [Interval(Integral, 1, None, closed="left")],
        "cg_tol": [Interval(Real, 0, 1, closed="neither")],
        "max_halvings": [Interval(Integral, 0, None, closed="left")],
        "preconditioner": [StrOptions({"kfac", "ekfac"}), None],
    }
    full_batch_only = True
    needs_model = True
    vectors_per_copy = 10
    default_steps = 100
    passes_per_step = 20  # CG products (each a forward and a backward pass) and the search

    def minimize(self, task):
        settings = dict(self.settings)
        settings.pop("preconditioner")
        thetas, gradients, info = gauss_newton_minimize(
            task.full, task.model, task.reference, task.thetas, task.objective_values,
            task.gradients, task.threshold, task.active, task.n_steps, n_iter=task.n_iter,
            progress=task.progress, backtrack=_backtrack_copies, check=task.check_divergence,
            max_step=task.max_step, **settings,
        )  # fmt: skip
        task.certified |= info["certified"]
        task.first_step.copy_(info["first_step"])
        return thetas, gradients


#: the optimizers of the response objectives, by name (one registry)
OPTIMIZER_CLASSES = {cls.name: cls for cls in (GaussNewtonOptimizer, LBFGS, SGD, Adam)}


def make_optimizer(name, options=None, *, channel="optimizer_options"):
    """The optimizer object ``name`` with its validated options (InvalidParameterError)."""
    if name not in OPTIMIZER_CLASSES:
        raise InvalidParameterError(
            f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS} (resolve 'auto' with "
            "resolve_optimizer first)."
        )
    return OPTIMIZER_CLASSES[name](options, channel=channel)


def optimize_responses(
    objective,
    reference,
    removed_inputs,
    removed_targets,
    inputs,
    targets,
    reference_outputs,
    *,
    optimizer="sgd",
    learning_rate=0.1,
    n_iter=1000,
    batch_size=None,
    tol=1e-3,
    seed=0,
    optimizer_options=None,
    progress=None,
    model=None,
    return_info=False,
    influence_steps=None,
    removed_weights=None,
    precondition=None,
):
    """Minimise one response objective per removed point, all copies in one batched loop.

    Every copy starts at θˢ (``reference``) and follows its own optimizer state; a copy
    stops as soon as its full-batch gradient norm has fallen below ``tol`` times its value
    at θˢ (checked every step with full batches, once an epoch with mini-batches), so the
    result for one removed point does not depend on which other points share the batch.
    A copy whose iterate or objective becomes non-finite, or whose iterate moves more than
    :data:`EXPLODED` × max(1, ‖θˢ‖) from θˢ, is stopped and reported as diverged.

    Parameters
    ----------
    objective : callable
        From :func:`response_objective`.
    reference : Tensor of shape (p,)
    removed_inputs, removed_targets : Tensor
        The removed points' inputs and targets, leading axis k.
    inputs, targets, reference_outputs : Tensor
        All training rows, their targets and h(θˢ, x_i).
    optimizer : str or ResponseOptimizer
        A name of :data:`OPTIMIZER_CLASSES` or an optimizer object.
    learning_rate : float
    n_iter : int
        Maximum number of steps.
    batch_size : int or None
        Training rows per step; None for full batches.
    tol : float
        Relative gradient-norm tolerance.
    seed : int
        Seed of the mini-batch order.
    optimizer_options : dict or None
        The optimizer's declared options (see each optimizer class).
    progress : callable or None
        Called as ``progress(step, n_converged)`` at each convergence check.
    model : GaussNewtonModel or None
        Gauss-Newton products and preconditioner, for optimizers with ``needs_model``.
    return_info : bool
        Also return a Bunch with ``diverged``, ``far``, ``certified`` (kink certificate)
        and ``first_step`` (norm of the first Gauss-Newton step; 0 when unknown).
    influence_steps : Tensor of shape (k,) or None
        Length of each copy's influence step (PBRF). Given, no step of the line-search
        optimizers is longer than :data:`MAX_STEP` of them, and a copy farther than
        :data:`FAR_FACTOR` of them from θˢ is stopped and reported as ``far``: the PBRF of
        a network can be unbounded below (the removed row's terms are linear in its
        logits, which grow faster than the proximity term for ReLU nets), and the response
        sought is the local minimiser near θˢ.
    removed_weights : Tensor of shape (k, s) or None
        Group removal (:mod:`._groups`): each copy's removed rows are (s, ...) members and
        ``objective`` takes these coefficients as a third per-copy argument.
    precondition : callable or None
        ``precondition(R)``: rows of P⁻¹ r, the same P for every copy (L-BFGS with
        ``preconditioner="gauss_newton"``).

    Returns
    -------
    thetas : Tensor of shape (k, p)
    converged : Tensor of bool, shape (k,)
    relative_gradient_norms : Tensor of shape (k,)
        Final full-batch gradient norm over the initial one, per copy.
    n_steps : Tensor of int, shape (k,)
        Steps each copy took.
    """
    if not isinstance(optimizer, ResponseOptimizer):
        optimizer = make_optimizer(optimizer, optimizer_options)
    if optimizer.full_batch_only and batch_size is not None and batch_size < len(inputs):
        raise ValueError(
            f"optimizer={optimizer.name!r} needs full batches (its line search compares "
            f"objective values), but batch_size={batch_size} < N={len(inputs)}. Use "
            "batch_size=None, or optimizer='sgd' or 'adam' for mini-batches."
        )
    if optimizer.needs_model and model is None:
        raise ValueError(f"optimizer={optimizer.name!r} needs the Gauss-Newton model.")
    k = len(removed_inputs)
    per_copy = (removed_inputs, removed_targets)
    if removed_weights is not None:
        per_copy = (*per_copy, removed_weights)
    value_and_gradient = batched_value_and_gradient(objective, len(per_copy))

    def full(thetas, copies=None):
        removed = per_copy
        if copies is not None:  # a subset of the copies (the line searches)
            removed = tuple(values[copies] for values in per_copy)
        return value_and_gradient(thetas, *removed, inputs, targets, reference_outputs)

    def batch(thetas, rows):
        return value_and_gradient(
            thetas, *per_copy, inputs[rows], targets[rows], reference_outputs[rows],
        )  # fmt: skip

    thetas = reference.detach().unsqueeze(0).repeat(k, 1)
    values, gradients = full(thetas)
    initial = gradients.norm(dim=1)
    # a copy whose gradient at θˢ is zero up to rounding (ε = 0 for the PBRF, or a point
    # with zero loss gradient) is already at its optimum
    floor = 10 * torch.finfo(thetas.dtype).eps
    threshold = torch.clamp(tol * initial, min=floor)
    diverged = torch.zeros(k, dtype=torch.bool, device=thetas.device)
    limit = EXPLODED * max(1.0, float(reference.norm()))

    far = torch.zeros(k, dtype=torch.bool, device=thetas.device)
    radius = None if influence_steps is None else FAR_FACTOR * influence_steps.to(thetas)
    max_step = None if influence_steps is None else MAX_STEP * influence_steps.to(thetas)

    def check_divergence(thetas, values, active):
        moves = (thetas - reference).norm(dim=1)
        bad = ~torch.isfinite(values) | ~torch.isfinite(thetas).all(1) | (moves > limit)
        bad &= active
        diverged[bad] = True
        active[bad] = False
        # a line-search method that runs off is stopped; SGD may overshoot and come back,
        # so only its end point is judged (below)
        if radius is not None and optimizer.full_batch_only:
            out = active & (moves > radius) & (radius > 0)
            far[out] = True
            active[out] = False

    task = Bunch(
        full=full, batch=batch, thetas=thetas, objective_values=values, gradients=gradients,
        threshold=threshold, active=initial > floor,
        n_steps=torch.zeros(k, dtype=torch.long, device=thetas.device), n_iter=int(n_iter),
        learning_rate=learning_rate, schedule=BatchSchedule(len(inputs), batch_size, seed),
        progress=progress, model=model, reference=reference,
        check_divergence=check_divergence,
        certified=torch.zeros(k, dtype=torch.bool, device=thetas.device),
        first_step=torch.zeros(k, dtype=thetas.dtype, device=thetas.device),
        max_step=max_step, precondition=precondition,
    )  # fmt: skip
    thetas, gradients = optimizer.minimize(task)
    if optimizer.full_batch_only:  # stopped above the threshold: at a kink?
        stalled = (gradients.norm(dim=1) > threshold) & ~diverged
        stalled &= ~task.certified & torch.isfinite(gradients).all(1) & ~far
        pending = stalled.nonzero().squeeze(1)
        if len(pending):
            sampled = sampled_gradient_norm(
                full, reference, thetas[pending], gradients[pending], pending
            )
            task.certified[pending[sampled <= threshold[pending]]] = True
    task.check_divergence(thetas, torch.where(diverged, torch.nan, 0.0), ~diverged)
    norms = gradients.norm(dim=1)
    relative = torch.where(initial > floor, norms / initial, torch.zeros_like(norms))
    relative = torch.where(diverged, torch.full_like(relative, torch.inf), relative)
    if radius is not None:  # a copy may have stopped (converged) just outside
        far |= ~diverged & ((thetas - reference).norm(dim=1) > radius) & (radius > 0)
    converged = ((norms <= threshold) | task.certified) & ~diverged & ~far
    if return_info:
        info = Bunch(diverged=diverged, far=far, certified=task.certified & converged,
                     first_step=task.first_step)  # fmt: skip
        return thetas, converged, relative, task.n_steps, info
    return thetas, converged, relative, task.n_steps


def _lbfgs(
    full, thetas, values, gradients, threshold, active, n_steps, *, first_step, n_iter,
    progress=None, history=30, max_halvings=30, precondition=None, max_step=None, check=None,
    patience=None,
):  # fmt: skip
    """Batched L-BFGS: one limited-memory quasi-Newton method per copy, all in one loop.

    Each copy keeps the curvature pairs (s, y) of its last ``history`` steps (a step
    without a usable pair leaves its slot empty) and does its own backtracking (Armijo)
    line search from the unit step, so its trajectory depends on no other copy.

    Why not SGD with momentum: the PRF of an unconverged network moves far from θˢ (it
    finishes the training), where its curvature is ill-conditioned and indefinite, so a
    step and momentum tuned to the curvature at θˢ are neither stable nor fast there;
    L-BFGS measures the curvature along its own path instead.

    * The first step of a copy, and every step after its memory is reset, is the steepest
      descent step of length ``first_step`` (1/L at θˢ); later steps are scaled by
      sᵀy/yᵀy of the newest pair, so they need no step-size setting.
    * A pair with sᵀy ≤ 0 (negative curvature along the step) is not stored: the inverse
      Hessian approximation stays positive definite, so every direction descends.
    * A copy whose line search fails (no decrease within ``max_halvings`` reductions)
      restarts from steepest descent with an empty memory (the adaptive restart); if that
      fails too, its objective cannot decrease beyond rounding and it stops, reported as
      not converged unless its gradient is below the threshold.
    * With ``patience``, a copy whose gradient norm has not dropped below 0.9 times its best
      within ``patience`` steps stops (it stalls, e.g. on a kink), reported as not converged.

    ``full(thetas)`` gives the full-batch values and gradients of the given copies;
    ``active``, ``n_steps`` are updated in place. Returns the parameters and gradients.
    """
    k, p = thetas.shape
    device, dtype = thetas.device, thetas.dtype
    pairs_s = thetas.new_zeros((k, history, p))
    pairs_y = thetas.new_zeros((k, history, p))
    rho = thetas.new_zeros((k, history))  # 1/(sᵀy); 0 marks an empty slot
    gamma = torch.full((k,), first_step, dtype=dtype, device=device)
    active &= gradients.norm(dim=1) > threshold
    stalled = torch.zeros(k, dtype=torch.bool, device=device)
    slack_factor = 64 * torch.finfo(dtype).eps
    best = gradients.norm(dim=1)
    last_progress = torch.zeros(k, dtype=torch.int64, device=device)
    for step in range(1, n_iter + 1):
        if not bool(active.any()):
            break
        # every copy's slot `head` takes this step's pair (zero when it has none), so the
        # slots are in the same order for all copies and need no per-copy gathering
        head = (step - 1) % history
        rows = active.nonzero().squeeze(1)
        newest = (head - 1) % history  # the previous step's slot
        direction = -_two_loop(
            gradients[rows], pairs_s[rows], pairs_y[rows], rho[rows], gamma[rows], newest,
            precondition,
        )  # fmt: skip
        if max_step is not None:  # the trust region of the PBRF (see optimize_responses)
            length = direction.norm(dim=1).clamp_min(1e-300)
            direction *= (max_step[rows] / length).clamp(max=1.0).unsqueeze(1)
        slope = (gradients[rows] * direction).sum(1)
        new_thetas, new_values, new_gradients, accepted = _backtrack_copies(
            full, rows, thetas[rows], values[rows], slope, direction, slack_factor,
            max_halvings,
        )  # fmt: skip
        n_steps[rows] += 1
        # accepted steps: a new curvature pair where the curvature along the step is positive
        done = rows[accepted]
        step_s = torch.zeros_like(thetas)
        step_y = torch.zeros_like(thetas)
        step_s[done] = new_thetas[accepted] - thetas[done]
        step_y[done] = new_gradients[accepted] - gradients[done]
        sy = (step_s * step_y).sum(1)
        curved = sy > 1e-10 * step_s.norm(dim=1) * step_y.norm(dim=1)
        keep = curved.unsqueeze(1)
        pairs_s[:, head] = torch.where(keep, step_s, 0.0)
        pairs_y[:, head] = torch.where(keep, step_y, 0.0)
        rho[:, head] = torch.where(curved, 1.0 / torch.where(curved, sy, 1.0), 0.0)
        if precondition is None:  # scale H₀ = γI by the newest pair (Nocedal & Wright 7.20)
            gamma = torch.where(curved, sy / (step_y * step_y).sum(1).clamp_min(1e-300), gamma)
        # preconditioned: H₀ = P⁻¹ is the exact inverse Hessian at θˢ, left unscaled (a
        # scale from the pairs would cost a second solve per step, the dearest part of it)
        # failed line searches: restart from steepest descent, or stop if already there
        failed = rows[~accepted]
        if len(failed):
            had_memory = rho[failed].ne(0).any(1)
            stalled[failed[~had_memory]] = True
            pairs_s[failed], pairs_y[failed], rho[failed] = 0.0, 0.0, 0.0
            gamma[failed] = first_step
        thetas[done], values[done], gradients[done] = (
            new_thetas[accepted], new_values[accepted], new_gradients[accepted],
        )  # fmt: skip
        norms = gradients.norm(dim=1)
        if patience is not None:  # a gradient that stopped falling: the point stalls
            improved = norms < 0.9 * best
            best = torch.where(improved, norms, best)
            last_progress = torch.where(improved, step, last_progress)
            stalled |= active & (step - last_progress >= patience)
        active &= (norms > threshold) & ~stalled
        if check is not None:
            check(thetas, values, active)
        if progress is not None and (step % 100 == 0 or step == n_iter):
            progress(step, int(k - active.sum()))
    return thetas, gradients


def _two_loop(gradients, pairs_s, pairs_y, rho, gamma, head, precondition=None):
    """H g for the L-BFGS inverse-Hessian approximation H of each copy.

    Slot ``head`` holds the newest pair, ``head − 1`` (cyclically) the one before, and so
    on; empty slots have ρ = 0 and zero vectors, so they contribute nothing.
    """
    history = pairs_s.shape[1]
    order = [(head - i) % history for i in range(history)]  # newest first
    q = gradients.clone()
    alphas = []
    for slot in order:
        alpha = rho[:, slot] * (pairs_s[:, slot] * q).sum(1)
        q -= alpha.unsqueeze(1) * pairs_y[:, slot]
        alphas.append(alpha)
    r = gamma.unsqueeze(1) * (q if precondition is None else precondition(q))
    for slot, alpha in zip(reversed(order), reversed(alphas), strict=True):
        beta = rho[:, slot] * (pairs_y[:, slot] * r).sum(1)
        r += (alpha - beta).unsqueeze(1) * pairs_s[:, slot]
    return r


def _backtrack_copies(full, copies, thetas, values, slope, direction, slack_factor, max_halvings):
    """Per-copy Armijo backtracking from the unit step along ``direction``.

    ``copies`` are the indices (into all copies) of the rows of ``thetas``. A rejected step
    shrinks to the minimum of the quadratic interpolating the objective along the
    direction (between a tenth and a half of it), at most ``max_halvings`` times.

    Only the copies still searching are evaluated at each trial. An increase within a few
    ulps of the objective counts as no increase, so a copy at its rounding floor is not
    halved to nothing.
    """
    new_thetas, new_values, new_gradients = thetas.clone(), values.clone(), torch.zeros_like(thetas)
    accepted = torch.zeros(len(thetas), dtype=torch.bool, device=thetas.device)
    size = torch.ones_like(values)
    slack = slack_factor * values.abs().clamp_min(1.0)
    for _ in range(max_halvings + 1):
        pending = (~accepted).nonzero().squeeze(1)
        if not len(pending):
            break
        trial = thetas[pending] + size[pending].unsqueeze(1) * direction[pending]
        trial_values, trial_gradients = full(trial, copies[pending])
        ok = (
            trial_values <= values[pending] + 1e-4 * size[pending] * slope[pending] + slack[pending]
        )
        ok &= torch.isfinite(trial_values)
        hit = pending[ok]
        new_thetas[hit], new_values[hit], new_gradients[hit] = (
            trial[ok], trial_values[ok], trial_gradients[ok],
        )  # fmt: skip
        accepted[hit] = True
        # shrink to the minimiser of the quadratic through f(0), f'(0) and f(size), kept
        # within [0.1, 0.5] of the rejected size (plain halving for a non-finite value)
        rejected, tried = pending[~ok], size[pending[~ok]]
        rise = trial_values[~ok] - values[rejected] - slope[rejected] * tried
        quadratic = -slope[rejected] * tried**2 / (2 * rise)
        quadratic = torch.where(torch.isfinite(quadratic) & (rise > 0), quadratic, 0.5 * tried)
        size[rejected] = torch.minimum(torch.maximum(quadratic, 0.1 * tried), 0.5 * tried)
    return new_thetas, new_values, new_gradients, accepted


def batched_value_and_gradient(objective, n_per_copy=2):
    """Values (k,) and gradients (k, p) of k independent copies of ``objective`` at once.

    The forward pass is :func:`torch.func.vmap`-ed over the copies (one batched evaluation
    of the model) and the backward pass is ordinary reverse mode on the sum of the copies'
    objectives, whose gradient with respect to copy j is ∇F_j(θ_j); this is about twice as
    fast as ``vmap(grad(objective))`` on CPU.
    """
    values = vmap(objective, in_dims=(0,) * (1 + n_per_copy) + (None, None, None))

    def value_and_gradient(thetas, *args):
        with torch.enable_grad():
            thetas = thetas.detach().requires_grad_(True)
            value = values(thetas, *args)
            return value.detach(), torch.autograd.grad(value.sum(), thetas)[0]

    return value_and_gradient


def own_names(setting):
    """How an estimator with the response settings as its own parameters spells them."""
    return setting


def warn_not_converged(
    name, converged, relative, n_iter, optimizer=None, *, diverged=None, far=None,
    names=own_names, attribute="converged_",
):  # fmt: skip
    """The warnings of a batch of responses, in the parameter names of the caller.

    ``names(setting)`` spells a setting ("n_iter", "optimizer", "learning_rate", "tol",
    "optimizer_options", "damping") as the estimator the user called accepts it (for
    example ``InfluenceFunction``'s ``score_options['n_iter']``). Three cases, each one
    warning: diverged copies (:class:`~..exceptions.ResponseDivergenceWarning`), minimisers
    far from θˢ (PBRF), and copies that missed the tolerance
    (:class:`~..exceptions.ResponseConvergenceWarning`).
    """
    k = len(converged)
    diverged = np.zeros(k, bool) if diverged is None else np.asarray(diverged, bool)
    far = np.zeros(k, bool) if far is None else np.asarray(far, bool)
    which = f"the attribute {attribute} says which" if attribute else "they are not converged"
    if diverged.any():
        warnings.warn(
            f"{name}: {int(diverged.sum())} of {k} response optimisations diverged (the "
            "iterate or the objective became non-finite or exploded) and were stopped. "
            f"Lower {names('learning_rate')}, or use {names('optimizer')}='auto' (damped "
            f"Gauss-Newton with a line search, which cannot diverge); {which}.",
            ResponseDivergenceWarning,
            stacklevel=3,
        )
    if far.any():
        warnings.warn(
            f"{name}: for {int(far.sum())} of {k} removed points the PBRF minimiser lies far "
            "from θˢ (more than 10 times the length of the influence step): the removed "
            "point's own loss and Bregman terms add up to a function of its logits that is "
            "linear, so a small damping lets its minimiser run away. The response is "
            f"reported as not converged; raise {names('damping')}; {which}.",
            ResponseConvergenceWarning,
            stacklevel=3,
        )
    missed = int((~converged & ~diverged & ~far).sum())
    if missed:
        if optimizer in ("gauss_newton", "lbfgs"):
            advice = (
                f"Increase {names('n_iter')} (each point stops as soon as it converges, so "
                f"a larger budget costs only the points that need it) or "
                f"{names('optimizer_options')}={{'history': ...}} (L-BFGS), or raise "
                f"{names('tol')}"
            )
        else:
            advice = (
                f"Increase {names('n_iter')} or {names('learning_rate')}, or raise "
                f"{names('tol')}; {names('optimizer')}='lbfgs' measures the curvature along "
                "its own path where SGD's steps, tuned at θˢ, stall"
            )
        worst = relative[~converged & ~diverged & ~far]
        warnings.warn(
            f"{name}: {missed} of {k} response optimisations did not reach the "
            f"tolerance in {'the allowed' if n_iter is None else f'n_iter={n_iter}'} steps "
            f"(worst relative gradient norm {float(np.max(worst)):.3g}). {advice}; {which}.",
            ResponseConvergenceWarning,
            stacklevel=3,
        )


def curvature_scale(
    adapter,
    reference,
    inputs,
    targets,
    reference_outputs,
    *,
    damping,
    n_power_iter=30,
    max_rows=4096,
    seed=0,
):
    """Largest eigenvalue L of G + λI at θˢ and the lower bound μ = λ + min_j r_j.

    G + λI is the Hessian of the PBRF objective at θˢ with ε = 0, so its products are
    Hessian-vector products of that objective; L comes from a
    power iteration on at most ``max_rows`` training rows. These set the step size 1/L and
    the Nesterov momentum (√κ − 1)/(√κ + 1), κ = L/μ, of the "auto" SGD settings.
    """
    objective = response_objective(adapter, "pbrf", reference, damping=damping, epsilon=0.0)
    rows = slice(0, min(len(inputs), max_rows))
    dummy_input, dummy_target = inputs[0], targets[0]

    def at(theta):
        return objective(
            theta, dummy_input, dummy_target, inputs[rows], targets[rows], reference_outputs[rows]
        )

    def product(vector):
        # (G + λI) v as a Hessian-vector product by double backward (faster than
        # forward-over-reverse on CPU)
        with torch.enable_grad():
            theta = reference.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(at(theta), theta, create_graph=True)
            return torch.autograd.grad(gradient @ vector, theta)[0]

    largest = top_eigenvalue(
        product,
        reference.numel(),
        reference.dtype,
        reference.device,
        n_iter=n_power_iter,
        seed=seed,
    )
    smallest = damping + float(adapter.regularizer_diagonal().min())
    return max(largest, smallest), smallest


def resolve_optimizer(kind, optimizer, batch_size, n_train):
    """``optimizer="auto"``: L-BFGS for the PRF with full batches, SGD otherwise.

    (The PBRF with full batches and a dense Gauss-Newton matrix that fits is resolved
    before this to L-BFGS preconditioned by (G + λI)⁻¹ at θˢ, in
    ``_functions._resolve_auto``: measured on the 6k-parameter ReLU CNN of
    benchmarks/bench_prf.py part C, 6 of 10 points converge in at most 4 steps, where
    plain L-BFGS and SGD take hundreds.)

    The PBRF is close to a quadratic around θˢ, where its curvature G + λI sets SGD's
    optimal step and momentum (:func:`auto_settings`). The PRF is not: it is the training
    objective itself, and on an unconverged network it moves far from θˢ into regions
    where that curvature says little, so it needs a method that measures the curvature
    along its own path (L-BFGS). Mini-batches rule out L-BFGS's line search. L-BFGS on the
    PBRF (``optimizer="lbfgs"``) converges on more points of the small tanh and ReLU nets
    measured, but on a tiny VGG its end points agreed less with the influence estimate
    (Pearson 0.16 against SGD's 0.98 after 100 steps, neither converged), so it is not yet
    the PBRF's default.
    """
    if optimizer != "auto":
        return optimizer
    full = batch_size is None or batch_size >= n_train
    return "lbfgs" if kind == "prf" and full else "sgd"


def auto_settings(
    adapter,
    reference,
    inputs,
    targets,
    reference_outputs,
    *,
    damping,
    epsilon,
    optimizer,
    learning_rate,
    optimizer_options,
    batch_size=None,
    seed=0,
):
    """Resolve ``learning_rate="auto"`` and SGD's ``momentum="auto"`` (the default).

    Full batches: step 1/L and Nesterov momentum (√κ − 1)/(√κ + 1), κ = L/μ, the optimal
    constants for a quadratic with curvature between μ and L — the PBRF objective is close
    to one near θˢ. Mini-batches: a mini-batch's curvature can be several times L and its
    gradient is noisy, so the step is 1/(2 L_B) for the largest L_B over the first four
    batches and the momentum 0.9. Adam: steps of 0.1 ε max(1, ‖θˢ‖_∞), a fraction of the
    size of the response itself.
    """
    options = dict(optimizer_options or {})
    if optimizer == "lbfgs":
        if learning_rate == "auto":  # the first (steepest-descent) step: 1/L at θˢ
            learning_rate = (
                1.0
                / curvature_scale(
                    adapter, reference, inputs, targets, reference_outputs, damping=damping
                )[0]
            )
        return learning_rate, options
    momentum_auto = options.get("momentum", "auto") == "auto"
    if optimizer == "sgd" and (learning_rate == "auto" or momentum_auto):
        schedule = BatchSchedule(len(inputs), batch_size, seed)
        scales = [
            curvature_scale(
                adapter, reference, inputs[rows], targets[rows], reference_outputs[rows],
                damping=damping,
            )
            for rows, _ in zip(schedule, range(1 if schedule.full else 4), strict=False)
        ]  # fmt: skip
        largest = max(scale[0] for scale in scales)
        smallest = scales[0][1]
        if schedule.full:
            root = (largest / smallest) ** 0.5 if smallest > 0 else float("inf")
            momentum = min((root - 1) / (root + 1), 0.99) if np.isfinite(root) else 0.99
            step = 1.0 / largest
        else:
            momentum, step = 0.9, 0.5 / largest
        if learning_rate == "auto":
            learning_rate = step
        if momentum_auto:
            options["momentum"] = momentum
    if optimizer == "adam" and learning_rate == "auto":
        learning_rate = 0.1 * epsilon * max(float(reference.abs().max()), 1.0)
    return learning_rate, options
