"""Tests of the command line (``python -m sklearn_influence``), run in-process."""

import base64
import io
import re
import tempfile

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits

from sklearn_influence import (
    PBRF,
    InfluenceDecomposition,
    InfluenceFunction,
    MislabelDetector,
    __version__,
)
from sklearn_influence.__main__ import _MODELS, main
from sklearn_influence.datasets import load_digits_split
from sklearn_influence.metrics import mislabel_detection_recall

SMALL_CHECK = ["--n-train", "300", "--n-queries", "2", "--k", "2", "--n-removed", "12"]
#: without the report and the quick PBRF check, which the report test covers
SMALL = [*SMALL_CHECK, "--pbrf-points", "0", "--no-report"]


def run(argv):
    out = io.StringIO()
    status = main(argv, out=out)
    return status, out.getvalue()


@pytest.fixture(autouse=True)
def _one_thread():
    """The independent computations here run with one thread, as the command line does.

    On a busy 2-core machine the BLAS and OpenMP pools spin against each other and make small
    fits many times slower; results do not depend on it.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def _temporary_folder(tmp_path_factory):
    """Default outputs (reports, figures) go to new temporary folders: here, the test's."""
    before = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("defaults"))
    yield tempfile.tempdir
    tempfile.tempdir = before


@pytest.fixture(scope="module")
def explained():
    return run(["explain", *SMALL, "--random-state", "1"])


@pytest.fixture(scope="module")
def reference():
    """The split, model and influence matrix of ``explained``, computed without the CLI."""
    with threadpool_limits(limits=1):
        data = load_digits_split(n_train=300, random_state=1)
        influence = InfluenceFunction(_MODELS["logistic"](None), damping=1e-4)
        influence.fit(data.X_train, data.y_train)
        return data, influence, influence.transform(data.X_test, data.y_test)


def _table_rows(text, query):
    """(kind, index, label, value) rows of the table printed for one test image."""
    block = text.split(f"Test image {query}:")[1].split("\n\n")[0]
    rows, kind = [], None
    for match in re.finditer(r"^  (helpful|harmful|\s{7})\s+(\d+)\s+(\d+)\s+(\S+)$", block, re.M):
        kind = match[1] if match[1].strip() else kind
        rows.append((kind, int(match[2]), int(match[3]), float(match[4])))
    return rows


def test_explain_prints_helpful_and_harmful_images_of_the_influence_matrix(explained, reference):
    status, text = explained
    assert status == 0
    assert "LogisticRegression on scikit-learn's digits (300 training / 1497 test images" in text
    assert "Positive: m helps q" in text
    # the printed rows are the top-k of the influence matrix computed without the CLI
    data, _, matrix = reference
    for query in range(2):
        rows = _table_rows(text, query)
        assert [row[0] for row in rows] == ["helpful"] * 2 + ["harmful"] * 2
        order = np.argsort(matrix[query])
        expected = [*order[::-1][:2], *order[:2]]
        assert [row[1] for row in rows] == expected
        assert [row[2] for row in rows] == list(data.y_train[expected])
        np.testing.assert_allclose([row[3] for row in rows], matrix[query, expected], rtol=1e-3)


def test_explain_draws_images_as_ascii(explained):
    _, text = explained
    assert "test 0" in text and "+#" in text and "-#" in text
    image_lines = [line for line in text.splitlines() if re.fullmatch(r"[ .:\-=+*#%@]{8,}", line)]
    assert len(image_lines) >= 16  # 8 rows per test image
    assert all(line.isascii() for line in text.splitlines())


def test_explain_agrees_with_leave_one_out_retraining(explained, reference):
    _, text = explained
    assert "12 training images, each removed and the model refit" in text
    pearson = float(re.search(r"Pearson (\S+)", text)[1])
    spearman = float(re.search(r"Spearman (\S+)", text)[1])
    # with N=300 < 650 parameters the removed points' leverage varies, so the first-order
    # estimate scales the actual changes by 1 to ~1.5: a high but imperfect correlation
    assert pearson > 0.95 and spearman > 0.9
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([+-]\S+)\s+([+-]\S+)$", text, re.M)
    assert len(rows) == 5
    data, influence, matrix = reference
    model = influence.estimator_
    full_loss = log_loss(data.y_test, model.predict_proba(data.X_test), labels=range(10))
    for index, label, predicted, actual in rows:
        index = int(index)
        assert int(label) == data.y_train[index]
        # predicted: the mean influence over the test set, from the matrix computed above
        np.testing.assert_allclose(float(predicted), matrix[:, index].mean(), rtol=2e-3)
        # actual: scikit-learn itself refit without the point, to a tight tolerance
        keep = np.arange(len(data.y_train)) != index
        refit = _MODELS["logistic"](None).fit(data.X_train[keep], data.y_train[keep])
        loo_loss = log_loss(data.y_test, refit.predict_proba(data.X_test), labels=range(10))
        np.testing.assert_allclose(float(actual), loo_loss - full_loss, rtol=2e-3)


