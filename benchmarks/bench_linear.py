"""Benchmark: the influence matrix of a logistic regression on scikit-learn's digits.

1,500 training images × 297 test images (all of digits that is not training data), 10 classes
× (64 pixels + intercept) = 650 parameters, damping λ = 1e-3. Times, each the median of
``--repeats`` runs after one warm-up run (wall seconds, and the CPU seconds of this process):

* the model fit (scikit-learn, not part of the influence computation);
* ``InfluenceFunction(FrozenEstimator(model)).fit`` (per-example gradients and curvature of
  the already trained model) and ``transform`` (the 297 × 1500 matrix) — their sum, "fit +
  first transform", is the influence computation of issue 12's goal (≤ 0.2 s on one thread,
  exact to 1e-6), for ``solver="auto"`` (which picks ``"direct"``) and ``"cholesky"``;
* a damping sweep: 8 × (``set_params(damping=...)`` + ``transform``) on one fitted object,
  against one such step, for ``"direct"`` (one eigendecomposition for all) and
  ``"cholesky"`` (one factorization per value);
* the same work split by stage, with the package's own internal functions: the closed-form
  per-example gradients of linear models ((∂L/∂h) ⊗ z̃) next to the generic vmap(grad) path
  they replace, the Kronecker Gauss-Newton matrix next to the single-matmul form it replaced,
  the eigendecomposition or Cholesky factorization, and the products. Ratios within one run
  are meaningful even when other processes load the machine; absolute times are not.

Exactness: the influence matrix of the public API against a float64 numpy computation that
shares no code with the package (softmax gradients (p − t) ⊗ z̃, the Gauss-Newton matrix as
blockdiag(Zᵀ diag(p_a) Z) − UᵀU with U = p ⊗ z̃, and ``numpy.linalg.solve``): the largest
absolute difference relative to the largest entry.

Run ``python benchmarks/bench_linear.py`` (``--threads 1`` to pin torch and BLAS to one
thread, as for the issue's figures). It prints a table and writes
``benchmarks/results/bench_linear.md`` (or ``bench_linear_threads1.md``).
"""

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

import sklearn_influence
from sklearn_influence import InfluenceFunction
from sklearn_influence._adapters import make_adapter
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._gradients import _vmap_gradients, per_example_gradients
from sklearn_influence.datasets import load_digits_split

DAMPINGS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
RESULTS = Path(__file__).resolve().parent / "results"


class Seconds(float):
    """Median wall seconds, with the median CPU seconds of this process as ``.cpu``."""

    def __new__(cls, wall, cpu):
        seconds = super().__new__(cls, wall)
        seconds.cpu = cpu
        return seconds


def timed(function, repeats):
    """(median wall seconds over ``repeats`` runs after one warm-up, last result).

    The median CPU time of this process (all its threads) rides along as ``.cpu``: with one
    thread it estimates the wall time on an otherwise idle core when other processes share
    the machine.
    """
    result = function()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = function()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return Seconds(statistics.median(times), statistics.median(cpu_times)), result


