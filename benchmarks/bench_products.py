"""Gauss-Newton products: stored whitened Jacobians against forward/reverse mode, per family.

Part a: for each of the digits families of ``paper_table2.py`` (tanh MLP, LeNet, VGG, ResNet,
Transformer; skorch, float32, trained 2 epochs — the product's cost does not depend on the
fit), one product with 100 random vectors over 1,000 training rows, both ways
(``curvature_options={"jacobian_products": True}`` / ``False``; the stored Jacobians built
before timing), median of ``--repeats``; the forward flops of one row counted by
``torch.utils.flop_counter``, F / (r·p), and what ``"auto"`` picks
(:func:`sklearn_influence._engine._gauss_newton.stored_products_are_cheaper`).

Part b: ``InfluenceFunction(..., solver=...)`` fit + transform on the tanh MLP (1,500 rows,
100 queries) with the products ``"auto"`` picks now against the stored ones it picked before
(each in a fresh process: wall time and the process's peak RSS).

Usage::

    python benchmarks/bench_products.py            # writes results/bench_products.md
    python benchmarks/bench_products.py --no-write --repeats 1
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _shared import environment, report
from sklearn.datasets import load_digits
from skorch import NeuralNetClassifier
from torch.utils.flop_counter import FlopCounterMode

from sklearn_influence._adapters import make_adapter
from sklearn_influence._engine._curvature import make_curvature
from sklearn_influence._engine._gauss_newton import (
    STORED_FLOPS_PER_JACOBIAN_ENTRY,
    stored_products_are_cheaper,
)
from sklearn_influence.datasets import VGG, LeNet, ResNet, TanhMLP, TransformerClassifier

FAMILIES = {
    "tanh MLP": (TanhMLP, (64,)),
    "LeNet": (LeNet, (1, 8, 8)),
    "VGG": (VGG, (1, 8, 8)),
    "ResNet": (ResNet, (1, 8, 8)),
    "Transformer": (TransformerClassifier, (8, 8)),
}


def _digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def _net(module, epochs=2):
    return NeuralNetClassifier(
        module, criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.Adam, lr=5e-3,
        optimizer__weight_decay=1e-3, max_epochs=epochs, batch_size=64, train_split=None,
        verbose=0,
    )  # fmt: skip


def product_row(name, repeats, n_rows=1000, n_vectors=100):
    module, shape = FAMILIES[name]
    X, y = _digits()
    X = X[:n_rows].reshape(-1, *shape)
    torch.manual_seed(0)
    net = _net(module).fit(X, y[:n_rows])
    adapter = make_adapter(net, n_rows, torch.device("cpu"))
    theta, inputs, targets = adapter.parameters(), adapter.inputs(X), adapter.targets(y[:n_rows])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        adapter.outputs(theta, inputs[:1])
    flops, r, p = counter.get_total_flops(), 10, theta.numel()
    vectors = torch.randn(n_vectors, p, generator=torch.Generator().manual_seed(0)).to(theta.dtype)
    seconds = {}
    for stored in (True, False):
        curvature = make_curvature(
            "gauss_newton", adapter, theta, inputs, targets,
            options={"jacobian_products": stored},
        )  # fmt: skip
        curvature.matmul(vectors[:2])  # builds the stored Jacobians; warms torch.func up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            curvature.matmul(vectors)
            times.append(time.perf_counter() - started)
        seconds[stored] = statistics.median(times)
    auto = stored_products_are_cheaper(adapter, theta, inputs, r)
    return (
        f"| {name} | {p:,} | {flops:,} | {flops / (r * p):.2f} | {seconds[True]:.2f} | "
        f"{seconds[False]:.2f} | {seconds[False] / seconds[True]:.2f} | "
        f"{'stored' if auto else 'matrix-free'} |"
    )


def _peak_rss_mib():
    """This process's peak resident set (VmHWM: unlike ru_maxrss, not inherited at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(solver, stored):
    """One fit + transform in this process; prints a JSON line (wall s, peak MiB)."""
    from sklearn_influence import InfluenceFunction

    torch.set_num_threads(1)
    X, y = _digits()
    options = {} if stored == "auto" else {"jacobian_products": True}
    started = time.perf_counter()
    influence = InfluenceFunction(
        _net(TanhMLP, epochs=20), damping=1e-3, solver=solver, random_state=0,
        curvature_options=options,
        solver_options={"depth": 200} if solver == "lissa" else None,
    ).fit(X[:1500], y[:1500])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LiSSA at depth 200 warns of its residual
        influence.transform(X[1500:1600], y[1500:1600])
    peak = _peak_rss_mib()
    used = influence.engine_.curvature.uses_stored_jacobians()
    print(json.dumps({"seconds": time.perf_counter() - started, "peak": peak, "stored": used}))


def solver_rows(repeats):
    rows = []
    for solver in ("cg", "lissa"):
        for stored in ("always", "auto"):
            runs = []
            for _ in range(repeats):
                output = subprocess.run(
                    [sys.executable, __file__, "--child", solver, stored],
                    check=True, capture_output=True, text=True,
                ).stdout  # fmt: skip
                runs.append(json.loads(output.strip().splitlines()[-1]))
            label = "stored (before)" if stored == "always" else "auto (now)"
            rows.append(
                f"| {solver} | {label} | {'stored' if runs[0]['stored'] else 'matrix-free'} | "
                f"{statistics.median(r['seconds'] for r in runs):.1f} | "
                f"{statistics.median(r['peak'] for r in runs):.0f} |"
            )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    torch.set_num_threads(1)
    lines = ["# bench_products", "", *environment(1), ""]
    lines += [
        "## a. One product, 100 vectors, 1,000 rows (median of "
        f"{args.repeats}; r = 10 outputs)",
        "",
        "| family | p | forward flops per row F | F / (r·p) | stored s | matrix-free s | "
        "matrix-free / stored | auto picks |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [product_row(name, args.repeats) for name in FAMILIES]
    lines += [
        "",
        f"`auto` stores the Jacobians when F / (r·p) ≥ {STORED_FLOPS_PER_JACOBIAN_ENTRY} "
        "(and they fit half of `working_memory`).",
        "",
        "## b. Tanh MLP, 1,500 rows, 100 queries: fit + transform, fresh process each "
        f"(median of {args.repeats})",
        "",
        "| solver | products | used | wall s | peak RSS MiB |",
        "|---|---|---|---:|---:|",
        *solver_rows(args.repeats),
    ]
    text = "\n".join(lines) + "\n"
    if args.no_write:
        print(text)
    else:
        report(text, Path(__file__).parent / "results" / "bench_products.md")


if __name__ == "__main__":
    main()
