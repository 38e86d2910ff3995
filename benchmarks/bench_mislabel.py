"""Mislabel detection side by side with cleanlab (confident learning), issue 24.

Three data sets (scikit-learn's digits, breast cancer, wine; standardized), 10% of the
labels flipped to another class at random, a few seeds; two models: ``LogisticRegression(C=1)``
and a skorch MLP (one hidden layer of 64 tanh units, Adam lr 1e-2, weight decay 1e-3, batch
128, 60 epochs); optionally (``--cnn``) a small CNN on the 8×8 digits. Every ranking of the
training rows is scored by the recall of the flipped rows within the first 10% and 20%
inspected and by the average precision (AP); times are wall seconds on one torch thread,
every method sequential (``n_jobs=None``), in the same process.

Rankings:

* ``cleanlab``: ``cleanlab.filter.find_label_issues(y, pred_probs,
  return_indices_ranked_by="self_confidence", n_jobs=1)`` on ``cross_val_predict(model, X,
  y, cv=5, method="predict_proba")``: its flagged rows first, in its order, then the others by
  self-confidence (low first). Time: the cross-validation plus cleanlab.
* ``cleanlab_shuffled``: the same on ``StratifiedKFold(5, shuffle=True, random_state=seed)``
  folds, the detector's kind (``cross_val_predict``'s ``cv=5`` does not shuffle: on ordered
  data such as digits its folds are contiguous blocks).
* ``cleanlab_self_confidence``: cleanlab's ``get_label_quality_scores`` (self-confidence) on
  the same probabilities, the whole ranking.
* ``default``: ``MislabelDetector(model)`` with every default (``method="auto"``), fit time.
* ``out_of_fold``: the detector's out-of-fold loss alone (when the default is
  ``out_of_fold_and_loss``, its first term, from the same fits).
* ``out_of_fold_and_loss`` (when not the default): that method, the sum of the
  ``out_of_fold`` and ``loss`` rows' scores.
* ``oof_margin``: the normalized margin p(y) − max_{j≠y} p(j) on the detector's out-of-fold
  ``pred_probs_`` (cleanlab's other ranking).
* ``loss``, ``self_influence`` (``--self-influence``): the in-sample methods on the default's
  fitted model (``FrozenEstimator``; times exclude that fit).

Run::

    python benchmarks/bench_mislabel.py                      # writes results/bench_mislabel.md
    python benchmarks/bench_mislabel.py --quick --output -   # one seed, wine only, prints
    python benchmarks/bench_mislabel.py --cnn                # adds the CNN on digits

Needs the benchmark extra (``pip install -e ".[benchmark]"``: cleanlab).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _shared import environment
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.preprocessing import StandardScaler

from sklearn_influence import MislabelDetector
from sklearn_influence.datasets import TanhMLP
from sklearn_influence.metrics import mislabel_detection_recall

DATASETS = {"digits": load_digits, "breast_cancer": load_breast_cancer, "wine": load_wine}
FRACTIONS = (0.1, 0.2)


def load(name, seed, flip_fraction=0.1):
    """Standardized features, labels with ``flip_fraction`` flipped to another class."""
    X, y = DATASETS[name](return_X_y=True)
    X = StandardScaler().fit_transform(X)
    rng = np.random.RandomState(seed)
    noisy = y.copy()
    flipped = rng.choice(len(y), round(flip_fraction * len(y)), replace=False)
    n_classes = len(np.unique(y))
    noisy[flipped] = (y[flipped] + rng.randint(1, n_classes, len(flipped))) % n_classes
    return X, noisy, noisy != y


class SmallCNN(torch.nn.Module):
    """8×8 images: conv 3×3 (8 channels) → tanh → max-pool 2 → linear to the classes."""

    def __init__(self, n_classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.output = torch.nn.Linear(8 * 4 * 4, n_classes)

    def forward(self, X):
        hidden = torch.nn.functional.max_pool2d(torch.tanh(self.conv(X)), 2)
        return self.output(hidden.flatten(1))


def make_model(kind, X, y, args):
    if kind == "logistic":
        return LogisticRegression(C=1.0, max_iter=5000)
    from skorch import NeuralNetClassifier

    n_classes = len(np.unique(y))
    module = {"module": SmallCNN, "module__n_classes": n_classes}
    if kind == "mlp":
        module = {
            "module": TanhMLP,
            "module__in_features": X.shape[1],
            "module__hidden": 64,
            "module__out_features": n_classes,
        }
    return NeuralNetClassifier(
        **module,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-2,
        optimizer__weight_decay=1e-3,
        max_epochs=args.epochs,
        batch_size=128,
        iterator_train__shuffle=True,
        train_split=None,
        verbose=0,
    )


def cleanlab_rankings(model, X, y, seed, cv=5, name="cleanlab"):
    """Scores (higher = more suspicious) of cleanlab's two rankings, and the time."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    start = time.perf_counter()
    torch.manual_seed(seed)
    data = X if isinstance(model, LogisticRegression) else X.astype(np.float32)
    target = y if isinstance(model, LogisticRegression) else y.astype(np.int64)
    probs = cross_val_predict(model, data, target, cv=cv, method="predict_proba")
    issues = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    seconds = time.perf_counter() - start
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    flagged = set(issues.tolist())
    rest = [i for i in np.argsort(quality, kind="stable") if i not in flagged]
    order = np.concatenate([issues, rest]).astype(int)
    scores = np.empty(len(y))
    scores[order] = np.arange(len(y), 0, -1)
    if name != "cleanlab":
        return {name: (scores, seconds)}
    return {name: (scores, seconds), "cleanlab_self_confidence": (-quality, None)}


