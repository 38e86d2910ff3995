"""Scale: K-FAC / EK-FAC and CG on the digits MLP, a CNN, a Transformer, and a 1M-parameter MLP.

Three parts, every row a fresh subprocess (its own peak RSS), public API only
(``InfluenceFunction(FrozenEstimator(net)).fit(X, y).transform(X_query, y_query)`` on a
trained skorch ``NeuralNetClassifier``), damping λ = 1e-3:

a. the bench_mlp task (MLP 64-128-10, 9,610 parameters, 1500 digits, 100 queries):
   ``kfac``, ``ekfac`` (factored inverse) and ``cg`` preconditioned by EK-FAC, Nyström and
   nothing — time, peak RSS, CG iterations, Pearson with the exact Gauss-Newton answer (CG
   without preconditioner at tol 1e-8);
b. a LeNet-like CNN (1×8×8 digits) and the small TransformerClassifier (image rows as
   tokens) on the same digits: time, peak RSS, Pearson of kfac/ekfac with CG (tol 1e-6);
c. an MLP 512-1024-512-10 (1,055,242 parameters, tanh) trained briefly on synthetic data
   (512 Gaussian features, labels from a noisy random linear teacher), N ∈ {10k, 20k, 50k},
   100 queries: time and peak RSS of ``ekfac``, and of CG on the exact Gauss-Newton matrix
   (EK-FAC preconditioner) where it fits, with an iteration cap stated in the table.

Peak RSS is the whole child process's maximum resident set (``ru_maxrss``: interpreter,
torch, data and the computation), so rows do not contaminate each other. Usage::

    nice python benchmarks/bench_scale.py                 # writes results/bench_scale.md
    python benchmarks/bench_scale.py --quick              # minutes; writes to a temp file
    python benchmarks/bench_scale.py --parts c --device cuda --output /tmp/scale_cuda.md
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's package, not another installed copy
sys.path.insert(0, str(HERE))

RESULTS = HERE / "results" / "bench_scale.md"
DAMPING = 1e-3
#: the 1M-parameter MLP of part c (BENCH_SCALE_WIDTHS="features,hidden,hidden" shrinks it for
#: the CPU dry run of gpu_check.sh; children inherit the environment)
SCALE_FEATURES, *_HIDDEN = (
    int(width) for width in os.environ.get("BENCH_SCALE_WIDTHS", "512,1024,512").split(",")
)
SCALE_HIDDEN = tuple(_HIDDEN)


# -- tasks: data, networks, training ----------------------------------------------------------
def _digits(n_train, n_queries):
    from bench_mlp import _data

    X, y, X_query, y_query = _data()
    return X[:n_train], y[:n_train], X_query[:n_queries], y_query[:n_queries]


def _synthetic(n_train, n_queries):
    """The first n_train rows of a fixed 50,000-row synthetic set, and 100 fixed queries."""
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(SCALE_FEATURES, 10)) / np.sqrt(SCALE_FEATURES)
    total = max(n_train, 50_000) + 100
    X = rng.normal(size=(total, SCALE_FEATURES)).astype(np.float32)
    y = (X @ teacher + 0.5 * rng.normal(size=(total, 10))).argmax(1)
    return X[:n_train], y[:n_train], X[-100:][:n_queries], y[-100:][:n_queries]


def _scale_module():
    import torch

    first, second = SCALE_HIDDEN
    return torch.nn.Sequential(
        torch.nn.Linear(SCALE_FEATURES, first),
        torch.nn.Tanh(),
        torch.nn.Linear(first, second),
        torch.nn.Tanh(),
        torch.nn.Linear(second, 10),
    )


def _task(name, n_train, n_queries):
    """(data, skorch net factory, epochs) of a task; inputs keep the shape the net takes."""
    import torch
    from skorch import NeuralNetClassifier

    from sklearn_influence.datasets import LeNet, TransformerClassifier

    if name == "mlp":
        from bench_mlp import _net

        return _digits(n_train, n_queries), lambda device: _net(device, 128)
    if name == "scale":
        module, data, epochs, batch = _scale_module, _synthetic(n_train, n_queries), 2, 256
    else:
        X, y, X_query, y_query = _digits(n_train, n_queries)
        shape = (1, 8, 8) if name == "lenet" else (8, 8)
        X, X_query = X.reshape(-1, *shape), X_query.reshape(-1, *shape)
        module = LeNet if name == "lenet" else TransformerClassifier
        data, epochs, batch = (X, y, X_query, y_query), 40, 64

    def net(device):
        return NeuralNetClassifier(
            module,
            criterion=torch.nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=3e-3 if name != "scale" else 1e-3,
            max_epochs=epochs,
            batch_size=batch,
            iterator_train__shuffle=True,
            train_split=None,
            device=device,
            verbose=0,
        )

    return data, net


def train(name, path, device, n_train):
    """Train the task's network (seeded), save its weights; (seconds, accuracy, p)."""
    import torch

    (X, y, X_query, y_query), make_net = _task(name, n_train, 100)
    torch.manual_seed(0)
    net = make_net(device)
    start = time.perf_counter()
    net.fit(X, y)
    seconds = time.perf_counter() - start
    accuracy = float((net.predict(X_query) == y_query).mean())
    torch.save(net.module_.state_dict(), path)
    return seconds, accuracy, sum(p.numel() for p in net.module_.parameters())


