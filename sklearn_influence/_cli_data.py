"""The command line's data: scikit-learn's bundled digits, or a user's CSV file.

Both come back as a Bunch with the fields of :func:`~sklearn_influence.datasets
.load_digits_split` plus ``source`` and ``unit``; a bad file is a :class:`DataError` whose
message says what to fix.
"""

import csv
import os

import numpy as np
from sklearn.utils import Bunch

from .datasets import _flip_labels, load_digits_split

#: number of images in scikit-learn's digits
_N_DIGITS = 1797

#: fewest rows a CSV file may have: a few training rows per class and some test rows
_MIN_CSV_ROWS = 10


class DataError(ValueError):
    """A problem with the user's data; the command line reports it as a usage error."""


def _read_csv(path, target):
    """Numeric features, labels and feature names of a CSV file with a header row."""
    if not os.path.isfile(path):
        raise DataError(f"--csv {path!r}: no such file; check the path")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(
            f"--csv {path!r} cannot be read as a UTF-8 CSV file ({error}); "
            "export it as comma-separated text with a header row"
        ) from None
    if not rows:
        raise DataError(f"--csv {path!r} is empty; it needs a header row and data rows")
    header, rows = [name.strip() for name in rows[0]], rows[1:]
    if target not in header:
        raise DataError(
            f"--target {target!r} is not a column of {path!r}; its columns are "
            f"{', '.join(repr(name) for name in header)}"
        )
    if len(rows) < _MIN_CSV_ROWS:
        raise DataError(
            f"--csv {path!r} has {len(rows)} data rows; at least {_MIN_CSV_ROWS} are needed "
            "(training rows plus test rows)"
        )
    ragged = [number + 2 for number, row in enumerate(rows) if len(row) != len(header)]
    if ragged:
        raise DataError(
            f"--csv {path!r}: line(s) {', '.join(map(str, ragged[:5]))} have a different number "
            f"of fields than the header ({len(header)}); fix or remove them"
        )
    column = header.index(target)
    names = [name for position, name in enumerate(header) if position != column]
    if not names:
        raise DataError(f"--csv {path!r} has no feature columns besides the target {target!r}")
    X = np.empty((len(rows), len(names)))
    bad, missing = [], []
    for position, name in enumerate(names):
        source = position + (position >= column)
        cells = [row[source].strip() for row in rows]
        if any(cell == "" or cell.lower() == "nan" for cell in cells):
            missing.append(name)
            continue
        try:
            X[:, position] = [float(cell) for cell in cells]
        except ValueError:
            bad.append(name)
    if bad:
        raise DataError(
            f"--csv {path!r}: non-numeric feature column(s) {', '.join(map(repr, bad))}; "
            "encode them as numbers (for example one-hot columns) or drop them"
        )
    if missing:
        raise DataError(
            f"--csv {path!r}: missing values in column(s) {', '.join(map(repr, missing))}; "
            "fill them in or drop those rows"
        )
    if not np.isfinite(X).all():
        raise DataError(f"--csv {path!r}: infinite feature values; replace or drop them")
    y = np.array([row[column].strip() for row in rows])
    if (y == "").any():
        raise DataError(f"--csv {path!r}: missing values in the target {target!r}; drop those rows")
    return X, y, names


def load_data(args, default_n_train, *, flip_fraction=0.0, n_test=None):
    """The split as a Bunch with the fields of :func:`load_digits_split` plus ``source``.

    Labels are integers 0..k-1 (``target_names`` maps them back); CSV features are
    standardized with the training rows' mean and standard deviation.
    """
    n_train = default_n_train if args.n_train is None else args.n_train
    if args.csv is None:
        if n_train > _N_DIGITS - 1:
            raise DataError(
                f"--n-train must be at most {_N_DIGITS - 1} (digits has {_N_DIGITS} images)"
            )
        data = load_digits_split(
            n_train=n_train,
            n_test=n_test,
            flip_fraction=flip_fraction,
            random_state=args.random_state,
        )
        data.source = "scikit-learn's digits"
        data.unit = "images"
        return data
    X, labels, names = _read_csv(args.csv, args.target)
    n_rows = len(labels)
    n_train = round(0.75 * n_rows) if args.n_train is None else args.n_train
    if n_train > n_rows - 1:
        raise DataError(f"--n-train must be at most {n_rows - 1} ({args.csv!r} has {n_rows} rows)")
    rng = np.random.RandomState(args.random_state)
    order = rng.permutation(n_rows)
    train, test = order[:n_train], order[n_train:]
    test = test if n_test is None else test[:n_test]
    target_names, y = np.unique(labels, return_inverse=True)
    if len(np.unique(y[train])) < 2:
        raise DataError(
            f"the training rows of {args.csv!r} have fewer than 2 classes in {args.target!r}; "
            "the target must be a class label with at least 2 classes"
        )
    mean, scale = X[train].mean(0), X[train].std(0)
    X = (X - mean) / np.where(scale > 0, scale, 1.0)
    y_train_clean = y[train]
    y_train, flipped = y_train_clean, np.array([], dtype=int)
    if flip_fraction:
        classes = np.arange(int(y_train_clean.max()) + 1)
        y_train, flipped = _flip_labels(y_train_clean, flip_fraction, classes, rng)
    return Bunch(
        X_train=X[train],
        X_test=X[test],
        y_train=y_train,
        y_test=y[test],
        y_train_clean=y_train_clean,
        flipped_indices=flipped,
        images_train=None,
        images_test=None,
        target_names=target_names,
        feature_names=names,
        source=repr(os.path.basename(args.csv)),
        unit="rows",
    )
