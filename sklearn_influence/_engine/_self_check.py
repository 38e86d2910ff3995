"""The accuracy self-check: an approximate curvature/solver against exact Gauss-Newton CG.

:func:`approximation_agreement` measures, on a random sample, how well the influence that an
engine's curvature and solver give agrees with the exact damped Gauss-Newton influence
(block CG at a tight tolerance): Pearson and Spearman correlation over the sampled
(query, training point) entries and the overlap of the top-k most helpful training points
per query, with the sample sizes. The exact reference costs CG iterations with a few
right-hand sides, so the curvature of both sides may be taken on a random sample of the
training rows (``n_rows``): then the approximation is rebuilt on those rows, and the check
measures the *method* (its factorization, its solver) at that sample size rather than the
fitted object itself.
"""

import time

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.utils import Bunch

from ._curvature import make_curvature, sample_rows
from ._gradients import per_example_gradients
from ._solvers import make_solver

#: relative residual of the exact reference (default)
REFERENCE_TOL = 1e-6
#: Pearson below which the agreement is called poor (an ApproximationWarning)
POOR_PEARSON = 0.9
#: top-k overlap below which the agreement is called poor
POOR_OVERLAP = 0.7


def approximation_agreement(
    engine, damping, query_inputs, query_targets, *, n_rows=None, n_train=500, k=10, seed=0,
    reference_tol=REFERENCE_TOL, exclude=None,
):  # fmt: skip
    """Agreement of ``engine``'s influence with the exact Gauss-Newton influence, on a sample.

    Parameters
    ----------
    engine : InfluenceEngine
    damping : float
    query_inputs, query_targets : Tensor
        The query rows (targets resolved).
    n_rows : int or None
        Training rows of both curvatures (None: all; fewer rebuild the approximation on a
        random sample of that size, see the module docstring).
    n_train : int
        Training points (columns) scored, drawn at random from all N.
    k : int
        The top-k overlap's k (at most ``n_train``).
    seed : int
    reference_tol : float, default=1e-6
        Relative residual of the exact reference's block CG.
    exclude : array-like of int or None
        Training rows never drawn as columns: the queries themselves when they are training
        points (a point's influence on itself dwarfs the others and would make any
        approximation look good: on the digits CNN, EK-FAC measured Pearson 0.97 with the
        self-entries in and about its true 0.56 without).

    Returns
    -------
    Bunch
        ``pearson``, ``spearman``, ``top_k_overlap`` (mean over queries of the shared
        fraction of the k most helpful points), ``k``, ``n_queries``, ``n_train``,
        ``n_rows`` (curvature rows), ``approximation`` (``"curvature=…, solver=…"``),
        ``reference``, ``seconds``; ``approximate`` and ``exact`` (the sampled
        (n_queries, n_train) influence blocks) and ``train_indices``.
    """
    start = time.perf_counter()
    n = engine.n_train
    candidates = np.setdiff1d(np.arange(n), [] if exclude is None else np.asarray(exclude))
    picked = sample_rows(len(candidates), min(int(n_train), len(candidates)), seed + 1)
    columns = torch.from_numpy(candidates if picked is None else candidates[picked.numpy()])
    rows = None if n_rows is None else sample_rows(n, n_rows, seed)
    approximate_solver, exact_curvature = _the_two_sides(engine, rows, seed)
    exact_solver = make_solver(
        "cg", exact_curvature, {"tol": reference_tol, "maxiter": 1000, "seed": seed}
    )
    gradients = per_example_gradients(
        engine.adapter, engine.theta, query_inputs, query_targets, engine.batch_size
    )
    train = engine.train_gradients(columns.to(engine.theta.device))
    blocks = []
    for solver in (approximate_solver, exact_solver):
        solved = solver.solve(gradients, damping)
        block = (solved @ train.to(solved.dtype).T) / n
        blocks.append(block.detach().to("cpu", torch.float64).numpy())
    approximate, exact = blocks
    k = max(1, min(int(k), len(columns)))
    return Bunch(
        pearson=_pearson(approximate, exact),
        spearman=float(spearmanr(approximate.ravel(), exact.ravel())[0]),
        top_k_overlap=top_k_overlap(approximate, exact, k),
        k=k,
        n_queries=len(query_inputs),
        n_train=len(columns),
        n_rows=n if rows is None else len(rows),
        approximation=f"curvature={engine.curvature.name!r}, solver={engine.solver_name!r}",
        reference=f"exact Gauss-Newton, block CG to relative residual {reference_tol:g}",
        seconds=time.perf_counter() - start,
        approximate=approximate,
        exact=exact,
        train_indices=columns.numpy(),
    )


