"""Sphinx configuration of the sklearn_influence documentation.

The build is offline: no intersphinx, math is rendered by MathJax in the reader's browser.
The API page lists every name in ``sklearn_influence.__all__``; the list is generated here at
build time (``gen_modules/api_list.inc``) so it never goes stale.

Full build (runs the gallery)::

    python -m sphinx -W -b html doc doc/_build/html

Fast build without running the examples (what ``tests/test_docs.py`` does)::

    python -m sphinx -W -b html -D plot_gallery=0 doc doc/_build/html
"""

import inspect
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout, even when the package is not installed

import sklearn_influence  # noqa: E402

project = "sklearn_influence"
author = "sklearn_influence developers"
copyright = "sklearn_influence developers"
release = sklearn_influence.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = []
exclude_patterns = ["_build", "README.md", "gen_modules/*.inc", "**/*.ipynb"]
root_doc = "index"
html_theme = "alabaster"
html_static_path = []
html_title = f"sklearn_influence {release}"

# -- API pages -------------------------------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"  # numpydoc sections carry the types
numpydoc_show_class_members = False  # methods are documented inline by autodoc
numpydoc_class_members_toctree = False

# -- gallery ---------------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": str(HERE / "auto_examples"),
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "reference_url": {},  # no links to other projects' docs: they would need network access
    "backreferences_dir": None,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    # examples share the machine with the build; they must be CPU-fast
    "abort_on_example_error": True,
}


def _api_list():
    """reST for the API page: top-level classes/functions, then each public submodule."""
    top, modules = [], []
    for name in sklearn_influence.__all__:
        obj = getattr(sklearn_influence, name)
        if name.startswith("__"):
            continue
        (modules if inspect.ismodule(obj) else top).append(name)
    lines = [
        "Estimators and functions",
        "------------------------",
        "",
        ".. currentmodule:: sklearn_influence",
        "",
        ".. autosummary::",
        "   :toctree: gen_modules/",
        "",
        *(f"   {name}" for name in sorted(top)),
        "",
    ]
    for name in sorted(modules):
        module = getattr(sklearn_influence, name)
        title = f":mod:`sklearn_influence.{name}`"
        # names also exported at the top level are documented there once
        members = sorted(set(getattr(module, "__all__", [])) - set(top))
        lines += [title, "-" * len(title), "", f".. automodule:: sklearn_influence.{name}"]
        lines += ["   :no-members:", ""]
        lines += [f".. currentmodule:: sklearn_influence.{name}", "", ".. autosummary::"]
        lines += ["   :toctree: gen_modules/", "", *(f"   {member}" for member in members), ""]
    return "\n".join(lines)


(HERE / "gen_modules").mkdir(exist_ok=True)
(HERE / "gen_modules" / "api_list.inc").write_text(_api_list())


def _generate_api_stubs(app):
    """Write the autosummary stub pages for the generated API list.

    Sphinx's own stub generation scans source documents only, not files they include.
    """
    from sphinx.ext.autosummary.generate import generate_autosummary_docs

    generate_autosummary_docs(
        [str(HERE / "gen_modules" / "api_list.inc")],
        output_dir=HERE / "gen_modules",
        suffix=".rst",
        base_path=app.srcdir,
        app=app,
        overwrite=True,
    )


# a name ending in "_" followed by "," or ")" -- as in "shape (n_features_in_,)" -- would be a
# reST reference; escape its underscore
_TRAILING_UNDERSCORE = re.compile(r"(?<![\w`*\\])([A-Za-z][A-Za-z0-9_]*)_(?=[,)])")


def _escape_trailing_underscores(app, what, name, obj, options, lines):
    for position, line in enumerate(lines):
        if not line.lstrip().startswith((">>>", "...")):
            lines[position] = _TRAILING_UNDERSCORE.sub(r"\1\\_", line)


def _skip_metadata_request_methods(app, what, name, obj, skip, options):
    """Skip ``set_*_request``: scikit-learn generates them and their docstrings link into
    scikit-learn's own documentation."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("builder-inited", _generate_api_stubs)
    # before numpydoc (priority 500), on the raw numpydoc text
    app.connect("autodoc-process-docstring", _escape_trailing_underscores, priority=400)
    app.connect("autodoc-skip-member", _skip_metadata_request_methods)
