"""The command line's data: scikit-learn's bundled digits, or a user's CSV file.

Both come back as a Bunch with the fields of :func:`~sklearn_influence.datasets
.load_digits_split` plus ``source``, ``unit``, ``task`` and the names printed for each
example (``train_names``, ``test_names``: for a CSV file its 0-based data rows, the header
not counted, or the values of its ``--id`` column); a bad file is a :class:`DataError` whose
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

#: a numeric target with more distinct values than this (and than 5% of the rows), or with
#: values that are not whole numbers, is continuous: a regression target, not class labels
_MAX_CLASSES = 20


class DataError(ValueError):
    """A problem with the user's data; the command line reports it as a usage error."""


def _read_csv(path, target, id_column=None):
    """Numeric features, labels, feature names and ids (or None) of a CSV file."""
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
    if id_column is not None and id_column not in header:
        raise DataError(
            f"--id {id_column!r} is not a column of {path!r}; its columns are "
            f"{', '.join(repr(name) for name in header)}"
        )
    if id_column == target:
        raise DataError(f"--id and --target both name {target!r}; the id column holds names")
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
    skipped = {column} | ({header.index(id_column)} if id_column is not None else set())
    sources = [position for position in range(len(header)) if position not in skipped]
    names = [header[position] for position in sources]
    if not names:
        raise DataError(f"--csv {path!r} has no feature columns besides the target {target!r}")
    X = np.empty((len(rows), len(names)))
    bad, missing = [], []
    for position, (name, source) in enumerate(zip(names, sources, strict=True)):
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
    ids = None
    if id_column is not None:
        ids = np.array([row[header.index(id_column)].strip() for row in rows])
    return X, y, names, ids


def _continuous(labels):
    """A description of why ``labels`` look like a regression target, or None (classes)."""
    try:
        values = labels.astype(float)
    except ValueError:
        return None
    distinct = len(np.unique(values))
    if not np.all(values == np.round(values)):
        return f"numeric, {distinct} distinct values, not all whole numbers"
    if distinct > max(_MAX_CLASSES, 0.05 * len(values)):
        return f"numeric, {distinct} distinct values"
    return None


def _task(args, labels):
    """``"classification"`` or ``"regression"``: ``--task``, or detected from the target.

    Sets ``args.target_kind``, why the target looks continuous (None for class labels).
    """
    task = getattr(args, "task", "auto")
    args.target_kind = _continuous(labels)
    if task == "auto":
        return "classification" if args.target_kind is None else "regression"
    if task == "regression":
        try:
            labels.astype(float)
        except ValueError:
            raise DataError(
                f"--task regression needs a numeric target; {args.target!r} holds text labels"
            ) from None
    return task


def _image_shape(args, X):
    """The (height, width) of ``--image-shape`` (``8x8``), checked against the columns."""
    text = getattr(args, "image_shape", None)
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        raise DataError(f"--image-shape {text!r}: give HEIGHTxWIDTH, for example 8x8")
    if shape[0] * shape[1] != X.shape[1]:
        raise DataError(
            f"--image-shape {text} has {shape[0] * shape[1]} pixels but the file has "
            f"{X.shape[1]} feature columns; give the shape of one image"
        )
    return shape


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
        data.task = "classification"
        data.train_names = data.test_names = None
        data.name_header = "index"
        return data
    X, labels, names, ids = _read_csv(args.csv, args.target, getattr(args, "id", None))
    task = _task(args, labels)
    shape = _image_shape(args, X)
    n_rows = len(labels)
    n_train = round(0.75 * n_rows) if args.n_train is None else args.n_train
    if n_train > n_rows - 1:
        raise DataError(f"--n-train must be at most {n_rows - 1} ({args.csv!r} has {n_rows} rows)")
    rng = np.random.RandomState(args.random_state)
    order = rng.permutation(n_rows)
    train, test = order[:n_train], order[n_train:]
    test = test if n_test is None else test[:n_test]
    if task == "regression":
        return _regression_split(args, X, labels.astype(float), names, ids, train, test, shape)
    target_names, y = np.unique(labels, return_inverse=True)
    if len(np.unique(y[train])) < 2:
        raise DataError(
            f"the training rows of {args.csv!r} have fewer than 2 classes in {args.target!r}; "
            "the target must be a class label with at least 2 classes"
        )
    raw, X = X, _standardized(X, train)
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
        target_names=target_names,
        task=task,
        **_csv_fields(args, raw, names, ids, train, test, shape),
    )


def _standardized(X, train):
    """Features standardized with the training rows' mean and standard deviation."""
    mean, scale = X[train].mean(0), X[train].std(0)
    return (X - mean) / np.where(scale > 0, scale, 1.0)


def _csv_fields(args, raw, names, ids, train, test, shape):
    """The fields of a CSV split that do not depend on the task."""
    names_of = (lambda rows: rows) if ids is None else (lambda rows: ids[rows])
    images = None if shape is None else raw.reshape(len(raw), *shape)
    return dict(
        images_train=None if images is None else images[train],
        images_test=None if images is None else images[test],
        feature_names=names,
        raw_train=raw[train],
        raw_test=raw[test],
        train_names=names_of(train),
        test_names=names_of(test),
        name_header="row" if ids is None else str(args.id)[:8],
        source=repr(os.path.basename(args.csv)),
        unit="rows",
    )


def _regression_split(args, X, y, names, ids, train, test, shape):
    """The split of a continuous target: the target is standardized like the features."""
    if getattr(args, "flip_fraction", 0):
        raise DataError(
            f"--target {args.target!r} is continuous ({args.target_kind}): labels cannot be "
            "flipped; mislabeled needs class labels (--task classification treats each value "
            "as a class)"
        )
    scaled = _standardized(X, train)
    return Bunch(
        X_train=scaled[train],
        X_test=scaled[test],
        y_train=y[train],
        y_test=y[test],
        y_train_clean=y[train],
        flipped_indices=np.array([], dtype=int),
        target_names=None,
        task="regression",
        **_csv_fields(args, X, names, ids, train, test, shape),
    )