# -- one measurement (child process) ---------------------------------------------------------
def measure(spec):
    """Fit + transform of one configuration in this fresh process; prints a JSON line."""
    import torch
    from sklearn.frozen import FrozenEstimator

    from sklearn_influence import InfluenceFunction

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    (X, y, X_query, y_query), make_net = _task(spec["task"], spec["n_train"], spec["n_queries"])
    net = make_net(device)
    net.initialize()
    net.module_.load_state_dict(torch.load(spec["weights"], map_location=device))
    settings = dict(curvature=spec["curvature"], solver=spec["solver"], device=device)
    with warnings.catch_warnings():  # warm up torch.func outside the timed region
        warnings.simplefilter("ignore")
        InfluenceFunction(FrozenEstimator(net), **settings).fit(X[:5], y[:5]).transform(
            X_query[:1], y_query[:1]
        )
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        cpu_start = time.process_time()
        curvature_options = dict(spec.get("curvature_options") or {})
        if spec["curvature"] in ("kfac", "ekfac"):  # the self-check is timed on its own
            curvature_options.setdefault("self_check", False)
        influence = InfluenceFunction(
            FrozenEstimator(net),
            solver_options=spec["options"] or None,
            curvature_options=curvature_options or None,
            damping=DAMPING,
            random_state=0,
            **settings,
        ).fit(X, y)
        fitted = time.perf_counter() - start
        matrix = influence.transform(X_query, y_query)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        check = None
        if spec.get("self_check"):  # the check fit runs by default, timed on its own
            agreement = influence.check_approximation(n_train=300, n_rows=min(len(y), 256),
                                                      reference_tol=1e-3)  # fmt: skip
            check = {key: agreement[key] for key in
                     ("pearson", "spearman", "top_k_overlap", "n_queries", "n_train", "n_rows",
                      "seconds")}  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(spec["output"], matrix)
    solver = influence.engine_.solver
    preconditioner = getattr(solver, "preconditioner", None)
    result = {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "self_check": check,
        "fit_seconds": fitted,
        "peak_mib": peak,
        "baseline_mib": baseline,
        "iterations": getattr(solver, "n_iter_", None),
        "rank": getattr(preconditioner, "sketch_rank", None),
        "warnings": sorted({str(w.message).split(". ")[0] for w in caught})[:3],
    }
    if device == "cuda":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(result))


def _run_child(spec):
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:200] if done.stderr else "?"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


