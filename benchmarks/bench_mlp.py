"""Influence of an MLP 64-128-10 (9,610 parameters) trained with skorch on digits.

For each solver (direct, cholesky, cg, lissa): wall time of
``InfluenceFunction(FrozenEstimator(net)).fit(X_train).transform(X_query)`` for 100 queries
(training gradients, curvature, solve; the network is already trained), the peak memory it
added, and the Pearson correlation of its influence matrix with the exact Gauss-Newton
answer (``direct``). Then how the time grows with n_train ∈ {500, 1000, 1500}. Damping
λ = 1e-3.

Every measurement runs in a fresh subprocess (so that peak RSS is its own); the network is
trained once and shared through a temporary file. Usage::

    python benchmarks/bench_mlp.py                 # full table, writes results/bench_mlp.md
    python benchmarks/bench_mlp.py --threads 2 --repeats 3
    python benchmarks/bench_mlp.py --device cuda   # the same on a GPU

Results depend on the machine; the committed file says where it was measured.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bench_mlp.md"
DAMPING = 1e-3
N_QUERIES = 100

#: the solvers of the table: (label, solver, solver_options, also at the smaller sizes)
CONFIGURATIONS = [
    ("direct", "direct", {}, True),
    ("cholesky", "cholesky", {}, True),
    ("cg", "cg", {}, True),
    ("cg (tol=1e-2)", "cg", {"tol": 1e-2}, False),
    ("lissa (depth=200, minibatch=128)", "lissa", {"depth": 200, "minibatch_size": 128}, True),
    ("lissa (depth=1000, minibatch=128)", "lissa", {"depth": 1000, "minibatch_size": 128}, False),
]


def _data():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))
    X = (X[order] / 16.0).astype(np.float32)
    return X[:1500], y[order][:1500], X[1500 : 1500 + N_QUERIES], y[order][1500 : 1500 + N_QUERIES]


def _module(hidden=128):
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )


def _net(device, hidden=128):
    import torch
    from skorch import NeuralNetClassifier

    return NeuralNetClassifier(
        _module,
        module__hidden=hidden,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        max_epochs=60,
        batch_size=64,
        iterator_train__shuffle=True,
        train_split=None,
        device=device,
        verbose=0,
    )


def train(path, device, hidden):
    """Train the MLP on the 1500 training digits (seeded) and save its weights."""
    import torch

    from sklearn_influence._adapters._skorch import fit_skorch

    X, y, X_query, y_query = _data()
    torch.manual_seed(0)
    net = _net(device, hidden)
    start = time.perf_counter()
    fit_skorch(net, X, y)
    accuracy = float((net.predict(X_query) == y_query).mean())
    torch.save(net.module_.state_dict(), path)
    return time.perf_counter() - start, accuracy


def measure(weights, solver, options, n_train, device, threads, output, hidden):
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch
    from sklearn.frozen import FrozenEstimator

    from sklearn_influence import InfluenceFunction

    torch.set_num_threads(threads)
    X, y, X_query, y_query = _data()
    X, y = X[:n_train], y[:n_train]
    net = _net(device, hidden)
    net.initialize()
    net.module_.load_state_dict(torch.load(weights, map_location=device))
    # warm up torch.func (its first use imports and compiles helpers) outside the timed region
    InfluenceFunction(FrozenEstimator(net), solver="cg", device=device).fit(X[:5], y[:5]).transform(
        X_query[:1], y_query[:1]
    )
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    influence = InfluenceFunction(
        FrozenEstimator(net),
        solver=solver,
        solver_options=options,
        damping=DAMPING,
        device=device,
        random_state=0,
    ).fit(X, y)
    matrix = influence.transform(X_query, y_query)
    elapsed = time.perf_counter() - start
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024  # MiB
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 1024**2
    np.save(output, matrix)
    solver_object = influence.engine_.solver
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "peak_mib": peak,
                "iterations": getattr(solver_object, "n_iter_", None),
                "rank": getattr(
                    getattr(solver_object, "preconditioner", None), "sketch_rank", None
                ),
            }
        )
    )


def _run_child(weights, solver, options, n_train, device, threads, output, hidden):
    command = [
        sys.executable,
        __file__,
        "--child",
        json.dumps([weights, solver, options, n_train, device, threads, output, hidden]),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per iterative solver")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="500,1000,1500", help="n_train values")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--hidden", type=int, default=128, help="hidden width (smoke tests)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(*json.loads(args.child))
        return
    import torch

    torch.set_num_threads(args.threads)
    sizes = sorted(int(size) for size in args.sizes.split(","))[::-1]  # the largest first
    output_path = Path(args.output)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_text("")

    def emit(line=""):
        # written as it comes, so that an interrupted run keeps what it measured
        print(line, flush=True)
        with output_path.open("a") as stream:
            stream.write(line + "\n")

    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "mlp.pt")
        train_seconds, accuracy = train(weights, args.device, args.hidden)
        n_params = 64 * args.hidden + args.hidden + 10 * args.hidden + 10
        emit(
            f"# Influence of an MLP 64-{args.hidden}-10 on digits (skorch), λ = 1e-3, "
            f"{N_QUERIES} queries"
        )
        emit()
        emit(
            f"Machine: {platform.processor() or platform.machine()}, torch threads = "
            f"{args.threads}, device = {args.device}, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}. Network: {n_params:,} parameters, Adam 60 epochs "
            f"({train_seconds:.0f} s to train, not counted), test accuracy {accuracy:.3f}."
        )
        emit(
            "Time = fit + transform of InfluenceFunction(FrozenEstimator(net)) (training "
            f"gradients, curvature, solve); cg: median of {args.repeats} runs; direct, "
            "cholesky and lissa (seeded): 1 run. "
            "Peak = extra resident memory of the measuring process (GPU: peak allocated)."
        )
        for n_train in sizes:
            emit()
            emit(f"## n_train = {n_train}")
            emit()
            emit("| solver | time (s) | peak memory (MiB) | Pearson vs direct | notes |")
            emit("|---|---|---|---|---|")
            reference = None
            for label, solver, options, everywhere in CONFIGURATIONS:
                if not everywhere and n_train != sizes[0]:
                    continue
                repeats = 1 if solver != "cg" else args.repeats
                runs = []
                for repeat in range(repeats):
                    output = os.path.join(folder, f"{solver}-{n_train}-{repeat}.npy")
                    result = _run_child(
                        weights,
                        solver,
                        options,
                        n_train,
                        args.device,
                        args.threads,
                        output,
                        args.hidden,
                    )
                    result["matrix"] = np.load(output)
                    runs.append(result)
                seconds = float(np.median([run["seconds"] for run in runs]))
                peak = float(np.max([run["peak_mib"] for run in runs]))
                matrix = runs[0]["matrix"]
                if reference is None:
                    reference = matrix
                notes = ""
                if runs[0]["iterations"] is not None and solver == "cg":
                    notes = f"iterations {runs[0]['iterations']}, sketch rank {runs[0]['rank']}"
                emit(
                    f"| {label} | {seconds:.2f} | {peak:.0f} | "
                    f"{_pearson(matrix, reference):.5f} | {notes} |"
                )


if __name__ == "__main__":
    main()
