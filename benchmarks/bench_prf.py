"""PRF convergence on an unconverged regression MLP: the former defaults against the new ones.

A skorch ``NeuralNetRegressor`` (TanhMLP 64 → 16 → 1, float64) trained 30 epochs with SGD
(lr 0.05, momentum 0.9, weight decay 1e-3) to predict digit / 9 on N = 300 digits images,
then :class:`sklearn_influence.ProximalResponse` for 20 removed points (``random_state=0``)
with

* the former defaults: ``optimizer="sgd"`` (step 1/L and Nesterov momentum from the
  curvature at θˢ), ``n_iter=1000``;
* the same SGD with 4x the budget (``n_iter=4000``);
* the new defaults: ``optimizer="auto"`` (batched L-BFGS for the PRF), ``n_iter=3000``.

All at ``tol=1e-4`` (gradient norm relative to its value at θˢ). Run:
``python benchmarks/bench_prf.py [--threads 1]``.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _shared import environment, report
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from skorch import NeuralNetRegressor

from sklearn_influence import ProximalResponse
from sklearn_influence.datasets import TanhMLP, load_digits_split

OUTPUT = Path(__file__).parent / "results" / "bench_prf.md"

SETTINGS = {
    "former defaults (sgd, n_iter=1000)": {"optimizer": "sgd", "n_iter": 1000},
    "sgd, n_iter=4000": {"optimizer": "sgd", "n_iter": 4000},
    "new defaults (auto = lbfgs, n_iter=3000)": {},
}


def regression_net():
    data = load_digits_split(n_train=300, n_test=40, random_state=0)
    y = (data.y_train / 9.0).reshape(-1, 1)
    net = NeuralNetRegressor(
        TanhMLP,
        module__hidden=16,
        module__out_features=1,
        module__dtype=torch.float64,
        optimizer=torch.optim.SGD,
        lr=0.05,
        optimizer__momentum=0.9,
        optimizer__weight_decay=1e-3,
        max_epochs=30,
        batch_size=64,
        train_split=None,
        verbose=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net.fit(data.X_train, y)
    return net, data.X_train, y


def run(net, X, y, settings):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", ConvergenceWarning)
        wall, cpu = time.perf_counter(), time.process_time()
        prf = ProximalResponse(FrozenEstimator(net), n_points=20, random_state=0, **settings)
        prf.fit(X, y)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    warned = any(issubclass(r.category, ConvergenceWarning) for r in records)
    return prf, wall, cpu, warned


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net, X, y = regression_net()
    lines = [
        "# bench_prf",
        "",
        __doc__.split("\n\n", 1)[1].split("Run:")[0].strip(),
        "",
        *environment(args.threads),
        "",
        "| settings | converged | wall s | CPU s | steps per point: median / max | "
        "worst relative gradient norm | ConvergenceWarning |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    results = {}
    for name, settings in SETTINGS.items():
        prf, wall, cpu, warned = run(net, X, y, settings)
        results[name] = prf
        lines.append(
            f"| {name} | {int(prf.converged_.sum())}/{len(prf.converged_)} | {wall:.1f} | "
            f"{cpu:.1f} | {int(np.median(prf.n_iter_))} / {int(prf.n_iter_.max())} | "
            f"{prf.gradient_norm_.max():.2e} | {'yes' if warned else 'no'} |"
        )
    new = results["new defaults (auto = lbfgs, n_iter=3000)"]
    old = results["sgd, n_iter=4000"]
    shift = np.linalg.norm(new.parameters_ - new.reference_parameters_, axis=1)
    gap = np.linalg.norm(new.parameters_ - old.parameters_, axis=1)
    lines += [
        "",
        f"Mean ‖θ_PRF − θˢ‖ of the new defaults: {shift.mean():.3f} (the PRF finishes the "
        f"training of a net that was not at an optimum); mean distance to where SGD with "
        f"n_iter=4000 stopped: {gap.mean():.3f}.",
    ]
    report("\n".join(lines) + "\n", OUTPUT)


if __name__ == "__main__":
    main()