def _the_two_sides(engine, rows, seed):
    """(the approximate solver, the exact Gauss-Newton curvature) on the chosen rows."""
    curvature = engine.curvature
    if rows is None:
        solver = engine.solver
        exact = getattr(solver, "curvature", None)
        if exact is None or exact.name != "gauss_newton":
            exact = curvature if curvature.name == "gauss_newton" else _make(
                "gauss_newton", curvature, None, seed
            )  # fmt: skip
        return solver, exact
    options = {**curvature.settings, "n_samples": None}
    approximate = _make(curvature.name, curvature, rows, seed, options)
    solver = make_solver(engine.solver_name, approximate, engine.solver.settings)
    exact = approximate if approximate.name == "gauss_newton" else _make(
        "gauss_newton", curvature, rows, seed
    )  # fmt: skip
    return solver, exact


def _make(name, curvature, rows, seed, options=None):
    """Curvature ``name`` on ``curvature``'s model and θ, on its rows (or the ``rows`` of them)."""
    inputs, targets, weights = curvature.inputs, curvature.targets, curvature.weights
    if rows is not None:
        inputs = inputs[rows]
        targets = None if targets is None else targets[rows]
        weights = None if weights is None else weights[rows]
    return make_curvature(
        name, curvature.adapter, curvature.theta, inputs, targets,
        batch_size=curvature.batch_size, weights=weights, options=options, seed=seed,
    )  # fmt: skip


def _pearson(a, b):
    a, b = np.ravel(a), np.ravel(b)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def top_k_overlap(approximate, exact, k):
    """Mean over rows of |top-k(approximate) ∩ top-k(exact)| / k (largest values).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_influence._engine._self_check import top_k_overlap
    >>> top_k_overlap(np.array([[3.0, 2.0, 1.0]]), np.array([[3.0, 1.0, 2.0]]), 2)
    0.5
    """
    shared = [
        len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-e, kind="stable")[:k])) / k
        for a, e in zip(approximate, exact, strict=True)
    ]
    return float(np.mean(shared)) if shared else float("nan")


def is_poor(agreement):
    """Pearson below :data:`POOR_PEARSON` or top-k overlap below :data:`POOR_OVERLAP`."""
    return not (agreement.pearson >= POOR_PEARSON and agreement.top_k_overlap >= POOR_OVERLAP)


def poor_agreement_message(agreement):
    """The ApproximationWarning's text: the measured figures and the fix."""
    return (
        f"The influence of {agreement.approximation} agrees poorly with the exact "
        f"Gauss-Newton influence: Pearson {agreement.pearson:.3f}, Spearman "
        f"{agreement.spearman:.3f}, top-{agreement.k} overlap {agreement.top_k_overlap:.2f} "
        f"(measured on {agreement.n_queries} queries × {agreement.n_train} training points, "
        f"curvature on {agreement.n_rows} rows). For rankings you can trust use "
        "solver='near_exact' (block CG on the exact Gauss-Newton matrix) with "
        "curvature='gauss_newton' or with this curvature as its starting point."
    )


__all__ = [
    "POOR_OVERLAP",
    "POOR_PEARSON",
    "approximation_agreement",
    "is_poor",
    "poor_agreement_message",
    "top_k_overlap",
]
