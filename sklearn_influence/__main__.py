"""Command line: ``python -m sklearn_influence`` (or the ``sklearn-influence`` script).

The default subcommand, ``explain``, fits a model on scikit-learn's bundled digits, shows the
most helpful and most harmful training images for a few test images, and checks the
influence estimates against actual leave-one-out retraining.

The command line is built from two registries so that it grows without rewrites:

* ``_MODELS`` maps a ``--model`` choice to a function ``(args) -> unfitted estimator``;
  adding a model family is one function and one entry;
* ``_COMMANDS`` maps a subcommand to ``(help, add_arguments, check_arguments, run)``.

All output is plain ASCII so that it prints on any terminal.
"""

import argparse
import sys
import time

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from ._influence import InfluenceFunction
from ._response import measurement_changes
from ._targets import removal_parameters
from ._torch_utils import resolve_device
from .datasets import load_digits_split

# -- models ---------------------------------------------------------------------------------


def _logistic(args):
    """Multinomial logistic regression solved to a tight tolerance.

    Newton-Cholesky reaches a gradient norm near round-off in a few iterations, so the fitted
    weights are the optimum that influence functions assume.
    """
    return LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-10, max_iter=1000)


#: ``--model`` choices: name -> function building the unfitted estimator from the arguments
_MODELS = {"logistic": _logistic}


# -- argument types -------------------------------------------------------------------------


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {value}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


# -- rendering ------------------------------------------------------------------------------

#: grey levels from white (0) to black (1) for 8x8 digits
_SHADES = " .:-=+*#%@"


def _ascii_image(image):
    """Rows of characters for an image with values in [0, 1]."""
    levels = np.clip(np.rint(np.asarray(image) * (len(_SHADES) - 1)), 0, len(_SHADES) - 1)
    return ["".join(_SHADES[int(v)] for v in row) for row in levels]


def _print_image_row(panels, width=11, file=None):
    """Print images side by side; each panel is (title lines, image)."""
    n_titles = max(len(titles) for titles, _ in panels)
    for line in range(n_titles):
        print(
            "".join(
                f"{(titles + [''] * n_titles)[line]:<{width}}" for titles, _ in panels
            ).rstrip(),
            file=file,
        )
    rendered = [_ascii_image(image) for _, image in panels]
    for row in range(len(rendered[0])):
        print("".join(f"{lines[row]:<{width}}" for lines in rendered).rstrip(), file=file)


# -- explain --------------------------------------------------------------------------------


def _add_explain_arguments(parser):
    parser.add_argument(
        "--model", choices=sorted(_MODELS), default="logistic", help="model to explain"
    )
    parser.add_argument(
        "--n-queries", type=_positive_int, default=3, help="test images to explain (default 3)"
    )
    parser.add_argument(
        "--k",
        type=_positive_int,
        default=3,
        help="helpful and harmful training images shown per test image (default 3)",
    )
    parser.add_argument(
        "--damping",
        type=_non_negative_float,
        default=1e-4,
        help="damping lambda added to the curvature (default 1e-4)",
    )
    parser.add_argument(
        "--n-removed",
        type=_non_negative_int,
        default=40,
        help="training images removed one at a time and actually refit to check the "
        "estimates; 0 skips the check (default 40)",
    )
    parser.add_argument(
        "--n-train",
        type=_positive_int,
        default=1500,
        help="training images drawn from the 1797 digits; the rest are test images (default 1500)",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device for the math: cpu, cuda or auto (default cpu)"
    )
    parser.add_argument(
        "--no-images", action="store_true", help="do not draw the 8x8 images as ASCII art"
    )
    parser.add_argument(
        "--n-threads",
        type=_positive_int,
        default=1,
        help="threads for torch and BLAS (default 1: the matrices here are small, and more "
        "threads than free cores make BLAS and OpenMP spin against each other)",
    )
    parser.add_argument(
        "--random-state",
        type=_non_negative_int,
        default=0,
        help="seed of the train/test split and of the removed images (default 0)",
    )


#: number of images in scikit-learn's digits
_N_DIGITS = 1797


