"""Reproduce, at small scale, the trends of Bae et al. (2022) on digits with a skorch MLP.

For each setting an :class:`~sklearn_influence.InfluenceDecomposition` computes cold- and
warm-start leave-one-out retraining, the PRF, the PBRF, the linearized PBRF and the influence
estimate (conjugate gradient, the practical solver) for the same removed training points,
and reports the five terms of the gap between influence and leave-one-out:

* (a) the mean distance ‖h(θ_a, x) − h(θ_b, x)‖ of the two objects' logits over the training
  inputs (small = small gap), and
* (b) Spearman's correlation, across the removed points, of their changes of the test loss,
  averaged over test points (1 = full agreement).

Three sweeps around a base setting (MLP 64-32-10, tanh, SGD with momentum, weight decay
1e-3, 30 epochs, damping 1e-3): training epochs, damping λ and hidden width. The paper's
findings tested here: influence correlates well with the PBRF and often poorly with cold
LOO; the warm-start, proximity and non-convergence gaps dominate; longer training shrinks
the non-convergence gap; larger λ grows the proximity gap and shrinks the linearization and
solver errors; wider networks have smaller linearization error.

Run ``python benchmarks/paper_trends.py`` (``--quick`` for a smoke run). It prints a table,
writes ``benchmarks/results/paper_trends.md`` and a figure ``paper_trends.png`` next to it
(matplotlib needed for the figure). ``--quick`` writes to a temporary folder instead and
refuses to overwrite the committed results. ``paper_table2.py`` runs the same sweeps on
LeNet through :class:`TrendSpec`.
"""

import argparse
import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _shared import environment, sgd_tanh_net
from threadpoolctl import threadpool_limits

from sklearn_influence import InfluenceDecomposition
from sklearn_influence._decomposition import TERMS
from sklearn_influence.datasets import load_digits_split

RESULTS = Path(__file__).resolve().parent / "results"
BASE = {"epochs": 30, "damping": 1e-3, "hidden": 32}
SWEEPS = {
    "epochs": [5, 15, 30, 90],
    "damping": [1e-4, 1e-3, 1e-2, 1e-1],
    "hidden": [8, 16, 32, 64],
}
QUICK_SWEEPS = {"epochs": [3, 10], "damping": [1e-3, 1e-1], "hidden": [8, 16]}


def make_net(hidden, epochs):
    return sgd_tanh_net(hidden=hidden, epochs=epochs, lr=0.05)


@dataclass
class TrendSpec:
    """A network family's trend sweeps: ``make_net(hidden, epochs)``, base setting, sweeps."""

    name: str
    make_net: object
    base: dict
    sweeps: dict
    quick_sweeps: dict


MLP_TRENDS = TrendSpec("MLP", make_net, BASE, SWEEPS, QUICK_SWEEPS)


def resolve_output(quick, output, committed):
    """Where results go: ``committed`` by default; a temporary folder with ``--quick``.

    A quick run never writes the committed results (asking for them raises SystemExit).
    """
    if not quick:
        return committed if output is None else output
    if output is None:
        return (
            Path(tempfile.gettempdir())
            / "sklearn_influence_benchmarks"
            / (committed.stem + "_quick.md")
        )
    if Path(output).resolve().parent == committed.resolve().parent:
        raise SystemExit(
            f"--quick results are a smoke run: refusing to write them to {output}, next to the "
            "committed results. Drop --output (a temporary folder is used) or choose another "
            "folder."
        )
    return Path(output)


def run_setting(data, setting, args, spec=MLP_TRENDS):
    """Fit one decomposition; return a flat dict of its results."""
    net = spec.make_net(setting["hidden"], setting["epochs"])
    start = time.perf_counter()
    with warnings.catch_warnings():
        # CG reaching its iteration limit is part of the solver error being measured
        warnings.simplefilter("ignore", UserWarning)
        parts = InfluenceDecomposition(
            net,
            damping=setting["damping"],
            solver=args.solver,
            n_points=args.n_points,
            n_iter=args.n_iter,
            random_state=0,
            n_jobs=args.n_jobs,
            memory=getattr(args, "memory", None),
        ).fit(data.X_train, data.y_train)
        table = parts.decompose(data.X_test, data.y_test)
        agreement = parts.agreement(data.X_test, data.y_test)
    row = dict(setting)
    row["accuracy"] = float((parts.estimator_.predict(data.X_test) == data.y_test).mean())
    for term, _, _ in TERMS:
        row[f"{term}:distance"] = float(table.loc[term, "output_distance"])
        row[f"{term}:spearman"] = float(table.loc[term, "spearman"])
    for name in ("cold_loo", "warm_loo", "pbrf"):
        row[f"influence~{name}:spearman"] = float(agreement.loc[name, "spearman"])
    row["pbrf_converged"] = float(np.mean(parts.converged_["pbrf"]))
    row["prf_converged"] = float(np.mean(parts.converged_["prf"]))
    row["seconds"] = time.perf_counter() - start
    return row


