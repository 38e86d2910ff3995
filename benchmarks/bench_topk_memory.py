"""Peak memory of ``most_influential(k=10)`` against one streamed block plus its result.

A Ridge regression on 10 features (p = 11 parameters), 400 queries and N = 100,000 training
points: the full influence matrix (never returned by ``most_influential``) is 400 × 100,000
float64 numbers, 305 MiB. Each configuration runs in a fresh subprocess, which fits the
model, calls ``most_influential`` once on two queries (warm-up), then resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``, Linux) and measures the peak RSS the call adds
above the RSS before it (``VmHWM`` − ``VmRSS``, both from ``/proc/self/status``).

The bound the engine promises is one block plus what is returned, +20%:

* *block*: what one training block holds — its gradients (width × p) and its scores
  (n_queries × width), float64; the block width is the engine's
  ``train_block_rows(n_queries, working_memory)``;
* *queries*: the preconditioned queries and their gradients (2 × n_queries × p);
* *result*: the four (n_queries, k) arrays.

With the default ``working_memory`` (1024 MiB) the whole matrix is one block; with 64 MiB
blocks of about 20,000 training points stream. ``transform`` is measured for comparison: it
returns the matrix, so it holds the matrix plus one block.

Before block-local selection (``np.argpartition`` on a float64 copy of each negated block,
with a full index array), the same runs added 915 MiB (3.0 × the matrix) at 1024 MiB and
184 MiB at 64 MiB.

Usage::

    python benchmarks/bench_topk_memory.py            # writes results/bench_topk_memory.md
    python benchmarks/bench_topk_memory.py --no-write
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_topk_memory.md"
N_TRAIN, N_FEATURES, N_QUERIES, K = 100_000, 10, 400, 10
MIB = 2**20


def _status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def child(operation, working_memory):
    """Fit, warm up, then measure one call; print a JSON line."""
    import numpy as np
    import sklearn
    from sklearn.linear_model import Ridge

    from sklearn_influence import InfluenceFunction

    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_TRAIN + N_QUERIES, N_FEATURES))
    y = X @ rng.normal(size=N_FEATURES) + 0.1 * rng.normal(size=len(X))
    X_train, y_train = X[:N_TRAIN], y[:N_TRAIN]
    X_query, y_query = X[N_TRAIN:], y[N_TRAIN:]
    influence = InfluenceFunction(Ridge(alpha=1.0), solver="direct").fit(X_train, y_train)
    with sklearn.config_context(working_memory=working_memory):
        influence.most_influential(X_query[:2], y_query[:2], k=K)  # warm-up
        engine = influence.engine_
        width = engine.train_block_rows(N_QUERIES)
        before = _status("VmRSS")
        _reset_peak()
        if operation == "most_influential":
            result = influence.most_influential(X_query, y_query, k=K)
            returned = sum(array.nbytes for array in result.values())
        else:
            returned = influence.transform(X_query, y_query).nbytes
        peak = _status("VmHWM")
    p = engine.n_params
    print(
        json.dumps(
            {
                "added": peak - before,
                "block": width * (p + N_QUERIES) * 8,
                "width": width,
                "queries": 2 * N_QUERIES * p * 8,
                "returned": returned,
                "matrix": N_QUERIES * N_TRAIN * 8,
            }
        )
    )


def run(operation, working_memory):
    output = subprocess.run(
        [sys.executable, __file__, "--child", operation, str(working_memory)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only")
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments.child[0], float(arguments.child[1]))
        return
    header = (
        "| call | working_memory MiB | block width | added peak MiB | block MiB | queries MiB "
        "| returned MiB | bound (block + queries + returned) × 1.2 MiB | peak / full matrix |"
    )
    rows = [header, "|" + "---|" * 9]
    for operation, working_memory in [
        ("transform", 1024),
        ("most_influential", 1024),
        ("most_influential", 64),
    ]:
        r = run(operation, working_memory)
        bound = 1.2 * (r["block"] + r["queries"] + r["returned"])
        rows.append(
            f"| {operation} | {working_memory:g} | {r['width']:,} | {r['added'] / MIB:.1f} "
            f"| {r['block'] / MIB:.1f} | {r['queries'] / MIB:.3f} | {r['returned'] / MIB:.3f} "
            f"| {bound / MIB:.1f} | {r['added'] / r['matrix']:.2f} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# bench_topk_memory",
            "",
            f"Ridge, {N_FEATURES} features (p = {N_FEATURES + 1}), {N_QUERIES} queries, "
            f"N = {N_TRAIN:,}, k = {K}, solver='direct', float64, CPU; the full influence "
            f"matrix is {N_QUERIES * N_TRAIN * 8 / MIB:.0f} MiB. Each row: one fresh process, "
            "the peak RSS the call adds (kernel VmHWM after a reset, minus VmRSS before).",
            "",
            f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, load average "
            f"{os.getloadavg()[0]:.2f}",
            "",
            *rows,
            "",
        ]
    )
    if not arguments.no_write:
        RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
