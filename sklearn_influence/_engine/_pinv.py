"""One eigenvalue cut-off for every curvature: the damped inverse as a pseudo-inverse.

At ``damping=0`` a singular curvature (a duplicated feature, a softmax's redundant logit, a
network without weight decay) has no inverse. Every solver that holds eigenvalues — the
``direct`` eigendecomposition and the factored curvatures' eigenbases (K-FAC, EK-FAC, used by
``factored``, the CG preconditioner and ``near_exact``'s start) — applies the same rule, that
of numpy's ``pinv``: an eigenvalue w of C + λI counts as zero when

    |w| ≤ rcond · max |w|,   rcond = p · ε (float64) or √p · ε (float32),

and its inverse is then 0. The threshold is *relative to the largest eigenvalue*, never an
absolute ``> 0`` test (an eigenvalue of 1e-31 next to one of 1 is round-off, not curvature).
In float32, p · ε reaches 1e-3 at p = 10⁴, the size of a typical damping, which would cut
the small eigenvalues the damping is meant to regularise; the typical error of a
backward-stable eigensolver, √p · ε, is used instead.
"""

import math

import torch


def rcond(n_params, dtype):
    """The relative cut-off: p·ε in float64, √p·ε in lower precision.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._engine._pinv import rcond
    >>> rcond(100, torch.float64) == 100 * torch.finfo(torch.float64).eps
    True
    """
    eps = torch.finfo(dtype).eps
    factor = n_params if dtype == torch.float64 else math.sqrt(n_params)
    return max(factor, 1) * eps


def cutoff(largest, n_params, dtype):
    """The absolute threshold below which a damped eigenvalue counts as zero."""
    return rcond(n_params, dtype) * float(largest)


def inverse_eigenvalues(shifted, threshold):
    """1 / w where w > threshold, else 0 (``shifted`` are the damped eigenvalues w + λ)."""
    inverse = torch.zeros_like(shifted)
    kept = shifted > threshold
    inverse[kept] = 1.0 / shifted[kept]
    return inverse


__all__ = ["cutoff", "inverse_eigenvalues", "rcond"]
