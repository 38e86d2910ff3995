"""Benchmark: all-row leave-one-out and regression diagnostics of linear models and GLMs.

For ordinary least squares (N × 50 Gaussian features, N = 1e3 … 1e5), binary logistic
regression (N × 20, N = 1e3 … 2e4) and Poisson regression (N × 20, N = 5e3 … 2e4), each on
one thread (torch and BLAS pinned), the median wall time of ``--repeats`` runs after a
warm-up and the peak memory of one run:

* ``LeaveOneOut(FrozenEstimator(model), train_indices=all rows).fit`` — the package's exact
  all-row leave-one-out (the model's adapter, the exact optimum, the refits), with the
  refinement it chooses (for the GLMs the Taylor model of the other rows' gradient when its
  cost model says so) and, for the GLMs, forced to the exact per-row gradients
  (``refinement="exact"``, quadratic in N); the GLM rows also give the degree of the Taylor
  model and the fraction of refits its remainder bound certified (the others redone
  exactly);
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

Run ``python benchmarks/bench_diagnostics.py`` (``--quick`` for a smoke test; ``--only
logistic,poisson`` re-measures those models and keeps the other rows of the results file);
it prints a table and writes ``benchmarks/results/bench_diagnostics.md``.
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
LOGISTIC_SIZES = (1_000, 5_000, 10_000, 20_000)
POISSON_SIZES = (5_000, 10_000, 20_000)
STATSMODELS_OLS_MAX = 2_000
STATSMODELS_REFITS_MAX = 10_000  # its 20 refits take minutes beyond


def _data(kind, n):
    import numpy as np

    rng = np.random.RandomState(0)
    d = 50 if kind == "ols" else 20
    X = rng.normal(size=(n, d))
    eta = X @ rng.normal(scale=1 / np.sqrt(d), size=d)
    if kind == "ols":
        return X, eta + rng.normal(size=n)
    if kind == "poisson":
        return X, rng.poisson(np.exp(eta))
    return X, (eta + rng.logistic(size=n) > 0).astype(int)


def _model(kind):
    from sklearn.linear_model import LinearRegression, LogisticRegression, PoissonRegressor

    if kind == "ols":
        return LinearRegression()
    if kind == "poisson":
        return PoissonRegressor(alpha=1e-4, solver="newton-cholesky", tol=1e-10)
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
    if name in ("package_loo", "package_loo_exact"):
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
        family = sm.families.Poisson() if kind == "poisson" else sm.families.Binomial()
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


def _record_refits(name):
    """Wrap the package's all-row refits: force ``refinement="exact"`` for
    ``package_loo_exact`` and keep the last result (its Taylor degree and certificates)."""
    from sklearn_influence._responses import _diagnostics, _linear_loo

    original, seen = _linear_loo.exact_refits, {}

    def recorded(*args, **kwargs):
        if name == "package_loo_exact":
            kwargs["refinement"] = "exact"
        seen["result"] = original(*args, **kwargs)
        return seen["result"]

    _linear_loo.exact_refits = _diagnostics.exact_refits = recorded
    return seen


def run_one(name, kind, n, repeats):
    """Time one configuration in this (fresh) process; a JSON line on stdout."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    seen = _record_refits(name)
    with threadpool_limits(1):
        _task(name, kind, 200)()  # warm-up: imports and torch.func's one-off set-up
        task = _task(name, kind, n)
        before = _peak_rss_bytes()
        times = []
        if repeats > 1:
            task()  # the peak memory of one run, then the timed runs
        for _ in range(repeats):
            start = time.perf_counter()
            task()
            times.append(time.perf_counter() - start)
        peak = _peak_rss_bytes() - before
    result = {"seconds": statistics.median(times), "peak_mb": peak / 2**20}
    if "result" in seen and name.startswith("package"):
        result["degree"] = int(seen["result"].taylor_degree)
        result["certified"] = float(seen["result"].certified.mean())
    print(json.dumps(result))


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
    for kind, sizes in (("logistic", logistic), ("poisson", POISSON_SIZES[: 1 if quick else 3])):
        for n in sizes:
            yield kind, n, "model_fit"
            yield kind, n, "package_loo"
            yield kind, n, "package_loo_exact"
            yield kind, n, "package_diagnostics"
            yield kind, n, "statsmodels_summary"
            if kind == "logistic" and n <= STATSMODELS_REFITS_MAX:
                yield kind, n, "statsmodels_refits_20"
    yield "logistic", logistic[0], "previous_package_path"


