"""GPU against CPU: the MLP task and a LeNet-like CNN with ``ekfac``, ``kfac`` and ``cg``.

For each task the network is trained once on the CPU (seeded, skorch, Adam), then
``InfluenceFunction(FrozenEstimator(net), curvature=..., solver=..., device=...)`` is fitted
and its influence matrix computed on the CPU and on ``--device``. Every row reports, on the
device: wall time of fit + transform (median of ``--repeats`` runs after a warm-up), peak
GPU memory (``torch.cuda.max_memory_allocated``; "—" on the CPU), the Pearson correlation
and top-10 overlap (the 10 most helpful training points of each query) with the exact
Gauss-Newton answer (CG, tol 1e-8, on the device), and the agreement of the device's matrix
with the CPU's, ``max |A_device − A_cpu| / max |A_cpu|`` (float32 round-off is about 1e-6
relative to the largest entry; iterative solvers amplify it by their conditioning).

Public API only. Usage::

    python benchmarks/bench_gpu.py --device cuda --output /tmp/bench_gpu.md
    python benchmarks/bench_gpu.py --device cpu --quick     # dry run: tiny sizes, seconds

``benchmarks/gpu_check.sh`` runs it on a lent GPU machine; the committed results (if any)
are in ``benchmarks/results/bench_gpu.md``, with the card named.
"""

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's package, not another installed copy
sys.path.insert(0, str(HERE))

DAMPING = 1e-3
METHODS = [  # (label, curvature, solver, solver_options)
    ("ekfac", "ekfac", "auto", {}),
    ("kfac", "kfac", "auto", {}),
    ("cg (tol 1e-3, Nyström)", "gauss_newton", "cg", {}),
]
EXACT = ("gauss_newton", "cg", {"tol": 1e-8, "maxiter": 1000, "preconditioner": None})


def _sizes(quick):
    if quick:
        return {"n_train": 120, "n_queries": 10, "epochs": 10, "hidden": 16, "repeats": 1}
    return {"n_train": 1500, "n_queries": 100, "epochs": 40, "hidden": 128, "repeats": 3}


def _data(sizes, task):
    from sklearn_influence.datasets import load_digits_split

    data = load_digits_split(n_train=sizes["n_train"], n_test=sizes["n_queries"], random_state=0)
    X, X_query = data.X_train.astype(np.float32), data.X_test.astype(np.float32)
    if task == "lenet":
        X, X_query = X.reshape(-1, 1, 8, 8), X_query.reshape(-1, 1, 8, 8)
    return X, data.y_train, X_query, data.y_test


