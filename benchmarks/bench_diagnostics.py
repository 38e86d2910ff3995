"""Benchmark: all-row leave-one-out and regression diagnostics of linear models and GLMs.

For ordinary least squares (N × 50 Gaussian features, N = 1e3 … 1e5) and binary logistic
regression (N × 20, N = 1e3 … 2e4), each on one thread (torch and BLAS pinned), the median
wall time of ``--repeats`` runs after a warm-up and the peak memory of one run:

* ``LeaveOneOut(FrozenEstimator(model), train_indices=all rows).fit`` — the package's exact
  all-row leave-one-out (the model's adapter, the exact optimum, the refits);
* ``RegressionDiagnostics(FrozenEstimator(model)).fit`` — leverage, studentized residuals,
  Cook's distance, DFFITS, DFBETAS (exact refits);
* the scikit-learn fit of the model itself, the "cost of a fit";
* the numpy closed form of least squares (Δβ_i = −(XᵀX)⁻¹x_i e_i/(1 − h_i), in row blocks),
  the limit the package should approach;
* statsmodels: ``OLSInfluence`` / ``GLMInfluence`` ``summary_frame()`` (Cook's distance,
  DFFITS, DFBETAS, studentized residuals; for OLS its DFBETAS refit every row, so it is run
  only at the smaller N), and for logistic regression its exact refits, timed on 20 rows
  and scaled to N (marked "× N/20");
* the previous path of the package: its fixed-preconditioner Newton iteration over all
  removed points at once (``_responses._newton.leave_one_out_optima``, quadratic in N) at
  the smallest N only.

Peak memory is the rise of the process's peak resident set over its level before the
measured call, each configuration in a fresh process (``--one``). The machine is shared
and noisy: compare ratios within one run, not absolute times across runs.

Run ``python benchmarks/bench_diagnostics.py`` (``--quick`` for a smoke test); it prints a
table and writes ``benchmarks/results/bench_diagnostics.md``.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
OLS_SIZES = (1_000, 10_000, 100_000)
LOGISTIC_SIZES = (1_000, 5_000, 10_000)
STATSMODELS_OLS_MAX = 2_000


def _data(kind, n):
    import numpy as np

    rng = np.random.RandomState(0)
    d = 50 if kind == "ols" else 20
    X = rng.normal(size=(n, d))
    eta = X @ rng.normal(scale=1 / np.sqrt(d), size=d)
    if kind == "ols":
        return X, eta + rng.normal(size=n)
    return X, (eta + rng.logistic(size=n) > 0).astype(int)


def _model(kind):
    from sklearn.linear_model import LinearRegression, LogisticRegression

    if kind == "ols":
        return LinearRegression()
    return LogisticRegression(C=1e6, solver="newton-cholesky", tol=1e-10)


def _numpy_closed_form(X, y, block=8192):
    import numpy as np

    Z = np.column_stack([X, np.ones(len(X))])
    inverse = np.linalg.inv(Z.T @ Z)
    beta = inverse @ (Z.T @ y)
    shifts = np.empty_like(Z)
    leverage = np.empty(len(Z))
    for start in range(0, len(Z), block):
        rows = slice(start, start + block)
        projected = Z[rows] @ inverse
        leverage[rows] = np.einsum("ij,ij->i", projected, Z[rows])
        residual = y[rows] - Z[rows] @ beta
        shifts[rows] = -projected * (residual / (1 - leverage[rows]))[:, None]
    n, p = Z.shape
    sigma2 = ((y - Z @ beta) ** 2).sum() / (n - p)
    cooks = np.einsum("ij,jk,ik->i", shifts, Z.T @ Z, shifts) / (p * sigma2)
    return shifts, cooks


def _task(name, kind, n):
    """The callable measured for configuration ``name`` (data and model prepared)."""
    import numpy as np
    import torch
    from sklearn.frozen import FrozenEstimator

    from sklearn_influence import LeaveOneOut, RegressionDiagnostics

    X, y = _data(kind, n)
    model = _model(kind).fit(X, y)
    frozen = FrozenEstimator(model)
    if name == "package_loo":
        return lambda: LeaveOneOut(frozen, train_indices=np.arange(n)).fit(X, y)
    if name == "package_diagnostics":
        return lambda: RegressionDiagnostics(frozen).fit(X, y)
    if name == "model_fit":
        return lambda: _model(kind).fit(X, y)
    if name == "numpy_closed_form":
        return lambda: _numpy_closed_form(X, y)
    if name == "statsmodels_summary":
        import statsmodels.api as sm

        Xc = sm.add_constant(X)
        if kind == "ols":
            return lambda: sm.OLS(y, Xc).fit().get_influence().summary_frame()
        family = sm.families.Binomial()
        return lambda: sm.GLM(y, Xc, family=family).fit().get_influence().summary_frame()
    if name == "statsmodels_refits_20":
        import statsmodels.api as sm

        Xc = sm.add_constant(X)
        family = sm.families.Binomial()

        def refits():
            for i in range(20):
                keep = np.arange(n) != i
                sm.GLM(y[keep], Xc[keep], family=family).fit(tol=1e-10)

        return refits
    if name == "previous_package_path":
        from sklearn_influence._base import fit_model_and_adapter
        from sklearn_influence._responses._newton import leave_one_out_optima, minimize_convex

        _, adapter = fit_model_and_adapter(frozen, X, y, torch.device("cpu"))
        inputs, targets = adapter.inputs(X), adapter.targets(y)

        def previous():
            reference = minimize_convex(adapter, adapter.parameters(), inputs, targets)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its 100-iteration warnings
                leave_one_out_optima(adapter, reference, inputs, targets, np.arange(n))

        return previous
    raise ValueError(name)


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(name, kind, n, repeats):
    """Time one configuration in this (fresh) process; a JSON line on stdout."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(1):
        _task(name, kind, 200)()  # warm-up: imports and torch.func's one-off set-up
        task = _task(name, kind, n)
        before = _peak_rss_bytes()
        task()  # the peak memory of one run
        peak = _peak_rss_bytes() - before
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            task()
            times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": statistics.median(times), "peak_mb": peak / 2**20}))