# -- the parts ---------------------------------------------------------------------------------
EXACT = {"tol": 1e-8, "maxiter": 1000, "preconditioner": None}
PART_A = [
    ("kfac (factored inverse)", "kfac", "auto", {}),
    ("ekfac (factored inverse)", "ekfac", "auto", {}),
    ("cg + EK-FAC preconditioner", "gauss_newton", "cg", {"preconditioner": "ekfac"}),
    ("cg + Nyström preconditioner", "gauss_newton", "cg", {"preconditioner": "nystrom"}),
    ("cg, no preconditioner", "gauss_newton", "cg", {"preconditioner": None}),
]
PART_B = [
    ("kfac (factored inverse)", "kfac", "auto", {}),
    ("ekfac (factored inverse)", "ekfac", "auto", {}),
    ("cg + EK-FAC preconditioner", "gauss_newton", "cg", {"preconditioner": "ekfac"}),
]


class Bench:
    def __init__(self, args, folder, emit):
        self.args, self.folder, self.emit = args, folder, emit
        self.count = 0

    def run(self, task, weights, n_train, n_queries, curvature, solver, options, **extra):
        self.count += 1
        output = os.path.join(self.folder, f"m{self.count}.npy")
        spec = dict(task=task, weights=weights, n_train=n_train, n_queries=n_queries,
                    curvature=curvature, solver=solver, options=options,
                    device=self.args.device, threads=self.args.threads, output=output,
                    **extra)  # fmt: skip
        result = _run_child(spec)
        if "error" not in result:
            result["matrix"] = np.load(output)
        return result

    def row(self, label, result, reference=None, extra=()):
        if "error" in result:
            self.emit(f"| {label} | failed: {result['error']} |" + " |" * (4 + len(extra)))
            return
        iterations = result["iterations"] if result["iterations"] is not None else "—"
        pearson = "1 (reference)"
        if reference is not None:
            pearson = f"{_pearson(result['matrix'], reference):.5f}"
        cells = [label, f"{result['seconds']:.2f}", f"{result['fit_seconds']:.2f}",
                 f"{result['peak_mib']:.0f}", str(iterations), pearson, *extra]  # fmt: skip
        if self.args.device == "cuda":
            cells.insert(4, f"{result.get('cuda_peak_mib', 0):.0f}")
        self.emit("| " + " | ".join(cells) + " |")

    def header(self, *extra):
        cells = ["configuration", "wall s (fit + transform)", "of which fit s", "peak RSS MiB"]
        if self.args.device == "cuda":
            cells.append("peak CUDA MiB")
        cells += ["CG iterations", "Pearson", *extra]
        self.emit("| " + " | ".join(cells) + " |")
        self.emit("|" + "---|" * len(cells))

    def part_a(self):
        args = self.args
        n_train, n_queries = (300, 20) if args.quick else (1500, 100)
        weights = os.path.join(self.folder, "mlp.pt")
        seconds, accuracy, p = train("mlp", weights, args.device, 1500)
        self.emit(f"## a. MLP 64-128-10 ({p:,} parameters), {n_train} digits, {n_queries} "
                  f"queries, λ = {DAMPING:g}")  # fmt: skip
        self.emit()
        self.emit(f"Trained in {seconds:.0f} s (not counted), test accuracy {accuracy:.3f}. "
                  "Pearson: with the exact Gauss-Newton answer (first row).")  # fmt: skip
        self.emit()
        self.header()
        reference = self.run("mlp", weights, n_train, n_queries, "gauss_newton", "cg", EXACT)
        self.row("exact (cg, tol 1e-8, no preconditioner)", reference)
        for label, curvature, solver, options in PART_A:
            result = self.run("mlp", weights, n_train, n_queries, curvature, solver, options)
            self.row(label, result, reference.get("matrix"))
        self.emit()

    def part_b(self):
        args = self.args
        n_train, n_queries = (300, 20) if args.quick else (1500, 100)
        titles = {"lenet": "LeNet-like CNN (1×8×8 digits)",
                  "transformer": "TransformerClassifier (8 image rows as tokens)"}  # fmt: skip
        for task, title in titles.items():
            weights = os.path.join(self.folder, f"{task}.pt")
            seconds, accuracy, p = train(task, weights, args.device, 1500)
            self.emit(f"## b. {title}, {p:,} parameters, {n_train} digits, {n_queries} queries")
            self.emit()
            self.emit(f"Trained in {seconds:.0f} s (not counted), test accuracy {accuracy:.3f}. "
                      "Pearson: with CG (tol 1e-6, default Nyström preconditioner).")  # fmt: skip
            self.emit()
            self.header("notes")
            options = {"tol": 1e-6, "maxiter": 500}
            reference = self.run(task, weights, n_train, n_queries, "gauss_newton", "cg", options)
            self.row("cg (tol 1e-6)", reference, extra=["; ".join(reference.get("warnings", []))])
            for label, curvature, solver, options in PART_B:
                result = self.run(task, weights, n_train, n_queries, curvature, solver, options)
                notes = "; ".join(result.get("warnings", []))
                self.row(label, result, reference.get("matrix"), extra=[notes])
            self.emit()

    def part_c(self):
        args = self.args
        sizes = [int(size) for size in args.sizes.split(",")]
        exact_sizes = [int(size) for size in args.exact_sizes.split(",") if size]
        n_queries = 100
        weights = os.path.join(self.folder, "scale.pt")
        n_fit = min(sizes[0], 5_000)
        seconds, accuracy, p = train("scale", weights, args.device, n_fit)
        self.emit(f"## c. Scale: MLP {SCALE_FEATURES}-{'-'.join(map(str, SCALE_HIDDEN))}-10 "
                  f"(tanh, {p:,} parameters), synthetic data, {n_queries} queries")  # fmt: skip
        self.emit()
        exact_text = (
            f"Exact: CG on the Gauss-Newton matrix, EK-FAC preconditioner, at most "
            f"{args.exact_maxiter} iterations (a time cap: see the notes); Pearson: ekfac "
            "with that CG answer at the same N."
            if exact_sizes
            else "Exact CG not run at these N (--exact-sizes): see the note below the table."
        )
        self.emit(f"Trained for 2 epochs on the first {n_fit:,} rows in {seconds:.0f} s "
                  f"(not counted), query accuracy {accuracy:.3f}. {exact_text}")  # fmt: skip
        self.emit()
        self.header("N", "notes")
        for n in sizes:
            exact = None
            if n in exact_sizes:
                options = {"preconditioner": "ekfac", "maxiter": args.exact_maxiter}
                exact = self.run("scale", weights, n, n_queries, "gauss_newton", "cg", options)
                notes = "; ".join(exact.get("warnings", [])) or "converged (tol 1e-3)"
                self.row("cg + EK-FAC preconditioner", exact, extra=[f"{n:,}", notes])
            result = self.run("scale", weights, n, n_queries, "ekfac", "auto", {})
            reference = None if exact is None else exact.get("matrix")
            label = "ekfac (factored inverse)"
            if reference is None and "error" not in result:
                result = {**result, "matrix": None}
                cells = [label, f"{result['seconds']:.2f}", f"{result['fit_seconds']:.2f}",
                         f"{result['peak_mib']:.0f}", "—", "—", f"{n:,}", ""]  # fmt: skip
                if args.device == "cuda":
                    cells.insert(4, f"{result.get('cuda_peak_mib', 0):.0f}")
                self.emit("| " + " | ".join(cells) + " |")
            else:
                self.row(label, result, reference, extra=[f"{n:,}", ""])
        self.emit()


