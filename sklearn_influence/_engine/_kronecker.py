"""Kronecker-factored Gauss-Newton curvature: factors, eigenbases, and the shared base class.

This module computes, once per curvature object, everything K-FAC (:mod:`._kfac`) and EK-FAC
(:mod:`._ekfac`) need, and implements their common :class:`KroneckerFactoredCurvature`
(products, diagonal, dense matrix, and the damped inverse through the eigenbases).

Conventions
-----------
For a layer out = W a + b (``nn.Linear``; ``nn.Conv2d`` per output position on unfolded
patches, :func:`~sklearn_influence._engine._layers.unfold_conv_inputs`), write
W̃ = [W, b] of shape (out, in + 1) and ā = [a, 1] (no ones column without a bias). θ stores
W row-major as (out, in) and b separately; vec(W̃) below is row-major too, so the gradient
g āᵀ of one position is g ⊗ ā and the Kronecker order is **S ⊗ A** (output side first).

The factors are taken on the *true* Gauss-Newton matrix, not on a (sampled) empirical Fisher.
With Aᵢ the output-Hessian factor of row i (``adapter.loss.hessian_factor``, AᵢᵀAᵢ = H_h,i)
and g_{i,r,t} the layer's output gradient at position t when the row r of Aᵢ is
back-propagated from the model outputs, and w_i the row weights (1 by default)::

    A = (1/N) Σ_i w_i Σ_t ā_{i,t} ā_{i,t}ᵀ                  (in+1) × (in+1)
    S = 1/(T Σ_i w_i) Σ_i w_i Σ_r Σ_t g_{i,r,t} g_{i,r,t}ᵀ   out × out

T is the number of positions per example (1 for a linear layer on vectors; H·W output
positions of a convolution; a layer called several times counts each call's positions).
This is the KFC convention of Grosse & Martens (2016): activations summed and output
gradients averaged over positions, so that for T = 1 the sum Σ_r over the rows of Aᵢ gives
E[Jᵀ H J] exactly and S ⊗ A is the Gauss-Newton block whenever the layer's inputs and
output gradients are independent (a linear model with squared loss: K-FAC is exact).

Per-example (per Hessian-factor row) layer gradients are G_{i,r} = Σ_t g_{i,r,t} ā_{i,t}ᵀ;
the exact Gauss-Newton block of the layer is (1/N) Σ_i w_i Σ_r vec(G_{i,r}) vec(G_{i,r})ᵀ.

The factored matrix of a layer is always held as (Q_S ⊗ Q_A) diag(vec Λ) (Q_S ⊗ Q_A)ᵀ with
Q_S, Q_A orthonormal eigenbases, so that (C + λI)⁻¹ costs two small matrix products per
side and λ enters only there. K-FAC: Λ = λ_S λ_Aᵀ; EK-FAC (George et al. 2018): Λ is re-fitted
to the diagonal of the exact block in that basis,
Λ*_{jk} = (1/N) Σ_i w_i Σ_r (Q_Sᵀ G_{i,r} Q_A)²_{jk}.

Regularizer. The adapter's diagonal D (R = ½ Σ r_j θ_j²), arranged as the layer's (out, in+1)
grid, is added as its diagonal in the Kronecker eigenbasis, (Q_S∘Q_S)ᵀ D (Q_A∘Q_A) — exact
when D is uniform over the layer (it is then c·I), and the Frobenius-closest matrix of the
factored form otherwise. One case is made exact by folding D into a factor: when S = s·I
(squared loss, one output block) and D depends only on the input column (a linear model's
unpenalised intercept), S ⊗ A + D = I ⊗ (s A + diag(d)), and the eigenbasis is taken from
that sum.

Parameters that no ``nn.Linear``/``nn.Conv2d`` layer covers (LayerNorm, embeddings,
grouped convolutions, ...) get their exact diagonal Gauss-Newton block plus the regularizer
(the fallback); their names are listed in ``fallback_parameters`` and a warning says so.
"""

import warnings
from dataclasses import dataclass

import torch
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.parallel import Parallel, delayed
from torch.func import jacrev, vmap

from .._progress import get_progress
from ..exceptions import ApproximationWarning
from ._curvature_base import Curvature
from ._gradients import batch_slices
from ._layers import layer_inputs_and_output_gradients, tape_positions
from ._pinv import cutoff, inverse_eigenvalues