def test_explain_can_check_against_the_pbrf(reference):
    status, text = run(["explain", *SMALL, "--random-state", "1", "--check", "pbrf"])
    assert status == 0
    assert "Agreement with the PBRF (proximal Bregman response function, damping 0.0001)" in text
    assert float(re.search(r"Spearman (\S+)", text)[1]) > 0.9
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([+-]\S+)\s+([+-]\S+)$", text, re.M)
    data, _, _ = reference
    indices = [int(index) for index, *_ in rows]
    # the same PBRFs through the public estimator: the mean change of the test loss
    pbrf = PBRF(_MODELS["logistic"](None), damping=1e-4, train_indices=indices)
    expected = pbrf.fit(data.X_train, data.y_train).transform(data.X_test, data.y_test).mean(0)
    actual = [float(value) for *_, value in rows]
    np.testing.assert_allclose(actual, expected, rtol=2e-3)


def test_default_subcommand_is_explain_and_images_can_be_turned_off():
    status, text = run(
        ["--n-train", "200", "--n-queries", "1", "--k", "1", "--n-removed", "0", "--no-images"]
    )
    assert status == 0
    assert "Test image 0:" in text and "Test image 1:" not in text
    assert "test 0" not in text  # no image panels
    assert "leave-one-out" not in text  # --n-removed 0 skips the check


def test_thread_settings_are_restored():
    before = torch.get_num_threads()
    run(
        [
            "--n-train",
            "100",
            "--n-queries",
            "1",
            "--k",
            "1",
            "--n-removed",
            "0",
            "--no-images",
            "--n-threads",
            "1",
        ]
    )
    assert torch.get_num_threads() == before