PART_D = [
    ("ekfac (factored inverse)", "ekfac", "auto", {}, {}),
    ("kfac (factored inverse)", "kfac", "auto", {}, {}),
    ("near_exact", "gauss_newton", "near_exact", {}, {}),
    ("near_exact, EK-FAC start", "ekfac", "near_exact", {}, {}),
    ("near_exact, matrix-free products", "gauss_newton", "near_exact", {},
     {"jacobian_products": False}),
    ("cg (tol 1e-3, Nyström)", "gauss_newton", "cg", {}, {}),
    ("near_exact, curvature on M = 300 rows", "gauss_newton", "near_exact", {},
     {"n_samples": 300}),
    ("near_exact, curvature on M = 750 rows", "gauss_newton", "near_exact", {},
     {"n_samples": 750}),
    ("ekfac, factors on M = 300 rows", "ekfac", "auto", {}, {"n_samples": 300}),
    ("ekfac, factors on M = 750 rows", "ekfac", "auto", {}, {"n_samples": 750}),
]


def _top_overlap(matrix, reference, k=10):
    shared = [len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k
              for a, b in zip(matrix, reference, strict=True)]  # fmt: skip
    return float(np.mean(shared))


def _part_d(bench):
    """Near-exact and the self-check on the digits CNN (and the MLP): time ratios to EK-FAC."""
    args, emit = bench.args, bench.emit
    n_train, n_queries = (300, 20) if args.quick else (1500, 100)
    for task in args.tasks_d.split(","):
        weights = os.path.join(bench.folder, f"{task}_d.pt")
        seconds, accuracy, p = train(task, weights, args.device, 1500)
        emit(f"## d. near_exact and the self-check: {task} ({p:,} parameters), {n_train} digits, "
             f"{n_queries} queries, λ = {DAMPING:g}")  # fmt: skip
        emit()
        emit(f"Trained in {seconds:.0f} s (not counted), test accuracy {accuracy:.3f}. Pearson and "
             "top-10 overlap (most helpful points per query): with CG at tol 1e-6 (first row). "
             "CPU s: process CPU time of fit + transform (less sensitive to the machine's load "
             "than wall time); ratio: CPU time over EK-FAC's in this run.")  # fmt: skip
        emit()
        emit("| configuration | wall s | CPU s | ratio to ekfac (CPU) | peak RSS MiB | CG "
             "iterations | Pearson | top-10 | self-check (Pearson / top-10 / s) |")
        emit("|---|---|---|---|---|---|---|---|---|")
        reference = bench.run(task, weights, n_train, n_queries, "gauss_newton", "cg",
                              {"tol": 1e-6, "maxiter": 500})  # fmt: skip
        rows = [("cg (tol 1e-6)", reference)]
        base = None
        for label, curvature, solver, options, curvature_options in PART_D:
            check = curvature in ("kfac", "ekfac") and solver == "auto" and not curvature_options
            result = bench.run(task, weights, n_train, n_queries, curvature, solver, options,
                               curvature_options=curvature_options, self_check=check)  # fmt: skip
            if label.startswith("ekfac (") and "error" not in result:
                base = result["cpu_seconds"]
            rows.append((label, result))
        for label, result in rows:
            if "error" in result:
                emit(f"| {label} | failed: {result['error']} |" + " |" * 7)
                continue
            ratio = f"{result['cpu_seconds'] / base:.1f}×" if base else "—"
            same, truth = result is reference, reference.get("matrix")
            pearson = "1 (reference)" if same else f"{_pearson(result['matrix'], truth):.5f}"
            top = "1" if same else f"{_top_overlap(result['matrix'], truth):.2f}"
            check = result.get("self_check")
            check = "—" if not check else (f"{check['pearson']:.3f} / {check['top_k_overlap']:.2f}"
                                           f" / {check['seconds']:.2f} s "
                                           f"({check['n_queries']}×{check['n_train']}, "
                                           f"{check['n_rows']} rows)")  # fmt: skip
            iterations = result["iterations"] if result["iterations"] is not None else "—"
            emit(f"| {label} | {result['seconds']:.2f} | {result['cpu_seconds']:.2f} | {ratio} | "
                 f"{result['peak_mib']:.0f} | {iterations} | {pearson} | {top} | {check} |")
        emit()


