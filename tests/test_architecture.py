"""The estimators talk to each other through documented names (DESIGN.md §3)."""

import ast
import pathlib
import re

import sklearn_influence

PACKAGE = pathlib.Path(sklearn_influence.__file__).parent

#: private state of one object that another module must not read
PRIVATE_READ = re.compile(r"\b(?!self\b)[a-z_]+\._(engine|problem|agreement|adapter|fit_state)\b")


def test_no_module_reads_another_objects_private_state():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_READ.search(line.replace("sklearn_influence._", ""))
    ]
    assert offenders == []


def test_the_command_line_imports_public_names_only():
    tree = ast.parse((PACKAGE / "__main__.py").read_text(encoding="utf-8"))
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sklearn_influence"):
            if any(part.startswith("_") for part in node.module.split(".")[1:]):
                private.append(node.module)
            private += [
                alias.name
                for alias in node.names
                if alias.name.startswith("_") and not alias.name.endswith("__")
            ]
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: the CLI's own modules
            if node.module not in ("_cli_data", "_cli_output"):
                private.append(f"{'.' * node.level}{node.module}")
    assert private == []
