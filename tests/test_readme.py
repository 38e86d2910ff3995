"""Every code block of README.md works: python blocks run, commands parse."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from sklearn_influence.__main__ import _build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_has_python_blocks_and_every_block_is_tagged():
    assert len(_blocks("python")) >= 2
    # an untagged block would silently escape this test
    assert not re.search(r"^```\n(?!\s*$)", README.read_text().replace("```\n\n", "")), (
        "every code block in README.md needs a language tag"
    )


def test_readme_states_the_two_set_up_commands_exactly():
    commands = [line for block in _blocks("bash") for line in block.splitlines()]
    assert (
        "pip install torch==2.13.0 && pip install -e . && python -m sklearn_influence" in commands
    )
    assert 'pip install torch==2.13.0 && pip install -e ".[test]" && python -m pytest' in commands


def test_readme_python_blocks_run(capsys):
    """Run the python blocks in order, in one namespace, as a reader pasting them would."""
    namespace = {"__name__": "__readme__"}
    threads = torch.get_num_threads()
    # one thread: on a busy 2-core machine the BLAS and OpenMP pools of small fits spin
    # against each other and run many times slower; the results do not change
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            for number, block in enumerate(_blocks("python")):
                exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "(100, 600)" in printed
    assert namespace["matrix"].shape == (100, 600)
    assert (namespace["self_influence"] >= 0).all()
    # the skorch block: a trained net, CG on its Gauss-Newton matrix
    assert namespace["net_matrix"].shape == (100, 600)
    assert np.isfinite(namespace["net_matrix"]).all() and namespace["net_influence"].solver_ == "cg"
    assert namespace["agreement"] > 0.9
    assert namespace["search"].best_params_["damping"] in (1e-4, 1e-2, 1.0)
    # the workflow blocks: damping selection, mislabel detection, PBRF, decomposition, Dask
    assert namespace["selected"].damping_ in (1e-4, 1e-2, 1.0)
    assert namespace["recall"][0] >= 0.85 and namespace["recall"][1] >= 0.95
    assert np.corrcoef(namespace["actual"].ravel(), namespace["predicted"].ravel())[0, 1] > 0.99
    assert namespace["table"].index[0] == "warm_start_gap"
    np.testing.assert_allclose(
        namespace["matrix_dask"], namespace["matrix"], rtol=1e-10, atol=1e-15
    )
    assert "same as n_jobs=1: True" in printed


def test_readme_command_lines_parse():
    parser, _ = _build_parser()
    lines = [
        line.split("#")[0].strip()
        for block in _blocks("bash")
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