def _part_e(bench):
    """The 1M-parameter MLP at small N: near_exact (all rows, or the curvature on M sampled
    rows) against tight CG on a few queries."""
    args, emit = bench.args, bench.emit
    n, few = int(args.sizes_e), 5
    weights = os.path.join(bench.folder, "scale_e.pt")
    seconds, accuracy, p = train("scale", weights, args.device, min(n, 5_000))
    emit(f"## e. near_exact at {p:,} parameters (MLP {SCALE_FEATURES}-"
         f"{'-'.join(map(str, SCALE_HIDDEN))}-10), N = {n:,}, 100 queries")  # fmt: skip
    emit()
    emit(f"Trained in {seconds:.0f} s (not counted), query accuracy {accuracy:.3f}. Reference: "
         f"CG at tol 1e-5 on the first {few} queries only (time not counted); Pearson and "
         f"top-10 overlap on those {few} rows. The stored Jacobians (N·10·p numbers) do not fit "
         "the working memory here: products are matrix-free.")  # fmt: skip
    emit()
    emit("| configuration | wall s | CPU s | ratio to ekfac (CPU) | peak RSS MiB | CG iterations "
         "| Pearson (5 queries) | top-10 |")
    emit("|---|---|---|---|---|---|---|---|")
    reference = bench.run("scale", weights, n, few, "gauss_newton", "cg",
                          {"tol": 1e-5, "maxiter": 300})  # fmt: skip
    configurations = [
        ("ekfac (factored inverse)", "ekfac", "auto", {}, {}),
        ("near_exact, EK-FAC start, curvature on M = 500 rows", "ekfac", "near_exact", {},
         {"n_samples": 500}),
        ("near_exact, curvature on all N rows", "gauss_newton", "near_exact", {}, {}),
    ]  # fmt: skip
    base = None
    for label, curvature, solver, options, curvature_options in configurations:
        result = bench.run("scale", weights, n, 100, curvature, solver, options,
                           curvature_options=curvature_options)  # fmt: skip
        if "error" in result:
            emit(f"| {label} | failed: {result['error']} |" + " |" * 6)
            continue
        base = result["cpu_seconds"] if base is None else base
        truth = reference.get("matrix")
        head = result["matrix"][:few]
        pearson = "—" if truth is None else f"{_pearson(head, truth):.5f}"
        top = "—" if truth is None else f"{_top_overlap(head, truth):.2f}"
        iterations = result["iterations"] if result["iterations"] is not None else "—"
        emit(f"| {label} | {result['seconds']:.1f} | {result['cpu_seconds']:.1f} | "
             f"{result['cpu_seconds'] / base:.1f}× | {result['peak_mib']:.0f} | {iterations} | "
             f"{pearson} | {top} |")  # fmt: skip
    emit()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parts", default="a,b,c,d", help="any of a, b, c, d")
    parser.add_argument("--tasks-d", default="lenet,mlp", help="networks of part d")
    parser.add_argument("--sizes-e", default="1000", help="N of part e (the 1M MLP)")
    parser.add_argument("--sizes", default="10000,20000,50000", help="N of part c")
    parser.add_argument("--exact-sizes", default="", help="N of part c with exact CG (capped)")
    parser.add_argument("--exact-maxiter", type=int, default=6)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (minutes); writes to a temp file by default")  # fmt: skip
    parser.add_argument("--output", default=None)
    parser.add_argument("--note", default="", help="a line about the machine's state")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(json.loads(args.child))
        return
    if args.quick:
        args.sizes = "1000,2000"
    if args.output is None:
        quick = Path(tempfile.gettempdir()) / "bench_scale_quick.md"
        args.output = str(quick if args.quick else RESULTS)
    import torch
    from _shared import environment

    torch.set_num_threads(args.threads)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("")

    def emit(line=""):
        # written as it comes, so that an interrupted run keeps the rows it finished
        print(line, flush=True)
        with output.open("a") as stream:
            stream.write(line + "\n")

    emit("# bench_scale: factored curvatures, CNN, Transformer and a 1M-parameter MLP")
    emit()
    for line in environment(args.threads):
        emit(line)
    emit(f"* date: {time.strftime('%Y-%m-%d %H:%M')} UTC; device {args.device}"
         + ("; --quick sizes" if args.quick else ""))  # fmt: skip
    emit("* wall: fit + transform in a fresh process (torch.func warmed up before); peak "
         "RSS: the whole process's maximum resident set (ru_maxrss), interpreter and data "
         "included")  # fmt: skip
    if args.note:
        emit(f"* {args.note}")
    emit()
    with tempfile.TemporaryDirectory() as folder:
        bench = Bench(args, folder, emit)
        for part in args.parts.split(","):
            if part.strip() in ("d", "e"):
                {"d": _part_d, "e": _part_e}[part.strip()](bench)
            else:
                getattr(bench, f"part_{part.strip()}")()
    load = os.getloadavg()[0]
    emit(f"Load average at the end: {load:.2f}.")


if __name__ == "__main__":
    main()
