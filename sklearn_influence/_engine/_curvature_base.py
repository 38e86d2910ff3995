"""The curvature contract: :class:`Curvature`, the base class of every curvature object.

A curvature object is the matrix C of DESIGN.md §2 at θ on a set of training rows — the data
term averaged over the rows, plus the regularizer — offered as products with blocks of
vectors, a diagonal, a row subset and, when small enough, the dense matrix. Subclasses live
one per file and are registered in :data:`sklearn_influence._engine._curvature.CURVATURES`.
"""

from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval

from .._options import check_options
from .._torch_utils import FORWARD_AD_LOCK
from ._gradients import batch_slices

#: default ceiling for one dense p × p matrix (bytes)
DENSE_LIMIT_BYTES = 2 * 1024**3


def check_dense_size(n_params, dtype, limit_bytes=DENSE_LIMIT_BYTES):
    """Refuse to allocate a p × p matrix that does not fit under ``limit_bytes``.

    Returns the number of bytes the matrix needs; the error names the matrix-free solvers.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    needed = n_params * n_params * itemsize
    if needed > limit_bytes:
        raise MemoryError(
            f"A dense {n_params} × {n_params} curvature matrix needs {needed / 1024**3:.1f} GiB, "
            f"more than the {limit_bytes / 1024**3:.1f} GiB allowed. Use solver='cg' or "
            "solver='lissa', which only need curvature-vector products, or a factored "
            "curvature (curvature='kfac' or 'ekfac') with solver='auto'."
        )
    return needed


def as_block(vectors, theta):
    """``vectors`` in θ's dtype as a block of rows (m, p); a single vector becomes (1, p)."""
    vectors = vectors.to(theta.dtype)
    return vectors.unsqueeze(0) if vectors.dim() == 1 else vectors


