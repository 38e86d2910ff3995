"""The Gauss-Newton curvature G = (1/N) Σ_i w_i J_iᵀ H_h,i J_i + ∇²R (J_i = ∂h/∂θ, H_h = ∇²_h L).

Products come one of two ways, whichever is cheaper (option ``jacobian_products``):

* **stored Jacobians**: the whitened output Jacobians W_i = A_i J_i (A_iᵀA_i = w_i H_h,i),
  stacked as one (N·r, p) matrix once, make every product two matrix multiplies,
  V ↦ (V Wᵀ) W. Building W costs r backward passes per row, once; a forward/reverse product
  costs about three network passes per vector and row, every time. Block CG multiplies
  ~100 vectors per iteration, so W pays for itself within the first iteration whenever it
  fits: on the 8×8-digits LeNet (N = 1,500, r = 10, p = 2,618, 157 MB) CG took 4× less
  time (see ``benchmarks/results/bench_scale.md``);
* **matrix-free**: forward then reverse mode, vmapped over a block of vectors, in batches
  of rows sized from ``working_memory`` — when W does not fit, or when the network's
  forward pass is so cheap per parameter that the passes cost fewer flops than the two
  multiplies with W's N·r rows (:func:`stored_products_are_cheaper`). A dense MLP is that
  case: its forward pass is 2p flops per row against 4rp per vector for W, and its
  forward/reverse products ran 2.8× faster than the stored ones (r = 10, p = 2,410), while
  on convolutional, residual and attention nets, whose forward pass reuses each weight at
  many positions, the stored products ran 6–60× faster
  (``benchmarks/results/bench_products.md``).

The diagonal and the dense matrix come from the whitened Jacobians too, and for linear
models (``adapter.linear_layout``) the dense matrix uses the Kronecker structure
Σ_i H_i ⊗ z̃_i z̃_iᵀ instead.
"""

import torch
from sklearn import get_config
from sklearn.utils._param_validation import StrOptions
from torch.func import jacrev, jvp, vjp, vmap
from torch.utils.flop_counter import FlopCounterMode

from .._torch_utils import FORWARD_AD_LOCK
from ._curvature_base import Curvature
from ._gradients import batch_slices

#: fewest training rows per batch of a Gauss-Newton product, whatever the working memory
MIN_PRODUCT_ROWS = 64
#: share of ``working_memory`` the stored whitened Jacobians may take (``"auto"``)
JACOBIAN_FRACTION = 0.5


