"""Tests of the command line (``python -m sklearn_influence``), run in-process."""

import io
import re

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits

from sklearn_influence import InfluenceFunction, __version__
from sklearn_influence.__main__ import _MODELS, main
from sklearn_influence.datasets import load_digits_split

SMALL = ["--n-train", "300", "--n-queries", "2", "--k", "2", "--n-removed", "12"]


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
    assert "12 training images removed one at a time and refit" in text
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
        (["decompose"], "invalid choice: 'decompose'"),
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