def _train(task, sizes, X, y):
    """The task's skorch classifier, trained on the CPU with seeded initialisation/shuffling."""
    import torch
    from skorch import NeuralNetClassifier

    from sklearn_influence.datasets import LeNet, TanhMLP

    if task == "mlp":
        module, params = TanhMLP, {"module__hidden": sizes["hidden"]}
    else:
        small = sizes["hidden"] < 32
        params = {"module__channels": (2, 4) if small else (6, 12),
                  "module__hidden": sizes["hidden"] if small else 32}  # fmt: skip
        module = LeNet
    net = NeuralNetClassifier(
        module,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=3e-3,
        optimizer__weight_decay=1e-3,
        max_epochs=sizes["epochs"],
        batch_size=64,
        iterator_train__shuffle=True,
        train_split=None,
        verbose=0,
        **params,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net.fit(X, y)
    return net


def _influence(net, X, y, X_query, y_query, device, curvature, solver, options):
    """(matrix, seconds, peak GPU MiB or None) of one fit + transform."""
    import torch
    from sklearn.frozen import FrozenEstimator

    from sklearn_influence import InfluenceFunction

    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # measured here, not judged: agreement is in the table
        influence = InfluenceFunction(
            FrozenEstimator(net),
            damping=DAMPING,
            curvature=curvature,
            solver=solver,
            solver_options=options,
            device=device,
            random_state=0,
        ).fit(X, y)
        matrix = influence.transform(X_query, y_query)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return matrix, seconds, peak


def _pearson(first, second):
    return float(np.corrcoef(first.ravel(), second.ravel())[0, 1])


def _top10_overlap(estimate, exact):
    k = min(10, exact.shape[1])
    top_estimate = np.argsort(-estimate, axis=1)[:, :k]
    top_exact = np.argsort(-exact, axis=1)[:, :k]
    shared = [len(np.intersect1d(a, b)) for a, b in zip(top_estimate, top_exact, strict=True)]
    return float(np.mean(shared)) / k


def _relative_gap(device_matrix, cpu_matrix):
    return float(np.abs(device_matrix - cpu_matrix).max() / np.abs(cpu_matrix).max())


def task_rows(task, sizes, device):
    """Markdown lines of one task."""
    X, y, X_query, y_query = _data(sizes, task)
    started = time.perf_counter()
    net = _train(task, sizes, X, y)
    trained = time.perf_counter() - started
    accuracy = float((net.predict(X_query) == y_query).mean())
    n_params = sum(p.numel() for p in net.module_.parameters())
    arguments = (net, X, y, X_query, y_query)
    _influence(*arguments, device, "kfac", "auto", {})  # warm-up: CUDA context, torch.func
    exact, exact_seconds, exact_peak = _influence(*arguments, device, *EXACT)
    exact_cpu = exact if device == "cpu" else _influence(*arguments, "cpu", *EXACT)[0]
    lines = [
        f"## {task}: {n_params:,} parameters, {len(X)} training digits, {len(X_query)} queries",
        "",
        f"Trained on the CPU in {trained:.1f} s, query accuracy {accuracy:.3f}; λ = {DAMPING:g}.",
        "",
        "| method | device s (median) | CPU s | peak GPU MiB | Pearson with exact | "
        "top-10 overlap | device vs CPU (max rel. gap) |",
        "|---|---|---|---|---|---|---|",
    ]
    gap = _relative_gap(exact, exact_cpu)
    label = "exact: cg tol 1e-8, no preconditioner"
    lines.append(_row(label, [exact_seconds], None, exact_peak, exact, exact, gap))
    for label, curvature, solver, options in METHODS:
        runs = [_influence(*arguments, device, curvature, solver, options)
                for _ in range(sizes["repeats"])]  # fmt: skip
        matrix, peak = runs[-1][0], max((run[2] or 0) for run in runs)
        if device == "cpu":  # a dry run: the device is the CPU
            cpu_matrix, cpu_seconds = matrix, np.median([run[1] for run in runs])
        else:
            cpu_matrix, cpu_seconds, _ = _influence(*arguments, "cpu", curvature, solver, options)
        lines.append(_row(label, [run[1] for run in runs], cpu_seconds,
                          peak if device != "cpu" else None, matrix, exact,
                          _relative_gap(matrix, cpu_matrix)))  # fmt: skip
    return [*lines, ""]


def _row(label, seconds, cpu_seconds, peak, matrix, exact, gap):
    cells = [
        label,
        f"{np.median(seconds):.3f}",
        "—" if cpu_seconds is None else f"{cpu_seconds:.3f}",
        "—" if peak is None else f"{peak:.0f}",
        f"{_pearson(matrix, exact):.5f}",
        f"{_top10_overlap(matrix, exact):.2f}",
        f"{gap:.1e}",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a dry run)")
    parser.add_argument("--tasks", default="mlp,lenet")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", default=None, help="markdown file (default: a temp file)")
    args = parser.parse_args(argv)
    import torch
    from _shared import environment, report

    if args.threads:
        torch.set_num_threads(args.threads)
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA GPU; pass --device cpu for a dry run")
    sizes = _sizes(args.quick)
    card = torch.cuda.get_device_name() if str(args.device).startswith("cuda") else "none"
    lines = ["# bench_gpu: influence on the GPU against the CPU", "", *environment(args.threads),
             f"* device {args.device}; card: {card}; date {time.strftime('%Y-%m-%d %H:%M')} UTC"
             + ("; --quick sizes" if args.quick else ""), ""]  # fmt: skip
    for task in args.tasks.split(","):
        lines += task_rows(task.strip(), sizes, args.device)
    output = Path(args.output or Path(tempfile.gettempdir()) / "bench_gpu.md")
    report("\n".join(lines), output)


if __name__ == "__main__":
    main()