def test_a_new_model_is_one_registry_entry(monkeypatch):
    def strongly_regularized(args):
        return LogisticRegression(C=0.01, solver="newton-cholesky", tol=1e-10)

    monkeypatch.setitem(_MODELS, "strong", strongly_regularized)
    status, text = run(
        [
            "--model",
            "strong",
            "--n-train",
            "100",
            "--n-queries",
            "1",
            "--k",
            "1",
            "--n-removed",
            "0",
            "--no-images",
        ]
    )
    assert status == 0 and "Test image 0:" in text


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "explain" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n-queries", "0"], "argument --n-queries: must be a positive integer"),
        (["--k", "two"], "argument --k: expected a positive integer, got 'two'"),
        (["--damping", "-1"], "argument --damping: must be a finite number >= 0"),
        (["--damping", "nan"], "argument --damping: must be a finite number >= 0"),
        (["--n-removed", "-3"], "argument --n-removed: must be 0 or more"),
        (["--n-removed", "1"], "--n-removed must be 0 (skip the check) or at least 2"),
        (["--n-removed", "400", "--n-train", "300"], "--n-removed 400 is more than the 300"),
        (["--n-train", "1797"], "--n-train must be at most 1796"),
        (["--n-train", "1700", "--n-queries", "200"], "more than the 97 test images"),
        (["--k", "500", "--n-train", "300"], "--k 500 is more than the 300 training images"),
        (["--model", "svm"], "argument --model: invalid choice: 'svm'"),
        (["--random-state", "-1"], "argument --random-state: must be 0 or more"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["mislabeled", "--flip-fraction", "0.7"], "--flip-fraction: must be in [0, 0.5)"),
        (["mislabeled", "--n-train", "5", "--flip-fraction", "0.05"], "flips no label"),
        (["mislabeled", "--output", "curves.txt"], "must end in .png, .pdf, .svg"),
        (["decompose", "--output", "/no/such/folder/d.png"], "does not exist; create it"),
        (["decompose", "--n-points", "1"], "--n-points must be at least 2"),
        (["decompose", "--n-points", "300", "--n-train", "200"], "--n-points 300 is more"),
        (["--csv", "data.csv"], "--csv needs --target COLUMN"),
        (["--target", "label"], "--target names a column of --csv; give --csv PATH too"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_main_docstring_example_runs():
    """pytest's --doctest-modules skips __main__.py files, so run its doctests here."""
    import doctest

    import sklearn_influence.__main__ as module

    results = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert results.attempted >= 1 and results.failed == 0


# -- decompose ------------------------------------------------------------------------------


def _decomposition_rows(text):
    return {
        match[1]: (match[2], match[3], float(match[4]), float(match[5]), float(match[6]))
        for match in re.finditer(r"^(\w+)\s+(\w+)\s+(\w+)\s+(\S+)\s+(\S+)\s+(\S+)$", text, re.M)
        if match[1].endswith(("_gap", "_error"))
    }


def test_decompose_prints_the_five_terms_and_saves_the_figure(tmp_path):
    # a small CSV problem (4 parameters) keeps the refits and proximal optimisations cheap
    path = _write_csv(tmp_path / "pets.csv", n_rows=80)
    figure = tmp_path / "parts.png"
    argv = ["decompose", "--csv", str(path), "--target", "species", "--n-points", "6"]
    status, text = run([*argv, "--quiet", "--output", str(figure)])
    assert status == 0
    assert "on 'pets.csv' (60 training / 20 test rows)" in text
    rows = _decomposition_rows(text)
    assert list(rows) == [
        "warm_start_gap",
        "proximity_gap",
        "non_convergence_gap",
        "linearization_error",
        "solver_error",
    ]
    assert [row[:2] for row in rows.values()] == [
        ("cold_loo", "warm_loo"),
        ("warm_loo", "prf"),
        ("prf", "pbrf"),
        ("pbrf", "linearized_pbrf"),
        ("linearized_pbrf", "influence"),
    ]
    # the same numbers as the library computes on the same rows (standardized, split as
    # the command line documents: shuffled with the seed, the first 75% for training)
    X = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    labels = np.loadtxt(path, delimiter=",", skiprows=1, usecols=3, dtype=str)
    order = np.random.RandomState(0).permutation(80)
    train, test = order[:60], order[60:]
    X = (X - X[train].mean(0)) / X[train].std(0)
    y = (labels == "dog").astype(int)
    parts = InfluenceDecomposition(
        _MODELS["logistic"](None), damping=1e-3, n_points=6, random_state=0
    ).fit(X[train], y[train])
    table = parts.decompose(X[test], y[test])
    for term, row in rows.items():
        np.testing.assert_allclose(
            row[2], table.loc[term, "output_distance"], rtol=2e-3, atol=1e-14
        )
        np.testing.assert_allclose(row[3:], table.loc[term, ["pearson", "spearman"]], atol=1e-4)
    # a converged convex model: warm and cold leave-one-out are the same optimum
    assert rows["warm_start_gap"][2] < 1e-6
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"saved to {figure}" in text


# -- mislabeled -----------------------------------------------------------------------------

MISLABELED = ["mislabeled", "--n-train", "400", "--k", "8", "--quiet"]


def test_mislabeled_lists_flipped_labels_first_and_beats_random(tmp_path):
    figure = tmp_path / "recall.svg"
    status, text = run([*MISLABELED, "--output", str(figure)])
    assert status == 0
    # independent truth: the labels load_digits_split flips with the same seed
    data = load_digits_split(n_train=400, flip_fraction=0.1, random_state=0)
    assert len(data.flipped_indices) == 40 and "40 labels flipped" in text
    suspects = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([+-]\S+)(.*)$", text, re.M)
    assert [int(rank) for rank, *_ in suspects] == list(range(1, 9))
    for _, index, label, _, flag in suspects:
        index = int(index)
        assert int(label) == data.y_train[index]
        assert ("yes" in flag) == (index in data.flipped_indices)
        if "yes" in flag:
            assert f"({data.y_train_clean[index]})" in flag
    # the printed ranking is the detector's
    detector = MislabelDetector(_MODELS["logistic"](None), damping=1e-3, random_state=0)
    detector.fit(data.X_train, data.y_train)
    assert [int(index) for _, index, *_ in suspects] == list(detector.ranking_[:8])
    recall = {
        name: tuple(map(float, values))
        for name, *values in re.findall(
            r"^(self_influence|loss|random \(expected\))\s+(\S+)\s+(\S+)\s+(\S+)$", text, re.M
        )
    }
    assert set(recall) == {"self_influence", "loss", "random (expected)"}
    is_flipped = np.isin(np.arange(400), data.flipped_indices)
    expected = mislabel_detection_recall(is_flipped, detector.mislabel_scores_, fraction=[0.1, 0.2])
    np.testing.assert_allclose(recall["self_influence"][:2], expected, atol=5e-4)
    assert recall["random (expected)"] == (0.1, 0.2, 0.5)
    # the bar for a logistic regression on digits with 10% flipped
    assert recall["self_influence"][0] >= 0.85 and recall["self_influence"][1] >= 0.95
    assert figure.read_text().lstrip().startswith("<?xml")


# -- CSV files ------------------------------------------------------------------------------


def _write_csv(path, n_rows=60, *, header=None, extra=None):
    """Two well separated classes with string labels, from a seeded generator."""
    rng = np.random.RandomState(0)
    labels = np.where(np.arange(n_rows) % 2 == 0, "cat", "dog")
    X = rng.normal(size=(n_rows, 3)) + np.where(labels == "cat", 2.0, -2.0)[:, None]
    header = header or ["a", "b", "c", "species"]
    lines = [",".join(header)]
    for row, label in zip(X, labels, strict=True):
        lines.append(",".join([*(f"{v:.6f}" for v in row), label]))
    if extra:
        lines = extra(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_explain_and_mislabeled_run_on_a_csv_file(tmp_path):
    path = _write_csv(tmp_path / "pets.csv")
    status, text = run(
        [
            "explain",
            "--csv",
            str(path),
            "--target",
            "species",
            "--n-queries",
            "1",
            "--k",
            "2",
            "--n-removed",
            "5",
            "--quiet",
        ]
    )
    assert status == 0
    assert "on 'pets.csv' (45 training / 15 test rows)" in text
    # the test rows are named by their data row in the file: the split is seeded
    first_test_row = np.random.RandomState(0).permutation(60)[45]
    assert re.search(rf"Test row {first_test_row}: label (cat|dog), predicted (cat|dog)", text)
    assert "Pearson" in text
    status, text = run(
        [
            "mislabeled",
            "--csv",
            str(path),
            "--target",
            "species",
            "--flip-fraction",
            "0.1",
            "--k",
            "3",
            "--quiet",
        ]
    )
    assert status == 0 and "(45 training rows, 4 labels flipped at random)" in text
    # the flipped labels of two well separated clusters are the most suspicious points
    assert text.count("yes (") == 3


@pytest.mark.parametrize(
    "make, target, message",
    [
        (None, "species", "no such file; check the path"),
        (lambda p: _write_csv(p), "kind", "--target 'kind' is not a column of"),
        (
            lambda p: _write_csv(
                p,
                header=["a", "b", "colour", "species"],
                extra=lambda lines: (
                    [lines[0]] + [line.replace(line.split(",")[2], "red", 1) for line in lines[1:]]
                ),
            ),
            "species",
            "non-numeric feature column(s) 'colour'; encode them as numbers",
        ),
        (lambda p: _write_csv(p, n_rows=6), "species", "has 6 data rows; at least 10 are needed"),
        (
            lambda p: _write_csv(p, extra=lambda lines: [*lines[:3], ",2,3,cat", *lines[4:]]),
            "species",
            "missing values in column(s) 'a'",
        ),
        (
            lambda p: _write_csv(
                p,
                extra=lambda lines: (
                    [lines[0]] + [line.rsplit(",", 1)[0] + ",cat" for line in lines[1:]]
                ),
            ),
            "species",
            "fewer than 2 classes",
        ),
        (lambda p: p.write_text(""), "species", "is empty; it needs a header row"),
    ],
    ids=[
        "missing-file",
        "missing-target",
        "non-numeric",
        "too-few-rows",
        "missing-value",
        "one-class",
        "empty",
    ],
)
def test_bad_csv_files_exit_with_a_clear_message(tmp_path, make, target, message, capsys):
    path = tmp_path / "data.csv"
    if make is not None:
        make(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["mislabeled", "--csv", str(path), "--target", target])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# -- models and progress --------------------------------------------------------------------


def test_mlp_runs_through_the_skorch_adapter():
    status, text = run(["mislabeled", "--model", "mlp", "--n-train", "100", "--k", "3", "--quiet"])
    assert status == 0 and "NeuralNetClassifier on scikit-learn's digits" in text


def test_progress_goes_to_stderr_and_quiet_silences_it(capsys):
    argv = ["mislabeled", "--n-train", "100", "--k", "1"]
    run(argv)
    err = capsys.readouterr().err
    assert re.search(r"^\[\s*\d+\.\d s\] fitting LogisticRegression", err, re.M)
    assert "ranking by the training loss" in err
    run([*argv, "--quiet"])
    assert capsys.readouterr().err == ""


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for command in ("explain", "decompose", "mislabeled"):
        assert command in help_text


# -- the user's file: rows, ids, continuous targets, reports ---------------------------------


def _csv_reference(path, n_rows, n_train):
    """Split, standardize and fit as the command line documents it, without it."""
    X = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2))
    labels = np.loadtxt(path, delimiter=",", skiprows=1, usecols=3, dtype=str)
    order = np.random.RandomState(0).permutation(n_rows)
    train, test = order[:n_train], order[n_train:]
    X = (X - X[train].mean(0)) / X[train].std(0)
    y = (labels == "dog").astype(int)
    influence = InfluenceFunction(_MODELS["logistic"](None), damping=1e-4).fit(X[train], y[train])
    return train, test, influence.transform(X[test], y[test])