def settings(sweeps, base=BASE):
    """Every distinct setting of the three sweeps (the base setting once)."""
    seen, result = set(), []
    for name, values in sweeps.items():
        for value in values:
            setting = {**base, name: value}
            key = tuple(sorted(setting.items()))
            if key not in seen:
                seen.add(key)
                result.append(setting)
    return result


SHORT = {
    "warm_start_gap": "warm-start",
    "proximity_gap": "proximity",
    "non_convergence_gap": "non-conv.",
    "linearization_error": "lineariz.",
    "solver_error": "solver",
}


def markdown(rows, sweeps, spec=MLP_TRENDS):
    lines = []
    for name, values in sweeps.items():
        lines += [f"### vs {name}", ""]
        header = [name, "test acc"] + [f"{SHORT[t]} dist" for t, _, _ in TERMS]
        header += [f"{SHORT[t]} ρ" for t, _, _ in TERMS]
        header += ["ρ(IF, PBRF)", "ρ(IF, cold LOO)", "ρ(IF, warm LOO)", "conv. PRF/PBRF", "s"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
        for value in values:
            row = next(r for r in rows if r[name] == value and _matches_base(r, name, spec))
            cells = [f"{value:g}", f"{row['accuracy']:.3f}"]
            cells += [f"{row[f'{t}:distance']:.2e}" for t, _, _ in TERMS]
            cells += [f"{row[f'{t}:spearman']:.2f}" for t, _, _ in TERMS]
            cells += [f"{row[f'influence~{n}:spearman']:.2f}" for n in ("pbrf", "cold_loo")]
            cells += [f"{row['influence~warm_loo:spearman']:.2f}", _converged(row)]
            cells.append(f"{row['seconds']:.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _converged(row):
    prf = row.get("prf_converged")
    return f"{'n/a' if prf is None else f'{prf:.0%}'}/{row['pbrf_converged']:.0%}"


def _matches_base(row, varied, spec=MLP_TRENDS):
    return all(row[key] == value for key, value in spec.base.items() if key != varied)


def _sweep(rows, name, values, spec=MLP_TRENDS):
    return [next(r for r in rows if r[name] == v and _matches_base(r, name, spec)) for v in values]


def _trend(values, increasing):
    """'up', 'down' or 'mixed' from first to last value, and whether every step agrees."""
    steps = np.diff(values)
    monotone = bool(np.all(steps > 0) if increasing else np.all(steps < 0))
    overall = (values[-1] > values[0]) if increasing else (values[-1] < values[0])
    return overall, monotone


def trend_checks(rows, sweeps, spec=MLP_TRENDS):
    """The paper's findings as checks on the measured numbers (matched or not)."""
    lines = []

    def report(claim, matched, detail):
        lines.append(f"* {'MATCHED' if matched else 'NOT MATCHED'}: {claim} — {detail}")

    better = [r["influence~pbrf:spearman"] > r["influence~cold_loo:spearman"] for r in rows]
    report(
        "influence agrees better with the PBRF than with cold-start LOO",
        all(better),
        f"ρ(IF, PBRF) > ρ(IF, cold LOO) in {sum(better)} of {len(rows)} settings; base: "
        f"{_base(rows, spec)['influence~pbrf:spearman']:.2f} vs "
        f"{_base(rows, spec)['influence~cold_loo:spearman']:.2f}",
    )
    first, last = [t for t, _, _ in TERMS[:3]], [t for t, _, _ in TERMS[3:]]
    dominate = [
        min(r[f"{t}:distance"] for t in first) > max(r[f"{t}:distance"] for t in last) for r in rows
    ]
    largest = [
        max(r[f"{t}:distance"] for t in first) > max(r[f"{t}:distance"] for t in last) for r in rows
    ]
    report(
        "the warm-start, proximity and non-convergence gaps dominate",
        all(largest),
        f"the largest of the first three exceeds both later terms in {sum(largest)} of "
        f"{len(rows)} settings; all three exceed them in {sum(dominate)}",
    )
    for name, term, increasing, claim in [
        ("epochs", "non_convergence_gap", False, "longer training shrinks the non-convergence gap"),
        ("damping", "proximity_gap", True, "larger damping grows the proximity gap"),
        ("damping", "linearization_error", False, "larger damping shrinks linearization error"),
        ("damping", "solver_error", False, "larger damping shrinks the solver error"),
        ("hidden", "linearization_error", False, "wider networks have smaller linearization error"),
    ]:
        if name not in sweeps:
            continue
        values = [r[f"{term}:distance"] for r in _sweep(rows, name, sweeps[name], spec)]
        overall, monotone = _trend(values, increasing)
        report(
            claim,
            overall,
            f"{term} distance {' → '.join(f'{v:.2e}' for v in values)} over {name} "
            f"{sweeps[name]} ({'monotone' if monotone else 'not monotone'})",
        )
    return lines


def _base(rows, spec=MLP_TRENDS):
    return next(r for r in rows if all(r[key] == value for key, value in spec.base.items()))


def figure(rows, sweeps, path, spec=MLP_TRENDS):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure.")
        return None
    fig, axes = plt.subplots(2, len(sweeps), figsize=(4.2 * len(sweeps), 6.5), sharey="row")
    for column, (name, values) in enumerate(sweeps.items()):
        chosen = _sweep(rows, name, values, spec)
        for term, _, _ in TERMS:
            axes[0, column].plot(
                values, [r[f"{term}:distance"] for r in chosen], "o-", label=SHORT[term]
            )
        for other in ("pbrf", "cold_loo", "warm_loo"):
            axes[1, column].plot(
                values, [r[f"influence~{other}:spearman"] for r in chosen], "s-",
                label=f"influence vs {other.replace('_', ' ')}",
            )  # fmt: skip
        axes[0, column].set_yscale("log")
        for row in (0, 1):
            axes[row, column].set_xscale("log")
            axes[row, column].minorticks_off()
            axes[row, column].set_xticks(values, [f"{value:g}" for value in values])
            axes[row, column].set_xlabel(name)
    axes[0, 0].set_ylabel("mean ‖Δ logits‖ on training inputs")
    axes[1, 0].set_ylabel("Spearman ρ of test-loss changes")
    axes[0, -1].legend(fontsize=8)
    axes[1, -1].legend(fontsize=8)
    fig.suptitle(f"Five terms of the influence-vs-LOO gap (digits, skorch {spec.name})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compute_trends(data, spec, sweeps, args):
    """Every setting of ``sweeps`` for ``spec``: ``{"sweeps": ..., "rows": [...]}``."""
    rows = []
    for setting in settings(sweeps, spec.base):
        rows.append(run_setting(data, setting, args, spec))
        print(f"done {spec.name} {setting} in {rows[-1]['seconds']:.0f} s", flush=True)
    return {"sweeps": sweeps, "rows": rows}


#: names paper_table2.py uses
trend_markdown, trend_figure = markdown, figure


def compute(args, sweeps):
    data = load_digits_split(n_train=args.n_train, n_test=args.n_test, random_state=0)
    data.X_train = data.X_train.astype(np.float32)
    data.X_test = data.X_test.astype(np.float32)
    with threadpool_limits(limits=args.threads):
        return compute_trends(data, MLP_TRENDS, sweeps, args)["rows"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=50)
    parser.add_argument("--n-points", type=int, default=30, help="removed training points")
    parser.add_argument("--n-iter", type=int, default=1000, help="PRF/PBRF optimizer steps")
    parser.add_argument("--solver", default="cg", help="solver of the influence estimate")
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="pin torch and BLAS")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file (default: the committed results; with --quick a temporary folder)",
    )
    parser.add_argument(
        "--from-json", type=Path, default=None, help="re-render saved rows, computing nothing"
    )
    args = parser.parse_args(argv)
    args.output = resolve_output(args.quick, args.output, RESULTS / "paper_trends.md")
    sweeps = QUICK_SWEEPS if args.quick else SWEEPS
    if args.quick:
        args.n_train, args.n_points, args.n_test = 200, 10, 20
    if args.threads:
        torch.set_num_threads(args.threads)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        rows, machine = saved["rows"], saved["environment"]
    else:
        machine = environment(args.threads)
        rows = compute(args, sweeps)
        saved = {"environment": machine, "rows": rows}
        args.output.with_suffix(".json").write_text(json.dumps(saved, indent=1))
    figure_path = figure(rows, sweeps, args.output.with_suffix(".png"))
    text = "\n".join(
        [
            "# paper_trends",
            "",
            f"Digits: {args.n_train} training and {args.n_test} test images; skorch MLP "
            "64-h-10 (tanh), SGD lr 0.05 momentum 0.9, weight decay 1e-3, batch 64, float32; "
            f"{args.n_points} removed training points; influence estimate with "
            f"solver={args.solver!r} (Gauss-Newton); PRF/PBRF: {args.n_iter} full-batch SGD "
            "steps at most (auto step and momentum, tol 1e-4), in float64. Base setting: "
            f"{BASE}. 'dist' = mean ‖h(θ_a, x) − h(θ_b, x)‖ over training inputs and removed "
            "points; 'ρ' = Spearman correlation of the test-loss changes across removed "
            "points, averaged over test points.",
            "",
            *machine,
            "",
            *markdown(rows, sweeps),
            "## The paper's findings",
            "",
            *trend_checks(rows, sweeps),
            "",
            f"Figure: `{figure_path.name}` (not committed)." if figure_path else "",
            "",
        ]
    )
    print(text)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
