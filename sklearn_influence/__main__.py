"""Command line: ``python -m sklearn_influence`` (or the ``sklearn-influence`` script).

Subcommands, each on scikit-learn's bundled digits by default or on a user CSV file
(``--csv PATH --target COLUMN``):

* ``explain`` (the default) fits a model, shows the most helpful and most harmful training
  examples for a few test examples, checks the influence estimates against actual
  leave-one-out retraining and the PBRF, says what the agreement figures mean, and writes a
  report (``--report``: HTML or a figure, by default into a new temporary folder);
* ``decompose`` prints the five-term decomposition of the gap between influence estimates and
  leave-one-out retraining (:class:`~sklearn_influence.InfluenceDecomposition`) and saves its
  bar plot (by default into a new temporary folder: never over a file of the working
  directory);
* ``mislabeled`` flips a fraction of the training labels, ranks the training points with
  :class:`~sklearn_influence.MislabelDetector`, prints the suspects and the recall against
  the loss baseline and random inspection, and can save the recall curves.

Examples of a CSV file are named by their 0-based data row (the header not counted) or by an
``--id`` column; a continuous target is detected (``--task``) and explained by ridge
regression, or refused in one line naming the option to change.

Progress of long steps goes to stderr (``--quiet`` turns it off); results go to stdout.

The command line is built from two registries so that it grows without rewrites:

* ``_MODELS`` maps a ``--model`` choice to a function ``(args) -> unfitted estimator``;
  adding a model family is one function and one entry;
* ``_COMMANDS`` maps a subcommand to ``(help, add_arguments, check_arguments, run)``.

All output is plain ASCII so that it prints on any terminal.
"""

import argparse
import os
import sys
import tempfile
import textwrap
import time
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits

from sklearn_influence import (
    InfluenceDecomposition,
    InfluenceDecompositionDisplay,
    InfluenceFunction,
    MislabelDetector,
)
from sklearn_influence.exceptions import UndefinedCorrelationWarning
from sklearn_influence.metrics import (
    MislabelRecallDisplay,
    mislabel_detection_auc,
    mislabel_detection_recall,
)

from ._cli_data import _MAX_CLASSES, DataError, load_data
from ._cli_output import (
    REPORT_TYPES,
    Progress,
    class_label,
    example_name,
    figure_skipped,
    new_axes,
    print_images,
    table_rows,
    write_report,
)

# -- models ---------------------------------------------------------------------------------


def _logistic(args):
    """Multinomial logistic regression solved to a tight tolerance.

    Newton-Cholesky reaches a gradient norm near round-off in a few iterations, so the fitted
    weights are the optimum that influence functions assume.
    """
    return LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-10, max_iter=1000)


def _mlp(args):
    """A small skorch MLP (:class:`~sklearn_influence.datasets.TanhMLP`, 32 tanh units) trained
    with full-batch Adam and weight decay (L2 in the objective).

    ``args.n_features`` and ``args.n_classes`` are set from the data before this is called.
    """
    from skorch import NeuralNetClassifier

    from sklearn_influence.datasets import TanhMLP

    return NeuralNetClassifier(
        TanhMLP,
        module__in_features=args.n_features,
        module__out_features=args.n_classes,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        optimizer__weight_decay=1e-3,
        lr=1e-2,
        max_epochs=300,
        batch_size=-1,
        train_split=None,
        verbose=0,
    )


def _ridge(args):
    """Ridge regression (squared loss, alpha=1): the model of a continuous target."""
    return Ridge(alpha=1.0)


#: ``--model`` choices: name -> function building the unfitted estimator from the arguments
_MODELS = {"logistic": _logistic, "mlp": _mlp, "ridge": _ridge}

#: the models of a continuous target; every other one needs class labels
_REGRESSORS = ("ridge",)


# -- argument types -------------------------------------------------------------------------


