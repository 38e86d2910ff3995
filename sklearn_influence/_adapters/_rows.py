"""Named inputs (skorch's dict X) as one object the engine can slice like a tensor.

skorch passes a dict X to the module as keywords, ``module(**X)``. :class:`RowBatch` keeps
each named array as its own tensor (they are never stacked into one array) and offers the
few tensor operations the engine uses on inputs: ``len``, row indexing, ``unsqueeze``,
``to``/``double``/``detach``, ``device`` and ``dtype``. It is registered as a
:mod:`torch.utils._pytree` node, so :func:`torch.func.vmap` maps over the rows of every
named tensor at once.
"""

import numpy as np
import torch
from torch.utils import _pytree


class RowBatch:
    """Rows of several named tensors that share their first dimension.

    Parameters
    ----------
    tensors : dict of str to Tensor
        The named inputs, each with one row per example.
    dtype : torch.dtype or None
        The floating dtype the batch reports (the model's); None: the first floating
        tensor's, else float64.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence._adapters._rows import RowBatch
    >>> batch = RowBatch({"x": torch.zeros(5, 3), "ids": torch.arange(5)})
    >>> len(batch), batch[1:3]["x"].shape, batch.unsqueeze(0)["ids"].shape
    (5, torch.Size([2, 3]), torch.Size([1, 5]))
    >>> torch.func.vmap(lambda row: row["x"].sum() + row["ids"])(batch)
    tensor([0., 1., 2., 3., 4.])
    """

    def __init__(self, tensors, dtype=None):
        self.tensors = dict(tensors)
        if dtype is None:
            floating = [t.dtype for t in self.tensors.values() if t.is_floating_point()]
            dtype = floating[0] if floating else torch.float64
        self.dtype = dtype

    def _map(self, function):
        return RowBatch({name: function(t) for name, t in self.tensors.items()}, self.dtype)

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.tensors[key]
        return self._map(lambda t: t[key])

    def keys(self):
        return self.tensors.keys()

    def items(self):
        return self.tensors.items()

    @property
    def device(self):
        return next(iter(self.tensors.values())).device

    @property
    def shape(self):
        return (len(self),)

    def unsqueeze(self, dim):
        return self._map(lambda t: t.unsqueeze(dim))

    def detach(self):
        return self._map(lambda t: t.detach())

    def numel(self):
        return sum(t.numel() for t in self.tensors.values())

    def is_floating_point(self):
        return False  # several tensors: no single value range to report

    def to(self, device=None, dtype=None):
        """Every tensor on ``device``; floating tensors (only) in ``dtype``."""

        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        moved = self._map(move)
        moved.dtype = self.dtype if dtype is None else dtype
        return moved

    def double(self):
        return self.to(dtype=torch.float64)

    def cpu(self):
        return self.to(device="cpu")


def _flatten(batch):
    return list(batch.tensors.values()), (list(batch.tensors), batch.dtype)


def _unflatten(values, context):
    names, dtype = context
    return RowBatch(dict(zip(names, values, strict=True)), dtype)


_pytree.register_pytree_node(
    RowBatch, _flatten, _unflatten, serialized_type_name="sklearn_influence.RowBatch"
)


def rows_of(X, rows):
    """Rows ``rows`` of an array or of every array of a dict X (skorch's named inputs)."""
    if isinstance(X, dict):
        return {name: np.asarray(value)[rows] for name, value in X.items()}
    return X[rows]


def n_rows(X):
    """Number of rows of an array or of a dict of arrays."""
    if isinstance(X, dict):
        return len(next(iter(X.values())))
    return len(X)
