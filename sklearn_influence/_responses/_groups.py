"""Group removal: what removing a set S of training rows at once means for each objective.

DESIGN.md §2: with row weights w (ones by default) removing S down-weights the objective by
ε_S = Σ_{m∈S} w_m / W, and each response is defined for S by replacing ε L_m with
Σ_{m∈S} (w_m/W) L_m. The per-point machinery of :mod:`._functions` runs unchanged on a
:class:`RemovedGroups` in place of an index array: each group is one "copy" of the batched
optimisations, its rows padded to the largest group with coefficient 0 (a padded row adds
nothing to any term).

* :func:`group_objective` — a response objective of one point made one of a group;
* :func:`exact_group_refits` — leave-one-group-out of convex linear models (Newton's method on
  the objective with the group's weights zeroed: exact in one step for least squares);
* :func:`group_gradients` — Σ_{m∈S} (w_m/W) ∇L_m(θ), the force that removes the group, whose
  solve gives the first-order shift θˢ + (C + λI)⁻¹ Σ_{m∈S} (w_m/W) ∇L_m.
"""

import numpy as np
import torch
from sklearn.utils import Bunch
from torch.func import grad

from ._newton import minimize_convex


class RemovedGroups:
    """Sets of training rows removed at once, in the column order of the responses.

    Parameters
    ----------
    groups : list of ndarray of int
        Distinct row positions per group (checked by the estimator); groups may overlap.
    """

    def __init__(self, groups):
        self.groups = [np.asarray(group, dtype=np.intp) for group in groups]

    def __len__(self):
        return len(self.groups)

    def __iter__(self):
        return iter(self.groups)

    def __getitem__(self, position):
        return self.groups[position]

    def subset(self, positions):
        """The groups at ``positions`` (a RemovedGroups)."""
        return RemovedGroups([self.groups[int(p)] for p in positions])

    def split(self, n_chunks):
        """At most ``n_chunks`` consecutive sub-collections (none empty)."""
        positions = np.array_split(np.arange(len(self)), min(n_chunks, len(self)))
        return [self.subset(part) for part in positions if len(part)]

    def key(self):
        """A hashable identity of these groups (checkpoint keys)."""
        return tuple(tuple(int(i) for i in group) for group in self.groups)

    def padded(self, device):
        """(index of shape (k, s), mask of shape (k, s)): rows padded with the first member."""
        size = max(len(group) for group in self.groups)
        index = np.empty((len(self), size), dtype=np.int64)
        mask = np.zeros((len(self), size), dtype=bool)
        for row, group in enumerate(self.groups):
            index[row] = group[0]
            index[row, : len(group)] = group
            mask[row, : len(group)] = True
        return torch.as_tensor(index, device=device), torch.as_tensor(mask, device=device)

    def coefficients(self, problem):
        """w_m / W of each member (k, s), 0 on padded rows: each member's share ε of S."""
        index, mask = self.padded(problem.inputs.device)
        if problem.weights is None:
            shares = problem.theta.new_full(index.shape, problem.epsilon)
        else:
            shares = problem.weights[index] / problem.n_train
        return torch.where(mask, shares, torch.zeros_like(shares))

    def epsilons(self, problem):
        """ε_S = Σ_{m∈S} w_m / W per group, shape (k,)."""
        return self.coefficients(problem).sum(1)

    def rows(self, problem):
        """The members' inputs, targets and reference outputs, each of leading shape (k, s)."""
        index, _ = self.padded(problem.inputs.device)
        return problem.inputs[index], problem.targets[index], problem.reference_outputs[index]

    def kept_weights(self, problem):
        """Row weights w̃ (mean 1) with each group's rows zeroed, shape (k, N)."""
        base = (
            problem.weights
            if problem.weights is not None
            else problem.theta.new_ones(problem.n_train)
        )
        weights = base.unsqueeze(0).repeat(len(self), 1)
        for row, group in enumerate(self.groups):
            weights[row, torch.as_tensor(group, device=weights.device)] = 0.0
        return weights


def group_objective(adapter, single):
    """The objective of a group from ``single``, a response objective with ε = 0.

    ``single(theta, removed_input, removed_target, *rest)`` is the objective of one removed
    point with ε = 0 (only its data, regularizer and proximity terms count); the result is
    ``objective(theta, removed_inputs, removed_targets, coefficients, *rest)`` with the
    members' rows (s, ...) and coefficients (s,), which subtracts Σ_j c_j L(h(θ, x_j), t_j).
    """

    def objective(theta, removed_inputs, removed_targets, coefficients, *rest):
        base = single(theta, removed_inputs[0], removed_targets[0], *rest)
        losses = adapter.loss(adapter.outputs(theta, removed_inputs), removed_targets)
        return base - (coefficients * losses).sum()

    return objective


def group_gradients(adapter, theta, groups, problem):
    """Σ_{m∈S} (w_m/W) ∇L_m(θ) for each group, shape (k, p) (one backward pass per group)."""
    inputs, targets, _ = groups.rows(problem)
    coefficients = groups.coefficients(problem)

    def removed_term(theta_, x, t, c):
        return (c * adapter.loss(adapter.outputs(theta_, x), t)).sum()

    gradient = grad(removed_term)
    return torch.stack(
        [gradient(theta, inputs[j], targets[j], coefficients[j]) for j in range(len(groups))]
    ).detach()


def exact_group_refits(problem, groups, scales):
    """Exact minimisers of the objective without each group (convex linear models).

    (1/N) Σ_{i∉S} w̃_i L_i + c_S R with ``scales`` the penalty factors c_S (scikit-learn's
    own refit, or 1 for the package's leave-one-out objective; see
    :func:`._linear_loo.penalty_scales`). Dividing by c_S > 0 leaves the minimiser unchanged,
    so each group is Newton's method (:func:`._newton.minimize_convex`) on the weights
    w̃ ⊙ (1 − 1_S) / c_S with the full penalty: exact in one step for least squares.
    """
    adapter = problem.adapter
    weights = groups.kept_weights(problem) / scales.unsqueeze(1)
    thetas = torch.stack(
        [
            minimize_convex(adapter, problem.theta, problem.inputs, problem.targets, weights[j])
            for j in range(len(groups))
        ]
    )
    return Bunch(parameters=thetas, converged=np.ones(len(groups), dtype=bool))


def group_curvature_weights(problem, group):
    """Gauss-Newton row weights of a group's PRF/PBRF for a model linear in θ, shape (N,).

    Each member's data share w̃_m/N is cancelled by its removal term (w_m/W) L_m (their output
    Hessians are equal: a Bregman divergence has its loss's Hessian), so the exact Hessian is
    the Gauss-Newton matrix with the members' weights zeroed.
    """
    return RemovedGroups([group]).kept_weights(problem)[0]