def _printed_rows(text, header, query_name):
    block = text.split(f"Test row {query_name}:")[1].split("\n\n")[0]
    assert f"{header:>6} {'label':>6}" in block
    return re.findall(r"^  (?:helpful|harmful|\s{7})\s+(\S+)\s+(?:cat|dog)\s+\S+$", block, re.M)


def test_csv_examples_are_named_by_their_data_row_or_id_column(tmp_path):
    path = _write_csv(tmp_path / "pets.csv")
    train, test, matrix = _csv_reference(path, 60, 45)
    order = np.argsort(matrix[0], kind="stable")
    expected = [*order[::-1][:2], *order[:2]]  # positions in the training split
    argv = ["explain", "--csv", str(path), "--target", "species", "--n-queries", "1"]
    argv += ["--k", "2", "--n-removed", "0", "--quiet", "--no-report"]
    status, text = run(argv)
    assert status == 0 and "row = 0-based data row of the file" in text
    assert _printed_rows(text, "row", test[0]) == [str(row) for row in train[expected]]
    # an id column names the rows instead, and is not a feature
    lines = path.read_text().splitlines()
    ids = [f"pet{row:03d}" for row in range(60)]
    with_ids = tmp_path / "pets_ids.csv"
    rows = [f"{i},{line}" for i, line in zip(ids, lines[1:], strict=True)]
    with_ids.write_text("\n".join([f"name,{lines[0]}", *rows]) + "\n")
    status, text = run([*argv[:2], str(with_ids), *argv[3:], "--id", "name"])
    assert status == 0
    assert _printed_rows(text, "name", ids[test[0]]) == [ids[row] for row in train[expected]]


