"""Case-deletion regression diagnostics of a single-output linear model or GLM.

The statistics of :class:`~sklearn_influence.RegressionDiagnostics`, computed from the
leave-one-out shifts of :mod:`._linear_loo` (exact refits or their one-step approximation).
Everything is written in the GLM vocabulary, which contains least squares as the Gaussian
family with the identity link: prior weights wᵢ (``sample_weight``), linear predictor ηᵢ,
Fisher (IRLS) weights ωᵢ = wᵢ (dμ/dη)²/V(μ), information I = Zᵀ Ω Z + penalty, dispersion φ
and covariance φ I⁻¹.

In the package's objective J = (1/N) Σ w̃ᵢ L + R (DESIGN.md §2) a loss L is κ times the
negative log-likelihood per unit dispersion (κ = 2 for L = (y − ŷ)², 1 for ½(y − ŷ)², the
log-loss and half the deviance), so that I = (W/κ) H with H the Gauss-Newton matrix of J and
W = Σ wᵢ; the Pearson residual is rᵢ = −√wᵢ ∂L/∂η / √(κ aᵢ) with aᵢ = ∂²L/∂η² (Fisher), and
the deviance residual's square is dᵢ = 2 wᵢ Lᵢ / κ.
"""

import warnings

import numpy as np
import torch
from sklearn.utils import Bunch

from .._adapters._glm import TweedieHalfDeviance
from .._adapters._losses import BinaryLogLoss, SignedSquaredError, SquaredError
from .._torch_utils import to_numpy
from ..exceptions import NumericalWarning
from ._linear_loo import LinearLOOContext, exact_refits, needs_exact_hessian, one_step

METHODS = ("exact", "one_step")


def loss_scale(loss):
    """κ: the loss as a multiple of the negative log-likelihood per unit dispersion."""
    if isinstance(loss, SquaredError):
        return 2.0 * loss.scale
    if isinstance(loss, SignedSquaredError):
        return 2.0
    return 1.0


def is_gaussian(loss):
    """Least squares (the Gaussian family, identity link)."""
    return isinstance(loss, (SquaredError, SignedSquaredError))


def has_fixed_dispersion(loss):
    """Binomial and Poisson families have φ = 1; the others estimate it."""
    if isinstance(loss, BinaryLogLoss):
        return True
    return isinstance(loss, TweedieHalfDeviance) and loss.power == 1


def check_single_output(adapter, name):
    """Refuse models with several outputs (multi-class, multi-target)."""
    if adapter.n_outputs != 1:
        raise ValueError(
            f"{name} computes the diagnostics of single-output models (one target, or a "
            f"binary classifier); the model has {adapter.n_outputs} outputs (classes or "
            "targets). Fit one model per target or class, or use LeaveOneOut, which handles "
            "several outputs."
        )


def _shifts(adapter, reference, inputs, targets, method):
    """(shifts Δᵢ = θ₍ᵢ₎ − θ̂ (N, p), converged (N,), the Fisher context, leverages)."""
    fisher = LinearLOOContext(adapter, reference, inputs, targets, curvature="gauss_newton")
    rows = np.arange(len(inputs))
    start = one_step(fisher, rows)
    if method == "one_step":
        return start.shifts, np.ones(len(rows), dtype=bool), fisher, start.leverages
    if needs_exact_hessian(adapter):  # a non-canonical link: refine with the Hessian
        exact = LinearLOOContext(adapter, reference, inputs, targets, curvature="hessian")
        refits = exact_refits(exact, rows, penalty="refit")
    else:
        refits = exact_refits(fisher, rows, penalty="refit", start=start)
    return refits.parameters - reference, refits.converged, fisher, start.leverages


