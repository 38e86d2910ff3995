"""What a module's ``forward`` returns, reduced to the one tensor the package calls h.

The rule (documented in the user guide and on :class:`~sklearn_influence.InfluenceFunction`):

* a tensor is used as it is;
* a tuple or list: its first element (skorch's own rule for ``predict``);
* a mapping (a dict, a Hugging Face ``ModelOutput``): its ``"logits"`` entry, else its only
  tensor value;
* any other object (an attribute container such as a ``SimpleNamespace`` or a dataclass):
  its ``logits`` attribute.

Anything else is a ``TypeError`` that says how to return the logits.
"""

from collections.abc import Mapping

import torch


def module_logits(out):
    """The tensor of a module's output, by the rule of this module.

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from sklearn_influence._adapters._skorch_outputs import module_logits
    >>> logits = torch.zeros(2, 3)
    >>> module_logits({"logits": logits, "hidden": torch.ones(2, 8)}) is logits
    True
    >>> module_logits(SimpleNamespace(logits=logits, loss=None)) is logits
    True
    >>> module_logits((logits, torch.ones(1))) is logits
    True
    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return module_logits(out[0])
    if isinstance(out, Mapping):
        if "logits" in out:
            return out["logits"]
        tensors = [value for value in out.values() if isinstance(value, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        _refuse(out, f"a mapping with keys {sorted(map(str, out))} and no 'logits' entry")
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    _refuse(out, f"a {type(out).__name__}")


def _refuse(out, what):
    raise TypeError(
        f"The module's forward returned {what}; sklearn_influence needs one tensor of "
        "outputs. Return a tensor, a tuple whose first element is the outputs, or a dict "
        "(or object) with the outputs under 'logits'."
    )
