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


def make_curvature(name, adapter, theta, inputs, targets=None, *, batch_size=1024, weights=None):
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

    Returns
    -------
    curvature : Curvature

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
    return CURVATURES[name](adapter, theta, inputs, targets, batch_size=batch_size, weights=weights)


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
]
