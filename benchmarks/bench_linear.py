"""Benchmark: the influence matrix of a logistic regression on scikit-learn's digits.

1,500 training images × 297 test images (all of digits that is not training data), 10 classes
× (64 pixels + intercept) = 650 parameters. Times, each the median of ``--repeats`` runs after
one warm-up run:

* the model fit (scikit-learn, not part of the influence computation);
* ``InfluenceFunction(FrozenEstimator(model)).fit`` (per-example gradients and curvature of
  the already trained model) and ``transform`` (the 297 × 1500 matrix) — their sum is the
  influence computation that the target (≤ 0.05 s on 2 CPU cores) is about;
* a damping sweep: 8 × (``set_params(damping=...)`` + ``transform``) on one fitted object,
  against one such step;
* the same work split by stage, with the package's own internal functions (per-example
  gradients, dense curvature, eigendecomposition or Cholesky factorization, products).

Run ``python benchmarks/bench_linear.py`` (``--threads 1`` to pin torch and BLAS to one
thread). It prints a table and writes ``benchmarks/results/bench_linear.md`` (or
``bench_linear_threads1.md``).
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
from sklearn_influence._engine._curvature import dense_curvature
from sklearn_influence._engine._gradients import per_example_gradients
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
    """Times of the public estimator: fit, transform, damping sweep."""
    rows = []

    def fit(solver="direct"):
        return InfluenceFunction(FrozenEstimator(model), damping=1e-3, solver=solver).fit(
            data.X_train, data.y_train
        )

    for solver in ("direct", "cholesky"):
        fit_time, influence = timed(lambda solver=solver: fit(solver), repeats)
        # transform on a fitted object: for "direct" the eigendecomposition is cached after
        # the first call, so this is the steady-state cost of one more query set
        transform_time, matrix = timed(
            lambda influence=influence: influence.transform(data.X_test, data.y_test), repeats
        )
        first_time, _ = timed(
            lambda solver=solver: fit(solver).transform(data.X_test, data.y_test), repeats
        )
        rows += [
            (f"InfluenceFunction.fit, solver={solver!r} (model frozen)", fit_time),
            (
                f"transform {matrix.shape[0]}x{matrix.shape[1]}, fitted object, {solver!r}",
                transform_time,
            ),
            (f"**influence computation: fit + first transform, {solver!r}**", first_time),
        ]

    influence = fit("direct")
    influence.transform(data.X_test, data.y_test)  # factorize once

    def one_damping():
        return influence.set_params(damping=1e-3).transform(data.X_test, data.y_test)

    def sweep():
        return [
            influence.set_params(damping=damping).transform(data.X_test, data.y_test)
            for damping in DAMPINGS
        ]

    one_time, _ = timed(one_damping, repeats)
    sweep_time, _ = timed(sweep, repeats)
    fresh_sweep_time, _ = timed(
        lambda: [
            fit("direct").set_params(damping=d).transform(data.X_test, data.y_test)
            for d in DAMPINGS
        ],
        max(1, repeats // 2),
    )
    rows += [
        ("damping sweep: 1 value, set_params + transform (fitted, 'direct')", one_time),
        (f"damping sweep: {len(DAMPINGS)} values, set_params + transform", sweep_time),
        (
            f"damping sweep: {len(DAMPINGS)} values, refitting the influence each time",
            fresh_sweep_time,
        ),
    ]
    return rows


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
    rows.append(("per-example gradients, training set (vmap(grad))", grad_time))
    curvature_time, curvature = timed(
        lambda: dense_curvature(adapter, theta, inputs, targets, "gauss_newton", 512), repeats
    )
    rows.append(("dense Gauss-Newton curvature 650x650", curvature_time))
    eigh_time, (eigenvalues, eigenvectors) = timed(lambda: torch.linalg.eigh(curvature), repeats)
    rows.append(("eigendecomposition (torch.linalg.eigh)", eigh_time))
    damped = curvature + 1e-3 * torch.eye(len(curvature), dtype=curvature.dtype)
    cholesky_time, factor = timed(lambda: torch.linalg.cholesky(damped), repeats)
    rows.append(("Cholesky factorization of C + damping I (alternative)", cholesky_time))
    query_time, query_gradients = timed(
        lambda: per_example_gradients(adapter, theta, query_inputs, query_targets, 512), repeats
    )
    rows.append(("per-example gradients, test set (vmap(grad))", query_time))
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

    # what a closed form would cost: for h = W z (softmax), grad L_i = (p_i - t_i) z_i^T
    def closed_form_gradients():
        logits = adapter.outputs(theta, inputs)
        residual = torch.softmax(logits, -1) - targets
        return (residual.unsqueeze(2) * inputs.unsqueeze(1)).reshape(len(inputs), -1)

    closed_time, closed = timed(closed_form_gradients, repeats)
    assert torch.allclose(closed, train_gradients, rtol=1e-10, atol=1e-12)
    rows.append(("(proposal) closed-form training gradients (p - t) z^T", closed_time))
    float32 = curvature.to(torch.float32)
    eigh32_time, _ = timed(lambda: torch.linalg.eigh(float32), repeats)
    rows.append(("(proposal) eigendecomposition in float32", eigh32_time))
    parts = (grad_time, curvature_time, eigh_time, query_time, products_time)
    total = Seconds(sum(parts), sum(part.cpu for part in parts))
    rows.append(("**sum: gradients, curvature, eigh, test gradients, products**", total))
    return rows


def environment(threads):
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?", "?", "?")
    return [
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average at start {load[0]:.2f} (other processes share the cores)",
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
        rows += public_api(data, model, args.repeats)
        stage_rows = stages(data, model, args.repeats)
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
            *environment(args.threads),
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
