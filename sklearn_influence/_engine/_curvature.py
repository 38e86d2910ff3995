"""The curvature registry: :data:`CURVATURES` and the factory :func:`make_curvature`.

Each curvature is one class in its own module (a subclass of :class:`Curvature`):

================  =====================================  ==========================
name              matrix C (DESIGN.md §2)                module
================  =====================================  ==========================
``gauss_newton``  (1/N) Σ_i w_i J_iᵀ H_h,i J_i + ∇²R     ``_gauss_newton.py``
``hessian``       ∇²J(θ)                                 ``_hessian.py``
``identity``      I                                      ``_identity.py``
``kfac``          per layer S ⊗ A (Kronecker factors)    ``_kfac.py``
``ekfac``         K-FAC basis, re-fitted eigenvalues     ``_ekfac.py``
================  =====================================  ==========================

``kfac`` and ``ekfac`` are *factored*: they also bring their own damped inverse
``inverse_matmul(V, damping)`` (used by the ``factored`` solver and as a CG preconditioner).

A new curvature is one module plus one line in :data:`CURVATURES`; the estimators' parameter
validation, the solvers and the contract tests (``tests/test_engine_contracts.py``) pick it
up from the registry.
"""

import numpy as np
import torch

from ._curvature_base import DENSE_LIMIT_BYTES, Curvature, check_dense_size
from ._ekfac import EKFAC
from ._gauss_newton import GaussNewton
from ._hessian import Hessian
from ._identity import Identity
from ._kfac import KFAC

#: name → curvature class
CURVATURES = {
    "gauss_newton": GaussNewton,
    "hessian": Hessian,
    "identity": Identity,
    "kfac": KFAC,
    "ekfac": EKFAC,
}


def make_curvature(
    name, adapter, theta, inputs, targets=None, *, batch_size=1024, weights=None, options=None,
    seed=0, n_jobs=None,
):  # fmt: skip
    """The curvature object ``name`` at ``theta`` on the training rows (inputs, targets).

    Parameters
    ----------
    name : str
        A key of :data:`CURVATURES`.
    adapter : ModelAdapter
    theta : Tensor of shape (p,)
    inputs, targets : Tensor
        Training inputs and targets (targets may be None for curvatures that ignore them).
    batch_size : int, default=1024
        Training rows per vectorised batch.
    weights : Tensor of shape (N,) or None
        Per-row weights of the data term.
    options : dict or None
        ``curvature_options``, checked against the class's ``option_constraints``. The
        shared option ``n_samples`` builds the curvature on that many random rows
        (:func:`sample_rows`, seeded by ``seed``).
    seed : int, default=0
        Seeds the row sample.
    n_jobs : int or None, default=None
        Workers for the curvature's one-time passes over the training batches (the
        Kronecker factors); results do not depend on it.

    Returns
    -------
    curvature : Curvature
        ``rows`` (the sampled training positions, or None) is set on it.

    Examples
    --------
    >>> from sklearn_influence._engine._curvature import make_curvature
    >>> make_curvature("newton", None, None, None)
    Traceback (most recent call last):
    ...
    ValueError: Unknown curvature 'newton'; choose one of ['ekfac', 'gauss_newton', 'hessian', ...].
    """
    if name not in CURVATURES:
        raise ValueError(f"Unknown curvature {name!r}; choose one of {sorted(CURVATURES)}.")
    cls = CURVATURES[name]
    settings = cls.check_options(options)
    rows = sample_rows(len(inputs), settings["n_samples"], seed)
    if rows is not None:
        inputs = inputs[rows]
        targets = None if targets is None else targets[rows]
        weights = None if weights is None else weights[rows]
    settings = {**settings, "n_samples": None}
    curvature = cls(adapter, theta, inputs, targets, batch_size=batch_size, weights=weights,
                    n_jobs=n_jobs, **settings)  # fmt: skip
    curvature.rows = rows
    return curvature


def sample_rows(n_rows, n_samples, seed):
    """Sorted positions of a random sample of the rows, or None for all of them.

    ``n_samples``: an int (a count; at least N means all rows), a float in (0, 1] (a
    fraction, at least one row) or None (all). Drawn without replacement by a generator
    seeded with ``seed`` — not the first rows, which on a sorted data set are biased.

    Examples
    --------
    >>> from sklearn_influence._engine._curvature import sample_rows
    >>> sample_rows(10, 3, seed=0).tolist()
    [5, 6, 9]
    >>> sample_rows(10, 1.0, seed=0) is None
    True
    """
    if n_samples is None:
        return None
    count = n_samples if isinstance(n_samples, (int, np.integer)) else round(n_samples * n_rows)
    count = max(1, int(count))
    if count >= n_rows:
        return None
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(n_rows, size=count, replace=False)))


def dense_curvature(adapter, theta, inputs, targets, kind, batch_size=1024, weights=None):
    """Shortcut: ``make_curvature(kind, ...).dense()``, the (p, p) matrix (size checked)."""
    curvature = make_curvature(
        kind, adapter, theta, inputs, targets, batch_size=batch_size, weights=weights
    )
    return curvature.dense()


__all__ = [
    "CURVATURES",
    "DENSE_LIMIT_BYTES",
    "EKFAC",
    "KFAC",
    "Curvature",
    "GaussNewton",
    "Hessian",
    "Identity",
    "check_dense_size",
    "dense_curvature",
    "make_curvature",
    "sample_rows",
]
