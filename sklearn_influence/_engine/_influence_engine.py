"""Influence scores: the influence matrix, self-influence and top-k, streamed in blocks.

    I[q, m] = (1/N) ∇f_q(θˢ)ᵀ (C + λI)⁻¹ ∇_θ L(h(θˢ, x_m), t_m)

is the predicted change of query q's measurement when training point m is removed
(ε = 1/N). Positive: removing m raises the query loss, so m helps q. For a model fitted with
per-row weights w_i (``adapter.row_weights``) removing m removes all of its weight:
ε_m = w_m / W with W = Σ w_i, and the curvature is the weighted mean.

**Streaming.** The training gradients (N × p) are never all held. Each call preconditions
the queries once, P = (C + λI)⁻¹∇f_q (n_queries × p; in blocks of queries when that alone
would exceed the working memory), then computes the training gradients block by block
(vmapped per-example gradients) and multiplies: the influence matrix is written into one
preallocated output, :meth:`InfluenceEngine.top_k` keeps only the k best per query from each
block, :meth:`InfluenceEngine.self_influence` streams the quadratic forms
diag(G (C + λI)⁻¹ Gᵀ). Memory is therefore O(n_queries · p + one block) plus what is
returned.

**Block sizes** come from scikit-learn's ``working_memory`` (MiB;
``sklearn.set_config(working_memory=...)`` or ``sklearn.config_context``, default 1024), as in
:func:`sklearn.metrics.pairwise_distances_chunked`: a block of training points holds their
gradients (p numbers each) and their column of the output (n_queries numbers each); a block of
queries holds their gradients and preconditioned gradients (2p numbers each). Every method
also takes ``working_memory`` to override the setting. A working memory too small for a
single row is a ValueError.

**Parallelism.** Blocks of queries (for preconditioning) and blocks of training points go
through :class:`sklearn.utils.parallel.Parallel`, so ``n_jobs`` or a joblib backend chosen by
the caller (for example Dask) can split a large N; each block is computed by the same
operations wherever it runs, so results do not depend on ``n_jobs`` or the backend.

**Finite or refused.** Every output passes through one :class:`NonFiniteScores` report:
a query whose preconditioned gradient is not finite, or a training point with a non-finite
score, is named with the fix (scale the features). Matrices and self-influence warn
(:class:`~sklearn_influence.exceptions.NumericalWarning`; the other entries are exact) and
raise when nothing is finite; rankings (:meth:`InfluenceEngine.top_k`) raise: NaN is never
ranked (the scores that correlate columns of the matrix refuse them too).

**Gradient cache.** When the N × p training gradients are small — at most
:data:`CACHE_FRACTION` of the working memory at construction (256 MiB of the default
1024 MiB) — the engine computes them once at construction and streams slices of that cache
instead of recomputing them at every call (``cache_gradients="auto"``); this keeps repeated
``transform`` calls of small models (damping sweeps, grid searches) as fast as before.
``cache_gradients=False`` never caches, ``True`` always does.
"""

import os
import sys
import warnings
from numbers import Real

import numpy as np
import sklearn
import torch
from sklearn import get_config
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.parallel import Parallel, delayed

from .._progress import get_progress
from ..exceptions import DampingWarning, NumericalWarning
from ._curvature import make_curvature
from ._gradients import batch_slices, per_example_gradients, resolve_query_targets
from ._layers import (
    check_factored_gradients,
    factored_gradient_layers,
    factored_scores,
    layer_gradient_factors,
    prepare_factored_queries,
)
from ._solvers import make_solver

#: share of the working memory that training gradients may take to be cached (``"auto"``)
CACHE_FRACTION = 0.25
#: damping over the curvature's mean eigenvalue above which a DampingWarning is issued
DWARFING_RATIO = 1e4

#: how many row positions a message about non-finite scores lists
_SHOWN_ROWS = 10

