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

import numpy as np
import torch
from torch.func import jvp, vmap

from .._adapters._losses import OutputLoss
from .._engine._power_iteration import top_eigenvalue

OBJECTIVES = ("prf", "pbrf")
OPTIMIZERS = ("adam", "sgd")


def bregman_divergence(loss, outputs, reference_outputs, targets):
    """D_L(h, hˢ; t) = L(h, t) − L(hˢ, t) − ∇_h L(hˢ, t)ᵀ(h − hˢ), per row.

    Uses the loss's own closed form when it has one (MSE, softmax and binary log-loss), else
    the definition with a forward-mode directional derivative, valid for any loss on outputs.
    """
    if type(loss).bregman is not OutputLoss.bregman:
        return loss.bregman(outputs, reference_outputs)

    def loss_at(values):
        return loss(values, targets)

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


def _check_optimizer_options(optimizer, options):
    allowed = {"adam": {"betas", "eps"}, "sgd": {"momentum", "nesterov"}}[optimizer]
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(
            f"Unknown option(s) {sorted(unknown)} for optimizer={optimizer!r}; allowed: "
            f"{sorted(allowed)}."
        )


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
):
    """Minimise one response objective per removed point, all copies in one batched loop.

    Every copy starts at θˢ (``reference``) and follows its own optimizer state; a copy
    stops as soon as its full-batch gradient norm has fallen below ``tol`` times its value
    at θˢ (checked every step with full batches, once an epoch with mini-batches), so the
    result for one removed point does not depend on which other points share the batch.

    Parameters
    ----------
    objective : callable
        From :func:`response_objective`.
    reference : Tensor of shape (p,)
    removed_inputs, removed_targets : Tensor
        The removed points' inputs and targets, leading axis k.
    inputs, targets, reference_outputs : Tensor
        All training rows, their targets and h(θˢ, x_i).
    optimizer : {"adam", "sgd"}
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
        Adam: ``betas``, ``eps``; SGD: ``momentum`` (default 0.9), ``nesterov`` (default
        True).
    progress : callable or None
        Called as ``progress(step, n_converged)`` at each convergence check.

    Returns
    -------
    thetas : Tensor of shape (k, p)
    converged : Tensor of bool, shape (k,)
    relative_gradient_norms : Tensor of shape (k,)
        Final full-batch gradient norm over the initial one, per copy.
    n_steps : Tensor of int, shape (k,)
        Steps each copy took.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}.")
    options = dict(optimizer_options or {})
    _check_optimizer_options(optimizer, options)
    update = _UPDATES[optimizer]
    k = len(removed_inputs)
    value_and_gradient = batched_value_and_gradient(objective)

    def full(thetas):
        return value_and_gradient(
            thetas, removed_inputs, removed_targets, inputs, targets, reference_outputs
        )

    thetas = reference.detach().unsqueeze(0).repeat(k, 1)
    values, gradients = full(thetas)
    initial = gradients.norm(dim=1)
    # a copy whose gradient at θˢ is zero up to rounding (ε = 0 for the PBRF, or a point
    # with zero loss gradient) is already at its optimum
    floor = 10 * torch.finfo(thetas.dtype).eps
    threshold = torch.clamp(tol * initial, min=floor)
    active = initial > floor
    n_steps = torch.zeros(k, dtype=torch.long, device=thetas.device)
    state = {
        "step": 0,
        "m": torch.zeros_like(thetas),
        "v": torch.zeros_like(thetas),
        "lr": torch.full((k,), float(learning_rate), dtype=thetas.dtype, device=thetas.device),
        "move": torch.zeros_like(thetas),
        "value": values,
    }
    schedule = BatchSchedule(len(inputs), batch_size, seed)
    safeguarded = optimizer == "sgd" and schedule.full
    check_every = schedule.steps_per_epoch
    for step, rows in zip(range(1, n_iter + 1), schedule, strict=False):
        if not bool(active.any()):
            break
        if step > 1:  # at step 1 the full-batch values and gradients at θˢ are known
            values, gradients = value_and_gradient(
                thetas, removed_inputs, removed_targets, inputs[rows], targets[rows],
                reference_outputs[rows],
            )  # fmt: skip
        if schedule.full:
            active &= gradients.norm(dim=1) > threshold
        if safeguarded:
            _safeguard(state, values, gradients, active)
        # the step size is applied per copy: 1 inside the update, then state["lr"]
        moves = update(state, gradients, 1.0, options) * (state["lr"] * active).unsqueeze(1)
        thetas = thetas - moves
        state["move"] = -moves
        n_steps += active
        if not schedule.full and step % check_every == 0:
            active &= full(thetas)[1].norm(dim=1) > threshold
        if progress is not None and (step % max(check_every, 100) == 0 or step == n_iter):
            progress(step, int(k - active.sum()))
    norms = full(thetas)[1].norm(dim=1)
    relative = torch.where(initial > floor, norms / initial, torch.zeros_like(norms))
    return thetas, norms <= threshold, relative, n_steps


def batched_value_and_gradient(objective):
    """Values (k,) and gradients (k, p) of k independent copies of ``objective`` at once.

    The forward pass is :func:`torch.func.vmap`-ed over the copies (one batched evaluation
    of the model) and the backward pass is ordinary reverse mode on the sum of the copies'
    objectives, whose gradient with respect to copy j is ∇F_j(θ_j); this is about twice as
    fast as ``vmap(grad(objective))`` on CPU.
    """
    values = vmap(objective, in_dims=(0, 0, 0, None, None, None))

    def value_and_gradient(thetas, *args):
        with torch.enable_grad():
            thetas = thetas.detach().requires_grad_(True)
            value = values(thetas, *args)
            return value.detach(), torch.autograd.grad(value.sum(), thetas)[0]

    return value_and_gradient


def warn_not_converged(name, converged, relative, n_iter):
    """One warning naming how many responses missed the tolerance and what to change."""
    missed = int((~converged).sum())
    if missed:
        warnings.warn(
            f"{name}: {missed} of {len(converged)} response optimisations did not reach the "
            f"tolerance in {'the allowed' if n_iter is None else f'n_iter={n_iter}'} steps "
            f"(worst relative gradient norm "
            f"{float(relative.max()):.3g}). Increase n_iter or learning_rate, or raise tol; "
            "the attribute converged_ says which.",
            UserWarning,
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
