"""Small bundled data sets and a toy network for examples, the command line and tests.

Every loader returns a :class:`~sklearn.utils.Bunch` with a fixed train/test split, so that
influence matrices (rows: test queries, columns: training points) can be indexed back to the
images they describe (no download). :class:`TanhMLP` is the small network that the command
line, the tests and the benchmarks train on them; :class:`Autoencoder` (reconstructs its
input), :class:`LeNet`, :class:`AlexNet` and :class:`VGG` (convolutional), :class:`ResNet`
(residual, with batch normalisation) and :class:`TransformerClassifier` (attention over an
image's rows) are the small networks beyond MLPs, one per model family of Bae et al. (2022),
for the 8×8 images (``images_train`` of :func:`load_digits_split`, shape (n, 8, 8); reshape
to (n, 1, 8, 8) for the convolutional ones).
"""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.utils import Bunch, check_random_state

from ._networks import VGG, AlexNet, Autoencoder, LeNet, ResNet, TransformerClassifier

__all__ = [
    "VGG",
    "AlexNet",
    "Autoencoder",
    "LeNet",
    "ResNet",
    "TanhMLP",
    "TransformerClassifier",
    "load_digits_split",
]

#: the largest pixel value of scikit-learn's digits (4-bit grey levels)
_DIGITS_MAX_PIXEL = 16.0


def _check_count(name, value, low, high, n_total):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}.")
    if not low <= value <= high:
        raise ValueError(
            f"{name}={value} is out of range: the digits data set has {n_total} images in all, "
            f"so {name} must be between {low} and {high} here. Lower n_train or n_test."
        )


def _flip_labels(y, fraction, classes, rng):
    """Give round(fraction·n) labels, drawn without replacement, another class at random."""
    n_flipped = round(fraction * len(y))
    flipped = np.sort(rng.choice(len(y), size=n_flipped, replace=False))
    positions = np.searchsorted(classes, y[flipped])
    # an offset in 1..n_classes-1 always lands on a different class, uniformly
    offsets = rng.randint(1, len(classes), size=n_flipped)
    noisy = y.copy()
    noisy[flipped] = classes[(positions + offsets) % len(classes)]
    return noisy, flipped


def load_digits_split(*, n_train=1500, n_test=None, flip_fraction=0.0, random_state=0):
    """scikit-learn's 8×8 digits, split at random into a training and a test set.

    The 1,797 bundled images (no download) are shuffled with ``random_state``; the first
    ``n_train`` form the training set and the next ``n_test`` the test set. Pixel values are
    scaled from 0..16 to [0, 1]. Optionally a fraction of the *training* labels is flipped
    to another class, chosen uniformly at random, for mislabel-detection experiments.

    Parameters
    ----------
    n_train : int, default=1500
        Number of training images (1 to 1,796).
    n_test : int or None, default=None
        Number of test images; None takes all images not used for training.
    flip_fraction : float, default=0.0
        Fraction of training labels, in [0, 1), replaced by a different class at random.
        ``round(flip_fraction * n_train)`` labels are flipped.
    random_state : int, RandomState instance or None, default=0
        Seeds the shuffle and the label flips.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the fields:

        ``X_train``, ``X_test`` : ndarray of shape (n, 64)
            Flattened images, values in [0, 1].
        ``y_train``, ``y_test`` : ndarray of shape (n,)
            Integer labels 0–9; ``y_train`` includes the flipped labels.
        ``images_train``, ``images_test`` : ndarray of shape (n, 8, 8)
            The same pixels as 8×8 images, for plotting.
        ``y_train_clean`` : ndarray of shape (n_train,)
            The training labels before flipping.
        ``flipped_indices`` : ndarray of shape (n_flipped,)
            Sorted positions in the training set whose label was flipped (empty when
            ``flip_fraction=0``).
        ``train_indices``, ``test_indices`` : ndarray
            Positions of the images in :func:`sklearn.datasets.load_digits`.
        ``target_names`` : ndarray of shape (10,)
            The classes 0–9.

    See Also
    --------
    sklearn.datasets.load_digits : The full data set without a split.

    Examples
    --------
    >>> from sklearn_influence.datasets import load_digits_split
    >>> data = load_digits_split(n_train=500, n_test=100, flip_fraction=0.1, random_state=0)
    >>> data.X_train.shape, data.X_test.shape, data.images_train.shape
    ((500, 64), (100, 64), (500, 8, 8))
    >>> float(data.X_train.min()), float(data.X_train.max())
    (0.0, 1.0)
    >>> len(data.flipped_indices)
    50
    >>> bool((data.y_train != data.y_train_clean).sum() == 50)
    True
    """
    digits = load_digits()
    n_total = len(digits.target)
    _check_count("n_train", n_train, 1, n_total - 1, n_total)
    _check_count("n_test", n_test, 1, n_total - n_train, n_total)
    if (
        isinstance(flip_fraction, bool)
        or not isinstance(flip_fraction, Real)
        or not 0.0 <= flip_fraction < 1.0
    ):
        raise ValueError(
            f"flip_fraction must be a number in [0, 1), got {flip_fraction!r}; for example "
            "flip_fraction=0.1 flips 10% of the training labels."
        )
    n_test = n_total - n_train if n_test is None else n_test
    rng = check_random_state(random_state)
    order = rng.permutation(n_total)
    train, test = order[:n_train], order[n_train : n_train + n_test]
    images = digits.images / _DIGITS_MAX_PIXEL
    X = images.reshape(n_total, -1)
    y = digits.target
    classes = np.unique(y)
    y_train, flipped = _flip_labels(y[train], flip_fraction, classes, rng)
    return Bunch(
        X_train=X[train],
        y_train=y_train,
        X_test=X[test],
        y_test=y[test],
        images_train=images[train],
        images_test=images[test],
        y_train_clean=y[train],
        flipped_indices=flipped,
        train_indices=train,
        test_indices=test,
        target_names=digits.target_names,
    )


