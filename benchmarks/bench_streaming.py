"""Memory and time of the streamed influence computations as the training set grows.

A 10-class logistic regression on 20 synthetic features (p = 210 parameters), 100 queries,
N ∈ {10k, 50k, 200k} training points. For each N, in a fresh subprocess each time:
``transform`` (returns the 100 × N matrix) and ``most_influential(k=10)`` (returns
100 × 10 × 4 arrays): wall time and the peak RSS the call added above the fitted state,
sampled every 2 ms from ``/proc/self/statm``. The median of ``--repeats`` runs. The calls
run with ``working_memory=16`` MiB, so that blocks (about 6,700 training points) are
smaller than N; with the default 1024 MiB every N here would be a single block.

The training gradients (N × p) are never all held: the engine streams them in blocks sized
by ``working_memory`` (default 1024 MiB). What the previous, unstreamed engine held is
given for comparison: the N × p gradients at fit, and at ``transform`` twice the output
(blocks, then their concatenation); ``most_influential`` also sorted the whole matrix.

Usage::

    nice python benchmarks/bench_streaming.py            # writes results/bench_streaming.md
    python benchmarks/bench_streaming.py --sizes 10000 --repeats 1
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_streaming.md"
N_FEATURES, N_CLASSES, N_QUERIES = 20, 10, 100
#: MiB for the streamed calls: blocks of about 6,700 training points here
WORKING_MEMORY = 16


def _rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(n, operation, cache):
    import warnings

    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from sklearn_influence import InfluenceFunction

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n + N_QUERIES, N_FEATURES))
    y = (X[:, :N_CLASSES] + 0.5 * rng.normal(size=(len(X), N_CLASSES))).argmax(1)
    X_train, y_train, X_query, y_query = X[:n], y[:n], X[n:], y[n:]
    # the gradient cache is decided at fit from the working memory in force then
    working_memory = 1024 if cache else 1
    with warnings.catch_warnings(), sklearn.config_context(working_memory=working_memory):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(max_iter=30)
        influence = InfluenceFunction(model, solver="direct").fit(X_train, y_train)
    cached = influence.engine_.gradient_cache is not None
    influence.transform(X_query[:2], y_query[:2])  # warm-up (factorization is done at fit)
    baseline = _rss_bytes()
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    with sklearn.config_context(working_memory=WORKING_MEMORY):
        if operation == "transform":
            result = influence.transform(X_query, y_query)
            returned = result.nbytes
        else:
            result = influence.most_influential(X_query, y_query, k=10)
            returned = sum(array.nbytes for array in result.values())
    elapsed = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "added": peak[0] - baseline,
                "returned": returned,
                "cached": cached,
                "p": influence.engine_.n_params,
            }
        )
    )


def run(n, operation, cache, threads):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", f"{n},{operation},{int(cache)}"]
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        n, operation, cache = args.child.split(",")
        child(int(n), operation, bool(int(cache)))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    mib = 2**20
    rows = []
    for n in sizes:
        for operation in ("transform", "most_influential"):
            runs = [run(n, operation, False, args.threads) for _ in range(args.repeats)]
            p = runs[0]["p"]
            seconds = statistics.median(r["seconds"] for r in runs)
            added = statistics.median(r["added"] for r in runs) / mib
            returned = runs[0]["returned"] / mib
            matrix = 8 * N_QUERIES * n / mib
            before = 2 * matrix
            rows.append(
                f"| {n:>7,} | {operation:<16} | {seconds:7.2f} | {added:8.1f} | "
                f"{returned:8.1f} | {before:8.1f} | {8 * n * p / mib:8.1f} |"
            )
            print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    text = "\n".join(
        [
            "# bench_streaming",
            "",
            f"LogisticRegression, {N_CLASSES} classes × ({N_FEATURES} features + intercept) = "
            f"{N_CLASSES * (N_FEATURES + 1)} parameters, {N_QUERIES} queries, solver='direct', "
            "float64, CPU, gradient cache off (training gradients streamed), "
            f"working_memory={WORKING_MEMORY} MiB for the calls (blocks of about "
            f"{WORKING_MEMORY * 2**20 // (8 * (N_CLASSES * (N_FEATURES + 1) + N_QUERIES)):,} "
            "training points). Each entry: median of "
            f"{args.repeats} runs, each in a fresh process.",
            "",
            f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average at end "
            f"{load:.2f} (other processes share the cores); {args.threads} threads",
            "- *added peak*: peak RSS during the call minus RSS before it (sampled every 2 ms)",
            "- *returned*: the size of what the call returns",
            "- *before (est.)*: what the unstreamed engine allocated for the call (transform: "
            "blocks + concatenation = 2× the matrix; most_influential: the matrix + its full "
            "argsort = 2×), computed, not measured",
            "- *N×p gradients*: what the unstreamed engine held from fit on (never held now)",
            "",
            "|       N | call             |  wall s | added peak MiB | returned MiB | "
            "before (est.) MiB | N×p gradients MiB |",
            "|--------:|------------------|--------:|---------:|---------:|---------:|---------:|",
            *rows,
            "",
        ]
    )
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