#: elements of one batch of rotated per-example gradients (EK-FAC refit, T > 1)
_REFIT_ELEMENTS = 2**23


@dataclass
class LayerFactors:
    """The Kronecker factors of one layer and their eigendecompositions.

    Attributes
    ----------
    name : str
    index : Tensor of shape (out · (in+1),)
        θ positions of vec(W̃) (row-major (out, in+1); the last column is the bias).
    shape : tuple (out, in+1)
    A, S : Tensor
        The factors of the module docstring.
    regularizer : Tensor of shape (out, in+1)
        D on the layer's grid.
    QA, QS : Tensor
        Orthonormal eigenbases of the factors (of the folded factors when D was folded).
    eigenvalues_A, eigenvalues_S : Tensor
        Their eigenvalues (clamped at 0).
    folded : bool
        Whether D was folded into A (exact regularizer).
    data_eigenvalues : Tensor of shape (out, in+1) or None
        EK-FAC's Λ* of the data term (None for K-FAC).
    eigenvalues : Tensor of shape (out, in+1)
        Λ of the factored matrix, regularizer included.
    """

    name: str
    index: torch.Tensor
    shape: tuple
    A: torch.Tensor
    S: torch.Tensor
    regularizer: torch.Tensor
    QA: torch.Tensor = None
    QS: torch.Tensor = None
    eigenvalues_A: torch.Tensor = None
    eigenvalues_S: torch.Tensor = None
    folded: bool = False
    data_eigenvalues: torch.Tensor = None
    eigenvalues: torch.Tensor = None


def layer_index(layer, device):
    """θ positions of vec(W̃), W̃ = [W_mat, b] of shape (out, in+1), row-major."""
    out = layer.weight_shape[0]
    width = 1
    for size in layer.weight_shape[1:]:
        width *= size
    weight = torch.arange(layer.weight.start, layer.weight.stop, device=device)
    grid = weight.reshape(out, width)
    if layer.bias is not None:
        bias = torch.arange(layer.bias.start, layer.bias.stop, device=device).reshape(out, 1)
        grid = torch.cat([grid, bias], 1)
    return grid.reshape(-1), tuple(grid.shape)


def layer_activations_and_gradients(layer, tape, repeats):
    """ā (n, T, in+1) of each example and g (n·repeats, T, out) of each factor row.

    The tape holds the inputs once per example and the output gradients example-major
    (row i·repeats + r, one backward pass per factor row).
    """
    a, g = tape_positions(layer, tape)
    if layer.bias is not None:
        a = torch.cat([a, a.new_ones((*a.shape[:-1], 1))], -1)
    return a, g


def factored_layers(structure):
    """([(position, layer)] handled by Kronecker factors, [layers] left to the fallback)."""
    kept, refused = [], []
    for position, layer in enumerate(structure.layers):
        if layer.kind == "conv2d" and layer.conv.get("groups", 1) != 1:
            refused.append(layer)
        else:
            kept.append((position, layer))
    return kept, refused


