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
from torch.utils.data import Dataset, Subset, default_collate


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
    """Rows ``rows`` of an array, of every array of a dict X (skorch's named inputs), or of a
    data set (a :class:`~torch.utils.data.Subset`, nothing loaded)."""
    if isinstance(X, Dataset):
        positions = range(*rows.indices(len(X))) if isinstance(rows, slice) else rows
        return Subset(X, np.asarray(positions, dtype=np.int64).tolist())
    if isinstance(X, dict):
        return {name: np.asarray(value)[rows] for name, value in X.items()}
    return X[rows]


def n_rows(X):
    """Number of rows of an array or of a dict of arrays."""
    if isinstance(X, dict):
        return len(next(iter(X.values())))
    return len(X)


# -- data sets: rows loaded on demand ----------------------------------------------------------
def is_dataset(X):
    """Whether X is a :class:`torch.utils.data.Dataset` (skorch's ``Dataset`` included)."""
    return isinstance(X, Dataset)


def item_input(item):
    """The input part of a data set's item: the first element of an (input, target) pair."""
    return item[0] if isinstance(item, (tuple, list)) else item


def item_target(item):
    """The target part of an (input, target) item, or None."""
    if isinstance(item, (tuple, list)) and len(item) > 1:
        target = item[1]
        return target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else target
    return None


class DatasetInputs(Dataset):
    """The inputs of a data set, item by item, as ``convert`` makes them (or as they are)."""

    def __init__(self, dataset, convert=None):
        self.dataset, self.convert = dataset, convert

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        value = item_input(self.dataset[int(i)])
        return value if self.convert is None else self.convert(value)


class PairedRows(Dataset):
    """``(input_i, y_i)`` items (skorch's convention) from a data set of inputs and targets."""

    def __init__(self, inputs, y):
        self.inputs, self.y = inputs, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.inputs[i], self.y[i]


class DatasetRows:
    """The training or query inputs of a data set, loaded a block of rows at a time.

    The engine indexes its inputs by blocks of rows (``inputs[rows]``); here each such
    access loads those items, collates them (:func:`torch.utils.data.default_collate`) and
    converts them with ``to_tensor`` (the adapter's dtype and device): the data set is never
    stacked into one array. ``len``, ``device`` and ``dtype`` are answered without loading.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Items are the inputs, or (input, target) pairs.
    to_tensor : callable
        Maps a collated batch (a tensor or a dict of tensors) to the model's input.
    device : torch.device
    dtype : torch.dtype

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> from sklearn_influence._adapters._rows import DatasetRows
    >>> data = TensorDataset(torch.arange(10.0).reshape(5, 2), torch.arange(5))
    >>> rows = DatasetRows(data, lambda batch: batch, torch.device("cpu"), torch.float32)
    >>> len(rows), rows[1:3].tolist(), rows[torch.tensor([4])].shape
    (5, [[2.0, 3.0], [4.0, 5.0]], torch.Size([1, 2]))
    """

    def __init__(self, dataset, to_tensor, device, dtype):
        self.dataset, self.to_tensor = dataset, to_tensor
        self.device, self.dtype = device, dtype

    def __len__(self):
        return len(self.dataset)

    @property
    def shape(self):
        return (len(self),)

    def positions(self, key):
        if isinstance(key, slice):
            return range(*key.indices(len(self)))
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return np.atleast_1d(np.asarray(key)).tolist()

    def __getitem__(self, key):
        items = [item_input(self.dataset[i]) for i in self.positions(key)]
        if not items:
            raise ValueError("An empty block of rows was requested from the data set.")
        return self.to_tensor(default_collate(items)).to(self.device)

    def to(self, device=None, dtype=None):
        """The same rows, converted on loading to ``device`` (and floating ``dtype``)."""
        device = self.device if device is None else torch.device(device)
        convert = self.to_tensor
        if dtype is not None:

            def convert(batch, inner=self.to_tensor):
                batch = inner(batch)
                if isinstance(batch, RowBatch) or batch.is_floating_point():
                    return batch.to(dtype=dtype)
                return batch

        return DatasetRows(self.dataset, convert, device, dtype or self.dtype)

    def double(self):
        return self.to(dtype=torch.float64)

    def detach(self):
        return self

    def is_floating_point(self):
        return False  # values are only seen a block at a time


def head_rows(X, n=2):
    """The first ``n`` rows of X as arrays (a data set's first items collated to numpy)."""
    if not isinstance(X, Dataset):
        return rows_of(X, slice(0, n))
    batch = default_collate([item_input(X[i]) for i in range(min(n, len(X)))])
    if isinstance(batch, dict):
        return {key: np.asarray(value) for key, value in batch.items()}
    return np.asarray(batch)