class GaussNewton(Curvature):
    """Gauss-Newton matrix of the training objective (the default curvature).

    See :class:`~sklearn_influence._engine._curvature_base.Curvature` for the parameters.

    Options (``curvature_options``)
    -------------------------------
    jacobian_products : "auto" or bool, default="auto"
        Products from the stored whitened Jacobians (module docstring). ``"auto"``: when the
        N·r·p numbers take at most ``JACOBIAN_FRACTION`` (half) of scikit-learn's
        ``working_memory`` and the stored products are the cheaper ones
        (:func:`stored_products_are_cheaper`: convolutional, residual and attention nets,
        not dense MLPs); True: always; False: never (matrix-free products).
    n_samples
        See :class:`~sklearn_influence._engine._curvature_base.Curvature`.

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._curvature import make_curvature
    >>> X, y = torch.randn(20, 3).numpy(), torch.randn(20).numpy()
    >>> adapter = make_adapter(Ridge().fit(X, y), 20, torch.device("cpu"))
    >>> theta, inputs = adapter.parameters(), adapter.inputs(X)
    >>> curvature = make_curvature("gauss_newton", adapter, theta, inputs, None)
    >>> V = torch.randn(2, theta.numel(), dtype=theta.dtype)
    >>> bool(torch.allclose(curvature.matmul(V), V @ curvature.dense()))
    True
    """

    name = "gauss_newton"
    options = {**Curvature.options, "jacobian_products": "auto"}
    option_constraints = {
        **Curvature.option_constraints,
        "jacobian_products": [StrOptions({"auto"}), "boolean"],
    }
    _activation_bytes = None  # measured at the first product (under FORWARD_AD_LOCK)
    _jacobians = None  # the stored (N·r, p) whitened Jacobians, built at the first product
    _fits = None  # whether they fit the working memory ("auto"), decided at the first product

    def __getstate__(self):
        # the stored Jacobians are rebuilt on demand: pickles (caches, workers) stay small
        state = self.__dict__.copy()
        state.pop("_jacobians", None)
        return state

    def _factor_rows(self):
        """r, the rows of one example's output-Hessian factor (its whitened Jacobian)."""
        with torch.no_grad():
            outputs = self.adapter.outputs(self.theta, self.inputs[:1])
            return self.adapter.loss.hessian_factor(outputs, self.targets_of(slice(0, 1))).shape[-2]

    def jacobian_bytes(self):
        """Bytes of the stacked whitened Jacobians W (N·r rows of p numbers)."""
        if self.n_train == 0:
            return 0
        return self.n_train * self._factor_rows() * self.n_params * self.theta.element_size()

    def uses_stored_jacobians(self):
        """Whether products go through the stored Jacobians (option ``jacobian_products``)."""
        setting = self.settings["jacobian_products"]
        if self._jacobians is not None or setting is True:
            return True
        if setting is False or self.n_train == 0:
            return False
        if self._fits is None:  # decided once: the working memory in force at the first product
            budget = JACOBIAN_FRACTION * get_config()["working_memory"] * 2**20
            self._fits = self.jacobian_bytes() <= budget and stored_products_are_cheaper(
                self.adapter, self.theta, self.inputs, self._factor_rows()
            )
        return self._fits

    def stored_jacobians(self):
        """W, the (N·r, p) stacked whitened Jacobians, built once (under the product lock)."""
        if self._jacobians is None:
            blocks = [
                whitened.detach().reshape(-1, self.n_params)
                for whitened in self.whitened_jacobians(_jacobian_rows(self))
            ]
            self._jacobians = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
        return self._jacobians

    def _products(self, block):
        if self.uses_stored_jacobians():
            return self._stored_products(block)
        return self._matrix_free_products(block)

    def _stored_products(self, block):
        """Rows of V Wᵀ W / N + V R, by row blocks of W (the (m, rows) product stays small)."""
        jacobians = self.stored_jacobians()
        budget = get_config()["working_memory"] * 2**20 / 4
        rows = max(1, int(budget // max(1, len(block) * block.element_size())))
        total = torch.zeros_like(block)
        for part in batch_slices(len(jacobians), rows):
            total += (block @ jacobians[part].T) @ jacobians[part]
        return self._finish(total, block)

    def _matrix_free_products(self, block):
        """Per batch of rows: one forward pass, J V (forward mode), H_h, then Jᵀ (reverse)."""
        adapter, theta, weights = self.adapter, self.theta, self.weights
        total = torch.zeros_like(block)
        for rows in batch_slices(self.n_train, self.product_rows(len(block))):
            batch = self.inputs[rows]

            def outputs(theta_, batch=batch):
                return adapter.outputs(theta_, batch)

            values, pullback = vjp(outputs, theta)
            pushed = vmap(lambda v, f=outputs: jvp(f, (theta,), (v,))[1])(block)  # (m, b, k)
            with torch.no_grad():
                output_hessian = adapter.loss.output_hessian(values.detach(), self.targets_of(rows))
                if weights is not None:
                    output_hessian = output_hessian * weights[rows].reshape(-1, 1, 1)
            curved = torch.einsum("bkl,mbl->mbk", output_hessian, pushed)
            total += vmap(pullback)(curved)[0]
        return self._finish(total, block)

    def product_rows(self, n_vectors):
        """Training rows per batch of a product with ``n_vectors`` vectors.

        The vmapped forward- and reverse-mode passes hold about three activation-sized
        tensors per vector and row (tangents, cotangents and the primal activations they
        refer to), so a batch is sized to keep 3 · n_vectors · rows · (activation bytes per
        row) under half of scikit-learn's ``working_memory``, and never above
        ``batch_size`` nor below ``MIN_PRODUCT_ROWS`` (64). Small networks keep
        ``batch_size``; a network of a million parameters multiplying 100 vectors gets about
        two hundred rows per batch.
        """
        if self._activation_bytes is None:
            self._activation_bytes = activation_bytes_per_row(self.adapter, self.theta, self.inputs)
        budget = get_config()["working_memory"] * 2**20 / 2
        rows = int(budget // max(1.0, 3.0 * n_vectors * self._activation_bytes))
        # a floor: a tiny working_memory (set to stream other blocks finely) must not turn
        # every product into a loop over single rows
        return max(min(self.batch_size, MIN_PRODUCT_ROWS), min(self.batch_size, rows))

    def subset(self, rows):
        """The same curvature on ``rows``; the activation bytes per row carry over (they
        depend on the network, not on which rows), so LiSSA's many subsets measure once."""
        part = super().subset(rows)
        part._activation_bytes = self._activation_bytes
        if self._jacobians is not None:  # the subset's rows of W (r consecutive rows each)
            r = len(self._jacobians) // max(self.n_train, 1)
            index = torch.arange(self.n_train, device=self.device)[rows]
            expanded = (index.unsqueeze(1) * r + torch.arange(r, device=self.device)).reshape(-1)
            part._jacobians = self._jacobians[expanded]
        elif self.settings["jacobian_products"] == "auto":
            # a random subset serves a few products only (LiSSA's minibatches): never store
            part.settings = {**part.settings, "jacobian_products": False}
        return part

    def diagonal(self):
        """diag(G), exactly, from per-example output Jacobians (batched; memory b·k·p)."""
        if self._jacobians is not None:
            return (self._jacobians**2).sum(0) / self.n_train + self.adapter.regularizer_diagonal()
        total = torch.zeros_like(self.theta)
        for whitened in self.whitened_jacobians(_jacobian_rows(self)):
            total += (whitened**2).sum((0, 1))
        return total / self.n_train + self.adapter.regularizer_diagonal()

    def _dense(self):
        if self.adapter.linear_layout:
            data_term = self._linear_data_term()
        else:
            data_term = self.theta.new_zeros((self.n_params, self.n_params))
            for whitened in self.whitened_jacobians(self.batch_size):
                stacked = whitened.reshape(-1, self.n_params)
                data_term += stacked.T @ stacked
        data_term /= self.n_train
        data_term.diagonal().add_(self.adapter.regularizer_diagonal())
        return data_term

    def whitened_jacobians(self, rows_per_batch):
        """A_i J_i per batch of rows, shape (b, k, p), with A_iᵀA_i = w_i H_h,i."""
        adapter, theta, inputs, weights = self.adapter, self.theta, self.inputs, self.weights
        for rows in batch_slices(self.n_train, rows_per_batch):
            jacobians = output_jacobians(adapter, theta, inputs[rows])
            with torch.no_grad():
                outputs = adapter.outputs(theta, inputs[rows])
                factor = adapter.loss.hessian_factor(outputs, self.targets_of(rows))
                if weights is not None:
                    factor = factor * weights[rows].sqrt().reshape(-1, 1, 1)
                whitened = factor @ jacobians
            # yield outside no_grad: a suspended generator would leave grad mode off for the caller
            yield whitened

    def _linear_data_term(self):
        """Σ_i w_i H_i ⊗ z̃_i z̃_iᵀ for h = W̃ z̃: k(k+1)/2 weighted Gram matrices, no Jacobians.

        Block (a, b) of the matrix (θ = W̃.ravel() row-major) is Zᵀ diag(w ⊙ H[:, a, b]) Z.
        Only the pairs a ≤ b are computed (H_i is symmetric; block (b, a) is the transpose),
        pairs whose weight is zero on every row are skipped (the diagonal Hessians of the
        one-vs-rest log-loss and of squared errors), and an output Hessian that is the same
        on every row (squared errors) gives H ⊗ Zᵀ diag(w) Z from a single Gram matrix. One
        output (binary classifiers, regressors) is a single weighted Gram matrix.
        """
        adapter, theta, inputs, weights = self.adapter, self.theta, self.inputs, self.weights
        k, width = adapter.n_outputs, inputs.shape[1]
        H = self._linear_output_hessians()  # (N, k, k), without the weights
        matrix = theta.new_zeros((k, width, k, width))
        if len(inputs) == 0:
            return matrix.reshape(k * width, k * width)
        if k > 1 and bool((H == H[:1]).all()):
            weighted = inputs if weights is None else inputs * weights.reshape(-1, 1)
            return torch.kron(H[0], inputs.T @ weighted)
        for a in range(k):
            for b in range(a, k):
                weight = H[:, a, b] if weights is None else H[:, a, b] * weights
                if a != b and not bool(weight.any()):
                    continue
                gram = inputs.T @ (weight.unsqueeze(1) * inputs)
                matrix[a, :, b, :] = gram
                if a != b:
                    matrix[b, :, a, :] = gram.T
        return matrix.reshape(k * width, k * width)

    def _linear_output_hessians(self, limit=2**22):
        """∇²_h L_i for every training row, shape (N, k, k), in blocks of rows."""
        adapter, theta, inputs = self.adapter, self.theta, self.inputs
        k = adapter.n_outputs
        rows_per_block = max(self.batch_size, limit // max(1, k * k))
        blocks = [
            adapter.loss.output_hessian(adapter.outputs(theta, inputs[rows]), self.targets_of(rows))
            for rows in batch_slices(self.n_train, rows_per_block)
        ]
        if not blocks:
            return theta.new_zeros((0, k, k))
        return torch.cat(blocks) if len(blocks) > 1 else blocks[0]


#: the stored products win when a row's forward pass costs at least this many flops per
#: number of its whitened Jacobian (r·p). Measured (100 vectors, 1,000 digits, one thread):
#: 0.20 for a tanh MLP, where the matrix-free products were 2.8× faster, and 1.2–12 for
#: LeNet, VGG, a Transformer and a ResNet, where the stored ones were 7–78× faster; the
#: threshold sits between (a linear model with k outputs has 2/k)
STORED_FLOPS_PER_JACOBIAN_ENTRY = 0.5


def stored_products_are_cheaper(adapter, theta, inputs, factor_rows):
    """Whether products from the stored whitened Jacobians beat the forward/reverse ones.

    A stored product costs 4·r·p flops per row and vector in two large matrix multiplies
    (BLAS at full speed); a forward/reverse product costs a few forward passes per row and
    vector, F flops each, run as many small vmapped operations (far from full speed). The
    rule compares F, counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one
    row (deterministic: the choice never depends on timing), with r·p times
    :data:`STORED_FLOPS_PER_JACOBIAN_ENTRY`.

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._gauss_newton import stored_products_are_cheaper
    >>> X, y = torch.randn(20, 3).numpy(), torch.randn(20).numpy()
    >>> adapter = make_adapter(Ridge().fit(X, y), 20, torch.device("cpu"))
    >>> stored_products_are_cheaper(adapter, adapter.parameters(), adapter.inputs(X), 1)
    True
    """
    if len(inputs) == 0:
        return False
    flops = forward_flops_per_row(adapter, theta, inputs, rows=1)
    return flops >= STORED_FLOPS_PER_JACOBIAN_ENTRY * factor_rows * theta.numel()


def forward_flops_per_row(adapter, theta, inputs, *, rows=8):
    """Floating-point operations of one forward pass per training row, counted (not timed)
    by :class:`torch.utils.flop_counter.FlopCounterMode` on the first ``rows`` rows, so that
    it is the same on every run (element-wise operations are not counted)."""
    index = torch.arange(min(rows, len(inputs)), device=theta.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        adapter.outputs(theta, inputs[index])
    return counter.get_total_flops() / max(len(index), 1)


def activation_bytes_per_row(adapter, theta, inputs):
    """Bytes that autograd saves per training row in a forward pass of ``adapter``.

    Measured on one and on two rows (whatever does not grow with the rows, such as the
    weights a matrix product saves, cancels in the difference). 0 without training rows.

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._gauss_newton import activation_bytes_per_row
    >>> X, y = torch.randn(20, 3).numpy(), torch.randn(20).numpy()
    >>> adapter = make_adapter(Ridge().fit(X, y), 20, torch.device("cpu"))
    >>> activation_bytes_per_row(adapter, adapter.parameters(), adapter.inputs(X)) > 0
    True
    """
    if len(inputs) < 2:
        return 0.0

    def saved_bytes(rows):
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        leaf = theta.detach().requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            adapter.outputs(leaf, inputs[:rows])
        return sum(sizes)

    return float(max(saved_bytes(2) - saved_bytes(1), inputs[:1].numel() * theta.element_size()))


def output_jacobians(adapter, theta, inputs):
    """J_i = ∂h(θ, x_i)/∂θ for each row, shape (n, k, p)."""

    def single(theta_, x):
        return adapter.outputs(theta_, x.unsqueeze(0))[0]

    return vmap(jacrev(single), in_dims=(None, 0))(theta, inputs)


def _jacobian_rows(curvature, limit_bytes=256 * 1024**2):
    """Rows per batch so that one batch of output Jacobians (b, k, p) stays under the limit."""
    itemsize = curvature.theta.element_size()
    per_row = max(1, curvature.adapter.n_outputs * curvature.n_params * itemsize)
    return max(1, min(curvature.batch_size, limit_bytes // per_row))


def gauss_newton_products_at(adapter, thetas, vectors, inputs, *, row_weights=None,
                             rows_per_batch=None, inputs_per_copy=False):  # fmt: skip
    """Σ_i w_i J_iᵀ H_h,i J_i v_j at a different θ_j for each copy j, shape (k, p).

    The data term of the Gauss-Newton product of :class:`GaussNewton`, but batched over k
    parameter copies, each with its own θ_j and vector v_j (one forward-mode pass for J v,
    the output Hessian at h(θ_j, x_i), one reverse-mode pass for Jᵀ), vmapped over the
    copies: the second-order response solvers take one Gauss-Newton step per copy at its
    own iterate. The sum over rows is returned (callers divide by their normaliser) without
    the regularizer.

    Parameters
    ----------
    adapter : ModelAdapter
    thetas, vectors : Tensor of shape (k, p)
    inputs : Tensor
        Rows shared by every copy, or one set of rows per copy (leading axis k) with
        ``inputs_per_copy=True``.
    row_weights : Tensor or None
        w_i per row (shape (N,), or (k, n) per copy); None means ones.
    rows_per_batch : int or None
        Rows per vectorised batch (None: all at once).

    Examples
    --------
    >>> import torch
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn_influence._adapters import make_adapter
    >>> from sklearn_influence._engine._curvature import make_curvature
    >>> X, y = torch.randn(20, 3).numpy(), torch.randn(20).numpy()
    >>> adapter = make_adapter(Ridge().fit(X, y), 20, torch.device("cpu"))
    >>> theta, inputs = adapter.parameters(), adapter.inputs(X)
    >>> V = torch.randn(2, theta.numel(), dtype=theta.dtype)
    >>> G = make_curvature("gauss_newton", adapter, theta, inputs, None).dense()
    >>> data = gauss_newton_products_at(adapter, theta.repeat(2, 1), V, inputs) / 20
    >>> bool(torch.allclose(data + V * adapter.regularizer_diagonal(), V @ G))
    True
    """
    n_rows = inputs.shape[1] if inputs_per_copy else len(inputs)
    step = n_rows if rows_per_batch is None else max(1, int(rows_per_batch))
    loss = adapter.loss

    def one(theta, vector, batch, weights):
        def outputs(theta_):
            return adapter.outputs(theta_, batch)

        values, pushed = jvp(outputs, (theta,), (vector,))
        hessian = loss.output_hessian(values.detach())
        if weights is not None:
            hessian = hessian * weights.reshape(-1, 1, 1)
        _, pullback = vjp(outputs, theta)
        return pullback(torch.einsum("bkl,bl->bk", hessian, pushed))[0]

    data_dim = 0 if inputs_per_copy else None
    weight_dim = None if row_weights is None else (0 if row_weights.dim() == 2 else None)
    batched = vmap(one, in_dims=(0, 0, data_dim, weight_dim))
    total = torch.zeros_like(vectors)
    with FORWARD_AD_LOCK:  # forward-mode AD is not thread-safe in torch
        for rows in batch_slices(n_rows, step):
            batch = inputs[:, rows] if inputs_per_copy else inputs[rows]
            weights = None
            if row_weights is not None:
                weights = row_weights[..., rows]
            total += batched(thetas, vectors, batch, weights).detach()
    return total