LABELS = {
    "model_fit": "scikit-learn fit of the model (reference)",
    "package_loo": "package: LeaveOneOut, all rows (exact)",
    "package_loo_exact": "package: LeaveOneOut, all rows, refinement='exact'",
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


def _kept_rows(output, kinds):
    """(table rows, environment lines) of the results file for the models not in ``kinds``."""
    if not output.exists():
        return [], []
    lines = output.read_text().splitlines()
    rows = [
        line if line.count("|") == 8 else line + "  |"
        for line in lines
        if line.startswith("| ")
        and not line.startswith("| model")
        and line.split("|")[1].strip() not in kinds
    ]
    environment = [
        line.replace("* ", "* previous run — ", 1) for line in lines if line.startswith("* ")
    ]
    return rows, [line for line in environment if "previous run — previous run" not in line]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only", help="comma-separated models to re-measure (ols, logistic, poisson)"
    )
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
    output = RESULTS / "bench_diagnostics.md"
    kinds = set(args.only.split(",")) if args.only else None
    kept, previous = _kept_rows(output, kinds) if kinds else ([], [])
    header = environment(1)  # the load average before the measurements

    rows = []
    for kind, n, name in _configurations(args.quick):
        if kinds and kind not in kinds:
            continue
        single = name in ("statsmodels_summary", "previous_package_path", "package_loo_exact")
        repeats = 1 if single else args.repeats
        result = _measure(kind, n, name, repeats)
        seconds = result["seconds"] * (n / 20 if name == "statsmodels_refits_20" else 1)
        taylor = (
            f"{result['degree']}, {result['certified']:.1%}"
            if result.get("degree")
            else ("exact" if "degree" in result else "")
        )
        rows.append((kind, n, LABELS[name], seconds, result["peak_mb"], repeats, taylor))
        label, peak = LABELS[name], result["peak_mb"]
        print(f"{kind:8s} {n:>7d}  {label:52s} {seconds:9.3f} s  {peak:7.1f} MB  {taylor}")
    lines = [
        "# bench_diagnostics",
        "",
        "All-row leave-one-out and regression diagnostics; OLS on N × 50, logistic regression "
        "on N × 20 (C = 1e6), Poisson regression on N × 20 (alpha = 1e-4), one thread (torch "
        "and BLAS), median wall seconds of the runs after a warm-up (one run: no warm-up run "
        "of the measured size); peak memory is the rise of the peak RSS during the runs, each "
        'configuration in a fresh process. "Taylor" is the degree of the Taylor model of '
        "the GLM refinement and the fraction of refits its remainder bound certified "
        '("exact": the exact per-row gradients were used). Shared, noisy machine: compare '
        "ratios within one run, not with other runs.",
        "",
        *header,
        *previous,
        *(
            [
                "",
                f"Rows of the models not re-measured (not in --only {args.only}) are kept from "
                'the previous run, whose environment lines are marked "previous run".',
            ]
            if kept
            else []
        ),
        "",
        "| model | N | what | wall s | peak MB | runs | Taylor |",
        "|---|--:|---|--:|--:|--:|---|",
        *kept,
        *(
            f"| {kind} | {n:,} | {label} | {seconds:.3f} | {peak:.0f} | {repeats} | {taylor} |"
            for kind, n, label, seconds, peak, repeats, taylor in rows
        ),
        "",
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