def _write_regression_csv(path, n_rows=60):
    rng = np.random.RandomState(0)
    X = rng.normal(size=(n_rows, 2))
    price = 3.0 * X[:, 0] - X[:, 1] + 0.1 * rng.normal(size=n_rows) + 10.0
    rows = [f"{a:.6f},{b:.6f},{p:.3f}" for (a, b), p in zip(X, price, strict=True)]
    lines = ["size,age,price", *rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_continuous_target_is_detected_and_explained_by_a_regressor(tmp_path):
    path = _write_regression_csv(tmp_path / "houses.csv")
    argv = ["explain", "--csv", str(path), "--target", "price", "--n-queries", "1", "--k", "2"]
    status, text = run([*argv, "--n-removed", "6", "--quiet", "--no-report"])
    assert status == 0
    assert "Ridge on 'houses.csv' (45 training / 15 test rows)" in text and "test R^2" in text
    assert float(re.search(r"Pearson (\S+)", text)[1]) > 0.9


@pytest.mark.parametrize(
    "argv, message",
    [
        (["mislabeled"], "is continuous (numeric, 60 distinct values, not all whole numbers); "
         "mislabeled needs class labels: use explain for a continuous target, or --task "
         "classification"),
        (["explain", "--model", "logistic"], "--model logistic needs class labels: use --model "
         "ridge (or --task classification"),
        (["explain", "--model", "mlp"], "--model mlp needs class labels: use --model ridge"),
    ],
)  # fmt: skip
def test_a_continuous_target_is_refused_in_one_line_naming_the_option(
    tmp_path, argv, message, capsys
):
    path = _write_regression_csv(tmp_path / "houses.csv")
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--csv", str(path), "--target", "price"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error


def _report_images(page):
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_report_html_shows_the_right_training_images_of_each_query(reference, tmp_path):
    report = tmp_path / "out.html"
    argv = ["explain", *SMALL_CHECK, "--random-state", "1", "--report", str(report)]
    status, text = run([*argv, "--pbrf-points", "5"])
    assert status == 0 and f"Report (pictures of these images): {report}" in text
    page = report.read_text()
    _, _, matrix = reference
    images = _report_images(page)
    assert len(images) == 2  # one figure per query
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    for query in range(2):
        section = page.split(f"<h2>Test image {query}:")[1].split("<h2>")[0]
        order = np.argsort(matrix[query])
        expected = [*order[::-1][:2], *order[:2]]
        shown = re.findall(r"<tr class=\"(?:helpful|harmful)\"><td>\w*</td><td>(\d+)</td>", section)
        assert [int(index) for index in shown] == expected
    assert "Agreement with actual leave-one-out retraining" in page
    # the quick PBRF check, and what its figures mean in words
    assert re.search(r"PBRF check \(5 of the removed images, \S+ s\): Pearson 0\.9", text)
    assert "Reading: Pearson" in text and "is good agreement with retraining" in text


def test_report_of_a_csv_file_lists_its_rows_and_a_png_report_is_one_figure(tmp_path):
    path = _write_csv(tmp_path / "pets.csv")
    train, test, matrix = _csv_reference(path, 60, 45)
    report = tmp_path / "pets.html"
    argv = ["explain", "--csv", str(path), "--target", "species", "--n-queries", "1", "--k", "2"]
    status, _ = run([*argv, "--n-removed", "0", "--quiet", "--report", str(report)])
    assert status == 0
    page = report.read_text()
    assert f"<h2>Test row {test[0]}:" in page and "<th>a</th><th>b</th><th>c</th>" in page
    best = train[np.argmax(matrix[0])]
    assert f'<tr class="helpful"><td>helpful</td><td>{best}</td>' in page
    figure = tmp_path / "pets.png"
    status, _ = run([*argv, "--n-removed", "0", "--quiet", "--report", str(figure)])
    assert status == 0 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_outputs_go_to_a_new_temporary_folder_not_the_working_directory(
    tmp_path, monkeypatch, _temporary_folder
):
    monkeypatch.chdir(tmp_path)
    path = _write_csv(tmp_path / "pets.csv", n_rows=40)
    argv = ["--csv", str(path), "--target", "species", "--quiet"]
    status, text = run(["decompose", *argv, "--n-points", "2", "--n-test", "5"])
    assert status == 0
    saved = re.search(r"saved to (\S+)", text)[1]
    assert saved.startswith(_temporary_folder) and saved.endswith("decomposition.png")
    status, text = run(["explain", *argv, "--n-queries", "1", "--k", "1", "--n-removed", "0"])
    report = re.search(r"Report \(pictures of these rows\): (\S+)", text)[1]
    assert report.startswith(_temporary_folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets.csv"]  # nothing else written


def test_a_csv_of_pixels_gets_images_in_its_report(tmp_path):
    data = load_digits_split(n_train=50, n_test=10, random_state=0)
    pixels = np.vstack([data.X_train, data.X_test])
    labels = np.concatenate([data.y_train, data.y_test])
    header = ",".join([f"p{i}" for i in range(64)] + ["digit"])
    lines = [",".join([*(f"{v:.4f}" for v in row), str(label)]) for row, label in
             zip(pixels, labels, strict=True)]  # fmt: skip
    path = tmp_path / "pixels.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    report = tmp_path / "pixels.html"
    argv = ["explain", "--csv", str(path), "--target", "digit", "--image-shape", "8x8"]
    status, text = run([*argv, "--n-queries", "2", "--k", "2", "--n-removed", "0", "--quiet",
                        "--report", str(report)])  # fmt: skip
    assert status == 0 and "of 8x8 pixels" in text
    assert len(_report_images(report.read_text())) == 2
    with pytest.raises(SystemExit):
        main([*argv[:-1], "5x5"])