#: frames a warning skips: the package's and scikit-learn's (``set_output`` wraps transform)
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep
    for path in (os.path.dirname(os.path.abspath(__file__)), sklearn.__file__)
)


def _user_stacklevel():
    """``stacklevel`` (for a ``warnings.warn`` in the caller) of the first frame outside the
    package and scikit-learn, so that a warning points at the user's line whichever
    estimator called."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _positions(mask):
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(row)) for row in rows[:_SHOWN_ROWS])
    return f"[{shown}{', ...' if len(rows) > _SHOWN_ROWS else ''}] ({len(rows)} of {len(mask)})"


def _largest_feature(inputs, mask):
    if inputs is None or not inputs.is_floating_point() or not mask.any():
        return ""
    rows = torch.from_numpy(np.flatnonzero(mask)).to(inputs.device)
    return f"; largest |feature| there: {float(inputs[rows].abs().max()):.3g}"


class NonFiniteScores:
    """Where the scores of one call are not finite: query rows and training rows.

    Every output of the engine flows through one of these: a query row whose preconditioned
    gradient (C + λI)⁻¹∇f_q is not finite is a bad query row; a training column with a
    non-finite entry on an otherwise finite query row is a bad training row. :meth:`check`
    then refuses (``ValueError``) or warns (:class:`~sklearn_influence.exceptions.
    NumericalWarning`), naming the rows and the fix (scale the features).

    Parameters
    ----------
    n_queries, n_train : int
        The shape of the scores.
    query_inputs, train_inputs : Tensor or None
        The model inputs, for the largest feature magnitude the message quotes.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_influence._engine._influence_engine import NonFiniteScores
    >>> report = NonFiniteScores(2, 3)
    >>> report.add_block(slice(0, 2), slice(0, 3), np.array([[1.0, np.inf, 0], [0, 1, 2]]))
    >>> report.check("The influence matrix", refuse=True)
    Traceback (most recent call last):
    ...
    ValueError: The influence matrix is not finite for the training rows [1] (1 of 3) ...
    """

    def __init__(self, n_queries, n_train, query_inputs=None, train_inputs=None):
        self.queries = np.zeros(int(n_queries), dtype=bool)
        self.train = np.zeros(int(n_train), dtype=bool)
        self.query_inputs, self.train_inputs = query_inputs, train_inputs

    def add_queries(self, rows, preconditioned):
        """Record the query rows ``rows`` whose preconditioned gradients are not finite."""
        finite = torch.isfinite(preconditioned).all(1).cpu().numpy()
        self.queries[rows] |= ~finite

    def add_block(self, query_rows, train_rows, block):
        """Record the training rows with a non-finite score on a finite query row.

        ``block`` is the (queries, training rows) ndarray of scores; one sum screens it (a
        sum is finite only when every entry is), so finite blocks cost one pass.
        """
        if np.isfinite(block.sum()):
            return
        good = ~self.queries[query_rows]
        if good.any():
            self.train[train_rows] |= ~np.isfinite(block[good]).all(0)

    def add_training_values(self, rows, values):
        """Record the training rows ``rows`` whose own value (self-influence) is not finite."""
        self.train[rows] |= ~np.isfinite(values)

    def add_query_values(self, rows, values):
        """Record the query rows ``rows`` whose own value is not finite."""
        self.queries[rows] |= ~np.isfinite(values)

    def found(self):
        """Whether any row was recorded."""
        return bool(self.queries.any() or self.train.any())

    def check(self, what, *, refuse):
        """Raise (``refuse``, or when nothing is finite) or warn when rows were recorded."""
        if not self.found():
            return
        parts = []
        if self.queries.any():
            parts.append(
                f"the query rows {_positions(self.queries)} (their loss gradients or "
                f"preconditioned gradients overflow"
                f"{_largest_feature(self.query_inputs, self.queries)})"
            )
        if self.train.any():
            parts.append(
                f"the training rows {_positions(self.train)} (their gradients, or their "
                f"products with the queries', overflow"
                f"{_largest_feature(self.train_inputs, self.train)})"
            )
        nothing_finite = (len(self.queries) and self.queries.all()) or (
            len(self.train) and self.train.all()
        )
        fix = (
            "Scale the features (e.g. StandardScaler in a Pipeline) so that the gradients "
            "stay within the floating-point range, or drop those rows."
        )
        message = f"{what} is not finite for " + " and for ".join(parts) + ". "
        if refuse or nothing_finite:
            raise ValueError(message + fix)
        warnings.warn(
            message + "Those entries are NaN or infinite; the others are finite. " + fix,
            NumericalWarning,
            stacklevel=_user_stacklevel(),
        )


def working_memory_bytes(working_memory=None):
    """The working memory in bytes: ``working_memory`` MiB, or scikit-learn's setting.

    Anything but a finite positive number (``inf``, ``nan``, ``"big"``, ``True``, 0) is an
    ``InvalidParameterError`` (a ``ValueError`` and a ``TypeError``) naming where the value
    came from, before any numerical work.

    Examples
    --------
    >>> from sklearn_influence._engine._influence_engine import working_memory_bytes
    >>> working_memory_bytes(1.5)
    1572864.0
    >>> working_memory_bytes(float("inf"))
    Traceback (most recent call last):
    ...
    sklearn.utils._param_validation.InvalidParameterError: working_memory must be a positive ...
    """
    where = "the working_memory argument"
    if working_memory is None:
        working_memory = get_config()["working_memory"]
        where = "sklearn.get_config()['working_memory'] (set_config / config_context)"
    valid = (
        isinstance(working_memory, Real)
        and not isinstance(working_memory, bool)
        and np.isfinite(working_memory)
        and working_memory > 0
    )
    if not valid:
        raise InvalidParameterError(
            f"working_memory must be a positive number of MiB (finite), got "
            f"{working_memory!r} from {where}. Pass a number such as 1024 (scikit-learn's "
            "default), e.g. sklearn.set_config(working_memory=1024)."
        )
    return float(working_memory) * 2**20


def chunk_rows(row_bytes, n_rows, working_memory=None, *, what="row", multiple=1):
    """Rows per block so that a block of ``row_bytes``-sized rows fits the working memory.

    The rule of scikit-learn's chunked computations (``get_chunk_n_rows``, used by
    :func:`sklearn.metrics.pairwise_distances_chunked`): as many rows as fit, at most
    ``n_rows``; but a working memory smaller than one row is a ValueError (not a warning and
    a one-row block). When the block holds at least
    ``multiple`` rows it is rounded down to a multiple of it (vectorised batches then line up
    with those of the gradient cache).

    Examples
    --------
    >>> from sklearn_influence._engine._influence_engine import chunk_rows
    >>> chunk_rows(1024, 10_000, working_memory=1)  # 1 MiB / 1 KiB
    1024
    >>> chunk_rows(2**21, 10, working_memory=1)
    Traceback (most recent call last):
    ...
    ValueError: working_memory=1 MiB is too small for one row (2 MiB); ...
    """
    budget = working_memory_bytes(working_memory)
    working_memory = budget / 2**20
    if row_bytes > budget:
        raise ValueError(
            f"working_memory={working_memory:g} MiB is too small for one {what} "
            f"({row_bytes / 2**20:.3g} MiB); raise it with "
            "sklearn.set_config(working_memory=...) (or sklearn.config_context), or pass a "
            "larger working_memory."
        )
    rows = min(int(budget // row_bytes), max(int(n_rows), 1))
    if rows >= multiple:
        rows -= rows % multiple
    return max(1, int(rows))


class InfluenceEngine:
    """Fit-time state for one model: θˢ, the training data and a solver ready for any λ.

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
        Rows per vectorised batch of per-example gradients.
    solver_options : dict
        Extra keyword arguments for the solver (tolerances, iterations, seeds).
    curvature_options : dict or None
        Options of the curvature (its ``options``; e.g. ``n_samples``), checked against its
        declared constraints. The row sample is seeded by ``solver_options["seed"]``.
    cache_gradients : {"auto", True, False}, default="auto"
        Keep the N × p training gradients (computed once, here) instead of recomputing them
        block by block at every call. ``"auto"``: when they take at most
        :data:`CACHE_FRACTION` of the working memory in force now.

    Attributes
    ----------
    adapter, theta, inputs, targets, n_train, n_params, batch_size
        The model, θˢ, the training data, N, p and the batch size.
    curvature : Curvature
        The curvature object on the training data.
    solver : Solver
        Built from ``curvature`` alone; ``solver_name`` is its resolved name.
    gradient_cache : Tensor of shape (N, p) or None
        The cached training gradients, or None (they are streamed).
    """

    def __init__(
        self,
        adapter,
        inputs,
        targets,
        *,
        curvature,
        solver,
        batch_size,
        solver_options=None,
        cache_gradients="auto",
        curvature_options=None,
        n_jobs=None,
    ):
        self.adapter = adapter
        self.batch_size = int(batch_size)
        self.theta = adapter.parameters()
        self.inputs, self.targets = inputs, targets
        self.n_train = len(inputs)
        self.n_params = self.theta.numel()
        seed = (solver_options or {}).get("seed")
        self.curvature = make_curvature(
            curvature, adapter, self.theta, inputs, targets, batch_size=batch_size,
            weights=adapter.row_weights, options=curvature_options,
            seed=0 if seed is None else int(seed), n_jobs=n_jobs,
        )  # fmt: skip
        self.solver = make_solver(solver, self.curvature, solver_options)
        self.solver_name = self.solver.name
        if cache_gradients == "auto":
            size = self.n_train * self.n_params * self.theta.element_size()
            cache_gradients = size <= CACHE_FRACTION * working_memory_bytes()
        self.gradient_cache = None
        if cache_gradients:
            self.gradient_cache = per_example_gradients(
                adapter, self.theta, inputs, targets, self.batch_size
            )
        # streamed scores of a network of Linear/Conv2d layers only: from per-layer factors
        # (one batched forward/backward), never the (block, p) per-example gradients
        self.factored_layers = None
        if self.gradient_cache is None and self.n_train:
            layers = factored_gradient_layers(adapter, self.theta)
            rows = slice(0, min(2, self.n_train))
            if layers is not None and check_factored_gradients(
                adapter, self.theta, layers, inputs[rows], targets[rows]
            ):
                self.factored_layers = layers

    # -- training gradients ---------------------------------------------------------------
    def train_gradients(self, rows):
        """Per-example training gradients ∇_θ L_m for ``rows`` (a slice or index tensor).

        Returns a tensor of shape (len(rows), p): a slice of the cache when there is one,
        else computed now (vectorised, in batches of ``batch_size``).
        """
        if self.gradient_cache is not None:
            return self.gradient_cache[rows]
        return per_example_gradients(
            self.adapter, self.theta, self.inputs[rows], self.targets[rows], self.batch_size
        )

    def _itemsize(self):
        return self.theta.element_size()

    def train_block_rows(self, n_queries, working_memory=None):
        """Training points per block: their gradients and their output column fit.

        With factored layers the gradients are not formed, but a layer's (queries × out)
        product per point is: a row is counted as the larger of the two.
        """
        width = self.n_params
        if self.factored_layers is not None:
            widest = max(layer.weight_shape[0] for layer in self.factored_layers)
            width = max(width, max(int(n_queries), 1) * widest)
        row_bytes = self._itemsize() * width + 8 * max(int(n_queries), 1)
        return chunk_rows(
            row_bytes,
            self.n_train,
            working_memory,
            what="training point (its gradient and its output column)",
            multiple=self.batch_size,
        )

    def query_block_rows(self, n_queries, working_memory=None):
        """Queries per block: their gradients, preconditioned gradients and the solver's
        working vectors (a dozen per query for block CG) fit.

        Only the gradient and the preconditioned gradient of one query are required (a
        working memory too small for them is an error); the solver's vectors shrink the
        block as far as one query.
        """
        vector_bytes = self._itemsize() * self.n_params
        required = chunk_rows(
            2 * vector_bytes,
            n_queries,
            working_memory,
            what="query (its gradient and preconditioned gradient)",
            multiple=self.batch_size,
        )
        with_solver = int(
            working_memory_bytes(working_memory)
            // ((2 + self.solver.vectors_per_rhs) * vector_bytes)
        )
        if with_solver >= self.batch_size:
            with_solver -= with_solver % self.batch_size
        return max(1, min(required, with_solver))

    def _train_slices(self, n_queries, working_memory):
        return batch_slices(self.n_train, self.train_block_rows(n_queries, working_memory))

    # -- the preconditioned queries ----------------------------------------------------------
    def check_damping(self, damping):
        """Warn (:class:`~sklearn_influence.exceptions.DampingWarning`, once per value) when
        λ dwarfs the curvature: above :data:`DWARFING_RATIO` times its mean eigenvalue, (C +
        λI)⁻¹ is I/λ to four digits and the influence a gradient dot product over λ."""
        damping = float(damping)
        checked = self.__dict__.setdefault("_checked_dampings", set())
        if damping in checked or damping == 0:
            return
        checked.add(damping)
        matrix = getattr(self.solver, "matrix", None)  # a dense solver's exact trace
        if matrix is not None and matrix.numel():
            scale = float(matrix.diagonal().mean())
        else:
            scale = self.curvature.mean_eigenvalue()
        if scale > 0 and damping > DWARFING_RATIO * scale:
            warnings.warn(
                f"damping={damping:g} is {damping / scale:.2g} times the curvature's mean "
                f"eigenvalue ({scale:.3g}): (C + λI)⁻¹ is about I/λ, so the influence is a "
                "plain gradient dot product scaled by 1/damping (tiny values, and rankings "
                "that ignore the curvature). Choose damping relative to the curvature's scale, "
                f"e.g. between {1e-4 * scale:.2g} and {1e-1 * scale:.2g}.",
                DampingWarning,
                stacklevel=5,
            )

    def precondition(self, inputs, targets, damping, n_jobs=None):
        """(C + λI)⁻¹ ∇f_q for each query row, shape (n_queries, p), on the engine's device.

        ``targets`` must be resolved (:func:`resolve_query_targets`). The queries are solved
        in blocks of ``batch_size`` through :class:`~sklearn.utils.parallel.Parallel` and
        written into one preallocated tensor.
        """
        self.check_damping(damping)
        self.solver.prepare()
        n = len(inputs)
        out = None
        blocks = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_precondition_block)(
                self, inputs[rows], None if targets is None else targets[rows], damping
            )
            for rows in batch_slices(n, self.batch_size)
        )
        for rows, block in zip(batch_slices(n, self.batch_size), blocks, strict=True):
            block = block.to(self.theta.device)
            if out is None:
                out = block.new_empty((n, block.shape[1]))
            out[rows] = block
        if out is None:
            out = self.theta.new_zeros((0, self.n_params))
        return out

    def _query_blocks(self, inputs, targets, damping, n_jobs, working_memory, single=False):
        """Yield ``(query slice, preconditioned block)``; one block when ``single``."""
        targets = resolve_query_targets(self.adapter, self.theta, inputs, targets)
        n = len(inputs)
        size = n if single else self.query_block_rows(n, working_memory)
        slices = batch_slices(n, max(size, 1))
        for rows in get_progress(self).blocks(slices, len(slices), "query block"):
            block_targets = None if targets is None else targets[rows]
            yield rows, self.precondition(inputs[rows], block_targets, damping, n_jobs)

    def _stream(self, task, preconditioned, n_jobs, working_memory, *arguments):
        """Yield ``(training slice, task(engine, P, slice, *arguments))`` over training blocks."""
        slices = self._train_slices(len(preconditioned), working_memory)
        if self.factored_layers is not None:  # each layer's slice of P, laid out once
            preconditioned = prepare_factored_queries(self.factored_layers, preconditioned)
        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(task)(self, preconditioned, rows, *arguments) for rows in slices
        )
        blocks = zip(slices, results, strict=True)
        yield from get_progress(self).blocks(blocks, len(slices), "training block")

    # -- the scores ---------------------------------------------------------------------------
    def influence(self, inputs, targets, damping, n_jobs=None, *, working_memory=None, out=None):
        """Influence matrix (n_queries, N) as a float64 CPU tensor, streamed in blocks.

        The matrix is written block by block into one preallocated output (``out``, a
        float64 CPU tensor of that shape, when given), so the peak memory is the output plus
        one block and the preconditioned queries.
        """
        n = len(inputs)
        if out is None:  # numpy-backed: the estimator returns this very buffer
            out = torch.from_numpy(np.empty((n, self.n_train)))
        report = NonFiniteScores(n, self.n_train, inputs, self.inputs)
        for query_rows, preconditioned in self._query_blocks(
            inputs, targets, damping, n_jobs, working_memory
        ):
            report.add_queries(query_rows, preconditioned)
            for rows, block in self._stream(_score_block, preconditioned, n_jobs, working_memory):
                report.add_block(query_rows, rows, block)
                out[query_rows, rows] = torch.from_numpy(block)
        report.check("The influence matrix", refuse=False)
        return out

    def influence_chunks(self, inputs, targets, damping, n_jobs=None, *, working_memory=None):
        """Yield ``(training slice, block)``: the influence matrix by column blocks.

        ``block`` is a float64 ndarray of shape (n_queries, slice width) — the influence of
        the training points of the slice on every query. All queries are preconditioned
        once (n_queries × p is held); each block fits the working memory.
        """
        for _, preconditioned in self._query_blocks(
            inputs, targets, damping, n_jobs, working_memory, single=True
        ):
            queries = NonFiniteScores(len(inputs), self.n_train, inputs, self.inputs)
            queries.add_queries(slice(None), preconditioned)
            queries.check("The influence matrix", refuse=False)
            for rows, block in self._stream(_score_block, preconditioned, n_jobs, working_memory):
                report = NonFiniteScores(len(inputs), self.n_train, None, self.inputs)
                report.queries = queries.queries
                report.add_block(slice(None), rows, block)
                if report.train.any():
                    report.queries = np.zeros_like(queries.queries)
                    report.check(f"The chunk of columns {rows.start}:{rows.stop}", refuse=False)
                yield rows, block

    def top_k(self, inputs, targets, damping, k, n_jobs=None, *, working_memory=None):
        """The k largest (helpful) and k smallest (harmful) influences per query, streamed.

        Each training block selects its k best per query where it is computed
        (:func:`torch.topk` on the block's scores, in their own dtype: no copy, no full
        index array), and the candidates are merged with the running best, so the memory is
        one block plus O(n_queries · k). Results equal a full sort; see :func:`merge_top_k`
        for ties. Non-finite scores are never ranked: a query row or a training row whose
        influence is not finite is a ``ValueError`` naming it and the fix (the rows whose
        queries overflow are found before any training block is streamed).

        Returns ``(helpful_indices, helpful_values, harmful_indices, harmful_values)``, each
        of shape (n_queries, k), sorted from the strongest effect down.
        """
        k = int(k)
        if not 1 <= k <= self.n_train:
            raise ValueError(
                f"k={k} must be between 1 and the number of training points ({self.n_train})."
            )
        n = len(inputs)
        results = [np.zeros((n, k), dtype=np.intp), np.zeros((n, k))]
        results += [np.zeros((n, k), dtype=np.intp), np.zeros((n, k))]
        report = NonFiniteScores(n, self.n_train, inputs, self.inputs)
        what = "The influence that most_influential ranks"
        for query_rows, preconditioned in self._query_blocks(
            inputs, targets, damping, n_jobs, working_memory
        ):
            report.add_queries(query_rows, preconditioned)
            report.check(what, refuse=True)  # before any training block
            m = len(preconditioned)
            helpful = (np.zeros((m, 0), dtype=np.intp), np.zeros((m, 0)))
            harmful = (np.zeros((m, 0), dtype=np.intp), np.zeros((m, 0)))
            for rows, (block_helpful, block_harmful, bad) in self._stream(
                _top_k_block, preconditioned, n_jobs, working_memory, k
            ):
                if bad is not None:
                    report.train[rows] |= bad
                    continue
                helpful = merge_top_k(helpful, block_helpful, k, largest=True)
                harmful = merge_top_k(harmful, block_harmful, k, largest=False)
            report.check(what, refuse=True)
            for position, array in enumerate((*helpful, *harmful)):
                results[position][query_rows] = array
        return tuple(results)

    def self_influence(self, damping, n_jobs=None, *, working_memory=None):
        """∇L_mᵀ (C + λI)⁻¹ ∇L_m / N for every training point, shape (N,), streamed."""
        self.check_damping(damping)
        self.solver.prepare()
        out = torch.from_numpy(np.empty(self.n_train))
        # a block holds the gradients and their solves: 2p numbers per row
        row_bytes = 2 * self._itemsize() * self.n_params
        size = chunk_rows(
            row_bytes, self.n_train, working_memory, what="training point", multiple=self.batch_size
        )
        slices = batch_slices(self.n_train, size)
        results = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_self_block)(self, rows, damping) for rows in slices
        )
        report = NonFiniteScores(0, self.n_train, None, self.inputs)
        blocks = zip(slices, results, strict=True)
        for rows, block in get_progress(self).blocks(blocks, len(slices), "training block"):
            report.add_training_values(rows, block)
            out[rows] = torch.from_numpy(block)
        report.check("The self-influence", refuse=False)
        return out

    def query_self_influence(self, inputs, targets, damping):
        """∇f_qᵀ (C + λI)⁻¹ ∇f_q / N for each query row, shape (n_queries,).

        For a training point with its training target this equals its self-influence; for any
        other labelled point it is the self-influence it would have as a training point. For a
        weighted model it is / W: the self-influence of a point of weight 1.
        """
        targets = resolve_query_targets(self.adapter, self.theta, inputs, targets)
        blocks = []
        for rows in batch_slices(len(inputs), self.batch_size):
            block_targets = None if targets is None else targets[rows]
            gradients = per_example_gradients(
                self.adapter, self.theta, inputs[rows], block_targets, self.batch_size
            )
            blocks.append(self.solver.quadratic(gradients, damping))
        if not blocks:
            return self.theta.new_zeros((0,))
        values = torch.cat(blocks)
        report = NonFiniteScores(len(values), 0, inputs, None)
        report.add_query_values(slice(None), values.detach().cpu().numpy())
        report.check("The self-influence", refuse=False)
        if self.adapter.row_weights is not None:  # a point of weight 1: ε = 1/W
            return values / self.adapter.total_weight
        return values / self.n_train


def _precondition_block(engine, inputs, targets, damping):
    gradients = per_example_gradients(
        engine.adapter, engine.theta, inputs, targets, engine.batch_size
    )
    return engine.solver.solve(gradients, damping)


def _score_tensor(engine, preconditioned, rows):
    """Influence of the training points ``rows`` on the queries: a (m, width) tensor in the
    dtype of ``preconditioned``, on the engine's device, freshly allocated (every scaling
    is done in place on it, so a block costs one (m, width) array).

    ``preconditioned`` is the (m, p) tensor P, or its per-layer layout
    (:func:`~sklearn_influence._engine._layers.prepare_factored_queries`) when the engine
    has factored layers.
    """
    if engine.factored_layers is not None:
        with torch.no_grad():
            factors = layer_gradient_factors(
                engine.adapter,
                engine.theta,
                engine.inputs[rows],
                engine.targets[rows],
                engine.factored_layers,
            )
            return factored_scores(preconditioned, factors).div_(engine.n_train)
    gradients = engine.train_gradients(rows).to(preconditioned.dtype)
    with torch.no_grad():
        block = (preconditioned @ gradients.T).div_(engine.n_train)
        weights = engine.adapter.removal_weights(rows)
        return block if weights is None else block.mul_(weights.to(block.dtype))


def _score_block(engine, preconditioned, rows):
    """:func:`_score_tensor` as a float64 ndarray on the CPU (the influence matrix's block)."""
    block = _score_tensor(engine, preconditioned, rows)
    return block.detach().to("cpu", torch.float64).numpy()


def _weigh_removal(engine, block, rows):
    """Scale the columns of training rows ``rows`` from ε = 1/N to ε_m = w_m / W (removing a
    weighted point removes all of its weight); unchanged without weights."""
    weights = engine.adapter.removal_weights(rows)
    return block if weights is None else block * weights.to(block.dtype)


def _top_k_block(engine, preconditioned, rows, k):
    """The block's k best per query, selected where the scores are (no float64 copy).

    Returns ``(helpful, harmful, None)`` with ``(indices, values)`` pairs, or
    ``(None, None, bad)`` with ``bad`` the block's training rows (a boolean ndarray over its
    width) whose scores are not finite: non-finite scores are never ranked.
    """
    scores = _score_tensor(engine, preconditioned, rows)
    if not bool(torch.isfinite(scores.sum())):  # a sum is finite only if every entry is
        bad = ~torch.isfinite(scores).all(0)
        if bool(bad.any()):
            return None, None, bad.cpu().numpy()
    width = min(k, scores.shape[1])
    selected = []
    for largest in (True, False):
        values, positions = torch.topk(scores, width, dim=1, largest=largest, sorted=False)
        indices = positions.cpu().numpy().astype(np.intp) + rows.start
        selected.append((indices, values.detach().to("cpu", torch.float64).numpy()))
    return selected[0], selected[1], None


def _select(values, offset, k, *, largest, indices=None):
    """The min(k, width) largest (or smallest) entries per row: ``(indices, values)``."""
    width = values.shape[1]
    if indices is None:
        indices = np.broadcast_to(np.arange(offset, offset + width), values.shape)
    if width > k:
        keys = -values if largest else values
        positions = np.argpartition(keys, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(values, positions, 1)
        indices = np.take_along_axis(indices, positions, 1)
    return np.ascontiguousarray(indices), np.ascontiguousarray(values)


def merge_top_k(running, block, k, *, largest):
    """Merge two ``(indices, values)`` candidate sets into the k best per row, sorted.

    The result is sorted from the strongest effect down (largest values first when
    ``largest``, smallest first otherwise); equal values are ordered by training index,
    lower first. When tied values straddle the k-th place, which of them are kept is
    unspecified (partial selection does not order ties).
    """
    indices = np.concatenate([running[0], block[0]], axis=1)
    values = np.concatenate([running[1], block[1]], axis=1)
    indices, values = _select(values, 0, k, largest=largest, indices=indices)
    order = np.lexsort((indices, -values if largest else values), axis=1)
    return np.take_along_axis(indices, order, 1), np.take_along_axis(values, order, 1)


def _self_block(engine, rows, damping):
    gradients = engine.train_gradients(rows)
    block = engine.solver.quadratic(gradients, damping) / engine.n_train
    block = _weigh_removal(engine, block, rows)
    return block.detach().to("cpu", torch.float64).numpy()