def _checked_number(convert, noun, accept, requirement):
    """An argparse type: ``convert(text)``, refused with a clear message unless ``accept``."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


_positive_int = _checked_number(
    int, "a positive integer", lambda value: value >= 1, "a positive integer (1 or more)"
)
_non_negative_int = _checked_number(
    int, "a non-negative integer", lambda value: value >= 0, "0 or more"
)
_non_negative_float = _checked_number(
    float, "a number", lambda value: np.isfinite(value) and value >= 0, "a finite number >= 0"
)


def _prepare(parser, args, default_n_train, **load_options):
    """Shared checks of every subcommand; loads the data into ``args.data``."""
    if args.csv is None and args.target is not None:
        parser.error("--target names a column of --csv; give --csv PATH too")
    if args.csv is not None and args.target is None:
        parser.error("--csv needs --target COLUMN, the column that holds the labels")
    if args.csv is None and (args.id is not None or args.image_shape is not None):
        parser.error("--id and --image-shape describe columns of --csv; give --csv PATH too")
    _check_device(parser, args.device)
    try:
        args.data = load_data(args, default_n_train, **load_options)
    except DataError as error:
        parser.error(str(error))
    _choose_model(parser, args)
    args.n_features = args.data.X_train.shape[1]
    if args.data.task == "regression":
        return
    args.n_classes = int(max(args.data.y_train.max(), args.data.y_test.max(initial=0))) + 1
    if args.model == "mlp":  # torch modules take float32 inputs and int64 labels
        for name in ("X_train", "X_test"):
            args.data[name] = args.data[name].astype(np.float32)
        for name in ("y_train", "y_test"):
            args.data[name] = args.data[name].astype(np.int64)


def _choose_model(parser, args):
    """``--model auto``: logistic for class labels, ridge for a continuous target.

    A model that cannot take the target is refused in one line naming the option to change.
    """
    regression = args.data.task == "regression"
    if args.model == "auto":
        args.model = "ridge" if regression else "logistic"
    if regression and args.model not in _REGRESSORS:
        why = f" ({args.target_kind})" if args.target_kind else ""
        parser.error(
            f"--target {args.target!r} is continuous{why}; --model {args.model} needs class "
            "labels: use --model ridge (or --task classification to treat each value as a class)"
        )
    if not regression and args.model in _REGRESSORS:
        parser.error(
            f"--model {args.model} is for a continuous target, but {args.data.source} has class "
            "labels: use --model logistic or mlp (or --task regression for a numeric target)"
        )


def _check_device(parser, device):
    """Refuse a device that torch cannot use here, by the estimators' own check.

    The check is :class:`InfluenceFunction`'s: a fit on two points, which costs milliseconds.
    """
    probe = InfluenceFunction(LogisticRegression(), device=device, random_state=0)
    try:
        probe.fit(np.array([[0.0], [1.0]]), np.array([0, 1]))
    except (ValueError, RuntimeError) as error:
        parser.error(f"--device {device!r}: {error}")


def _add_common_arguments(parser, *, n_train, damping):
    parser.add_argument(
        "--model",
        choices=["auto", *sorted(_MODELS)],
        default="auto",
        help="logistic: multinomial logistic regression; mlp: a one-hidden-layer skorch "
        "network; ridge: ridge regression, for a continuous target; auto: logistic for class "
        "labels, ridge for a continuous target (default auto)",
    )
    parser.add_argument(
        "--csv",
        metavar="PATH",
        help="a CSV file with a header row, numeric feature columns and a label column, "
        "instead of scikit-learn's bundled digits",
    )
    parser.add_argument("--target", metavar="COLUMN", help="the label column of --csv")
    parser.add_argument(
        "--id",
        metavar="COLUMN",
        help="a column of --csv that names the rows (not a feature): examples are shown by "
        "it instead of their 0-based data row (the header not counted)",
    )
    parser.add_argument(
        "--task",
        choices=("auto", "classification", "regression"),
        default="auto",
        help="what --target holds: class labels or a continuous value; auto detects it (a "
        f"numeric column with values that are not whole numbers, or more than {_MAX_CLASSES} "
        "distinct values, is continuous) (default auto)",
    )
    parser.add_argument(
        "--image-shape",
        metavar="HxW",
        help="the feature columns of --csv are the pixels of an image of this shape (for "
        "example 8x8): reports show the images",
    )
    parser.add_argument(
        "--n-train",
        type=_positive_int,
        default=None,
        help=f"training rows; the rest are test rows (default {n_train} of the 1797 digits, "
        "or 75%% of the rows of --csv)",
    )
    parser.add_argument(
        "--damping",
        type=_non_negative_float,
        default=damping,
        help=f"damping lambda added to the curvature (default {damping:g})",
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device for the math: cpu, cuda or auto (default cpu)"
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
        help="seed of the split and of every random choice (default 0)",
    )
    parser.add_argument(
        "--memory",
        metavar="DIR",
        default=None,
        help="folder where the long steps (fits, retraining checks, PBRF and refits of removed "
        "examples) save their finished parts as they go: run the same command again after an "
        "interruption and it resumes where it stopped, with the same result (default: none)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")


def _build_estimator(args):
    estimator = _MODELS[args.model](args)
    return estimator


# -- explain --------------------------------------------------------------------------------


def _add_explain_arguments(parser):
    _add_common_arguments(parser, n_train=1500, damping=1e-4)
    parser.add_argument(
        "--n-queries", type=_positive_int, default=3, help="test examples to explain (default 3)"
    )
    parser.add_argument(
        "--k",
        type=_positive_int,
        default=3,
        help="helpful and harmful training examples shown per test example (default 3)",
    )
    parser.add_argument(
        "--n-removed",
        type=_non_negative_int,
        default=40,
        help="training examples removed one at a time to check the estimates against what "
        "--check says; 0 skips the check (default 40)",
    )
    parser.add_argument(
        "--check",
        choices=("loo", "pbrf"),
        default="loo",
        help="what the estimates are checked against: loo refits the model without each "
        "removed example (exact Newton for logistic; a network is retrained from its initial "
        "weights, minutes for --model mlp); pbrf is the proximal Bregman response function at "
        "the same damping, what influence estimates approximate for networks, one batched "
        "optimisation (default loo)",
    )
    parser.add_argument(
        "--pbrf-points",
        type=_non_negative_int,
        default=10,
        help="with --check loo, also check the estimates against the PBRF on this many of "
        "the removed examples, what influence estimates approximate by design; 0 skips it "
        "(default 10)",
    )
    parser.add_argument(
        "--no-images", action="store_true", help="do not draw the 8x8 images as ASCII art"
    )
    parser.add_argument(
        "--report",
        metavar="PATH",
        default=None,
        help="write the most helpful and harmful training examples of each test example "
        "(images for image data, tables of the rows) to PATH: .html (a page with a figure and "
        "a table per test example) or .png, .pdf, .svg (one figure); default: explain.html "
        "in a new temporary folder, printed at the end (needs matplotlib)",
    )
    parser.add_argument("--no-report", action="store_true", help="write no report")


def _check_explain_arguments(parser, args):
    _check_output(parser, args.report, option="--report", types=REPORT_TYPES)
    if args.report is not None and args.no_report:
        parser.error("--report PATH and --no-report contradict each other; give one")
    _prepare(parser, args, 1500)
    n_train, n_test = len(args.data.y_train), len(args.data.y_test)
    if args.n_queries > n_test:
        parser.error(
            f"--n-queries {args.n_queries} is more than the {n_test} test {args.data.unit}; "
            "lower it or lower --n-train"
        )
    if args.k > n_train:
        parser.error(f"--k {args.k} is more than the {n_train} training {args.data.unit}; lower it")
    if args.n_removed > n_train:
        parser.error(
            f"--n-removed {args.n_removed} is more than the {n_train} training "
            f"{args.data.unit}; lower it"
        )
    if args.n_removed == 1:
        parser.error("--n-removed must be 0 (skip the check) or at least 2 to correlate")


def _explain_queries(args, data, influence, out):
    """Print each query's most helpful and harmful training examples; return what the
    report needs: (queries, top, predictions)."""
    queries = np.arange(args.n_queries)
    X_query, y_query = data.X_test[queries], data.y_test[queries]
    top = influence.most_influential(X_query, y_query, k=args.k)
    predicted = np.asarray(influence.estimator_.predict(X_query))
    if data.task == "classification":
        predicted = predicted.astype(int)
    unit, header = data.unit[:-1], data.name_header
    for row, query in enumerate(queries):
        print(
            f"\nTest {unit} {example_name(data, 'test', query)}: label "
            f"{class_label(data, y_query[row])}, predicted {class_label(data, predicted[row])}",
            file=out,
        )
        print(f"  {'':9}{header:>6} {'label':>6} {'influence':>11}", file=out)
        for kind, indices, values in (
            ("helpful", top.helpful_indices[row], top.helpful_values[row]),
            ("harmful", top.harmful_indices[row], top.harmful_values[row]),
        ):
            for rank, (index, value) in enumerate(zip(indices, values, strict=True)):
                label = kind if rank == 0 else ""
                name = class_label(data, data.y_train[index])
                print(
                    f"  {label:9}{example_name(data, 'train', index):>6} {name:>6} {value:>+11.3e}",
                    file=out,
                )
        if not args.no_images and data.images_train is not None and data.train_names is None:
            print_images(data, query, top, row, out)
    return queries, top, predicted


def _wrapped(text):
    """``text`` as lines of at most 92 characters, indented by two spaces."""
    return textwrap.fill(text, width=92, initial_indent="  ", subsequent_indent="  ")


def _quality(pearson):
    if pearson >= 0.9:
        return "good"
    return "fair" if pearson >= 0.7 else "poor"


def _reading(agreement, slope, what):
    """Plain words for one check's Pearson, Spearman and slope."""
    if slope >= 1:
        size = f"the actual changes are {slope:.2f} times the predicted ones"
    else:
        size = f"the actual changes are {slope:.2f} of the predicted ones"
    return _wrapped(
        f"Reading: Pearson {agreement.pearson:.2f} is {_quality(agreement.pearson)} "
        f"agreement with {what} (1 = the estimates line up exactly with it, 0 = no relation, "
        f"above 0.9 is good); Spearman {agreement.spearman:.2f} compares only the order "
        "(which removals matter most). The slope is the size: 1 would be exact; here "
        f"{size}. Influence is a first-order estimate: trust its ranking and its sign more "
        "than its size."
    )


