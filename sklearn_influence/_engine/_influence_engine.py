"""Influence scores: the influence matrix, self-influence and top-k, streamed in blocks.

    I[q, m] = (1/N) ∇f_q(θˢ)ᵀ (C + λI)⁻¹ ∇_θ L(h(θˢ, x_m), t_m)

is the predicted change of query q's measurement when training point m is removed
(ε = 1/N). Positive: removing m raises the query loss, so m helps q.
"""

import numpy as np
import torch
from sklearn.utils.parallel import Parallel, delayed

from ._curvature import make_curvature
from ._gradients import batch_slices, per_example_gradients, resolve_query_targets
from ._solvers import make_solver


class InfluenceEngine:
    """Fit-time state for one model: θˢ, training gradients and a solver ready for any λ.

    Parameters
    ----------
    adapter : ModelAdapter
    inputs, targets : Tensor
        Training inputs and targets as the adapter encodes them.
    curvature : str
        A key of :data:`~sklearn_influence._engine._curvature.CURVATURES`.
    solver : str
        A key of :data:`~sklearn_influence._engine._solvers.SOLVERS` or ``"auto"``.
    batch_size : int
        Rows per vectorised batch.
    solver_options : dict
        Extra keyword arguments for the solver (tolerances, iterations, seeds).

    Attributes
    ----------
    adapter, theta, n_train, batch_size
        The model, θˢ, N and the batch size.
    train_gradients : Tensor of shape (N, p)
    curvature : Curvature
        The curvature object on the training data.
    solver : Solver
        Built from ``curvature``; ``solver_name`` is its resolved name.
    """

    def __init__(
        self, adapter, inputs, targets, *, curvature, solver, batch_size, solver_options=None
    ):
        self.adapter = adapter
        self.batch_size = batch_size
        self.theta = adapter.parameters()
        self.n_train = len(inputs)
        self.train_gradients = per_example_gradients(
            adapter, self.theta, inputs, targets, batch_size
        )
        self.curvature = make_curvature(
            curvature, adapter, self.theta, inputs, targets, batch_size=batch_size
        )
        self.solver = make_solver(solver, self.curvature, self.train_gradients, solver_options)
        self.solver_name = self.solver.name

    def influence(self, inputs, targets, damping, n_jobs=None):
        """Influence matrix (n_queries, N) as a tensor, computed in blocks of queries.

        Blocks run through :class:`sklearn.utils.parallel.Parallel`, so ``n_jobs`` or a
        joblib backend chosen by the caller (for example Dask) spreads them over workers;
        the factorization is done once, before the blocks are dispatched.
        """
        targets = resolve_query_targets(self.adapter, self.theta, inputs, targets)
        self.solver.prepare()
        blocks = Parallel(n_jobs=n_jobs)(
            delayed(_influence_block)(
                self, inputs[rows], None if targets is None else targets[rows], damping
            )
            for rows in batch_slices(len(inputs), self.batch_size)
        )
        if not blocks:
            return self.theta.new_zeros((0, self.n_train))
        return torch.cat([block.to(self.theta.device) for block in blocks])

    def self_influence(self, damping):
        """∇L_mᵀ (C + λI)⁻¹ ∇L_m / N for every training point, shape (N,)."""
        return self.solver.self_quadratic(damping) / self.n_train

    def query_self_influence(self, inputs, targets, damping):
        """∇f_qᵀ (C + λI)⁻¹ ∇f_q / N for each query row, shape (n_queries,).

        For a training point with its training target this equals its self-influence; for any
        other labelled point it is the self-influence it would have as a training point.
        """
        targets = resolve_query_targets(self.adapter, self.theta, inputs, targets)
        blocks = []
        for rows in batch_slices(len(inputs), self.batch_size):
            block_targets = None if targets is None else targets[rows]
            gradients = per_example_gradients(
                self.adapter, self.theta, inputs[rows], block_targets, self.batch_size
            )
            blocks.append((self.solver.solve(gradients, damping) * gradients).sum(1))
        if not blocks:
            return self.theta.new_zeros((0,))
        return torch.cat(blocks) / self.n_train


def _influence_block(engine, inputs, targets, damping):
    gradients = per_example_gradients(
        engine.adapter, engine.theta, inputs, targets, engine.batch_size
    )
    return engine.solver.bilinear(gradients, damping) / engine.n_train


def top_k(matrix, k):
    """Indices and values of the k largest (helpful) and k smallest (harmful) entries per row.

    Returns ``(helpful_indices, helpful_values, harmful_indices, harmful_values)``, each of
    shape (n_rows, k), sorted from the strongest effect down.
    """
    matrix = np.asarray(matrix)
    k = min(k, matrix.shape[1])
    order = np.argsort(matrix, axis=1, kind="stable")
    harmful = order[:, :k]
    helpful = order[:, ::-1][:, :k]
    take = np.take_along_axis
    return helpful, take(matrix, helpful, 1), harmful, take(matrix, harmful, 1)