def _configurations(quick):
    ols = OLS_SIZES[:2] if quick else OLS_SIZES
    logistic = LOGISTIC_SIZES[:1] if quick else LOGISTIC_SIZES
    for n in ols:
        yield "ols", n, "model_fit"
        yield "ols", n, "package_loo"
        yield "ols", n, "package_diagnostics"
        yield "ols", n, "numpy_closed_form"
        if n <= STATSMODELS_OLS_MAX:
            yield "ols", n, "statsmodels_summary"
    yield "ols", ols[0], "previous_package_path"
    for n in logistic:
        yield "logistic", n, "model_fit"
        yield "logistic", n, "package_loo"
        yield "logistic", n, "package_diagnostics"
        yield "logistic", n, "statsmodels_summary"
        yield "logistic", n, "statsmodels_refits_20"
    yield "logistic", logistic[0], "previous_package_path"


LABELS = {
    "model_fit": "scikit-learn fit of the model (reference)",
    "package_loo": "package: LeaveOneOut, all rows (exact)",
    "package_diagnostics": "package: RegressionDiagnostics.fit (exact)",
    "numpy_closed_form": "numpy closed form (OLS)",
    "statsmodels_summary": "statsmodels get_influence().summary_frame()",
    "statsmodels_refits_20": "statsmodels exact refits (20 rows, × N/20)",
    "previous_package_path": "previous package path (leave_one_out_optima)",
}


def _measure(kind, n, name, repeats):
    command = [sys.executable, __file__, "--one", name, kind, str(n), str(repeats)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, kind, n, repeats = args.one
        run_one(name, kind, int(n), int(repeats))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from _shared import environment

    torch.set_num_threads(1)  # as in every measured (child) process, so the header says 1

    rows = []
    for kind, n, name in _configurations(args.quick):
        repeats = 1 if name in ("statsmodels_summary", "previous_package_path") else args.repeats
        result = _measure(kind, n, name, repeats)
        seconds = result["seconds"] * (n / 20 if name == "statsmodels_refits_20" else 1)
        rows.append((kind, n, LABELS[name], seconds, result["peak_mb"], repeats))
        label, peak = LABELS[name], result["peak_mb"]
        print(f"{kind:8s} {n:>7d}  {label:48s} {seconds:9.3f} s  {peak:7.1f} MB")
    lines = [
        "# bench_diagnostics",
        "",
        "All-row leave-one-out and regression diagnostics; OLS on N × 50, logistic regression "
        "on N × 20 (C = 1e6), one thread (torch and BLAS), median wall seconds of the runs "
        "after a warm-up; peak memory is the rise of the peak RSS during one run, each "
        "configuration in a fresh process. Shared, noisy machine: compare ratios within this "
        "table, not with other runs.",
        "",
        *environment(1),
        "",
        "| model | N | what | wall s | peak MB | runs |",
        "|---|--:|---|--:|--:|--:|",
        *(
            f"| {kind} | {n:,} | {label} | {seconds:.3f} | {peak:.0f} | {repeats} |"
            for kind, n, label, seconds, peak, repeats in rows
        ),
        "",
    ]
    output = RESULTS / "bench_diagnostics.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