def _check_explain_arguments(parser, args):
    n_total = _N_DIGITS
    if args.n_train > n_total - 1:
        parser.error(f"--n-train must be at most {n_total - 1} (digits has {n_total} images)")
    n_test = n_total - args.n_train
    if args.n_queries > n_test:
        parser.error(
            f"--n-queries {args.n_queries} is more than the {n_test} test images; "
            "lower it or lower --n-train"
        )
    if args.k > args.n_train:
        parser.error(f"--k {args.k} is more than the {args.n_train} training images; lower it")
    if args.n_removed > args.n_train:
        parser.error(
            f"--n-removed {args.n_removed} is more than the {args.n_train} training images; "
            "lower it"
        )
    if args.n_removed == 1:
        parser.error("--n-removed must be 0 (skip the check) or at least 2 to correlate")
    try:
        resolve_device(args.device)
    except (ValueError, RuntimeError) as error:
        parser.error(f"--device {args.device!r}: {error}")


def _explain_queries(args, data, influence, out):
    queries = np.arange(args.n_queries)
    X_query, y_query = data.X_test[queries], data.y_test[queries]
    top = influence.most_influential(X_query, y_query, k=args.k)
    predicted = influence.estimator_.predict(X_query)
    for row, query in enumerate(queries):
        print(
            f"\nTest image {query}: label {y_query[row]}, predicted {predicted[row]}",
            file=out,
        )
        print(f"  {'':9}{'index':>6} {'label':>6} {'influence':>11}", file=out)
        for kind, indices, values in (
            ("helpful", top.helpful_indices[row], top.helpful_values[row]),
            ("harmful", top.harmful_indices[row], top.harmful_values[row]),
        ):
            for rank, (index, value) in enumerate(zip(indices, values, strict=True)):
                label = kind if rank == 0 else ""
                print(f"  {label:9}{index:>6} {data.y_train[index]:>6} {value:>+11.3e}", file=out)
        if not args.no_images:
            _print_images(data, query, top, row, out)


def _print_images(data, query, top, row, out):
    panels = [([f"test {query}", f"label {data.y_test[query]}"], data.images_test[query])]
    for sign, indices in (("+", top.helpful_indices[row]), ("-", top.harmful_indices[row])):
        panels += [
            ([f"{sign}#{index}", f"label {data.y_train[index]}"], data.images_train[index])
            for index in indices
        ]
    per_row = 7
    for start in range(0, len(panels), per_row):
        print(file=out)
        _print_image_row(panels[start : start + per_row], file=out)


def _check_against_retraining(args, data, influence, matrix, out):
    rng = np.random.RandomState(args.random_state)
    removed = np.sort(rng.choice(len(data.y_train), size=args.n_removed, replace=False))
    start = time.perf_counter()
    # the fitted adapter knows how its model was trained (a network's initial weights, ...)
    adapter = influence._engine.adapter
    # linear models: exact leave-one-out optima by Newton's method; other families: refits
    reference, thetas = removal_parameters(
        adapter, adapter.parameters(), data.X_train, data.y_train, removed, kind="loo"
    )
    changes = measurement_changes(
        adapter, reference, thetas, adapter.inputs(data.X_test), adapter.targets(data.y_test)
    )
    actual = changes.mean(0).detach().cpu().numpy()
    elapsed = time.perf_counter() - start
    predicted = matrix[:, removed].mean(0)
    print(
        f"\nAgreement with actual leave-one-out retraining ({len(removed)} training images "
        f"removed one at a time and refit, {elapsed:.1f} s).\nMeasurement: mean test loss over "
        f"{len(data.y_test)} test images; predicted = mean influence over the test images.",
        file=out,
    )
    if np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        print("  The changes are constant; their correlation is undefined.", file=out)
        return
    slope = np.polyfit(predicted, actual, 1)[0]
    print(
        f"  Pearson {pearsonr(predicted, actual)[0]:.4f}   "
        f"Spearman {spearmanr(predicted, actual)[0]:.4f}   "
        f"slope of actual on predicted {slope:.3f}",
        file=out,
    )
    print(f"  {'index':>6} {'label':>6} {'predicted':>11} {'actual':>11}", file=out)
    shown = np.argsort(-np.abs(predicted), kind="stable")[:5]
    for position in shown:
        index = removed[position]
        print(
            f"  {index:>6} {data.y_train[index]:>6} {predicted[position]:>+11.3e} "
            f"{actual[position]:>+11.3e}",
            file=out,
        )
    print("  (the 5 removed images with the largest predicted effect)", file=out)


