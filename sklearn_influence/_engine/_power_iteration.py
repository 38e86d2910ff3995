"""Power iteration for the largest eigenvalue of a symmetric operator given by its products.

Used by LiSSA (``scale="auto"``) and by the response optimisers (step size 1/L).
"""

import torch


def top_eigenvalue(matmul, n_params, dtype, device, *, n_iter=30, seed=0, absolute=False):
    """Largest eigenvalue of a symmetric p × p operator by ``n_iter`` power iterations.

    The start vector is a standard normal draw (float64, from a CPU generator seeded with
    ``seed``), normalised, then cast to ``dtype`` on ``device``; each step maps v ↦ Cv/‖Cv‖.

    Parameters
    ----------
    matmul : callable
        v ↦ C v for a vector of shape (p,).
    n_params : int
    dtype, device : torch dtype and device of the vectors.
    n_iter : int, default=30
    seed : int, default=0
    absolute : bool, default=False
        False: the Rayleigh quotient vᵀCv of the last step (the top eigenvalue of a positive
        semi-definite C). True: ‖Cv‖, the largest |eigenvalue| (also for indefinite C).

    Returns
    -------
    value : float
        0.0 when C v vanishes.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._engine._power_iteration import top_eigenvalue
    >>> C = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    >>> round(top_eigenvalue(lambda v: C @ v, 3, torch.float64, "cpu", n_iter=100), 6)
    3.0
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    vector = torch.randn(n_params, generator=generator, dtype=torch.float64)
    vector = (vector / vector.norm()).to(device, dtype)
    value = 0.0
    for _ in range(n_iter):
        image = matmul(vector)
        norm = image.norm()
        value = float(norm) if absolute else float(image @ vector)
        if not bool(norm > 0):
            break
        vector = image / norm
    return value