def _agreement(args, data, influence, removed, target):
    """``removal_agreement`` with the command's settings, and the seconds it took."""
    start = time.perf_counter()
    # loo: exact leave-one-out optima by Newton's method for linear models, refits otherwise
    # (a network from its initial weights); pbrf: one batched optimisation of the removed
    # points' PBRF objectives. Constant changes are reported below, not warned about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedCorrelationWarning)
        agreement = influence.removal_agreement(
            data.X_test,
            data.y_test,
            train_indices=removed,
            target=target,
            pbrf_damping=args.damping,
        )
    return agreement, time.perf_counter() - start


def _check_against_retraining(args, data, influence, out):
    """Print the agreement of the estimates with what ``--check`` says; return the text."""
    rng = np.random.RandomState(args.random_state)
    removed = np.sort(rng.choice(len(data.y_train), size=args.n_removed, replace=False))
    agreement, elapsed = _agreement(args, data, influence, removed, args.check)
    predicted, actual = agreement.predicted, agreement.actual
    target = (
        "actual leave-one-out retraining"
        if args.check == "loo"
        else f"the PBRF (proximal Bregman response function, damping {args.damping:g})"
    )
    how = "each removed and the model refit" if args.check == "loo" else "one PBRF each"
    lines = [
        f"\nAgreement with {target} ({len(removed)} training {data.unit}, {how}, "
        f"{elapsed:.1f} s).\nMeasurement: mean test loss over "
        f"{len(data.y_test)} test {data.unit}; predicted = mean influence over them."
    ]
    if np.isnan(agreement.pearson):
        lines.append("  The changes are constant; their correlation is undefined.")
        print("\n".join(lines), file=out)
        return "\n".join(lines)
    slope = np.polyfit(predicted, actual, 1)[0]
    lines.append(
        f"  Pearson {agreement.pearson:.4f}   Spearman {agreement.spearman:.4f}   "
        f"slope of actual on predicted {slope:.3f}"
    )
    lines.append(f"  {data.name_header:>6} {'label':>6} {'predicted':>11} {'actual':>11}")
    shown = np.argsort(-np.abs(predicted), kind="stable")[:5]
    for position in shown:
        index = removed[position]
        name = class_label(data, data.y_train[index])
        lines.append(
            f"  {example_name(data, 'train', index):>6} {name:>6} {predicted[position]:>+11.3e} "
            f"{actual[position]:>+11.3e}"
        )
    lines.append(f"  (the 5 removed {data.unit} with the largest predicted effect)")
    what = "retraining" if args.check == "loo" else "the PBRF"
    lines.append(_reading(agreement, slope, what))
    if args.check == "loo" and args.pbrf_points:
        lines.append(_pbrf_check(args, data, influence, removed[: args.pbrf_points]))
    print("\n".join(lines), file=out)
    return "\n".join(lines)


