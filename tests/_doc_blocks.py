"""The python blocks of the README and of the documentation pages, run as a reader would.

Every block starts with the install line it needs (``# install: pip install -e .`` or
``# install: pip install -e ".[dask]"``) and runs on its own, in an empty working directory
that it must leave empty; a block whose extra is not installed is skipped.
"""

import importlib.util
import re
import warnings
from pathlib import Path

import pytest
import sklearn
import torch
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]

#: the module that tells whether each optional extra of pyproject.toml is installed
EXTRA_MODULES = {"dask": "dask.distributed", "plot": "matplotlib", "pandas": "pandas"}

_INSTALL = re.compile(r'^# install: pip install -e (?:\.|"\.\[([\w,]+)\]")$')


def markdown_blocks(path):
    """The python blocks of a markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```", Path(path).read_text(), re.S | re.M)


def rst_blocks(path):
    """The ``.. code-block:: python`` blocks of a reStructuredText file, dedented."""
    blocks = []
    for match in re.finditer(
        r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", Path(path).read_text(), re.M
    ):
        lines = match[1].rstrip("\n").splitlines()
        blocks.append("\n".join(line[3:] for line in lines) + "\n")
    return blocks


def extras(block):
    """The extras the block's first line installs (a ValueError when it has none)."""
    first = block.splitlines()[0] if block.strip() else ""
    match = _INSTALL.match(first)
    if match is None:
        raise ValueError(
            f"the block must start with its install line, e.g. '# install: pip install -e .' "
            f"or '# install: pip install -e \".[dask]\"'; it starts with {first!r}"
        )
    return [] if match[1] is None else match[1].split(",")


def declared_extras():
    """The optional extras of pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["project"]["optional-dependencies"])


def skip_without_extras(block):
    for extra in extras(block):
        module = EXTRA_MODULES[extra]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f'needs the {extra!r} extra: pip install -e ".[{extra}]"')


def run_block(block, name, directory, monkeypatch):
    """Execute ``block`` alone as a script (``__name__ == "__main__"``) in ``directory``.

    One thread: on a busy 2-core machine the BLAS and OpenMP pools of small fits spin
    against each other and run many times slower (see the README); results do not change.
    Returns the block's namespace; fails when the block leaves files behind.
    """
    skip_without_extras(block)
    monkeypatch.chdir(directory)
    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    namespace = {"__name__": "__main__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # a block may change the warning filters or scikit-learn's configuration: not for
        # the tests that follow
        with threadpool_limits(limits=1), warnings.catch_warnings(), sklearn.config_context():
            exec(compile(block, name, "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        if importlib.util.find_spec("matplotlib") is not None:
            import matplotlib.pyplot as plt

            plt.close("all")
    left = sorted(path.name for path in Path(directory).iterdir())
    assert not left, f"{name} left files in the working directory: {left}"
    return namespace
