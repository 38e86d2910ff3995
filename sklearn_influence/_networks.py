"""Small example networks for the 8×8 digits: a LeNet-like CNN, a residual net with batch
normalisation and a Transformer classifier (public through :mod:`sklearn_influence.datasets`).

Each is a plain :class:`torch.nn.Module` for a skorch net's ``module=`` (with
``module__<name>=...`` settings), built in a fixed order so that a seeded torch generator
always gives the same initial weights, without data-dependent control flow (so
:mod:`torch.func` traces it), and small enough for the dense curvature in tests.
"""

import torch
from torch import nn

__all__ = ["LeNet", "ResNet", "TransformerClassifier"]


def _images(X, image_size):
    """(n, 1, s, s) images from (n, 1, s, s), (n, s, s) or flat (n, s·s) inputs."""
    return X.reshape(len(X), 1, image_size, image_size)


class LeNet(nn.Module):
    """A LeNet-like convolutional network for 8×8 images of shape (n, 1, 8, 8).

    ``Conv2d(3×3, padding 1) → tanh → AvgPool2d(2)`` twice (8×8 → 4×4 → 2×2), then
    ``Linear → tanh → Linear`` to the logits. tanh and average pooling keep the network
    smooth, as in LeCun et al. (1998), so its Hessian is well defined everywhere.

    Parameters
    ----------
    channels : tuple of two int, default=(6, 12)
        Channels of the two convolutions.
    hidden : int, default=32
        Width of the hidden fully connected layer.
    n_classes : int, default=10
        Number of logits.
    image_size : int, default=8
        Side of the square input images (a multiple of 4).
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import LeNet
    >>> _ = torch.manual_seed(0)
    >>> net = LeNet(channels=(2, 4), hidden=8)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> sum(p.numel() for p in net.parameters())
    322
    """

    def __init__(self, channels=(6, 12), hidden=32, n_classes=10, *, image_size=8, dtype=None):
        super().__init__()
        first, second = channels
        self.image_size = image_size
        self.conv1 = nn.Conv2d(1, first, 3, padding=1, dtype=dtype)
        self.conv2 = nn.Conv2d(first, second, 3, padding=1, dtype=dtype)
        self.pool = nn.AvgPool2d(2)
        self.hidden = nn.Linear(second * (image_size // 4) ** 2, hidden, dtype=dtype)
        self.output = nn.Linear(hidden, n_classes, dtype=dtype)

    def forward(self, X):
        """Logits of the images.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, 1, s, s)
            The inputs.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
        """
        out = self.pool(torch.tanh(self.conv1(_images(X, self.image_size))))
        out = self.pool(torch.tanh(self.conv2(out)))
        return self.output(torch.tanh(self.hidden(out.flatten(1))))


class _ResidualBlock(nn.Module):
    """``x + BN(conv(relu(BN(conv(x)))))`` followed by ReLU (He et al., 2016)."""

    def __init__(self, width, dtype):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False, dtype=dtype)
        self.norm1 = nn.BatchNorm2d(width, dtype=dtype)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False, dtype=dtype)
        self.norm2 = nn.BatchNorm2d(width, dtype=dtype)

    def forward(self, X):
        out = torch.relu(self.norm1(self.conv1(X)))
        return torch.relu(X + self.norm2(self.conv2(out)))


class ResNet(nn.Module):
    """A tiny residual network with batch normalisation for (n, 1, 8, 8) images.

    A 3×3 convolution with ``BatchNorm2d`` and ReLU, ``n_blocks`` residual blocks of two
    3×3 convolutions with batch normalisation, global average pooling and a linear head.
    The BatchNorm affine weights and biases are trainable parameters; the running mean and
    variance are buffers. Influence computations evaluate the network in eval mode, with the
    running statistics of the fitted net (see the user guide on batch normalisation).

    Parameters
    ----------
    width : int, default=8
        Channels of every convolution.
    n_blocks : int, default=2
        Number of residual blocks.
    n_classes : int, default=10
        Number of logits.
    image_size : int, default=8
        Side of the square input images.
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import ResNet
    >>> _ = torch.manual_seed(0)
    >>> net = ResNet(width=4, n_blocks=1).eval()
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> [name for name, _ in net.named_buffers()][:3]
    ['stem_norm.running_mean', 'stem_norm.running_var', 'stem_norm.num_batches_tracked']
    """

    def __init__(self, width=8, n_blocks=2, n_classes=10, *, image_size=8, dtype=None):
        super().__init__()
        self.image_size = image_size
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False, dtype=dtype)
        self.stem_norm = nn.BatchNorm2d(width, dtype=dtype)
        self.blocks = nn.Sequential(*[_ResidualBlock(width, dtype) for _ in range(n_blocks)])
        self.output = nn.Linear(width, n_classes, dtype=dtype)

    def forward(self, X):
        """Logits of the images.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, 1, s, s)
            The inputs.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
        """
        out = torch.relu(self.stem_norm(self.stem(_images(X, self.image_size))))
        out = self.blocks(out)
        return self.output(out.mean((2, 3)))


class TransformerClassifier(nn.Module):
    """A small Transformer encoder that reads an image's rows as a sequence of tokens.

    Input of shape (n, rows, row_length) (or anything that reshapes to it, such as
    (n, 1, 8, 8) images): each row is a token, embedded by ``nn.Linear(row_length, d_model)``
    plus a learned positional embedding, passed through ``n_layers``
    :class:`torch.nn.TransformerEncoderLayer` (multi-head self-attention, LayerNorm, a
    feed-forward block; no dropout by default), mean-pooled over tokens, normalised by a
    LayerNorm and mapped to the logits by a linear head.

    Parameters
    ----------
    d_model : int, default=16
        Token width.
    n_heads : int, default=2
        Attention heads (must divide ``d_model``).
    dim_feedforward : int, default=32
        Width of the feed-forward block.
    n_layers : int, default=1
        Number of encoder layers.
    n_classes : int, default=10
        Number of logits.
    n_tokens : int, default=8
        Sequence length (image rows).
    token_size : int, default=8
        Features per token (row length).
    dropout : float, default=0.0
        Dropout of the encoder layers (applied only while training).
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import TransformerClassifier
    >>> _ = torch.manual_seed(0)
    >>> net = TransformerClassifier(d_model=8, dim_feedforward=16).eval()
    >>> net(torch.zeros(5, 8, 8)).shape
    torch.Size([5, 10])
    """

    def __init__(
        self,
        d_model=16,
        n_heads=2,
        dim_feedforward=32,
        n_layers=1,
        n_classes=10,
        *,
        n_tokens=8,
        token_size=8,
        dropout=0.0,
        dtype=None,
    ):
        super().__init__()
        self.n_tokens, self.token_size = n_tokens, token_size
        self.embedding = nn.Linear(token_size, d_model, dtype=dtype)
        self.position = nn.Parameter(0.02 * torch.randn(1, n_tokens, d_model, dtype=dtype))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model,
                n_heads,
                dim_feedforward,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                dtype=dtype,
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model, dtype=dtype)
        self.output = nn.Linear(d_model, n_classes, dtype=dtype)

    def forward(self, X):
        """Logits of the token sequences.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, n_tokens, token_size)
            The inputs.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
        """
        out = self.embedding(X.reshape(len(X), self.n_tokens, self.token_size)) + self.position
        for layer in self.layers:
            out = layer(out)
        return self.output(self.norm(out.mean(1)))