def _pbrf_check(args, data, influence, removed):
    """One line: the same estimates against the PBRF, what they approximate by design."""
    agreement, elapsed = _agreement(args, data, influence, removed, "pbrf")
    if np.isnan(agreement.pearson):
        return "\nPBRF check: the changes are constant; their correlation is undefined."
    slope = np.polyfit(agreement.predicted, agreement.actual, 1)[0]
    return (
        f"\nPBRF check ({len(removed)} of the removed {data.unit}, {elapsed:.1f} s): Pearson "
        f"{agreement.pearson:.4f}   Spearman {agreement.spearman:.4f}   slope {slope:.3f}\n"
    ) + _wrapped(
        "The PBRF (proximal Bregman response function, Bae et al. 2022) is what influence "
        "estimates approximate by design: the response of a model kept close to the fitted "
        "one, instead of a refit from scratch. For networks, where leave-one-out retraining "
        "agrees poorly with influence, the PBRF still agrees closely; --check pbrf checks "
        f"every removed {data.unit[:-1]} against it."
    )


def _pixels(data):
    """`` of HxW pixels`` for image data, else nothing."""
    if data.images_train is None:
        return ""
    height, width = data.images_train.shape[1:]
    return f" of {height}x{width} pixels"


def _report_path(args):
    """Where ``--report`` goes: the given path, none, or a new file in a new temporary folder."""
    if args.no_report:
        return None
    if args.report is not None:
        return args.report
    return os.path.join(tempfile.mkdtemp(prefix="sklearn-influence-"), "explain.html")