class TanhMLP(torch.nn.Module):
    """A one-hidden-layer tanh network: ``in_features → hidden → out_features``.

    ``Linear → tanh → Linear``, returning logits (or, with ``probabilities=True``, their
    softmax, for :class:`torch.nn.NLLLoss`). tanh is smooth, so the network's Gauss-Newton
    matrix and Hessian are well defined, and the forward pass has no data-dependent control
    flow, so :mod:`torch.func` can trace it. Pass the class to a skorch net (``module=TanhMLP``
    with ``module__hidden=...``). The hidden layer is built before the output layer, so a
    seeded torch generator always gives the same initial weights.

    Parameters
    ----------
    in_features : int, default=64
        Width of the input (64 for the 8×8 digits of :func:`load_digits_split`).
    hidden : int, default=32
        Number of hidden units.
    out_features : int, default=10
        Number of outputs: classes for a classifier, 1 for a binary classifier, targets for
        a regressor.
    probabilities : bool, default=False
        Return ``softmax(logits)`` instead of the logits (skorch's default
        :class:`torch.nn.NLLLoss` criterion expects probabilities).
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Attributes
    ----------
    hidden : torch.nn.Linear
        The input-to-hidden layer.
    output : torch.nn.Linear
        The hidden-to-output layer.

    See Also
    --------
    load_digits_split : The data the network is usually trained on.

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import TanhMLP
    >>> _ = torch.manual_seed(0)
    >>> net = TanhMLP(in_features=4, hidden=3, out_features=2)
    >>> net(torch.zeros(5, 4)).shape
    torch.Size([5, 2])
    >>> params = dict(net.named_parameters())
    >>> list(params)
    ['hidden.weight', 'hidden.bias', 'output.weight', 'output.bias']
    >>> torch.func.functional_call(net, params, (torch.zeros(1, 4),)).shape
    torch.Size([1, 2])
    """

    def __init__(
        self, in_features=64, hidden=32, out_features=10, *, probabilities=False, dtype=None
    ):
        super().__init__()
        self.hidden = torch.nn.Linear(in_features, hidden, dtype=dtype)
        self.output = torch.nn.Linear(hidden, out_features, dtype=dtype)
        self.probabilities = probabilities

    def forward(self, X):
        """Logits of shape (n_samples, out_features), or their softmax.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, in_features)
            The inputs.

        Returns
        -------
        out : torch.Tensor of shape (n_samples, out_features)
            Logits, or probabilities when ``probabilities=True``.
        """
        out = self.output(torch.tanh(self.hidden(X)))
        return torch.softmax(out, dim=-1) if self.probabilities else out