def ours(model, X, y, seed, args):
    """Scores and times of the detector's default and the other methods."""
    start = time.perf_counter()
    default = MislabelDetector(model, random_state=seed).fit(X, y)
    results = {"default": (default.mislabel_scores_, time.perf_counter() - start)}
    frozen = FrozenEstimator(default.estimator_)
    in_sample = ["loss", "self_influence"] if args.self_influence else ["loss"]
    for method in in_sample:
        start = time.perf_counter()
        detector = MislabelDetector(frozen, method=method, random_state=seed).fit(X, y)
        results[method] = (detector.mislabel_scores_, time.perf_counter() - start)
    if default.method_ == "out_of_fold_and_loss":  # its two terms, from the same fits
        results["out_of_fold"] = (default.mislabel_scores_ - results["loss"][0], None)
    elif default.method_ != "out_of_fold":
        start = time.perf_counter()
        oof = MislabelDetector(model, method="out_of_fold", random_state=seed).fit(X, y)
        results["out_of_fold"] = (oof.mislabel_scores_, time.perf_counter() - start)
        # the same fits (a deterministic model): out_of_fold_and_loss is the sum of the two
        results["out_of_fold_and_loss"] = (oof.mislabel_scores_ + results["loss"][0], None)
    if default.pred_probs_ is not None:
        probs, rows = default.pred_probs_, np.arange(len(y))
        others = probs.copy()
        others[rows, y] = -np.inf
        results["oof_margin"] = (-(probs[rows, y] - others.max(axis=1)), None)
    results["default"] += (default.method_,)
    return results


def evaluate(data_name, kind, seeds, args):
    rows = {}
    for seed in range(seeds):
        X, y, is_flipped = load(data_name, seed)
        if kind == "cnn":
            X = X.reshape(-1, 1, 8, 8)
        model = make_model(kind, X, y, args)
        results = cleanlab_rankings(model, X, y, seed)
        if args.shuffled_cleanlab:
            folds = StratifiedKFold(5, shuffle=True, random_state=seed)
            results.update(cleanlab_rankings(model, X, y, seed, folds, "cleanlab_shuffled"))
        results.update(ours(model, X, y, seed, args))
        for name, (scores, seconds, *extra) in results.items():
            row = rows.setdefault(name, {"recall": [], "ap": [], "seconds": [], "note": ""})
            row["recall"].append(mislabel_detection_recall(is_flipped, scores, fraction=FRACTIONS))
            row["ap"].append(average_precision_score(is_flipped, scores))
            row["seconds"].append(np.nan if seconds is None else seconds)
            row["note"] = extra[0] if extra else row["note"]
        print(
            f"  {data_name} {kind} seed {seed}: "
            + ", ".join(f"{n} {r['ap'][-1]:.3f}/{r['seconds'][-1]:.1f}s" for n, r in rows.items()),
            file=sys.stderr,
            flush=True,
        )
    return rows


def format_rows(data_name, kind, rows, n_train):
    lines = []
    for name, row in rows.items():
        recall = np.mean(row["recall"], axis=0)
        seconds = np.median(row["seconds"])
        label = f"{name} ({row['note']})" if row["note"] else name
        lines.append(
            f"| {data_name} ({n_train}) | {kind} | {label} | {recall[0]:.3f} | {recall[1]:.3f} "
            f"| {np.mean(row['ap']):.3f} | {'' if np.isnan(seconds) else f'{seconds:.2f}'} |"
        )
    return lines


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-mlp-seeds", type=int, default=2, help="the costliest case")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--data", default="digits,breast_cancer,wine")
    parser.add_argument("--models", default="logistic,mlp")
    parser.add_argument("--cnn", action="store_true", help="also a small CNN on digits")
    parser.add_argument("--self-influence", action="store_true", help="also self_influence")
    parser.add_argument(
        "--no-shuffled-cleanlab",
        dest="shuffled_cleanlab",
        action="store_false",
        help="skip cleanlab on shuffled stratified folds (the detector's folds)",
    )
    parser.add_argument("--quick", action="store_true", help="wine only, one seed")
    parser.add_argument(
        "--output",
        default=str(Path(__file__).parent / "results" / "bench_mislabel.md"),
        help="markdown file for the results ('-' prints only)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.digits_mlp_seeds = 1
        args.data = "wine"
    return args


def main(argv=None):
    args = parse_arguments(argv)
    torch.set_num_threads(1)
    cases = [(d, m) for d in args.data.split(",") for m in args.models.split(",")]
    if args.cnn:
        cases.append(("digits", "cnn"))
    lines = [
        "| data (rows) | model | ranking | recall@10% | recall@20% | AP | seconds (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    start = time.perf_counter()
    for data_name, kind in cases:
        seeds = (
            args.digits_mlp_seeds
            if (data_name, kind) in {("digits", "mlp"), ("digits", "cnn")}
            else args.seeds
        )
        rows = evaluate(data_name, kind, seeds, args)
        lines += format_rows(data_name, kind, rows, len(load(data_name, 0)[1]))
    command = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    report = "\n".join(
        [
            "# Mislabel detection side by side with cleanlab (benchmarks/bench_mislabel.py)",
            "",
            f"Command: `python benchmarks/bench_mislabel.py {command}`".rstrip(),
            "",
            *environment(1),
            f"* total {(time.perf_counter() - start) / 60:.1f} min; seeds: {args.seeds} "
            f"({args.digits_mlp_seeds} for the digits networks); MLP/CNN {args.epochs} epochs",
            "",
            "Recall and AP are means over the seeds; `default` names what `method='auto'` "
            "chose. Rows without seconds reuse another row's fit.",
            "",
            *lines,
            "",
        ]
    )
    print(report)
    if args.output != "-":
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(report)


if __name__ == "__main__":
    main()
