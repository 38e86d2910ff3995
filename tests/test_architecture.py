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


def _imports_of(path):
    """The package modules ``path`` imports (absolute and relative, at any depth of the file)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if module.endswith(".__init__"):
        package = module = module[: -len(".__init__")]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update([target, *names])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return module, {name for name in found if name.startswith("sklearn_influence")}


#: each layer and the layers it must never import (DESIGN.md §3: arrows point down)
FORBIDDEN = {
    "sklearn_influence._adapters": ("_engine", "_responses", "metrics", "_influence", "_base"),
    "sklearn_influence._engine": ("_responses", "metrics", "_influence", "_cv", "_base"),
    "sklearn_influence._responses": ("metrics", "_influence", "_cv", "_mislabel", "_base"),
    "sklearn_influence.metrics": ("_influence", "_cv", "_mislabel", "_decomposition"),
}


def test_layers_import_only_downward():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, imported = _imports_of(path)
        for layer, forbidden in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                offenders += [
                    f"{module} imports {name}"
                    for name in imported
                    for part in forbidden
                    if name == f"sklearn_influence.{part}"
                    or name.startswith(f"sklearn_influence.{part}.")
                ]
    assert offenders == []


def test_no_import_cycle_between_the_package_modules():
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module, imported = _imports_of(path)
        modules[module] = imported
    graph = {
        module: {name for name in imported if name in modules and name != module}
        for module, imported in modules.items()
    }
    # no exemption: a submodule importing its own package (whose __init__ imports the
    # submodule back) is a cycle like any other
    state, cycle = {}, []

    def visit(node, trail):
        state[node] = "open"
        for name in sorted(graph[node]):
            if state.get(name) == "open":
                cycle.append(" -> ".join([*trail[trail.index(name) :], name]))
            elif name not in state:
                visit(name, [*trail, name])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycle == []
