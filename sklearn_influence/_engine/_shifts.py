"""Parameter shifts of the first-order removal: θˢ + ε_m (C + λI)⁻¹ ∇L_m(θˢ) for many m.

The one place that turns a set of removed training points into the parameters an influence
estimate moves to: the linearized PBRF (exact Gauss-Newton solve), the decomposition's
influence row (the practical solver) and the response estimators' ``score`` all call it.
"""

import torch

from ._curvature import make_curvature
from ._gradients import per_example_gradients
from ._solvers import make_solver


def parameter_shifts(solver, gradients, damping, epsilons):
    """ε_m (C + λI)⁻¹ g_m for each row g_m of ``gradients``, shape (k, p).

    Parameters
    ----------
    solver : Solver
        A prepared solver of the engine (any curvature, any method).
    gradients : Tensor of shape (k, p)
        ∇L_m(θˢ) of the removed points (for a group S: Σ_{m∈S} w_m ∇L_m / Σ w_m).
    damping : float
        λ.
    epsilons : float or Tensor of shape (k,)
        ε_m (1/N, w_m / W, or ε_S of a group).

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._shifts import gauss_newton_shifts
    >>> X, y = torch.randn(20, 3).numpy(), torch.randn(20).numpy()
    >>> adapter = make_adapter(Ridge().fit(X, y), 20, torch.device("cpu"))
    >>> theta = adapter.parameters()
    >>> inputs, targets = adapter.inputs(X), adapter.targets(y)
    >>> shifts, name = gauss_newton_shifts(adapter, theta, inputs, targets, [0, 3], 0.1, 0.05)
    >>> shifts.shape, name
    (torch.Size([2, 4]), 'direct')
    """
    if not len(gradients):
        return gradients
    epsilons = torch.as_tensor(epsilons, dtype=gradients.dtype, device=gradients.device)
    if epsilons.dim() == 1:
        epsilons = epsilons.unsqueeze(1)
    return epsilons * solver.solve(gradients, damping)


def gauss_newton_shifts(
    adapter, theta, inputs, targets, indices, damping, epsilons, *, solver="auto",
    solver_options=None, batch_size=512, weights=None, gradients=None,
):  # fmt: skip
    """:func:`parameter_shifts` on the Gauss-Newton matrix at θ for training rows ``indices``.

    Returns ``(shifts, solver_name)``; ``"auto"`` picks the exact direct solver while the
    dense matrix is small. ``gradients`` (k, p), when given, replace the rows' own ∇L_m
    (a group's weighted mean gradient; ``indices`` is then unused).
    """
    if gradients is None:
        index = torch.as_tensor(list(indices), dtype=torch.long, device=inputs.device)
        gradients = per_example_gradients(adapter, theta, inputs[index], targets[index], batch_size)
    curvature = make_curvature(
        "gauss_newton", adapter, theta, inputs, targets, batch_size=batch_size, weights=weights
    )
    solver_object = make_solver(solver, curvature, solver_options)
    return parameter_shifts(solver_object, gradients, damping, epsilons), solver_object.name