def _run_explain(args, out):
    data = args.data
    progress = Progress(args.quiet)
    estimator = _build_estimator(args)
    influence = InfluenceFunction(
        estimator,
        damping=args.damping,
        device=args.device,
        memory=args.memory,
        random_state=args.random_state,
    )
    start = time.perf_counter()
    progress(f"fitting {type(estimator).__name__} and the influence matrix")
    influence.fit(data.X_train, data.y_train)
    matrix = influence.transform(data.X_test, data.y_test)
    elapsed = time.perf_counter() - start
    score = influence.estimator_.score(data.X_test, data.y_test)
    metric = "accuracy" if data.task == "classification" else "R^2"
    unit = data.unit[:-1]
    names = (
        "index = position in the training split"
        if data.name_header == "index"
        else "row = 0-based data row of the file (the header not counted)"
        if data.name_header == "row"
        else f"{data.name_header} = the --id column"
    )
    header = (
        f"sklearn-influence explain: {type(estimator).__name__} on {data.source} "
        f"({len(data.y_train)} training / {len(data.y_test)} test {data.unit}"
        f"{_pixels(data)})\n"
        f"Fit model + influence matrix ({matrix.shape[0]} x {matrix.shape[1]}) in "
        f"{elapsed:.1f} s; test {metric} {score:.3f}; damping {args.damping:g}.\n"
        f"Influence of training {unit} m on test {unit} q: the predicted rise of q's loss if m "
        "were removed from the training set and the model refit, estimated without refitting "
        "(to first order: (1/N) grad loss_q . (curvature + damping)^-1 . grad loss_m, "
        f"N = {len(data.y_train)} training {data.unit}).\n"
        "Positive: m helps q (removing it hurts). Negative: m harms q. "
        f"{names}."
    )
    print(header, file=out)
    queries, top, predicted = _explain_queries(args, data, influence, out)
    summary = header
    if args.n_removed:
        action = "refitting without" if args.check == "loo" else "optimising the PBRF of"
        progress(f"{action} each of {args.n_removed} training {data.unit}")
        summary += "\n" + _check_against_retraining(args, data, influence, out)
    path = _report_path(args)
    if path is not None and not figure_skipped(path, out):
        write_report(path, data, top, queries, predicted, summary)
        print(f"\nReport (pictures of these {data.unit}): {path}", file=out)
    return 0