def public_api(data, model, repeats):
    """Times of the public estimator (fit, transform, damping sweep) and its matrices."""
    rows, matrices = [], {}

    def fit(solver):
        return InfluenceFunction(FrozenEstimator(model), damping=1e-3, solver=solver).fit(
            data.X_train, data.y_train
        )

    for solver in ("auto", "cholesky"):
        fit_time, influence = timed(lambda solver=solver: fit(solver), repeats)
        # transform on a fitted object: for "direct" the eigendecomposition is cached after
        # the first call, so this is the steady-state cost of one more query set
        transform_time, matrix = timed(
            lambda influence=influence: influence.transform(data.X_test, data.y_test), repeats
        )
        first_time, matrices[solver] = timed(
            lambda solver=solver: fit(solver).transform(data.X_test, data.y_test), repeats
        )
        label = f"{solver!r}" + (f" (-> {influence.solver_!r})" if solver == "auto" else "")
        rows += [
            (f"InfluenceFunction.fit, solver={label} (model frozen)", fit_time),
            (
                f"transform {matrix.shape[0]}x{matrix.shape[1]}, fitted object, {solver!r}",
                transform_time,
            ),
            (f"**influence computation: fit + first transform, {solver!r}**", first_time),
        ]

    for solver in ("direct", "cholesky"):
        influence = fit(solver)
        influence.transform(data.X_test, data.y_test)  # factorize once

        def one_damping(influence=influence):
            return influence.set_params(damping=1e-3).transform(data.X_test, data.y_test)

        def sweep(influence=influence):
            return [
                influence.set_params(damping=damping).transform(data.X_test, data.y_test)
                for damping in DAMPINGS
            ]

        one_time, _ = timed(one_damping, repeats)
        sweep_time, _ = timed(sweep, repeats)
        fresh_sweep_time, _ = timed(
            lambda solver=solver: [
                fit(solver).set_params(damping=d).transform(data.X_test, data.y_test)
                for d in DAMPINGS
            ],
            max(1, repeats // 2),
        )
        rows += [
            (f"damping sweep, {solver!r}: 1 value, set_params + transform (fitted)", one_time),
            (
                f"damping sweep, {solver!r}: {len(DAMPINGS)} values, set_params + transform",
                sweep_time,
            ),
            (
                f"damping sweep, {solver!r}: {len(DAMPINGS)} values, refitting each time",
                fresh_sweep_time,
            ),
        ]
    return rows, matrices


def _previous_linear_data_term(adapter, theta, inputs, batch_size=512):
    """The Kronecker Gauss-Newton data term as the package formed it before (for comparison):
    one (b, pairs · width) weighted copy of each batch of rows and one matmul per batch."""
    k, width = adapter.n_outputs, inputs.shape[1]
    first, second = torch.triu_indices(k, k)
    total = theta.new_zeros((width, len(first) * width))
    for start in range(0, len(inputs), batch_size):
        Z = inputs[start : start + batch_size]
        H = adapter.loss.output_hessian(adapter.outputs(theta, Z))
        weighted = (H[:, first, second].unsqueeze(2) * Z.unsqueeze(1)).reshape(len(Z), -1)
        total += Z.T @ weighted
    blocks = total.reshape(width, len(first), width).transpose(0, 1)
    matrix = theta.new_zeros((k, k, width, width))
    matrix[first, second] = blocks
    matrix[second, first] = blocks.transpose(1, 2)
    return matrix.permute(0, 2, 1, 3).reshape(k * width, k * width)


def stages(data, model, repeats):
    """The same computation split by stage, with the package's internal functions."""
    adapter = make_adapter(model, len(data.y_train), torch.device("cpu"))
    theta = adapter.parameters()
    rows = []
    prep_time, (inputs, targets, query_inputs, query_targets) = timed(
        lambda: (
            adapter.inputs(data.X_train),
            adapter.targets(data.y_train),
            adapter.inputs(data.X_test),
            adapter.targets(data.y_test),
        ),
        repeats,
    )
    rows.append(("encode inputs and targets as tensors (train + test)", prep_time))
    grad_time, train_gradients = timed(
        lambda: per_example_gradients(adapter, theta, inputs, targets, 512), repeats
    )
    rows.append(("per-example gradients, training set (closed form (dL/dh) ⊗ z)", grad_time))
    vmap_time, vmap_gradients = timed(
        lambda: _vmap_gradients(adapter, theta, inputs, targets, 512), repeats
    )
    assert torch.allclose(vmap_gradients, train_gradients, rtol=1e-12, atol=1e-15)
    rows.append(("  (before) per-example gradients, training set, vmap(grad)", vmap_time))
    curvature_object = make_curvature(
        "gauss_newton", adapter, theta, inputs, targets, batch_size=512
    )
    curvature_time, curvature = timed(curvature_object._dense, repeats)
    rows.append(
        ("dense Gauss-Newton 650x650 (Kronecker, weighted Gram per output pair)", curvature_time)
    )
    previous_time, previous = timed(
        lambda: _previous_linear_data_term(adapter, theta, inputs), repeats
    )
    data_term = curvature - torch.diag(adapter.regularizer_diagonal())
    assert torch.allclose(previous / len(inputs), data_term, rtol=1e-10, atol=1e-14)
    rows.append(("  (before) dense Gauss-Newton, one (b, pairs x width) matmul", previous_time))
    eigh_time, (eigenvalues, eigenvectors) = timed(lambda: torch.linalg.eigh(curvature), repeats)
    rows.append(("eigendecomposition (torch.linalg.eigh), 'direct'", eigh_time))
    damped = curvature + 1e-3 * torch.eye(len(curvature), dtype=curvature.dtype)
    cholesky_time, factor = timed(lambda: torch.linalg.cholesky(damped), repeats)
    rows.append(("Cholesky factorization of C + damping I, 'cholesky'", cholesky_time))
    query_time, query_gradients = timed(
        lambda: per_example_gradients(adapter, theta, query_inputs, query_targets, 512), repeats
    )
    rows.append(("per-example gradients, test set (closed form)", query_time))
    n_train = len(data.y_train)

    def eigen_products():
        inverse = 1.0 / (eigenvalues + 1e-3)
        return (
            ((query_gradients @ eigenvectors) * inverse)
            @ eigenvectors.T
            @ (train_gradients.T / n_train)
        )

    def cholesky_products():
        return torch.cholesky_solve(query_gradients.T, factor).T @ train_gradients.T / n_train

    products_time, matrix = timed(eigen_products, repeats)
    rows.append(("products Q V diag V^T T^T / N (eigendecomposition)", products_time))
    cholesky_products_time, other = timed(cholesky_products, repeats)
    rows.append(("products via cholesky_solve", cholesky_products_time))
    assert torch.allclose(matrix, other, rtol=1e-6, atol=1e-12)
    parts = (grad_time, curvature_time, eigh_time, query_time, products_time)
    total = Seconds(sum(parts), sum(part.cpu for part in parts))
    rows.append(("**sum: gradients, curvature, eigh, test gradients, products**", total))
    parts = (grad_time, curvature_time, cholesky_time, query_time, cholesky_products_time)
    total = Seconds(sum(parts), sum(part.cpu for part in parts))
    rows.append(("**sum: gradients, curvature, Cholesky, test gradients, products**", total))
    return rows


def reference_influence(data, model, damping=1e-3):
    """The influence matrix in float64 numpy, sharing no code with the package.

    Multinomial logistic regression, h = W̃ z̃: ∇L_i = (p_i − t_i) ⊗ z̃_i, Gauss-Newton
    (1/N) Σ (diag p_i − p_i p_iᵀ) ⊗ z̃_i z̃_iᵀ = (1/N)[blockdiag(Zᵀ diag(p_a) Z) − UᵀU] with
    U = p ⊗ z̃, the penalty ½‖w‖²/(C N) on the coefficients (not the intercept).
    """
    weights = np.column_stack([model.coef_, model.intercept_])  # (k, d + 1)
    k, width = weights.shape

    def parts(X, y):
        Z = np.column_stack([X, np.ones(len(X))]).astype(np.float64)
        logits = Z @ weights.T
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        t = (np.asarray(y)[:, None] == model.classes_[None, :]).astype(np.float64)
        return Z, p, ((p - t)[:, :, None] * Z[:, None, :]).reshape(len(Z), -1)

    Z, p, T = parts(data.X_train, data.y_train)
    _, _, Q = parts(data.X_test, data.y_test)
    n = len(Z)
    U = (p[:, :, None] * Z[:, None, :]).reshape(n, -1)
    G = -(U.T @ U)
    for a in range(k):
        block = slice(a * width, (a + 1) * width)
        G[block, block] += Z.T @ (p[:, a : a + 1] * Z)
    G /= n
    penalty = np.full((k, width), 1.0 / (model.C * n))
    penalty[:, -1] = 0.0
    G += np.diag(penalty.ravel()) + damping * np.eye(k * width)
    return Q @ np.linalg.solve(G, T.T) / n


def _load():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def environment(threads, load_at_start):
    return [
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average {load_at_start:.2f} at start and {_load():.2f} at the end (other "
        "processes share the cores: compare ratios within one run, and CPU s rather than wall "
        "s, when the load exceeds the number of cores); this process at niceness "
        f"{os.nice(0)}",
        f"- threads: torch {torch.get_num_threads()}"
        + (f" (pinned to {threads}, BLAS too)" if threads else " (default)"),
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
        f"sklearn_influence {sklearn_influence.__version__}",
    ]


def table(rows):
    width = max(len(name) for name, _ in rows)
    lines = [
        f"| {'stage':<{width}} |  wall s |  CPU s |",
        f"|{'-' * (width + 2)}|--------:|-------:|",
    ]
    lines += [f"| {name:<{width}} | {sec:7.4f} | {sec.cpu:6.3f} |" for name, sec in rows]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per entry (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="pin torch and BLAS to this many threads"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file to write (default: results/bench_linear.md, or "
        "results/bench_linear_threads<N>.md with --threads N)",
    )
    args = parser.parse_args(argv)
    load_at_start = _load()
    if args.threads:
        torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        data = load_digits_split(n_train=1500, random_state=0)
        fit_time, model = timed(
            lambda: LogisticRegression(solver="newton-cholesky", tol=1e-10).fit(
                data.X_train, data.y_train
            ),
            args.repeats,
        )
        n_params = model.coef_.size + model.intercept_.size
        rows = [("model fit: LogisticRegression(solver='newton-cholesky', tol=1e-10)", fit_time)]
        public_rows, matrices = public_api(data, model, args.repeats)
        rows += public_rows
        stage_rows = stages(data, model, args.repeats)
        reference = reference_influence(data, model)
    scale = np.abs(reference).max()
    exactness = [
        "- exactness: max |influence − float64 numpy reference| / max |reference| = "
        + ", ".join(
            f"{np.abs(matrix - reference).max() / scale:.1e} ({solver!r})"
            for solver, matrix in matrices.items()
        )
    ]
    header = (
        f"Influence matrix of LogisticRegression on digits: {len(data.y_train)} training x "
        f"{len(data.y_test)} test images, {n_params} parameters, float64, CPU; median of "
        f"{args.repeats} runs after a warm-up."
    )
    text = "\n".join(
        [
            "# bench_linear",
            "",
            header,
            "",
            *environment(args.threads, load_at_start),
            *exactness,
            "",
            "## Public API",
            "",
            table(rows),
            "",
            "## By stage (the package's internal functions, damping 1e-3)",
            "",
            table(stage_rows),
            "",
        ]
    )
    print(text)
    suffix = f"_threads{args.threads}" if args.threads else ""
    output = args.output or RESULTS / f"bench_linear{suffix}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