class Curvature:
    """Base class of the curvature objects: C at θ on the training rows, matrix-free.

    C is symmetric: ``matmul(V)`` returns the rows of V C. The data term is averaged over the
    rows given here (a :meth:`subset` averages over its own rows) and the adapter's
    regularizer diagonal is added, unless a subclass says otherwise (the identity).

    Subclasses implement :meth:`_products` (rows of V C for a block V) and may override
    :meth:`_dense` and :meth:`diagonal` with faster exact methods; the generic versions
    below use products with blocks of unit vectors.

    Parameters
    ----------
    adapter : ModelAdapter
    theta : Tensor of shape (p,)
        Where the curvature is taken.
    inputs : Tensor
        Training inputs as the adapter encodes them.
    targets : Tensor or None
        Training targets (needed by curvatures that depend on the labels, e.g. the Hessian).
    batch_size : int, default=1024
        Training rows per vectorised batch of a product.
    weights : Tensor of shape (N,) or None
        Per-row weights w_i of the data term (1/N) Σ w_i L_i; None means all ones.
    n_jobs : int or None, default=None
        Workers for the passes over training batches that build a curvature once (the
        Kronecker factors and EK-FAC's eigenvalues), through
        :class:`~sklearn.utils.parallel.Parallel` (a Dask backend shares them). The batches
        and their order do not depend on it.

    **options
        Keys of ``options`` (``curvature_options``), checked against ``option_constraints``
        by :func:`~sklearn_influence._options.check_options`.

    Options (``curvature_options``)
    -------------------------------
    n_samples : int, float in (0, 1] or None, default=None
        Build the curvature on a random subset of the training rows (drawn with the
        estimator's ``random_state``, not the first rows): an int is a number of rows, a
        float a fraction of them. The training gradients are still streamed over all rows.
        Handled by :func:`~sklearn_influence._engine._curvature.make_curvature`.

    Attributes
    ----------
    name : str
        The curvature's key in the registry.
    n_products : int
        Number of curvature-vector products so far (one per vector).
    needs_preconditioner : bool
        Whether an iterative solver gains from a preconditioner (the identity does not).
    factored : bool
        Whether the curvature brings its own damped inverse ``inverse_matmul`` (declared,
        read by the solvers and preconditioners instead of duck typing).
    requires : frozenset of str
        What the curvature needs from the model: ``"layer_structure"`` (the adapter's
        ``nn.Linear``/``nn.Conv2d`` layers, for the Kronecker factors) and/or ``"targets"``
        (the training labels). Checked by :func:`check_capabilities` before any numerical work.
    settings : dict
        The options with defaults filled in.
    """

    name = None
    needs_preconditioner = True
    factored = False
    requires = frozenset()
    #: option name → default (``curvature_options``)
    options = {"n_samples": None}
    #: option name → scikit-learn parameter constraints
    option_constraints = {
        "n_samples": [
            None,
            Interval(Integral, 1, None, closed="left"),
            Interval(Real, 0, 1, closed="right"),
        ]
    }

    def __init__(
        self,
        adapter,
        theta,
        inputs,
        targets=None,
        *,
        batch_size=1024,
        weights=None,
        n_jobs=None,
        **options,
    ):
        self.settings = self.check_options(options)
        self.n_jobs = n_jobs
        self.adapter = adapter
        self.theta = theta
        self.inputs = inputs
        self.targets = targets
        self.batch_size = int(batch_size)
        self.weights = weights
        self.n_products = 0

    @classmethod
    def check_options(cls, options):
        """``options`` with the defaults filled in (``InvalidParameterError`` when invalid)."""
        return check_options(
            options,
            cls.options,
            cls.option_constraints,
            channel="curvature_options",
            owner=f"curvature={cls.name!r}",
        )

    @property
    def n_params(self):
        return self.theta.numel()

    @property
    def n_train(self):
        """Number of training rows the data term averages over."""
        return len(self.inputs)

    @property
    def dtype(self):
        return self.theta.dtype

    @property
    def device(self):
        return self.theta.device

    # -- the contract -------------------------------------------------------------------
    def matmul(self, vectors):
        """Rows of V C for V of shape (m, p), or C v for a vector of shape (p,)."""
        block = as_block(vectors, self.theta)
        self.n_products += len(block)
        with FORWARD_AD_LOCK:  # forward-mode AD is not thread-safe in torch
            result = self._products(block)
        return result if vectors.dim() == 2 else result[0]

    def dense(self):
        """The (p, p) matrix C, after checking that it fits (:func:`check_dense_size`)."""
        check_dense_size(self.n_params, self.dtype)
        return self._dense()

    def diagonal(self):
        """diag(C), shape (p,)."""
        total = self.theta.new_zeros(self.n_params)
        for columns in batch_slices(self.n_params, self._unit_block()):
            units = self._units(columns)
            total[columns] = self.matmul(units)[:, columns].diagonal()
        return total

    def mean_eigenvalue(self, n_probes=4, seed=0):
        """tr(C) / p, the curvature's scale (cached): Hutchinson's estimate from ``n_probes``
        Rademacher products (subclasses with a cheap exact diagonal override it)."""
        if getattr(self, "_mean_eigenvalue", None) is None:
            if self.n_params == 0:
                self._mean_eigenvalue = 0.0
            else:
                generator = torch.Generator().manual_seed(seed)
                probes = torch.randint(0, 2, (n_probes, self.n_params), generator=generator)
                probes = (2.0 * probes - 1.0).to(self.device, self.dtype)
                products = self.matmul(probes)
                self._mean_eigenvalue = float(
                    (products * probes).sum() / (n_probes * self.n_params)
                )
        return self._mean_eigenvalue

    def subset(self, rows):
        """The same curvature on the training rows ``rows`` (a stochastic estimate of C)."""
        return type(self)(
            self.adapter,
            self.theta,
            self.inputs[rows],
            None if self.targets is None else self.targets[rows],
            batch_size=self.batch_size,
            weights=None if self.weights is None else self.weights[rows],
            n_jobs=self.n_jobs,
            **{**self.settings, "n_samples": None},
        )

    def targets_of(self, rows):
        """The training targets of ``rows`` (None without targets): what a loss whose output
        curvature depends on the target (``loss.hessian_needs_targets``) needs."""
        return None if self.targets is None else self.targets[rows]

    # -- for subclasses -----------------------------------------------------------------
    def _products(self, block):
        raise NotImplementedError

    def _dense(self):
        """Generic dense matrix: products with blocks of unit vectors (C is symmetric)."""
        matrix = self.theta.new_zeros((self.n_params, self.n_params))
        for columns in batch_slices(self.n_params, self._unit_block()):
            matrix[columns] = self.matmul(self._units(columns))
        return matrix

    def _finish(self, total, block):
        """Σ_i (data term) products → mean over the rows plus the regularizer."""
        return total / self.n_train + block * self.adapter.regularizer_diagonal()

    def _units(self, columns):
        units = self.theta.new_zeros((columns.stop - columns.start, self.n_params))
        units[torch.arange(len(units)), torch.arange(columns.start, columns.stop)] = 1.0
        return units

    def _unit_block(self, size=256):
        """Unit vectors per product in the generic :meth:`_dense` and :meth:`diagonal`."""
        return max(1, min(self.n_params, size))