# -- figures --------------------------------------------------------------------------------

#: file types the figures can be saved as
_FIGURE_TYPES = (".png", ".pdf", ".svg")


def _check_output(parser, path, *, option="--output", types=_FIGURE_TYPES):
    """A figure path with a known extension in an existing directory.

    Without matplotlib the command still runs: it prints its table and a one-line note
    instead of the figure (the documented install has no matplotlib).
    """
    if path is None:
        return
    if os.path.splitext(path)[1].lower() not in types:
        parser.error(f"{option} {path!r}: the file name must end in {', '.join(types)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"{option} {path!r}: the folder {folder!r} does not exist; create it first")


# -- decompose ------------------------------------------------------------------------------


def _add_decompose_arguments(parser):
    _add_common_arguments(parser, n_train=200, damping=1e-3)
    parser.add_argument(
        "--n-points",
        type=_positive_int,
        default=5,
        help="training examples removed one at a time; each costs a refit and two proximal "
        "optimisations (default 5)",
    )
    parser.add_argument(
        "--n-test",
        type=_positive_int,
        default=200,
        help="test examples on which the objects are compared (default 200)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="figure file of the five terms: .png, .pdf or .svg (default: decomposition.png "
        "in a new temporary folder, printed at the end; skipped with a note when matplotlib "
        "is not installed)",
    )


def _check_decompose_arguments(parser, args):
    _check_output(parser, args.output)
    _prepare(parser, args, 200, n_test=args.n_test)
    if args.n_points > len(args.data.y_train):
        parser.error(
            f"--n-points {args.n_points} is more than the {len(args.data.y_train)} training "
            f"{args.data.unit}; lower it"
        )
    if args.n_points == 1:
        parser.error("--n-points must be at least 2 to correlate the objects")


def _run_decompose(args, out):
    data = args.data
    progress = Progress(args.quiet)
    estimator = _build_estimator(args)
    parts = InfluenceDecomposition(
        estimator,
        damping=args.damping,
        n_points=args.n_points,
        device=args.device,
        memory=args.memory,
        random_state=args.random_state,
    )
    progress(
        f"fitting {type(estimator).__name__}; for each of {args.n_points} removed training "
        f"{data.unit}: cold and warm refits, PRF, PBRF, linearized PBRF and influence"
    )
    parts.fit(data.X_train, data.y_train)
    progress(f"comparing them on {len(data.y_test)} test {data.unit}")
    table = parts.decompose(data.X_test, data.y_test)
    print(
        f"sklearn-influence decompose: {type(estimator).__name__} on {data.source} "
        f"({len(data.y_train)} training / {len(data.y_test)} test {data.unit}), damping "
        f"{args.damping:g}, {args.n_points} training {data.unit} removed one at a time.\n"
        "Each term compares two consecutive objects of Bae et al. (2022), from cold-start "
        "leave-one-out retraining to the influence estimate:\n"
        "output_distance = mean |h(theta_from, x) - h(theta_to, x)| over training inputs; "
        "pearson/spearman = correlation of the two objects' test-loss changes.\n",
        file=out,
    )
    print(
        f"{'term':<21}{'from':>17}{'to':>17}{'output_distance':>17}{'pearson':>9}{'spearman':>9}",
        file=out,
    )
    for row in table_rows(table):
        print(
            f"{row['term']:<21}{row['from']:>17}{row['to']:>17}{row['output_distance']:>17.3e}"
            f"{row['pearson']:>9.4f}{row['spearman']:>9.4f}",
            file=out,
        )
    path = args.output
    if path is None:  # never the working directory: a checkout's tracked files stay as they are
        path = os.path.join(tempfile.mkdtemp(prefix="sklearn-influence-"), "decomposition.png")
    if figure_skipped(path, out):
        return 0
    display = InfluenceDecompositionDisplay(table, estimator_name=type(estimator).__name__)
    display.plot(ax=new_axes((7, 3.5)))
    display.figure_.savefig(path)
    print(f"\nFigure of the five terms saved to {path}", file=out)
    return 0


# -- mislabeled -----------------------------------------------------------------------------


_fraction = _checked_number(float, "a number", lambda value: 0 <= value < 0.5, "in [0, 0.5)")


#: inspected fractions at which recall is reported
_INSPECTED = (0.1, 0.2)


def _add_mislabeled_arguments(parser):
    _add_common_arguments(parser, n_train=1000, damping=1e-3)
    parser.add_argument(
        "--flip-fraction",
        type=_fraction,
        default=None,
        help="fraction of the training labels flipped to another class at random, so that "
        "the recall of the ranking can be measured (default 0.1 on digits, 0 on --csv: a "
        "CSV file's own suspects are listed without a recall)",
    )
    parser.add_argument(
        "--method",
        choices=("self_influence", "pbrf_self_influence"),
        default="self_influence",
        help="suspicion score of MislabelDetector; the loss is always shown as the baseline "
        "(default self_influence)",
    )
    parser.add_argument("--k", type=_positive_int, default=10, help="suspects listed (default 10)")
    parser.add_argument(
        "--output",
        default=None,
        help="figure file of the recall curves (.png, .pdf or .svg); needs flipped labels",
    )


def _check_mislabeled_arguments(parser, args):
    _check_output(parser, args.output)
    if args.flip_fraction is None:
        args.flip_fraction = 0.1 if args.csv is None else 0.0
    _prepare(parser, args, 1000, flip_fraction=args.flip_fraction)
    if args.data.task == "regression":
        parser.error(
            f"--target {args.target!r} is continuous ({args.target_kind}); mislabeled needs "
            "class labels: use explain for a continuous target, or --task classification to "
            "treat each value as a class"
        )
    n_train = len(args.data.y_train)
    if args.flip_fraction and len(args.data.flipped_indices) == 0:
        parser.error(
            f"--flip-fraction {args.flip_fraction:g} of {n_train} training {args.data.unit} "
            "flips no label; raise it or raise --n-train"
        )
    if args.output is not None and not args.flip_fraction:
        parser.error("--output draws recall curves, which need flipped labels: --flip-fraction")
    if args.k > n_train:
        parser.error(f"--k {args.k} is more than the {n_train} training {args.data.unit}; lower it")


def _run_mislabeled(args, out):
    data = args.data
    progress = Progress(args.quiet)
    estimator = _build_estimator(args)
    common = dict(damping=args.damping, device=args.device, random_state=args.random_state)
    common["memory"] = args.memory
    progress(f"fitting {type(estimator).__name__} and ranking by {args.method}")
    detector = MislabelDetector(estimator, method=args.method, **common)
    detector.fit(data.X_train, data.y_train)
    progress("ranking by the training loss (baseline)")
    baseline = MislabelDetector(estimator, method="loss", **common).fit(data.X_train, data.y_train)
    n_flipped = len(data.flipped_indices)
    print(
        f"sklearn-influence mislabeled: {type(estimator).__name__} on {data.source} "
        f"({len(data.y_train)} training {data.unit}, {n_flipped} labels flipped at random), "
        f"ranked by {args.method} (damping {args.damping:g}); higher = more suspicious.\n",
        file=out,
    )
    flipped = np.zeros(len(data.y_train), dtype=bool)
    flipped[data.flipped_indices] = True
    header = f"{'rank':>5} {data.name_header:>6} {'label':>8} {'score':>11}"
    print(header + ("  flipped (true label)" if n_flipped else ""), file=out)
    for rank, index in enumerate(detector.ranking_[: args.k], start=1):
        line = (
            f"{rank:>5} {example_name(data, 'train', index):>6} "
            f"{class_label(data, data.y_train[index]):>8} "
            f"{detector.mislabel_scores_[index]:>+11.3e}"
        )
        if flipped[index]:
            line += f"  yes ({class_label(data, data.y_train_clean[index])})"
        print(line.rstrip(), file=out)
    if not n_flipped:
        return 0
    scores = {args.method: detector.mislabel_scores_, "loss": baseline.mislabel_scores_}
    print(
        f"\nRecall of the {n_flipped} flipped labels after inspecting the most suspicious:",
        file=out,
    )
    print(
        f"{'score':<21}"
        + "".join(f"{f'{f:.0%} inspected':>15}" for f in _INSPECTED)
        + f"{'AUC':>8}",
        file=out,
    )
    for name, values in scores.items():
        recalls = mislabel_detection_recall(flipped, values, fraction=list(_INSPECTED))
        auc = mislabel_detection_auc(flipped, values)
        print(f"{name:<21}" + "".join(f"{r:>15.3f}" for r in recalls) + f"{auc:>8.3f}", file=out)
    # a random inspection order finds, in expectation, the inspected fraction of them
    print(
        f"{'random (expected)':<21}" + "".join(f"{f:>15.3f}" for f in _INSPECTED) + f"{0.5:>8.3f}",
        file=out,
    )
    if args.output is not None and not figure_skipped(args.output, out):
        ax = new_axes((5, 4))
        for position, (name, values) in enumerate(scores.items()):
            MislabelRecallDisplay.from_predictions(
                flipped, values, name=name, ax=ax, plot_chance_level=position == 0
            )
        ax.figure.savefig(args.output)
        print(f"\nRecall curves saved to {args.output}", file=out)
    return 0


#: subcommand -> (help, add_arguments, check_arguments, run)
_COMMANDS = {
    "explain": (
        "most helpful and harmful training images for test images, checked against "
        "leave-one-out retraining and the PBRF, with a report (the default)",
        _add_explain_arguments,
        _check_explain_arguments,
        _run_explain,
    ),
    "decompose": (
        "five-term decomposition of the gap between influence estimates and leave-one-out "
        "retraining (table + figure file)",
        _add_decompose_arguments,
        _check_decompose_arguments,
        _run_decompose,
    ),
    "mislabeled": (
        "rank training points by how likely their label is wrong; with flipped labels, "
        "the recall against the loss baseline and random",
        _add_mislabeled_arguments,
        _check_mislabeled_arguments,
        _run_mislabeled,
    ),
}

_DEFAULT_COMMAND = "explain"


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="sklearn-influence",
        description="Influence functions for scikit-learn models, on scikit-learn's bundled "
        f"digits. Without a subcommand, runs '{_DEFAULT_COMMAND}'.",
    )
    from sklearn_influence import __version__

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