def _run_explain(args, out):
    data = load_digits_split(n_train=args.n_train, random_state=args.random_state)
    estimator = _MODELS[args.model](args)
    influence = InfluenceFunction(
        estimator, damping=args.damping, device=args.device, random_state=args.random_state
    )
    start = time.perf_counter()
    influence.fit(data.X_train, data.y_train)
    matrix = influence.transform(data.X_test, data.y_test)
    elapsed = time.perf_counter() - start
    accuracy = influence.estimator_.score(data.X_test, data.y_test)
    print(
        f"sklearn-influence explain: {type(estimator).__name__} on scikit-learn's digits "
        f"({len(data.y_train)} training / {len(data.y_test)} test images of 8x8 pixels)\n"
        f"Fit model + influence matrix ({matrix.shape[0]} x {matrix.shape[1]}) in "
        f"{elapsed:.1f} s; test accuracy {accuracy:.3f}; damping {args.damping:g}.\n"
        "influence[q, m] = (1/N) grad f_q^T (C + damping I)^-1 grad L_m: the predicted rise "
        "of test image q's loss when training image m is removed.\n"
        "Positive: m helps q (removing it hurts). Negative: m harms q.",
        file=out,
    )
    _explain_queries(args, data, influence, out)
    if args.n_removed:
        _check_against_retraining(args, data, influence, matrix, out)
    return 0


#: subcommand -> (help, add_arguments, check_arguments, run); ``decompose`` and ``mislabeled``
#: are planned (issue 5) and will be added here
_COMMANDS = {
    "explain": (
        "most helpful and harmful training images for test images, checked against "
        "leave-one-out retraining (the default)",
        _add_explain_arguments,
        _check_explain_arguments,
        _run_explain,
    ),
}

_DEFAULT_COMMAND = "explain"


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="sklearn-influence",
        description="Influence functions for scikit-learn models, on scikit-learn's bundled "
        f"digits. Without a subcommand, runs '{_DEFAULT_COMMAND}'.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, _, _) in _COMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser, subparsers


def main(argv=None, *, out=None):
    """Run the command line and return its exit status.

    Parameters
    ----------
    argv : list of str, default=None
        Arguments without the program name; None reads ``sys.argv[1:]``. Without a
        subcommand, ``explain`` runs.
    out : file-like, default=None
        Where to print; None is ``sys.stdout``.

    Returns
    -------
    status : int
        0 on success. Bad arguments exit through :class:`SystemExit` with status 2 and a
        message on stderr, as :mod:`argparse` does.

    Examples
    --------
    >>> from sklearn_influence.__main__ import main
    >>> main(["explain", "--n-train", "300", "--n-queries", "1", "--k", "1",
    ...       "--n-removed", "0", "--no-images"])  # doctest: +ELLIPSIS
    sklearn-influence explain: LogisticRegression on scikit-learn's digits (300 training ...
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # options without a subcommand belong to the default one; a word that is not a known
    # subcommand is left for argparse to reject with the list of choices
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, _DEFAULT_COMMAND)
    parser, subparsers = _build_parser()
    args = parser.parse_args(argv)
    _, _, check_arguments, run = _COMMANDS[args.command]
    check_arguments(subparsers.choices[args.command], args)
    out = sys.stdout if out is None else out
    n_threads = getattr(args, "n_threads", None)
    if n_threads is None:
        return run(args, out)
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(n_threads)
        with threadpool_limits(limits=n_threads):
            return run(args, out)
    finally:
        torch.set_num_threads(torch_threads)


if __name__ == "__main__":
    sys.exit(main())
