"""Every code block of README.md works: each python block runs on its own after the install
line it starts with, leaving nothing behind; the commands parse."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from _doc_blocks import declared_extras, extras, markdown_blocks, run_block

from sklearn_influence.__main__ import _build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = markdown_blocks(README)

pytestmark = pytest.mark.filterwarnings(
    # Dask's own advice when a fitted estimator (its training data) travels to a worker
    "ignore:Sending large graph:UserWarning:distributed.*"
)


def _bash_blocks():
    return re.findall(r"^```bash\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_has_python_blocks_and_every_block_is_tagged():
    assert len(BLOCKS) >= 8
    # an untagged block would silently escape this test
    assert not re.search(r"^```\n(?!\s*$)", README.read_text().replace("```\n\n", "")), (
        "every code block in README.md needs a language tag"
    )


def test_every_python_block_starts_with_its_install_line_naming_real_extras():
    for number, block in enumerate(BLOCKS):
        named = extras(block)  # a ValueError names the block's first line
        assert set(named) <= declared_extras(), f"README block {number} names {named}"


def test_readme_states_the_two_set_up_commands_exactly():
    commands = [line for block in _bash_blocks() for line in block.splitlines()]
    assert (
        "pip install torch==2.13.0 && pip install -e . && python -m sklearn_influence" in commands
    )
    assert 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest' in commands


def test_one_torch_requirement_and_threads_advice():
    text = README.read_text()
    assert "torch>=2.1" in text and "≤ 2.13" not in text and "these machines" not in text
    assert "torch.set_num_threads(1)" in text and "OMP_NUM_THREADS" in text


def _check_block(namespace, printed):
    """What each block computes, by the names it defines."""
    if "self_influence" in namespace:  # the quickstart
        assert "(100, 600)" in printed and namespace["matrix"].shape == (100, 600)
        assert (namespace["self_influence"] >= 0).all() and namespace["agreement"] > 0.9
    if "net_matrix" in namespace:  # skorch: a trained net, CG on its Gauss-Newton matrix
        assert namespace["net_matrix"].shape == (100, 600)
        assert np.isfinite(namespace["net_matrix"]).all()
        assert namespace["net_influence"].solver_ == "cg"
    if "best_matrix" in namespace:
        assert namespace["search"].best_params_["damping"] in (1e-4, 1e-2, 1.0)
        assert namespace["best_matrix"].shape == (100, 600)
    if "routed" in namespace:
        assert namespace["routed"].shape == (10, 300)
    if "selected" in namespace:
        assert namespace["selected"].damping_ in (1e-4, 1e-2, 1.0)
    if "recall" in namespace:
        assert namespace["recall"][0] >= 0.85 and namespace["recall"][1] >= 0.95
    if "table" in namespace:  # PBRF and the decomposition
        actual, predicted = namespace["actual"].ravel(), namespace["predicted"].ravel()
        assert np.corrcoef(actual, predicted)[0, 1] > 0.99
        assert namespace["table"].index[0] == "warm_start_gap"
    if "matrix_dask" in namespace:
        np.testing.assert_allclose(
            namespace["matrix_dask"], namespace["matrix"], rtol=1e-10, atol=1e-15
        )
        assert "same as n_jobs=1: True" in printed
    if "display" in namespace:
        assert namespace["display"].axes_.shape == (3, 7)


def test_the_blocks_cover_the_workflows():
    names = "\n".join(BLOCKS)
    for name in ("self_influence", "net_matrix", "best_matrix", "routed", "selected", "recall",
                 "table", "matrix_dask", "display"):  # fmt: skip
        assert f"{name} =" in names, name


@pytest.mark.parametrize("number", range(len(BLOCKS)), ids=lambda n: f"block{n}")
def test_readme_python_block_runs_on_its_own(number, tmp_path, monkeypatch, capsys):
    namespace = run_block(BLOCKS[number], f"README.md python block {number}", tmp_path, monkeypatch)
    _check_block(namespace, capsys.readouterr().out)


def test_readme_command_lines_parse():
    parser, _ = _build_parser()
    lines = [
        line.split("#")[0].strip()
        for block in _bash_blocks()
        for line in block.splitlines()
        if line.startswith("python -m sklearn_influence ")
    ]
    assert lines
    for line in lines:
        arguments = shlex.split(line)[3:]
        if "--help" in arguments:
            continue
        parser.parse_args(arguments)  # exits with status 2 on a bad option


@pytest.mark.parametrize("target", ["doc/README.md", "benchmarks/README.md", "doc/user_guide.rst"])
def test_readme_links_exist(target):
    assert f"({target})" in README.read_text()
    assert (README.parent / target).is_file()
