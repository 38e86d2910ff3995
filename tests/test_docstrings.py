"""Every public docstring's ``Parameters`` section lists exactly the signature's parameters,
in order (as imbalanced-learn and scikit-learn check theirs)."""

import inspect

import pytest
from numpydoc.docscrape import ClassDoc, FunctionDoc

import sklearn_influence
from sklearn_influence import datasets, make_influence_scorer, metrics


def _public_methods(cls):
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not callable(member) or isinstance(member, type):
            continue
        if name not in vars(cls) and not any(
            name in vars(base) for base in cls.__mro__ if base.__module__.startswith("sklearn_")
        ):
            continue  # inherited from scikit-learn or torch: documented there
        if isinstance(inspect.getattr_static(cls, name), property):
            continue
        yield f"{cls.__name__}.{name}", member


def _documented():
    classes = [
        getattr(sklearn_influence, name)
        for name in sklearn_influence.__all__
        if isinstance(getattr(sklearn_influence, name), type)
    ]
    classes += [getattr(datasets, name) for name in datasets.__all__]
    classes = [obj for obj in classes if isinstance(obj, type)]
    functions = [make_influence_scorer]
    for module in (metrics, datasets):
        functions += [
            getattr(module, name)
            for name in module.__all__
            if inspect.isfunction(getattr(module, name))
        ]
    items = []
    for cls in dict.fromkeys(classes):
        items.append((cls.__name__, cls))
        items += list(_public_methods(cls))
    items += [(function.__name__, function) for function in dict.fromkeys(functions)]
    return items


def _signature_names(obj):
    function = obj.__init__ if isinstance(obj, type) else obj
    names = []
    for name, parameter in inspect.signature(function).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        names.append(name)
    return names


DOCUMENTED = _documented()


@pytest.mark.parametrize(("name", "obj"), DOCUMENTED, ids=[name for name, _ in DOCUMENTED])
def test_parameters_section_matches_the_signature(name, obj):
    doc = ClassDoc(obj) if isinstance(obj, type) else FunctionDoc(obj)
    documented = [parameter.name for parameter in doc["Parameters"]]
    # "a, b : int" documents two parameters
    documented = [part.strip() for entry in documented for part in entry.split(",")]
    documented = [part for part in documented if not part.startswith("*")]
    assert documented == _signature_names(obj), f"{name}: Parameters section vs signature"


def test_the_list_covers_the_public_api():
    names = {name for name, _ in DOCUMENTED}
    assert {"InfluenceFunction", "InfluenceFunction.transform", "TanhMLP"} <= names
    assert {"make_influence_scorer", "load_digits_split"} <= names
    functions = {name for name in metrics.__all__ if inspect.isfunction(getattr(metrics, name))}
    assert functions and functions <= names