class KroneckerFactoredCurvature(Curvature):
    """Base class of K-FAC and EK-FAC: a block-diagonal factored Gauss-Newton matrix.

    One block per ``nn.Linear``/``nn.Conv2d`` layer, (Q_S ⊗ Q_A) diag(Λ) (Q_S ⊗ Q_A)ᵀ, and an
    exact diagonal block for the other parameters (see the module docstring for the factors,
    the regularizer and the fallback). Factors and eigendecompositions are computed once, on
    first use, in batches of training rows (memory: the factors plus one batch), and reused
    for every damping: :meth:`inverse_matmul` applies (C + λI)⁻¹ for any λ without
    refactoring. Subclasses set the eigenvalues in :meth:`_eigenvalues`.

    Parameters are those of :class:`~sklearn_influence._engine._curvature_base.Curvature`.

    Options (``curvature_options``)
    -------------------------------
    self_check : "auto" or bool, default="auto"
        Measure, at ``fit``, the agreement of this approximation with the exact Gauss-Newton
        influence on a random sample
        (:meth:`~sklearn_influence.InfluenceFunction.check_approximation`; an
        ``ApproximationWarning`` when poor). ``"auto"``: for networks (not linear models,
        where K-FAC is exact for squared loss).
    n_samples
        See :class:`~sklearn_influence._engine._curvature_base.Curvature`.

    Attributes
    ----------
    layers : list of LayerFactors
        Computed on first use (property).
    fallback_parameters : tuple of str
        Names of the parameters on the diagonal fallback (empty when every parameter is in a
        factored layer).
    n_eigendecompositions : int
        Symmetric eigendecompositions performed so far (two per layer, once).
    """

    factored = True
    requires = frozenset({"layer_structure"})
    options = {**Curvature.options, "self_check": "auto"}
    option_constraints = {
        **Curvature.option_constraints,
        "self_check": [StrOptions({"auto"}), "boolean"],
    }

    def __init__(self, adapter, theta, inputs, targets=None, **settings):
        super().__init__(adapter, theta, inputs, targets, **settings)
        self.n_eigendecompositions = 0
        self._layers = None
        self._fallback_index = None
        self._fallback_diagonal = None
        self._smallest = None
        self._largest = None
        self.fallback_parameters = ()

    # -- factors ------------------------------------------------------------------------
    @property
    def layers(self):
        if self._layers is None:
            self._compute()
        return self._layers

    def _rows_per_batch(self, repeats):
        # one forward pass of b rows and r backward passes of b rows each: the b·r output
        # gradients per layer take what the forward pass of a batch expanded r times took
        return max(1, self.batch_size)

    def _expanded_tapes(self, rows):
        """Layer tapes of a batch of rows, back-propagated from every Hessian-factor row."""
        adapter, theta = self.adapter, self.theta
        batch = self.inputs[rows]
        with torch.no_grad():
            outputs = adapter.outputs(theta, batch)
            factor = adapter.loss.hessian_factor(outputs, self.targets_of(rows))  # (b, r, k)
            if self.weights is not None:
                factor = factor * self.weights[rows].sqrt().reshape(-1, 1, 1)
        # one forward pass over the batch, one backward pass per factor row
        return layer_inputs_and_output_gradients(adapter, theta, batch, factor), factor.shape[1]

    def block_pairs(self, rows, kept):
        """[(ā, g) per kept layer] of one batch of training rows.

        ``kept`` holds (position in ``layer_structure().layers``, layer) pairs; g carries the
        row weights' square roots, ā does not.
        """
        tapes, repeats = self._expanded_tapes(rows)
        return [
            layer_activations_and_gradients(layer, tapes[position], repeats)
            for position, layer in kept
        ]

    def over_blocks(self, task, *arguments):
        """Yield ``task(self, rows, *arguments)`` over the training batches, in order.

        The batches run through :class:`~sklearn.utils.parallel.Parallel` with the
        curvature's ``n_jobs`` (so a Dask backend shares them); the batches themselves never
        depend on ``n_jobs``, and the caller sums the results in batch order, so the factors
        are the same for every ``n_jobs`` (bitwise with one BLAS thread per worker).
        """
        slices = batch_slices(self.n_train, self._rows_per_batch(self._n_factor_rows()))
        results = Parallel(n_jobs=self.n_jobs, return_as="generator")(
            delayed(task)(self, rows, *arguments) for rows in slices
        )
        yield from get_progress(self).blocks(results, len(slices), f"{self.name} factor batch")

    def _n_factor_rows(self):
        """r, the rows of one example's output-Hessian factor."""
        with torch.no_grad():
            outputs = self.adapter.outputs(self.theta, self.inputs[:1])
            return self.adapter.loss.hessian_factor(outputs, self.targets_of(slice(0, 1))).shape[-2]

    def _compute(self):
        structure = self.adapter.layer_structure()
        kept, refused = factored_layers(structure)
        theta, dtype = self.theta, self.theta.dtype
        regularizer = self.adapter.regularizer_diagonal()
        grids = [layer_index(layer, theta.device) for _, layer in kept]
        A = [theta.new_zeros((shape[1], shape[1])) for _, shape in grids]
        S = [theta.new_zeros((shape[0], shape[0])) for _, shape in grids]
        positions = [None] * len(kept)
        for sums in self.over_blocks(_factor_sums, kept):
            for j, (n_positions, a_sum, s_sum) in enumerate(sums):
                positions[j] = n_positions
                A[j] += a_sum
                S[j] += s_sum
        total_weight = float(self.n_train if self.weights is None else self.weights.sum())
        layers = []
        for j, (_, layer) in enumerate(kept):
            index, shape = grids[j]
            T = positions[j] or 1
            layers.append(
                LayerFactors(
                    name=layer.name,
                    index=index,
                    shape=shape,
                    A=A[j] / max(self.n_train, 1),
                    S=S[j] / max(T * total_weight, 1e-300),
                    regularizer=regularizer[index].reshape(shape).to(dtype),
                )
            )
        for factors in layers:
            self._eigenbases(factors)
        self._eigenvalues(layers, kept)
        self._fallback(structure, kept, refused, regularizer)
        self._layers = layers

    def _eigh(self, matrix):
        self.n_eigendecompositions += 1
        values, vectors = torch.linalg.eigh(matrix.to(torch.float64))
        return values.clamp_min(0.0).to(self.dtype), vectors.to(self.dtype)

    def _eigenbases(self, factors):
        """Eigenbases of S and A, after folding D into A where that is exact."""
        S, A, D = factors.S, factors.A, factors.regularizer
        A_eff, S_eff = A, S
        scale = float(S.diagonal().mean()) if len(S) else 0.0
        scalar_S = scale > 0 and bool(
            torch.allclose(S, scale * torch.eye(len(S), dtype=S.dtype, device=S.device),
                           rtol=0, atol=1e-12 * scale)
        )  # fmt: skip
        column_only = bool((D == D[:1]).all())
        if scalar_S and column_only and bool((D != 0).any()):
            A_eff = scale * A + torch.diag(D[0])
            S_eff = torch.eye(len(S), dtype=S.dtype, device=S.device)
            factors.folded = True
        factors.eigenvalues_S, factors.QS = self._eigh(S_eff)
        factors.eigenvalues_A, factors.QA = self._eigh(A_eff)

    @staticmethod
    def regularizer_in_eigenbasis(factors):
        """(Q_S∘Q_S)ᵀ D (Q_A∘Q_A): the diagonal of D in the Kronecker eigenbasis."""
        return (factors.QS**2).T @ factors.regularizer @ factors.QA**2

    def _eigenvalues(self, layers, kept):
        """Set ``eigenvalues`` (and ``data_eigenvalues``) of every layer (subclasses)."""
        raise NotImplementedError

    def _fallback(self, structure, kept, refused, regularizer):
        """Exact diagonal Gauss-Newton block (plus D) for the parameters outside ``kept``."""
        spans = [(block.name, block.span) for block in structure.uncovered]
        for layer in refused:
            spans.append((f"{layer.name}.weight", layer.weight))
            if layer.bias is not None:
                spans.append((f"{layer.name}.bias", layer.bias))
        self.fallback_parameters = tuple(name for name, _ in spans)
        if not spans:
            return
        warnings.warn(
            f"curvature={self.name!r} factors only nn.Linear and nn.Conv2d (groups=1) layers; "
            f"the parameters {list(self.fallback_parameters)} get their exact diagonal "
            "Gauss-Newton block instead. For exact answers on these layers use "
            "curvature='gauss_newton' with solver='cg' (or solver='near_exact').",
            ApproximationWarning,
            stacklevel=4,
        )
        index = torch.cat(
            [torch.arange(span.start, span.stop, device=self.device) for _, span in spans]
        )
        self._fallback_index = index
        self._fallback_diagonal = (
            diagonal_gauss_newton(self, index) / max(self.n_train, 1) + regularizer[index]
        )

    # -- the contract -------------------------------------------------------------------
    def _apply(self, block, transform):
        """Rows of V M for the block-diagonal M whose layer eigenvalues become transform(Λ)."""
        result = torch.zeros_like(block)
        for factors in self.layers:
            grid = block[:, factors.index].reshape(len(block), *factors.shape)
            rotated = factors.QS.T @ grid @ factors.QA
            rotated = rotated * transform(factors.eigenvalues)
            result[:, factors.index] = (factors.QS @ rotated @ factors.QA.T).reshape(len(block), -1)
        if self._fallback_index is not None:
            index = self._fallback_index
            result[:, index] = block[:, index] * transform(self._fallback_diagonal)
        return result

    def _products(self, block):
        return self._apply(block, lambda values: values)

    def inverse_matmul(self, vectors, damping):
        """Rows of V (C + λI)⁻¹ with the factored C, through the cached eigenbases.

        Parameters
        ----------
        vectors : Tensor of shape (m, p) or (p,)
        damping : float
            λ ≥ 0; it enters only here, so a damping sweep reuses the factors.

        Returns
        -------
        Tensor shaped like ``vectors``.
        """
        damping = float(damping)
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping!r}.")
        block = vectors.to(self.dtype)
        block = block.unsqueeze(0) if block.dim() == 1 else block
        # the shared pseudo-inverse rule (:mod:`._pinv`): relative to the largest eigenvalue
        threshold = cutoff(self.largest_eigenvalue() + damping, self.n_params, self.dtype)
        if self.smallest_eigenvalue() + damping < -threshold:
            raise ValueError(
                f"The factored curvature {self.name!r} is not positive semi-definite "
                f"(smallest eigenvalue {self.smallest_eigenvalue():.3g}); use a positive damping."
            )
        result = self._apply(block, lambda values: inverse_eigenvalues(values + damping, threshold))
        return result if vectors.dim() == 2 else result[0]

    def largest_eigenvalue(self):
        """The largest eigenvalue of the factored matrix (cached; 0 when p = 0)."""
        if self._largest is None:
            values = [float(f.eigenvalues.max()) for f in self.layers if f.eigenvalues.numel()]
            if self._fallback_index is not None:
                values.append(float(self._fallback_diagonal.max()))
            self._largest = max(values, default=0.0)
        return self._largest

    def smallest_eigenvalue(self):
        """The smallest eigenvalue of the factored matrix (cached; inf when p = 0)."""
        if self._smallest is None:
            values = [float(f.eigenvalues.min()) for f in self.layers if f.eigenvalues.numel()]
            if self._fallback_index is not None:
                values.append(float(self._fallback_diagonal.min()))
            self._smallest = min(values, default=float("inf"))
        return self._smallest

    def mean_eigenvalue(self, n_probes=4, seed=0):
        """tr(C) / p, exactly, from the factored diagonal."""
        return float(self.diagonal().mean()) if self.n_params else 0.0

    def diagonal(self):
        """diag(C) of the factored matrix: (Q_S∘Q_S) Λ (Q_A∘Q_A)ᵀ per layer."""
        total = self.theta.new_zeros(self.n_params)
        for factors in self.layers:
            values = (factors.QS**2) @ factors.eigenvalues @ (factors.QA**2).T
            total[factors.index] = values.reshape(-1)
        if self._fallback_index is not None:
            total[self._fallback_index] = self._fallback_diagonal
        return total


def _factor_sums(curvature, rows, kept):
    """[(T, Σ āāᵀ, Σ ggᵀ) per kept layer] of one training batch (a parallel task)."""
    sums = []
    for a, g in curvature.block_pairs(rows, kept):
        if curvature.weights is not None:
            a = a * curvature.weights[rows].sqrt().reshape(-1, 1, 1)
        flat_a = a.reshape(-1, a.shape[-1])
        flat_g = g.reshape(-1, g.shape[-1])
        sums.append((a.shape[1], flat_a.T @ flat_a, flat_g.T @ flat_g))
    return sums


def diagonal_gauss_newton(curvature, index, limit_bytes=256 * 1024**2):
    """Σ_i w_i diag(J_iᵀ H_h,i J_i) restricted to θ[index] (Jacobians of those entries only)."""
    adapter, theta, inputs, weights = (
        curvature.adapter,
        curvature.theta,
        curvature.inputs,
        curvature.weights,
    )
    sub = theta[index]

    def single(values, x):
        return adapter.outputs(theta.index_put((index,), values), x.unsqueeze(0))[0]

    jacobian = vmap(jacrev(single), in_dims=(None, 0))
    per_row = max(1, adapter.n_outputs * len(index) * theta.element_size())
    rows_per_batch = max(1, min(curvature.batch_size, limit_bytes // per_row))
    total = torch.zeros_like(sub)
    for rows in batch_slices(len(inputs), rows_per_batch):
        J = jacobian(sub, inputs[rows])  # (b, k, u)
        with torch.no_grad():
            outputs = adapter.outputs(theta, inputs[rows])
            factor = adapter.loss.hessian_factor(outputs, curvature.targets_of(rows))
            if weights is not None:
                factor = factor * weights[rows].sqrt().reshape(-1, 1, 1)
        total += ((factor @ J) ** 2).sum((0, 1)).detach()
    return total
