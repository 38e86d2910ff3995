"""The documentation builds offline without warnings, and the gallery examples run.

The build test renders the gallery without executing it (``-D plot_gallery=0``); the examples
are run by ``test_gallery_example_runs`` instead. The full build that executes them is
``python -m sphinx -W -b html doc doc/_build/html`` (see doc/README.md).
"""

import importlib.util
import inspect
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _doc_blocks import declared_extras, extras, rst_blocks, run_block, skip_without_extras
from threadpoolctl import threadpool_limits

import sklearn_influence

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))
DOC_TOOLS = ("sphinx", "numpydoc", "sphinx_gallery")
MISSING = [name for name in DOC_TOOLS if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(
    bool(MISSING),
    reason=f"documentation tools not installed ({', '.join(MISSING)}); "
    'install them with pip install -e ".[docs]"',
)
def test_docs_build_offline_without_warnings(tmp_path):
    # build from a copy so that generated pages (gen_modules/, auto_examples/) never touch
    # the checkout and parallel runs cannot collide
    shutil.copytree(ROOT / "doc", tmp_path / "doc", ignore=shutil.ignore_patterns("_build"))
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    output = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html"]
    command += ["-D", "plot_gallery=0", str(tmp_path / "doc"), str(output)]
    # no proxy: a build that reached for the network would fail here rather than hang
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"sphinx failed:\n{result.stdout}\n{result.stderr}"
    for page in ("index", "install", "user_guide", "architecture", "api", "auto_examples/index"):
        assert (output / f"{page}.html").is_file()
    # every public name has an API page
    for name in sklearn_influence.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(sklearn_influence, name)
        if inspect.ismodule(obj):
            for member in set(obj.__all__) - set(sklearn_influence.__all__):
                page = output / "gen_modules" / f"sklearn_influence.{name}.{member}.html"
                assert page.is_file(), f"{name}.{member}"
        else:
            assert (output / "gen_modules" / f"sklearn_influence.{name}.html").is_file(), name


@pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed"
)
@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_gallery_example_runs(example, monkeypatch, tmp_path):
    """Run each example as the full gallery build would (non-interactive backend).

    With one thread: on a busy 2-core machine the BLAS and OpenMP pools of small fits spin
    against each other and run many times slower; the results do not change.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)  # anything an example writes stays out of the checkout
    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            runpy.run_path(str(example), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
        plt.close("all")


def test_there_are_gallery_examples():
    assert EXAMPLES, "examples/ must contain at least one plot_*.py gallery example"


#: the pages whose python blocks a reader runs as written
PAGES = ("doc/user_guide.rst", "doc/index.rst")
DOC_BLOCKS = [(page, number, block) for page in PAGES for number, block in
              enumerate(rst_blocks(ROOT / page))]  # fmt: skip


def test_doc_pages_have_python_blocks_starting_with_their_install_line():
    assert {page for page, _, _ in DOC_BLOCKS} == set(PAGES)
    for page, number, block in DOC_BLOCKS:
        assert set(extras(block)) <= declared_extras(), f"{page} block {number}"


@pytest.mark.parametrize(
    "page, number, block", DOC_BLOCKS, ids=[f"{p.split('/')[-1]}-{n}" for p, n, _ in DOC_BLOCKS]
)
def test_doc_python_block_runs_on_its_own(page, number, block, tmp_path, monkeypatch):
    if "Client(" in block:
        # a Dask cluster's worker processes import the main module: run it as a real script
        skip_without_extras(block)
        script = tmp_path / "block.py"
        script.write_text(block)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
            timeout=300, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "(100, 600)" in result.stdout
        assert sorted(path.name for path in tmp_path.iterdir()) == ["block.py"]
        return
    namespace = run_block(block, f"{page} python block {number}", tmp_path, monkeypatch)
    if "matrix" in namespace:
        assert namespace["matrix"].shape == (100, 600)


def test_install_page_states_the_one_torch_requirement():
    text = (ROOT / "doc" / "install.rst").read_text()
    assert "PyTorch ≥ 2.1" in text and "≤ 2.13" not in text
    assert "project's machines" not in text and "these machines" not in text


def _paper_table2():
    """benchmarks/paper_table2.py as a module (it imports its neighbour ``_shared``)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "paper_table2", ROOT / "benchmarks" / "paper_table2.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def _json_numbers(value):
    """Every float of a JSON document, recursively."""
    if isinstance(value, dict):
        return [n for item in value.values() for n in _json_numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _json_numbers(item)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _renderings(number):
    """The ways the page may print ``number``: fixed 1–3 decimals, 1–2 significant digits,
    or the mantissa of a×10ⁿ."""
    forms = {f"{number:.{d}f}" for d in (1, 2, 3)} | {f"{number:.{d}g}" for d in (1, 2)}
    forms.add(f"{number:.1e}".split("e")[0])
    return {form.replace("-", "−") for form in forms} | forms


def test_paper_comparison_tables_are_rendered_from_the_committed_json():
    module = _paper_table2()
    saved = json.loads((ROOT / "benchmarks" / "results" / "paper_table2.json").read_text())
    for name, table in module.docs_tables(saved).items():
        assert (ROOT / "doc" / "generated" / name).read_text() == table, (
            f"doc/generated/{name} is stale: rerun benchmarks/paper_table2.py "
            "(--from-json benchmarks/results/paper_table2.json re-renders without computing)"
        )
        assert f"generated/{name}" in (ROOT / "doc" / "paper_comparison.rst").read_text()


def test_paper_comparison_prose_quotes_only_numbers_of_the_json():
    """Every decimal number in the page's own text is a value of the committed results (or
    one of the paper's figures): no number copied by hand can go stale unnoticed."""
    results = ROOT / "benchmarks" / "results"
    numbers = _json_numbers(json.loads((results / "paper_table2.json").read_text()))
    numbers += _json_numbers(json.loads((results / "paper_trends.json").read_text()))
    allowed = {form for number in numbers for form in _renderings(number)}
    allowed |= {"0.52", "0.99", "−0.08", "0.12"}  # the paper's Table 2 ranges
    text = (ROOT / "doc" / "paper_comparison.rst").read_text()
    quoted = re.findall(r"[−-]?\d+\.\d+", text)
    assert quoted, "the page quotes no figures"
    missing = sorted({number for number in quoted if number not in allowed})
    assert not missing, f"numbers in doc/paper_comparison.rst not in the results: {missing}"