def regression_diagnostics(adapter, reference, inputs, targets, sample_weight, *, method):
    """Every diagnostic of every training row (see :class:`RegressionDiagnostics`).

    Parameters
    ----------
    adapter : LinearModelAdapter
        A single-output model linear in its parameters.
    reference : Tensor of shape (p,)
        The exact optimum θ̂ of the training objective.
    inputs, targets : Tensor
        The training rows as the adapter encodes them.
    sample_weight : ndarray of shape (N,) or None
        The prior weights wᵢ (None: all ones).
    method : {"exact", "one_step"}
        Leave-one-out shifts from exact refits or from their one-step approximation.

    Returns
    -------
    Bunch
        Arrays of shape (N,): ``leverage``, ``studentized_residual``,
        ``external_studentized_residual``, ``cooks_distance``, ``dffits``; ``dfbetas`` and
        ``loo_parameters`` (N, p); scalars ``dispersion`` and ``effective_parameters``;
        ``converged`` (N,) and ``covariance`` (p, p).
    """
    shifts, converged, fisher, leverage_t = _shifts(adapter, reference, inputs, targets, method)
    loss = adapter.loss
    n = len(inputs)
    kappa = loss_scale(loss)
    weights = np.ones(n) if sample_weight is None else np.asarray(sample_weight, float)
    with torch.no_grad():
        gradient = to_numpy(loss.output_gradient(fisher.outputs, targets))[:, 0]
        curvature = to_numpy(fisher.curvatures)[:, 0, 0]
        losses = to_numpy(loss(fisher.outputs, targets))
        inverse = to_numpy(fisher.inverse)
    leverage = to_numpy(leverage_t)
    shifts = to_numpy(shifts)
    z = to_numpy(inputs)
    pearson = -np.sqrt(weights) * gradient / np.sqrt(kappa * curvature)
    deviance = 2.0 * weights * losses / kappa
    effective = float(leverage.sum())
    dof = n - effective
    if dof <= 1:
        raise ValueError(
            f"The model has {effective:.3g} effective parameters for n_samples = {n} training "
            "rows, which "
            "leaves no degrees of freedom for the residual variance. Pass more rows than "
            "parameters + 1, or regularize more."
        )
    dispersion = 1.0 if has_fixed_dispersion(loss) else float((pearson**2).sum() / dof)
    remaining = 1.0 - leverage
    _warn_full_leverage(leverage)
    with np.errstate(divide="ignore", invalid="ignore"):
        deleted = _deleted_dispersion(loss, dispersion, dof, pearson, remaining, n)
        internal = pearson / np.sqrt(dispersion * remaining)
        likelihood = np.sign(pearson) * np.sqrt(
            np.maximum(deviance + leverage * pearson**2 / remaining, 0.0)
        )
        external = likelihood / np.sqrt(deleted)
        total_weight = weights.sum()
        covariance = dispersion * (kappa / total_weight) * inverse
        information = np.linalg.pinv(covariance, hermitian=True)
        cooks = ((shifts @ information) * shifts).sum(1) / effective
        fisher_weight = weights * curvature / kappa
        fitted_change = -np.sqrt(fisher_weight) * (z * shifts).sum(1)
        dffits = fitted_change / np.sqrt(deleted * leverage)
        scale = deleted if is_gaussian(loss) else np.full(n, dispersion)
        dfbetas = -shifts / np.sqrt(scale[:, None] * np.diag(covariance)[None] / dispersion)
    return Bunch(
        leverage=leverage,
        studentized_residual=internal,
        external_studentized_residual=external,
        cooks_distance=cooks,
        dffits=dffits,
        dfbetas=dfbetas,
        loo_parameters=to_numpy(reference)[None] + shifts,
        dispersion=dispersion,
        effective_parameters=effective,
        converged=converged,
        covariance=covariance,
    )


def _warn_full_leverage(leverage):
    """Rows with leverage 1 are interpolated: their deletion diagnostics are undefined."""
    full = np.flatnonzero(leverage >= 1.0 - 1e-10)
    if len(full):
        warnings.warn(
            f"{len(full)} rows have leverage 1 (rows {full[:5].tolist()}): the fit "
            "interpolates them, so their studentized residuals, Cook's distance, DFFITS and "
            "DFBETAS are undefined and reported as nan or inf. Remove the features that only "
            "those rows span, or regularize (Ridge).",
            NumericalWarning,
            stacklevel=5,
        )


def _deleted_dispersion(loss, dispersion, dof, pearson, remaining, n):
    """φ₍ᵢ₎, the dispersion without row i: ((n − p)φ − rᵢ²/(1 − hᵢ)) / (n − p − 1).

    Exact for least squares (the leave-one-out residual variance); 1 for the binomial and
    Poisson families.
    """
    if has_fixed_dispersion(loss):
        return np.ones(n)
    return (dof * dispersion - pearson**2 / remaining) / (dof - 1)
