"""Benchmark: ``GridSearchCV`` over 8 damping values with ``memory`` vs one damping value.

``InfluenceFunction(memory=...)`` caches the model fit, the training gradients, the
factorization of the curvature and the retraining targets of ``score``, none of which depend
on the damping; every extra damping value then costs one solve and one correlation. This
script times, for each model, a ``GridSearchCV`` (3 folds, default LOO score, 30 removed
points per fold, ``refit=False``) over

* one damping value, with a fresh cache (the baseline a user pays anyway),
* 8 damping values with a fresh cache (the target: less than 2× the baseline),
* 8 damping values without ``memory`` (what the cache saves),

each a median of ``--repeats`` runs in this process after a warm-up, a fresh cache directory
per run. Models: ``LogisticRegression`` on 1500 digits (650 parameters, exact Newton LOO
targets) and a skorch MLP 64-32-10 on 500 digits (2410 parameters, cold-start retraining
targets). Both use the default ``solver="auto"``, which picks ``direct`` for them: one
eigendecomposition serves every damping. (With ``solver="cg"`` each damping is a new
iterative solve, so a sweep costs about one solve per value on top of the shared work.)

Run ``python benchmarks/bench_damping_sweep.py``; it prints a table and writes
``benchmarks/results/bench_damping_sweep.md``.
"""

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _shared import environment, report, sgd_tanh_net
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from threadpoolctl import threadpool_limits

from sklearn_influence import InfluenceFunction
from sklearn_influence.datasets import load_digits_split

RESULTS = Path(__file__).resolve().parent / "results" / "bench_damping_sweep.md"
GRID = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]


def logistic_case():
    data = load_digits_split(n_train=1500, n_test=10, random_state=0)
    estimator = LogisticRegression(C=1.0, max_iter=3000)
    return "LogisticRegression, digits 1500", estimator, data.X_train, data.y_train, {}


def mlp_case():

    data = load_digits_split(n_train=500, n_test=10, random_state=0)
    net = sgd_tanh_net(hidden=32, epochs=20, lr=0.1)
    X = data.X_train.astype(np.float32)
    return "skorch MLP 64-32-10, digits 500", net, X, data.y_train, {}


def search(estimator, settings, grid, X, y, memory):
    influence = InfluenceFunction(
        estimator, n_score_points=30, random_state=0, memory=memory, **settings
    )
    return GridSearchCV(
        influence, {"damping": grid}, cv=KFold(3, shuffle=True, random_state=0), refit=False
    ).fit(X, y)


def timed(function, repeats, warm_up=True):
    """Median wall seconds of ``repeats`` runs (after one warm-up run); the last result."""
    result = function() if warm_up else None
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def with_fresh_cache(estimator, settings, grid, X, y):
    def run():
        with tempfile.TemporaryDirectory() as folder:
            return search(estimator, settings, grid, X, y, memory=folder)

    return run


def measure(case, repeats):
    name, estimator, X, y, settings = case
    one, _ = timed(with_fresh_cache(estimator, settings, GRID[3:4], X, y), repeats)
    eight, cached = timed(with_fresh_cache(estimator, settings, GRID, X, y), repeats)
    # the torch.func and model code are warm by now: one run, it is the slowest entry
    uncached_seconds, uncached = timed(
        lambda: search(estimator, settings, GRID, X, y, memory=None), 1, warm_up=False
    )
    same = np.allclose(
        cached.cv_results_["mean_test_score"], uncached.cv_results_["mean_test_score"]
    )
    best = GRID[int(np.argmax(cached.cv_results_["mean_test_score"]))]
    return (
        f"| {name} | {one:.2f} | {eight:.2f} | **{eight / one:.2f}x** | {uncached_seconds:.2f} | "
        f"{uncached_seconds / eight:.1f}x | {best:g} | {'yes' if same else 'NO'} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per entry (median)")
    parser.add_argument("--threads", type=int, default=2, help="pin torch and BLAS")
    parser.add_argument("--models", nargs="+", default=["logistic", "mlp"])
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = {"logistic": logistic_case, "mlp": mlp_case}
    with threadpool_limits(limits=args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. CG's own convergence notes
        rows = [measure(cases[model](), args.repeats) for model in args.models]
    text = "\n".join(
        [
            "# bench_damping_sweep",
            "",
            "GridSearchCV(InfluenceFunction(model, n_score_points=30, memory=...), "
            f"{{'damping': {GRID}}}, cv=3, refit=False) against the same search over one "
            "value (1e-3); fresh cache directory per run; seconds are medians of "
            f"{args.repeats} runs after a warm-up (the uncached sweep: one run). 'same scores': "
            "the cached and uncached sweeps give the same cv_results_.",
            "",
            *environment(args.threads),
            "",
            "| model | 1 value, s | 8 values with memory, s | 8 / 1 | 8 values without "
            "memory, s | saved by memory | best damping | same scores |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
        ]
    )
    report(text, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
