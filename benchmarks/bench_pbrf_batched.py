"""Benchmark: PBRF for k removed points in one batched (vmap) optimisation vs one at a time.

For each N of ``--n-train`` (default 200 and 500) a skorch MLP (64 → hidden → 10, tanh) is
trained on N digits images; the PBRF of
``--k`` removed training points is optimised from θˢ for exactly ``--steps`` full-batch SGD
steps (``tol=0``, so both variants do the same work), either as one optimisation of k
parameter copies (:func:`torch.func.vmap` forward, one reverse pass) or as k separate
optimisations of one copy. Both must give the same responses; the table reports the median
wall and CPU seconds of ``--repeats`` runs after a warm-up, the speed-up and the largest
difference of the responses relative to their size. One step of one copy costs a fixed
overhead (dispatch, autograd, optimizer bookkeeping) plus arithmetic proportional to N; the
batched run pays the overhead once for all k copies, so the speed-up is largest for small N.

Run ``python benchmarks/bench_pbrf_batched.py`` (``--threads 1`` pins torch and BLAS to one
thread). It prints a table and writes ``benchmarks/results/bench_pbrf_batched.md``.
"""

import argparse
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _shared import environment, report, sgd_tanh_net
from threadpoolctl import threadpool_limits

from sklearn_influence._adapters import fit_estimator, make_adapter
from sklearn_influence._responses._functions import ResponseProblem, proximal_response
from sklearn_influence._responses._optimizers import auto_settings
from sklearn_influence.datasets import load_digits_split

RESULTS = Path(__file__).resolve().parent / "results" / "bench_pbrf_batched.md"


def trained_problem(n_train, hidden, epochs):
    """Fit the skorch net the way the estimators do and wrap it as a response problem."""

    data = load_digits_split(n_train=n_train, n_test=10, random_state=0)
    X, y = data.X_train.astype(np.float32), data.y_train
    net = sgd_tanh_net(hidden=hidden, epochs=epochs, lr=0.1)
    torch.manual_seed(0)
    state = fit_estimator(net, X, y)
    return ResponseProblem(make_adapter(net, len(y), torch.device("cpu"), state), X, y)


def timed(function, repeats):
    """Median (wall, CPU) seconds over ``repeats`` runs after one warm-up; last result."""
    result = function()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def compare(n_train, args):
    """Time both variants on one trained net; return a table row."""
    problem = trained_problem(n_train, args.hidden, args.epochs)
    indices = np.random.RandomState(0).choice(problem.n_train, args.k, replace=False)
    # the automatic step and momentum once, so that both variants time only the steps
    learning_rate, options = auto_settings(
        problem.adapter, problem.theta, problem.inputs, problem.targets,
        problem.reference_outputs, damping=1e-3, epsilon=problem.epsilon, optimizer="sgd",
        learning_rate="auto", optimizer_options=None,
    )  # fmt: skip
    settings = {
        "damping": 1e-3,
        "n_iter": args.steps,
        "tol": 0.0,
        "learning_rate": learning_rate,
        "optimizer_options": options,
    }

    def batched():
        return proximal_response(problem, "pbrf", indices, **settings).parameters

    def one_at_a_time():
        return torch.cat(
            [proximal_response(problem, "pbrf", [m], **settings).parameters for m in indices]
        )

    with warnings.catch_warnings():
        # tol=0: every response runs all its steps and reports non-convergence
        warnings.simplefilter("ignore", UserWarning)
        batched_wall, batched_cpu, batched_thetas = timed(batched, args.repeats)
        single_wall, single_cpu, single_thetas = timed(one_at_a_time, args.repeats)
    shift = (single_thetas - problem.theta).norm(dim=1)
    difference = float(((batched_thetas - single_thetas).norm(dim=1) / shift).max())
    return (
        f"| {n_train} | {problem.theta.numel()} | {single_wall:.2f} | {single_cpu:.2f} | "
        f"{batched_wall:.2f} | {batched_cpu:.2f} | **{single_wall / batched_wall:.1f}x** | "
        f"{single_cpu / batched_cpu:.1f}x | {difference:.1e} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=64, help="removed points")
    parser.add_argument("--steps", type=int, default=100, help="SGD steps per response")
    parser.add_argument("--n-train", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the net")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per entry (median)")
    parser.add_argument("--threads", type=int, default=None, help="pin torch and BLAS")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        rows = [compare(n_train, args) for n_train in args.n_train]
    text = "\n".join(
        [
            "# bench_pbrf_batched",
            "",
            f"PBRF of k = {args.k} removed points of a skorch MLP 64-{args.hidden}-10 trained "
            f"{args.epochs} epochs on N digits images; {args.steps} full-batch SGD steps per "
            "response (auto step and momentum, tol=0, so both variants do the same steps), "
            "responses in float64, CPU; seconds are medians of "
            f"{args.repeats} runs after a warm-up. 'difference' is the largest "
            "‖θ_batched − θ_single‖ / ‖θ_single − θˢ‖ over the removed points.",
            "",
            *environment(args.threads),
            "",
            "| N | parameters | one at a time: wall s | CPU s | batched (vmap): wall s | "
            "CPU s | speed-up wall | speed-up CPU | difference |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )
    report(text, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
